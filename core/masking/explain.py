"""Why each token is trained or not, for the token view: the rendering cut into segments (message, role, part,
trained, rule), built only when someone looks (RenderedExample.segments). On TRL's {% generation %} path the segments
follow the template's own markers, and say where an option took a part out.

Example: segments(...)[3] -> Segment(52, 61, 1, "assistant", "content", True, "trained: assistant content")
"""

from __future__ import annotations

from ..data.formats import KIND_TOKENS, Example
from .decide import Decision
from .labels import LabelSource
from .layout import Layout
from .rendered import Segment
from .rendering import Rendering
from .spans import MessageSpan
from .strategies import Decider


def segments(ex: Example, rendering: Rendering, layout: Layout, decision: Decision, strategy: str) -> list[Segment]:
    if ex.kind == KIND_TOKENS:
        if decision.source is LabelSource.GIVEN:
            return [Segment(0, 0, None, None, "tokens", False, "labels given in the data")]
        if decision.source is LabelSource.ALL:
            return [Segment(0, 0, None, None, "tokens", *_verdict(decision.decider, None, "tokens"))]
        return [Segment(0, 0, None, None, "tokens", False, f"not trained: {strategy} needs messages")]
    if layout.spans is None:
        return [Segment(s, e, None, None, p, *_verdict(decision.decider, None, p)) for s, e, p in layout.pieces]
    segs = message_segments(rendering.text, layout.spans, decision.decider)
    if rendering.generation is None:
        return segs
    return relabel_for_generation(segs, rendering.generation, decision.decider, layout.spans)


def _verdict(decider: Decider, idx, part) -> tuple[bool, str]:
    v = decider(idx, part)
    return bool(v[0]), v[1]


def message_segments(text: str, spans: list[MessageSpan], decider: Decider) -> list[Segment]:
    """Cut the rendered text into segments; the decider says (trained, rule) per part."""
    cuts = sorted(((a, b, sp.index, sp.role, part) for sp in spans for part, a, b in sp.parts), key=lambda c: c[0])
    segs: list[Segment] = []
    pos = 0
    for s, e, idx, role, part in cuts:
        s = max(s, pos)
        if e <= s:
            continue
        if s > pos:
            segs.append(Segment(pos, s, None, None, "template", *_verdict(decider, None, "template")))
        segs.append(Segment(s, e, idx, role, part, *_verdict(decider, idx, part)))
        pos = e
    if pos < len(text):
        segs.append(Segment(pos, len(text), None, None, "template", *_verdict(decider, None, "template")))
    return segs


def relabel_for_generation(segs: list[Segment], gen, decider: Decider, spans: list[MessageSpan]) -> list[Segment]:
    """Split segments at generation boundaries so the token view shows the template's own decision (and where an
    option takes a part out). Text a generation block covers past its message's end (Qwen3's twin: the newline after
    <|im_end|>) is shown as that message's end-of-turn, not as the next message's header."""
    owners = []
    for s, e in gen:
        own = next((sp for sp in spans if sp.found and sp.role == "assistant" and sp.header_start <= s < sp.end), None)
        owners.append((s, e, own))
    cuts = sorted({p for s, e in gen for p in (s, e)})
    out = []
    for seg in segs:
        pts = [seg.start] + [c for c in cuts if seg.start < c < seg.end] + [seg.end]
        for a, b in zip(pts, pts[1:]):
            owner = next((o for s, e, o in owners if s <= a and b <= e), False)
            inside = owner is not False
            piece = Segment(a, b, seg.message, seg.role, seg.part, inside, "")
            if owner and seg.message != owner.index and a >= owner.end:
                piece = Segment(a, b, owner.index, owner.role, "eot", inside, "")
            out.append(piece._replace(**dict(zip(("trained", "rule"), _generation_rule(decider, piece, inside)))))
    return out


def _generation_rule(decider: Decider, seg: Segment, inside: bool) -> tuple[bool, str]:
    if inside and seg.message is not None and seg.role == "assistant":
        if seg.message not in decider.trainable or (seg.part != "header" and not decider(seg.message, seg.part)[0]):
            return _verdict(decider, seg.message, seg.part)
    return inside, ("trained: inside {% generation %}" if inside else "not trained: outside {% generation %}")
