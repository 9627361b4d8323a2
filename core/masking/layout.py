"""Stage 2 — locate: where each message, and each part of it, lies in a rendering (core.masking.spans does the work
for conversations; text and prompt/completion rows have fixed pieces), plus the findings that reading the rendering
gives: content the template does not render, reasoning it drops, how TRL's training twin differs from inference.

Example: locate(ex, rendering, infos, "<|im_end|>").spans[1].parts -> [("header", 30, 52), ("content", 52, 54), ...]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..data.content import content_text, renders_part_list
from ..data.formats import Example
from ..findings import Finding
from .rendering import CONVERSATIONAL, Rendering, string_pieces
from .spans import MessageSpan, TemplateInfo, locate_messages, reasoning_of


@dataclass(frozen=True, slots=True)
class Layout:
    spans: list[MessageSpan] | None = None  # conversations: one per message, in order
    pieces: tuple[tuple[int, int, str], ...] = ()  # text and prompt/completion rows: (start, end, part)
    info: TemplateInfo | None = None  # what probes taught about the template that rendered the text
    findings: tuple[Finding, ...] = ()


def locate(ex: Example, rendering: Rendering, info_for: Callable[[str], TemplateInfo], eos_token: str) -> Layout:
    """Stage 2 for one example."""
    if ex.kind not in CONVERSATIONAL:
        return Layout(pieces=string_pieces(ex, rendering) if rendering.text else ())
    info = info_for(rendering.template)
    spans = locate_messages(rendering.text, ex.messages, info, eos_token)
    findings = []
    if rendering.inference_text is not None:
        findings.append(Finding("template_swapped", _swap_difference(rendering, ex.messages, spans, info_for,
                                                                     eos_token)))
    findings += _rendering_findings(ex.messages, spans, rendering.text)
    if any(isinstance(m.get("content"), list) for m in ex.messages) and renders_part_list(rendering.text, ex.messages):
        findings.append(Finding("content_parts_printed", "the chat template prints a message's list of content parts "
                                "itself (its Python text), so the model trains on that text; content_parts=join "
                                "joins the text parts into one string"))
    return Layout(spans=spans, info=info, findings=tuple(findings))


def _rendering_findings(msgs: list[dict], spans: list[MessageSpan], text: str) -> list[Finding]:
    out, dropped = [], []
    for sp in spans:
        m = msgs[sp.index]
        if (not sp.found or sp.content_dropped) and _unrendered(m, spans, text):
            parts = " (a list of parts the template does not read: content_parts=join joins them)" if isinstance(
                m.get("content"), list) else ""
            out.append(Finding("content_not_rendered", f"message {sp.index} ({sp.role}): its content does not appear "
                               f"in the rendered text{parts}", location={"message": sp.index}))
        if sp.has_reasoning and sp.reasoning is None:
            dropped.append(sp.index)
    if dropped:
        out.append(Finding("reasoning_not_rendered",
                           f"message(s) {', '.join(map(str, dropped))} carry reasoning the template does not render, "
                           "so it is neither shown to nor trained into the model", location={"messages": dropped}))
    return out


def _unrendered(m: dict, spans: list[MessageSpan], text: str) -> bool:
    """The message has content and the rendering does not show it: a tool result the template renders inside the
    calling turn (Gemma 4) is shown."""
    content = reasoning_of(m)[1] if m.get("role") == "assistant" else content_text(m)
    if not content:
        return False
    inlined = [text[sp.inlined[0]:sp.inlined[1]] for sp in spans if sp.inlined]
    return not (inlined and isinstance(content, str) and any(content.strip() in t for t in inlined))


def _swap_difference(rendering: Rendering, msgs, twin_spans: list[MessageSpan], info_for, eos_token) -> str:
    """How TRL's training twin renders this row differently from the tokenizer's own template, in words."""
    tt = rendering.training
    plain = rendering.inference_text
    plain_spans = locate_messages(plain, msgs, info_for(rendering.inference_template), eos_token)
    name = tt.name or "training"
    kept = [t.index for t, p in zip(twin_spans, plain_spans) if t.reasoning is not None and p.reasoning is None]
    if kept:
        return (f"TRL swaps in its {name} training template: assistant message(s) {', '.join(map(str, kept))} keep "
                "their reasoning in training but lose it at inference (the tokenizer's own template drops it)")
    scaf = [t.index for t, p in zip(twin_spans, plain_spans) if t.scaffold is not None and p.scaffold is None]
    if scaf:
        return (f"TRL swaps in its {name} training template: assistant message(s) {', '.join(map(str, scaf))} get "
                "template text (e.g. an empty think block) the inference template does not render there")
    return (f"TRL swaps in its {name} training template, which renders this row differently from the tokenizer's own "
            f"template ({len(rendering.text)} characters in training, {len(plain)} at inference)")

