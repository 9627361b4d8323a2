"""What Inspect shows for a session: `view` renders the current example and returns every output of the tab
(InspectOut): the token view, stats, findings, the lines above the tokens, and the control updates that follow the
session (strategy list, which option groups show, the template source in effect, the pickers' entries).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import gradio as gr

from core.errors import MaskLensError
from core.masking.engine import RenderedExample, vocab_id
from core.masking.options import option
from core.masking.trl_templates import trl_version

from . import render
from .controls import applies, info_of, strategy_choices, strategy_info
from .pickers import (MARKED_TEMPLATE, data_choices, data_value, marked_template_of, template_choice,
                      template_name, trl_cannot_patch)
from .session import Session

log = logging.getLogger(__name__)

# Token view display options (Session.display): what the bar under each token shows, the label-shift markers, the
# tokenizer's own (inference) rendering beside the training one.
DISPLAY_DEFAULTS = {"underline": "part", "shift": False, "inference": False}


class InspectOut(NamedTuple):
    """What every Inspect callback returns, in the order of InspectTab.outputs."""

    session: Session
    view: str
    stats: str
    findings: str
    raw: str
    number: int
    caption: str
    error: str
    data_info: str
    strategy: dict  # gr.update: the registry's strategies, the session's one, its help
    template_line: str  # which template produced the tokens
    legend: str
    turns: dict  # gr.update: split_turns' examples of this row ("row 3, turn 5")
    inference: str  # the tokenizer's own (inference) rendering beside the training one, when asked for
    rt_options: dict  # gr.update: the options of scope response_template, visible for the old collator
    split: dict  # gr.update: split_turns, only with assistant_only
    pad_note: str  # which pad token the old collator masks
    template_pick: dict  # gr.update: the chat template picker's entry for the session's template
    mask_tokens: dict  # gr.update: the session's mask_tokens (the Rules tab may set them)
    parts_options: dict  # gr.update: the options of scope assistant, visible for strategies deciding per part
    source: dict  # gr.update: the Template source radio, showing the source in effect (source_update)
    use_marked: dict  # gr.update: the "use a proven marked template" button, visible where TRL cannot patch
    data_pick: dict  # gr.update: the Data picker: the samples, the uploaded file, the session's data selected
    notice: str  # what the app just set by itself (strategy, template) and why; a clamped example number


def display(session: Session) -> dict:
    return {**DISPLAY_DEFAULTS, **(session.display or {})}


def source_update(session: Session) -> dict:
    """The Template source radio shows the source in effect: with a template TRL cannot patch, MaskLens's own
    masking, locked (there is no choice to make) and with a sentence saying why."""
    if trl_cannot_patch(session):
        return gr.update(value="own", interactive=False,
                         info=f"In effect: MaskLens's own masking. TRL {trl_version()} has no training template for "
                              "this chat template (its assistant_only_loss would stop with an error); 'Use a proven "
                              "{% generation %}-marked copy' above the tokens gives it the markers TRL needs.")
    return gr.update(value=session.settings.template_source, interactive=True, info=info_of(option("template_source")))


def pad_note_html(session: Session) -> str:
    """Which pad token the old collator (response_template) masks, and how to change it."""
    s = session.settings
    if not applies("response_template", s.strategy):
        return ""
    try:
        tok = session.tokenizer()
    except Exception:  # noqa: BLE001 - the tokenizer error is shown elsewhere
        return ""
    eos = tok.eos_token
    if (s.pad_token or "").strip():
        pad = s.pad_token.strip()
        tid = tok.convert_tokens_to_ids(pad)
        same = " — the same id as EOS, so every EOS is masked" if tid == tok.eos_token_id else ""
        return (f'<div class="hint pad-note">The old collator masks every token equal to pad token '
                f"<code>{render.esc(pad)}</code> (id {render.esc(tid)}){same}.</div>")
    if tok.pad_token_id is None:
        return (f'<div class="note pad-note">The tokenizer has no pad token: its EOS <code>{render.esc(eos)}</code> '
                f"(id {tok.eos_token_id}) is assumed, as TRL 0.19.1's SFTTrainer set it — so the old collator masks "
                "every EOS. Type another pad token above (one the tokenizer has, e.g. its unk token) to change "
                "it.</div>")
    same = tok.pad_token_id == tok.eos_token_id
    return (f'<div class="{"note" if same else "hint"} pad-note">Pad token: the tokenizer\'s '
            f"<code>{render.esc(tok.pad_token)}</code> (id {tok.pad_token_id})"
            + (" — the same as its EOS, so the old collator masks every EOS. Type another pad token above to change "
               "it." if same else ".") + "</div>")


def mask_tokens_info(session: Session, wanted: tuple[str, ...], shown: RenderedExample | None) -> str:
    """The Mask tokens box's help, plus a warning for the configuration's mask tokens (`wanted`) that can mask
    nothing here: not one token of this tokenizer and absent from the example shown (a typo masks nothing, silently,
    otherwise). Example: "... ⚠ not a token of this tokenizer and not in this example: notatoken_xyz"."""
    info = info_of(option("mask_tokens"))
    try:
        tok = session.tokenizer() if wanted else None
    except Exception:  # noqa: BLE001 - errors are shown in the error box
        return info
    text = (shown.text or "") if shown is not None else ""
    idle = [t for t in wanted if vocab_id(tok, t) is None and t not in text]
    return info + (" ⚠ not a token of this tokenizer and not in this example: " + ", ".join(idle) if idle else "")


def _controls(session: Session, rendered: list[RenderedExample] | None = None, shown: RenderedExample | None = None,
              wanted: tuple[str, ...] = ()) -> dict:
    """The updates every view returns besides the token view: strategy list, visibility, split_turns' turns."""
    s = session.settings
    turns = [(f"row {r.row}, turn {r.turn}", str(r.turn)) for r in rendered or [] if r.turn is not None]
    opts = display(session)
    return dict(
        strategy=gr.update(choices=strategy_choices(s.strategy), value=s.strategy, info=strategy_info(s.strategy)),
        turns=gr.update(choices=turns, value=str(shown.turn) if shown is not None and shown.turn is not None else None,
                        visible=bool(turns)),
        rt_options=gr.update(visible=applies("response_template", s.strategy)),
        parts_options=gr.update(visible=applies("assistant", s.strategy)),
        split=gr.update(value=bool(s.split_turns), interactive=s.strategy == "assistant_only"),
        pad_note=pad_note_html(session),
        template_pick=gr.update(value=template_choice(session)),
        legend=render.legend_html(opts["underline"], opts["shift"], weighted=shown is not None and shown.n_weighted > 0,
                                  images=shown is not None and any(g.part == "image" for g in shown.segments)),
        mask_tokens=gr.update(value=s.mask_tokens, info=mask_tokens_info(session, wanted, shown)),
        source=source_update(session),
        use_marked=gr.update(visible=trl_cannot_patch(session) and marked_template_of(session) is not None),
        data_pick=gr.update(choices=data_choices(session), value=data_value(session)),
    )


