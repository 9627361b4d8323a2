"""Export: the masked dataset as JSONL/Parquet (the only faithful export of MaskLens's own options and custom rules),
split_turns as TRL prompt/completion rows, and the same configuration for TRL, axolotl and LLaMA-Factory
(core.export). Files are written to a fresh temporary directory per export and handed to the browser."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import gradio as gr

from core.masking.engine import render_examples
from core.errors import MaskLensError
from core.export import (FAITHFUL, axolotl_snippet, describe, export_jsonl, export_parquet, export_split_rows,
                         is_custom, llamafactory_snippet, sftconfig_snippet, split_rows_name, split_turn_rows)

from . import render
from .session import EMBEDDED, Session

log = logging.getLogger(__name__)

SPLIT_ROWS = "split rows (TRL prompt/completion)"
FORMATS = {"JSONL": ".jsonl", "Parquet": ".parquet", SPLIT_ROWS: ".split_turns.jsonl"}
CHUNK = 512


def _fail(e: Exception) -> str:
    if not isinstance(e, MaskLensError):
        log.exception("export tab")
        return render.error_html(f"{type(e).__name__}: {e}", "Unexpected error")
    return render.error_html(str(e))


def export_name(session: Session, fmt: str) -> str:
    stem = Path(session.data.name).stem if session.data else "masklens"
    if fmt == SPLIT_ROWS:
        return split_rows_name(f"{stem}.masked.jsonl")
    return f"{stem}.masked{FORMATS.get(fmt, '.jsonl')}"


def on_snippets(session: Session):
    """(configuration line, SFTConfig script, axolotl YAML, LLaMA-Factory YAML) for the Inspect tab's settings."""
    try:
        cfg = session.config()
        data_path = export_name(session, "JSONL")
        tok = session.tokenizer_name if session.tokenizer_name != EMBEDDED else "HuggingFaceTB/SmolLM2-135M-Instruct"
        model = None if session.tokenizer_name == EMBEDDED else session.tokenizer_name
        head = (f'<div class="caption">Configuration: <code>{render.esc(describe(cfg))}</code> · tokenizer '
                f"<code>{render.esc(session.tokenizer_name)}</code>"
                + (" (the embedded SmolLM2-135M-Instruct: snippets name its hub id)" if model is None else "")
                + "</div>")
        away = cfg.differs_from_trl()
        if away or is_custom(cfg):
            head += (f'<div class="note" data-options="{render.esc(", ".join(away))}">Set away from TRL\'s behaviour: '
                     f"<code>{render.esc(', '.join(([cfg.strategy] if is_custom(cfg) else []) + away))}</code>. "
                     f"{render.esc(FAITHFUL)} The snippets say, option by option, what each target has."
                     + (" split_turns also exports faithfully as TRL prompt/completion rows (format: split rows)."
                        if cfg.split_turns else "") + "</div>")
        return (head, sftconfig_snippet(cfg, tok, data_path), axolotl_snippet(cfg, data_path, base_model=model or tok),
                llamafactory_snippet(cfg, model=model or tok))
    except Exception as e:  # noqa: BLE001
        return _fail(e), "", "", ""


def on_export(session: Session, fmt: str, attention_mask: bool = False, progress=gr.Progress()):
    """Render every example and write them (with an attention_mask column of ones if asked: axolotl's and
    LLaMA-Factory's pre-tokenized formats need one). Returns (status HTML, file path or None)."""
    if session.data is None or not session.data.examples:
        return render.error_html("No examples to export: choose data in the Inspect tab.", "Nothing to export"), None
    if fmt == SPLIT_ROWS:
        return _export_split(session)
    try:
        tok = session.tokenizer()
        cfg = session.config()
        examples = session.data.examples
        rendered = []
        for start in range(0, len(examples), CHUNK):
            progress(start / len(examples), desc=f"{start}/{len(examples)} examples")
            rendered += render_examples(examples[start:start + CHUNK], tok, cfg, errors="finding",
                                        image_root=session.data.root)
        failed = [r.row for r in rendered if any(f.code == "render_failed" for f in r.findings)]
        rendered = [r for r in rendered if r.row not in set(failed)]
        path = Path(tempfile.mkdtemp(prefix="masklens-export-")) / export_name(session, fmt)
        (export_parquet if fmt == "Parquet" else export_jsonl)(rendered, path, attention_mask=bool(attention_mask))
    except Exception as e:  # noqa: BLE001
        return _fail(e), None
    n_tok = sum(r.n_tokens for r in rendered)
    n_tr = sum(r.n_trained for r in rendered)
    empty = sum(1 for r in rendered if r.n_trained == 0)
    skipped = len(session.data.errors)
    msg = (f'<div class="ok">Wrote <b>{len(rendered)}</b> examples ({n_tok} tokens, {n_tr} trained) to '
           f"<code>{render.esc(path.name)}</code>: columns input_ids, labels (-100 = ignored), "
           + ("attention_mask, " if attention_mask else "") + "row."
           + (f" {empty} example(s) have no trained token (TRL drops them when it truncates)." if empty else "")
           + (f" {skipped} unreadable row(s) were left out." if skipped else "")
           + (f" Left out because the chat template failed on them: rows {', '.join(map(str, failed[:20]))}"
              f"{' …' if len(failed) > 20 else ''} (see Audit)." if failed else "") + "</div>")
    return msg, str(path)


