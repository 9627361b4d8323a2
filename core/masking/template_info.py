"""What a chat template does, learnt once from probe conversations — for any template, no per-model code.

`analyze_template` renders a few conversations of unique marker strings ("MLPROBEu1", ...) and reads off the
rendering: the end-of-turn markers that close assistant turns, the role headers, the generation prompt, which
reasoning field it renders and the text it wraps reasoning in, the scaffolding it inserts into assistant turns
(Qwen3's empty ``<think>\\n\\n</think>\\n\\n``), the text that opens tool calls (Gemma 4 ``<|tool_call>call:``) and a
marker that closes them (gpt-oss ``<|call|>``).
core.masking.spans uses the result to cut each rendered conversation into messages and parts.

Example: analyze_template(tok, tpl).eot -> ("<|im_end|>",); .headers["assistant"] -> "<|im_start|>assistant\\n"
"""

from __future__ import annotations

import functools
import re
import weakref
from dataclasses import dataclass, field

from ..errors import MaskLensError
from .templates import render

PROBE = ("MLPROBEsys", "MLPROBEu1", "MLPROBEa1", "MLPROBEu2", "MLPROBEa2")
PROBE_REASONING = "MLPROBEthink"
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")  # the names templates read, most common first


# -------------------------------------------------------------------------------------------------- special tokens
@functools.lru_cache(maxsize=32)
def special_regex_for(key: tuple[str, ...]) -> re.Pattern | None:
    tokens = sorted(set(key), key=len, reverse=True)
    return re.compile("|".join(re.escape(t) for t in tokens)) if tokens else None


def special_tokens(tokenizer) -> tuple[str, ...]:
    """Strings of the tokenizer's special tokens (declared and added-special), longest first."""
    s = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for tok in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(tok, "special", False):
            s.add(str(tok))
    return tuple(sorted((t for t in s if t), key=len, reverse=True))


def special_regex(tokenizer) -> re.Pattern | None:
    return special_regex_for(special_tokens(tokenizer))


# ------------------------------------------------------------------------------------------------ template analysis
@dataclass(frozen=True)
class TemplateInfo:
    """What probe conversations taught us about a template."""

    eot: tuple[str, ...] = ()  # end-of-turn marker strings closing assistant turns (e.g. "<|im_end|>")
    headers: dict = field(default_factory=dict)  # role -> header text right before a message's content
    generation_prompt: str = ""  # what add_generation_prompt appends
    reasoning_field: str | None = None  # the reasoning field the template renders, if any
    think_open: str = ""  # text between the assistant header and the reasoning ("<think>\n")
    think_close: str = ""  # text between the reasoning and the content ("\n</think>\n\n")
    scaffold: str = ""  # text the template inserts between header and content when there is no reasoning
    call_closer: str = ""  # a marker closing tool calls that is not an end-of-turn marker (gpt-oss <|call|>)
    call_opener: str = ""  # the text that opens a turn's tool calls after its header (Gemma 4 "<|tool_call>call:")
    specials: tuple[str, ...] = ()  # the tokenizer's special tokens: content is never matched inside one
    probe_ok: bool = False
    probe_error: str = ""

    @functools.cached_property
    def leads(self) -> dict[str, tuple[tuple[str, int], ...]]:
        """role -> what may come right before its content, with the header's length: header + scaffold, then the
        header alone (the locator anchors a message on lead + content). Roles without a header are absent."""
        return {role: tuple((lead, len(hdr)) for lead in dict.fromkeys((hdr + self.scaffold, hdr)))
                for role, hdr in self.headers.items() if hdr}


_INFO_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def analyze_template(tokenizer, template: str) -> TemplateInfo:
    """Learn a template's structure from probe conversations (cached per tokenizer and template)."""
    # Keyed on the tokenizer object (weakly) and what the analysis reads of it: a tokenizer whose special tokens
    # change (add_special_tokens) is analysed again.
    per_tok = _INFO_CACHE.setdefault(tokenizer, {})
    key = (template, tokenizer.bos_token, tokenizer.eos_token, special_tokens(tokenizer))
    info = per_tok.get(key)
    if info is None:
        info = per_tok[key] = _analyze(_Probe(tokenizer, template))
    return info


class _Probe:
    """A template under analysis: renders probe conversations, knows the tokenizer's special tokens."""

    def __init__(self, tokenizer, template: str):
        self.tokenizer, self.template = tokenizer, template
        self.rx = special_regex(tokenizer)
        self.bos, self.eos = tokenizer.bos_token, tokenizer.eos_token

    def render(self, messages: list[dict], **kw) -> str | None:
        """The rendering, or None where the template raises on this probe."""
        try:
            return render(self.tokenizer, messages, self.template, **kw)[0]
        except MaskLensError:
            return None

    def specials_in(self, text: str) -> list[str]:
        """The special tokens in text, in order, BOS left out."""
        return [m.group() for m in self.rx.finditer(text) if m.group() != self.bos] if self.rx is not None else []


