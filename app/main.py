"""The MaskLens app: one gr.Blocks with a tab per file (app/tab_*.py). Importing this module has no side effects.

build_app() builds the Blocks; launch_options() holds what Gradio 6 takes at launch (theme, CSS, upload limit).
Per-user state is one gr.State(Session) shared by the tabs; the only module-level cache is the tokenizer cache.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from .session import Session

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CSS_PATH = ASSETS / "style.css"
MAX_FILE_SIZE = "50mb"

HEADER = """
<div class="ml-header">
  <div class="ml-logo" aria-hidden="true">
    <span class="a"></span><span class="b"></span><span class="a"></span><span class="b"></span><span class="a"></span>
  </div>
  <div class="ml-title">MaskLens<span class="ml-sub">see which tokens your SFT run trains on — and why</span></div>
</div>
"""


def theme() -> gr.themes.Base:
    # Local fonts only: the app must work offline (no Google Fonts).
    return gr.themes.Base(
        primary_hue="emerald", neutral_hue="slate", text_size="sm", spacing_size="sm", radius_size="sm",
        font=["Inter", "IBM Plex Sans", "system-ui", "-apple-system", "Segoe UI", "sans-serif"],
        font_mono=["JetBrains Mono", "IBM Plex Mono", "ui-monospace", "SFMono-Regular", "Menlo", "monospace"],
    ).set(block_label_text_size="*text_sm", block_title_text_weight="600")


def launch_options(max_file_size: str | int = MAX_FILE_SIZE) -> dict:
    """Keyword arguments for demo.launch(): Gradio 6 takes theme and CSS there, not in gr.Blocks()."""
    return {"theme": theme(), "css_paths": [CSS_PATH], "max_file_size": max_file_size}


def build_app(default_data: str | None = None, default_tokenizer: str | None = None) -> gr.Blocks:
    """The whole app. default_data / default_tokenizer: what a page opens with (CLI --data / --tokenizer)."""
    from . import tab_audit, tab_compare, tab_export, tab_inspect, tab_templates, tab_train  # noqa: PLC0415

    with gr.Blocks(title="MaskLens", fill_width=True) as demo:
        gr.HTML(HEADER)
        session = gr.State(Session())
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Inspect", id="inspect", elem_id="tab-inspect"):
                inspect = tab_inspect.build_inspect_tab(session)
            with gr.Tab("Compare", id="compare", elem_id="tab-compare") as compare_tab:
                compare = tab_compare.build_compare_tab(session)
            with gr.Tab("Templates", id="templates", elem_id="tab-templates") as templates_tab:
                templates = tab_templates.build_templates_tab(session)
            with gr.Tab("Audit", id="audit", elem_id="tab-audit"):
                audit = tab_audit.build_audit_tab(session)
            with gr.Tab("Export", id="export", elem_id="tab-export") as export_tab:
                export = tab_export.build_export_tab(session)
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                tab_train.build_train_tab(session)

        # Tabs that show the Inspect tab's current state refresh when opened.
        compare_tab.select(**compare["args"])
        templates_tab.select(**templates["refresh"])
        export_tab.select(**export["refresh"])
        # Audit -> Inspect: a problem row opens its example there.
        audit["problems"].select(tab_audit.on_select_problem, [session], inspect.outputs + [tabs])
        # Templates -> Inspect: use the generated {% generation %} twin.
        tpl_code = inspect.controls["chat_template"]
        templates["use"].click(tab_inspect.on_use_template, [session, templates["marked"]],
                               inspect.outputs + [tpl_code, tabs])
        demo.load(tab_inspect.make_loader(default_data, default_tokenizer), [], inspect.load_outputs)
    demo.queue(default_concurrency_limit=8)
    return demo