def template_line(session: Session, r: RenderedExample) -> str:
    """The line above the tokens: which template produced them, in plain words where TRL has no training template."""
    if trl_cannot_patch(session):
        return render.cannot_patch_line_html(template_name(session), trl_version())
    if template_choice(session) == MARKED_TEMPLATE and r.template_label:
        return render.template_line_html(r, label="the tokenizer's own chat template with the {% generation %} "
                                                  f"markers MaskLens added (proven): TRL {trl_version()} trains on "
                                                  "these markers as they are")
    return render.template_line_html(r)


def view(session: Session, error: str = "", notice: str = "") -> InspectOut:
    """Render the session's current example. Never raises: a problem becomes the in-page error box. `notice` says
    what the app just set by itself and why (shown above the tokens)."""
    data_info = render.data_info_html(session.data)
    notice = render.notice_html(notice)
    ex = session.example
    if ex is None:
        why = "No valid example in this dataset: see the rows skipped." if session.data is not None else \
            "No data yet: choose a sample, upload a file or paste an example."
        return InspectOut(session, render.token_view_html([], empty=why), "", "", "", 0, "", error, data_info,
                          template_line="", inference="", notice=notice, **_controls(session))
    session.index = max(0, min(session.index, len(session.data.examples) - 1))
    n = len(session.data.examples)
    raw = render.raw_json(ex)
    opts = display(session)
    try:
        tok = session.tokenizer()
        cfg = session.config()
        rendered = session.render_row(cfg)
        r = next((x for x in rendered if x.turn is not None and x.turn == session.turn), rendered[0])
        infos = r.tokens(tok)
    except Exception as e:  # a bug or an exotic tokenizer/template: report it in the page, keep the server up
        if isinstance(e, MaskLensError):
            msg, title = str(e), "Error"
        else:
            log.exception("rendering failed")
            msg, title = f"{type(e).__name__}: {e}", "Unexpected error"
        images = render.images_hint_html(len(ex.images)) if ex.images else ""  # a text model's template, often
        return InspectOut(session, render.token_view_html([], empty="Nothing rendered: see the error above."), "",
                          "", raw, session.index + 1, render.example_caption(ex, session.index, n),
                          error + render.error_html(msg, title) + images, data_info, template_line="", inference="",
                          notice=notice, **_controls(session))
    caption = render.example_caption(ex, session.index, n, turn=r.turn,
                                     turns=[x.turn for x in rendered] if r.turn is not None else None)
    tv = render.token_view_html(infos, truncated_at_start=r.truncated_at_start, underline=opts["underline"],
                                shift=opts["shift"])
    return InspectOut(session, tv, render.stats_html(r, infos), render.findings_html(r.findings), raw,
                      session.index + 1, caption, error, data_info, template_line=template_line(session, r),
                      inference=render.inference_html(r) if opts["inference"] else "", notice=notice,
                      **_controls(session, rendered, r, cfg.mask_tokens))


def err_html(e: Exception, kept: str = "") -> str:
    """The in-page error box (no toast: the box is where the user looks, and a toast outlives the problem); `kept`:
    what the page still shows instead."""
    return render.error_html(str(e), kept=kept)


def kept_data(session) -> str:
    """After a dataset that could not be loaded: what the page still shows."""
    return f"Nothing changed: still showing {session.data.name}." if session.data is not None else ""


def kept_tokenizer(session) -> str:
    """After a tokenizer that could not be loaded: which one the tokens still come from."""
    return f"Nothing changed: the tokens are still those of the tokenizer {session.tokenizer_name!r}."