def _conversations() -> list[list[dict]]:
    sys_, u1, a1, u2, a2 = PROBE
    turns = [{"role": "user", "content": u1}, {"role": "assistant", "content": a1},
             {"role": "user", "content": u2}, {"role": "assistant", "content": a2}]
    return [turns, [{"role": "system", "content": sys_}] + turns]


def _analyze(p: _Probe) -> TemplateInfo:
    text, err = _probe_rendering(p)
    if text is None:
        return TemplateInfo(probe_error=err or "the probe conversation's contents were not rendered verbatim")
    _, u1, a1, u2, a2 = PROBE
    gaps = _Gaps(text[text.find(u1) + len(u1): text.find(a1)],  # [user closer][separator][assistant header]
                 text[text.find(a1) + len(a1): text.find(u2)],  # [assistant closer][separator][user header]
                 text[text.find(a2) + len(a2):])  # [assistant closer][EOS?]
    eots, mid = _end_of_turn_markers(p, gaps)
    gen = _generation_prompt(p)
    headers = {"user": (gaps.mid[gaps.mid.find(mid) + len(mid):] if mid else gaps.mid).lstrip(),
               "assistant": _assistant_header(p, gaps.user, gen, mid)}
    reasoning_field, think_open, think_close = _reasoning_wrapping(p, headers["assistant"])
    scaffold = _scaffold(p, headers["assistant"])
    call_closer, tool_header, call_opener = _tool_markers(p, eots, headers["user"], headers["assistant"], scaffold)
    if tool_header:
        headers["tool"] = tool_header
    return TemplateInfo(eot=tuple(eots), headers=headers, generation_prompt=gen, reasoning_field=reasoning_field,
                        think_open=think_open, think_close=think_close, scaffold=scaffold, call_closer=call_closer,
                        call_opener=call_opener, specials=special_tokens(p.tokenizer), probe_ok=True)


@dataclass(frozen=True)
class _Gaps:
    user: str  # between the first user content and the first assistant content
    mid: str  # between the first assistant content and the second user content
    last: str  # after the last assistant content


def _probe_rendering(p: _Probe) -> tuple[str | None, str]:
    """A rendering of the probe conversation with every content verbatim (with a system message if it needs one)."""
    err = ""
    for conv in _conversations():
        try:
            text, _ = render(p.tokenizer, conv, p.template)
        except MaskLensError as e:
            err = str(e)
            continue
        if all(x in text for x in PROBE[1:]):
            return text, err
    return None, err


def _end_of_turn_markers(p: _Probe, g: _Gaps) -> tuple[list[str], str | None]:
    """The sequences that close an assistant turn (longest first) and the one closing a non-final turn.

    The closer is the first special token after the turn that is EOS, also closes user turns (ChatML <|im_end|>,
    Llama 3 <|eot_id|>, Gemma <end_of_turn>), or also closes the final turn (DeepSeek's <｜end▁of▁sentence｜> when the
    tokenizer names another EOS). A token that merely opens the next turn is none. A closer followed at once by the
    token that closes user turns (or EOS) closes the turn with it: Cohere's <|END_RESPONSE|><|END_OF_TURN_TOKEN|>.
    """
    user_cands = p.specials_in(g.user)
    last_cands = p.specials_in(g.last)
    first_last = last_cands[0] if last_cands else None
    base = next((c for c in p.specials_in(g.mid) if c == p.eos or c in user_cands or c == first_last), None)
    user_first = user_cands[0] if user_cands else None
    mid = _extend_closer(g.mid, base, (p.eos, user_first))
    eots = [mid] if mid else []
    if mid and mid != base and user_first and mid.endswith(user_first):
        # A turn that does not end with the full sequence (Command-A's tool-call turns end <|END_ACTION|>) still
        # ends with the turn closer.
        eots.append(user_first)
    # The final turn's closer: the first special token right after it (gpt-oss closes it with <|return|>).
    if first_last and (first_last == p.eos or first_last in user_cands or first_last == mid
                       or g.last.lstrip().startswith(first_last)):
        first_last = _extend_closer(g.last, first_last, (p.eos, user_first))
        if first_last not in eots:
            eots.append(first_last)
    eots.sort(key=len, reverse=True)  # where a sequence and its first token both match, the sequence wins
    return eots, mid


def _extend_closer(gap: str, marker: str | None, closers: tuple) -> str | None:
    """marker plus the closing tokens that follow it directly in gap. Example: ("<a><b><c>", "<a>", ("<b>",)) ->
    "<a><b>"."""
    if not marker or marker not in gap:
        return marker
    rest = gap[gap.find(marker) + len(marker):]
    out = marker
    for c in closers:
        if c and c not in out and rest.startswith(c):
            out += c
            rest = rest[len(c):]
    return out


def _generation_prompt(p: _Probe) -> str:
    """What add_generation_prompt appends after a user turn."""
    first = _conversations()[0][:1]
    base, with_gp = p.render(first), p.render(first, add_generation_prompt=True)
    return with_gp[len(base):] if base is not None and with_gp is not None and with_gp.startswith(base) else ""