def _export_split(session: Session):
    """split_turns as TRL conversational prompt/completion rows (core.export.split_turn_rows)."""
    try:
        cfg = session.config()
        if not cfg.split_turns:
            raise MaskLensError("split rows export split_turns: tick split_turns in the Inspect tab (assistant_only)",
                                field="split_turns", fix="tick split_turns, or export JSONL/Parquet")
        path = Path(tempfile.mkdtemp(prefix="masklens-export-")) / export_name(session, SPLIT_ROWS)
        export_split_rows(session.data.examples, cfg, path)
        n = len(split_turn_rows(session.data.examples, cfg))
    except Exception as e:  # noqa: BLE001
        return _fail(e), None
    rows = len({ex.row for ex in session.data.examples})
    msg = (f'<div class="ok">Wrote <b>{n}</b> prompt/completion rows (one per trained assistant turn) from {rows} '
           f"rows to <code>{render.esc(path.name)}</code>: prompt = the history, completion = the turn, plus tools, "
           "chat_template_kwargs, row and turn. TRL renders the prompt as at inference and trains the completion "
           "(completion_only_loss, its default for this format): split_args in the TRL snippet."
           + (" Options away from TRL's defaults (reasoning, empty_think, mask_tokens) are not in these rows: "
              "the pre-tokenized export carries them." if {o.split("=")[0] for o in cfg.differs_from_trl()}
              & {"reasoning", "empty_think", "mask_tokens"} else "") + "</div>")
    return msg, str(path)


def formats(session: Session) -> list[str]:
    """The export formats that apply: split rows only with split_turns on (assistant_only)."""
    s = session.settings
    return [f for f in FORMATS if f != SPLIT_ROWS or (s.split_turns and s.strategy == "assistant_only")]


def on_formats(session: Session, fmt: str) -> dict:
    """The Format radio when the tab opens: what applies to the Inspect tab's settings, the choice kept if it does."""
    choices = formats(session)
    return gr.update(choices=choices, value=fmt if fmt in choices else choices[0])


def _with_button(status: str, path: str | None):
    return status, gr.DownloadButton(value=path, interactive=path is not None,
                                     label="Download ⬇" if path else "Download")  # the file's name is in the status


def build_export_tab(session: gr.State) -> dict:
    """The Export tab (call inside a gr.Tab). Returns event kwargs for when it opens: "refresh" (the snippets) and
    "formats" (the formats that apply)."""
    head = gr.HTML()
    with gr.Row(elem_classes="bar"):
        fmt = gr.Radio(choices=formats(Session()), value="JSONL", label="Format", scale=0, min_width=300,
                       elem_id="export-format", info="split rows: with split_turns ticked in Inspect")
        run = gr.Button("Export the masked dataset", variant="primary", size="md", scale=0, min_width=220,
                        elem_id="export-run")
        out = gr.DownloadButton("Download", value=None, size="md", scale=0, min_width=160, interactive=False,
                                elem_id="export-file")
        mask = gr.Checkbox(value=False, label="attention_mask column", scale=0, min_width=180,
                           elem_id="export-attention-mask",
                           info="axolotl's / LLaMA-Factory's pre-tokenized formats need it; TRL does not")
        gr.HTML('<div class="hint">input_ids and labels (-100 = ignored) per example, ready for SFTTrainer: a '
                "pre-tokenized dataset with labels is used as is.</div>")
    status = gr.HTML(elem_id="export-status")
    with gr.Row(equal_height=False):
        with gr.Column(min_width=380):
            sft = gr.Code(language="python", label="TRL 1.16 (SFTConfig)", interactive=False, lines=20, max_lines=60,
                              wrap_lines=True)
        with gr.Column(min_width=320):
            axo = gr.Code(language="yaml", label="axolotl", interactive=False, lines=20, max_lines=60,
                              wrap_lines=True)
        with gr.Column(min_width=320):
            lf = gr.Code(language="yaml", label="LLaMA-Factory", interactive=False, lines=20, max_lines=60,
                              wrap_lines=True)
    run.click(lambda s, f, m: _with_button(*on_export(s, f, m)), [session, fmt, mask], [status, out])
    return {"refresh": dict(fn=on_snippets, inputs=[session], outputs=[head, sft, axo, lf]),
            "formats": dict(fn=on_formats, inputs=[session, fmt], outputs=[fmt])}
