"""MaskLens web app (Gradio). `python -m app` serves it; `app.main.build_app()` builds it without side effects."""