def _assistant_header(p: _Probe, gap_user: str, gen: str, mid: str | None) -> str:
    """The assistant header is the generation prompt, where a (non-final) assistant turn is preceded by it; what the
    template adds after it (Qwen3 twin's empty think block, gpt-oss's channel) is the turn's own text. A think opener
    the generation prompt supplies (Qwen3.5/3.6 "<think>\\n") opens the turn's think block: it is the reasoning's
    delimiter (or part of an empty block's scaffolding), not the role header; TRL's twins put it in {% generation %}.
    """
    gp = gen.strip()
    if gen and gap_user.rfind(gen) >= 0:
        header = gen
    elif gp and gap_user.rfind(gp) >= 0:
        at = gap_user.rfind(gp) + len(gp)
        rest = gap_user[at:]
        header = gap_user[at - len(gp):at] + rest[: len(rest) - len(rest.lstrip())]  # and the whitespace after it
    else:  # no generation prompt: whatever follows the user's closer
        closer = next((c for c in p.specials_in(gap_user) if c == p.eos or c == mid), None)
        header = gap_user[gap_user.find(closer) + len(closer):].lstrip() if closer else gap_user.lstrip()
    return header[: header.find("<think>")] if "<think>" in header else header


def _reasoning_wrapping(p: _Probe, a_header: str) -> tuple[str | None, str, str]:
    """Which reasoning field the template renders, and the text before (after the header) and after it."""
    _, u1, a1, _, _ = PROBE
    for fld in REASONING_FIELDS:
        t = p.render([{"role": "user", "content": u1}, {"role": "assistant", "content": a1, fld: PROBE_REASONING}])
        r, c = (t.find(PROBE_REASONING), t.find(a1)) if t is not None else (-1, -1)
        if 0 <= r < c:
            h = t.rfind(a_header.strip(), 0, r) if a_header.strip() else -1
            think_open = t[h + len(a_header.strip()):r].lstrip("\n") if h >= 0 else ""
            return fld, think_open, t[r + len(PROBE_REASONING):c]
    return None, "", ""


def _scaffold(p: _Probe, a_header: str) -> str:
    """What the template puts between the header and the content of a final turn without reasoning."""
    t = p.render(_conversations()[0][:2])
    if t is None:
        return ""
    c = t.find(PROBE[2])
    h = t.rfind(a_header, 0, c) if a_header else -1
    return t[h + len(a_header):c] if h >= 0 and c >= 0 else ""


def _tool_markers(p: _Probe, eots: list[str], user_header: str, a_header: str, scaffold: str) -> tuple[str, str, str]:
    """(a marker closing tool calls that is not an end-of-turn marker (gpt-oss <|call|>), the tool message's header:
    what follows the assistant's closer — Llama 3's <|start_header_id|>ipython<|end_header_id|>\\n\\n, Qwen3's
    <|im_start|>user\\n<tool_response>\\n —, the text opening the calls after the assistant header and scaffold:
    Gemma 4's <|tool_call>call:, Mistral v3's [TOOL_CALLS][{"name": ")."""
    t = p.render(_tool_probe()) or p.render(_tool_probe(ids=True))
    v, r = (t.find("MLPROBEv"), t.find("MLPROBEtool")) if t is not None else (-1, -1)
    if not 0 <= v < r:
        return "", "", ""
    c = p.specials_in(t[v:r])
    call_closer = c[0] if c and c[0] not in eots and not user_header.startswith(c[0]) else ""
    gap = t[v + len("MLPROBEv"):r]
    ends = [gap.find(mk) + len(mk) for mk in (*eots, call_closer) if mk and mk in gap]
    tool_header = gap[max(ends):].lstrip() if ends else ""  # after the last closer (Qwen3: </tool_call><|im_end|>)
    return call_closer, tool_header if "MLPROBE" not in tool_header else "", _call_opener(t, a_header, scaffold)


def _tool_probe(ids: bool = False) -> list[dict]:
    """A tool-calling probe conversation; with ids for templates that require them (Mistral v3: 9 alphanumerics)."""
    call = {"type": "function", "function": {"name": "MLPROBEfn", "arguments": {"MLPROBEk": "MLPROBEv"}}}
    result = {"role": "tool", "name": "MLPROBEfn", "content": "MLPROBEtool"}
    if ids:
        call, result = {"id": "MLPROBEid", **call}, {"tool_call_id": "MLPROBEid", **result}
    return [{"role": "user", "content": PROBE[1]}, {"role": "assistant", "content": "", "tool_calls": [call]},
            result, {"role": "assistant", "content": PROBE[4]}]


def _call_opener(t: str, a_header: str, scaffold: str) -> str:
    """What a probe rendering puts between the assistant header (and scaffold) and the first call's name."""
    n, u = t.find("MLPROBEfn"), t.find(PROBE[1])
    for h in dict.fromkeys((a_header, a_header.rstrip())):
        at = t.rfind(h, u, n) if h and 0 <= u < n else -1
        if at >= 0:
            opener = t[at + len(h):n]
            opener = opener[len(scaffold):] if scaffold and opener.startswith(scaffold) else opener
            return opener if "MLPROBE" not in opener else ""
    return ""
