"""Where each message, and each part of it, lies in one rendered conversation — for any template, no per-model code.

A template is first *analysed* once with probe conversations (:func:`analyze_template`): its role headers, the
end-of-turn markers that close assistant turns, the generation prompt, which reasoning field it renders and the text it
wraps reasoning in, and any scaffolding it inserts into assistant turns (Qwen3's empty ``<think>\\n\\n</think>\\n\\n``).
Then each rendered conversation is cut into message parts (:func:`locate_messages`), in order, in the one full
rendering (which works for templates that rewrite history, where diffing renders of ``messages[:i]`` fails).

Parts of a message (``MessageSpan.parts``), as (part, start, end) character ranges:
    header      role header: text the template (or, at inference, the generation prompt) supplies
    reasoning   the think block of a message with reasoning, delimiters included
    content     the message content
    tool_calls  the rendered tool calls of an assistant message, delimiters included
    eot         the closing sequence: text after the content up to and including the end-of-turn marker, and an EOS a
                template appends after the last turn
    scaffold    template text inside an assistant turn the model never writes itself (an empty think block)
Text outside every message is "template".
"""

from __future__ import annotations

import functools
import json
import re
import weakref
from dataclasses import dataclass, field

from ..errors import MaskLensError

PROBE = ("MLPROBEsys", "MLPROBEu1", "MLPROBEa1", "MLPROBEu2", "MLPROBEa2")
PROBE_REASONING = "MLPROBEthink"
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")  # the names templates read, most common first
PARTS = ("header", "reasoning", "content", "tool_calls", "eot", "scaffold")


# -------------------------------------------------------------------------------------------------- special tokens
@functools.lru_cache(maxsize=32)
def _special_regex_cached(key) -> re.Pattern | None:
    tokens = sorted(set(key), key=len, reverse=True)
    if not tokens:
        return None
    return re.compile("|".join(re.escape(t) for t in tokens))


def special_tokens(tokenizer) -> tuple[str, ...]:
    """Strings of the tokenizer's special tokens (declared and added-special), longest first."""
    s = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for tok in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(tok, "special", False):
            s.add(str(tok))
    return tuple(sorted((t for t in s if t), key=len, reverse=True))


def special_regex(tokenizer) -> re.Pattern | None:
    return _special_regex_cached(special_tokens(tokenizer))


# ------------------------------------------------------------------------------------------------ message fields
def reasoning_of(message: dict) -> tuple[str | None, str]:
    """(reasoning text, content as a template shows it). Inline "<think>r</think>c" content is split as templates do.

    Example: {"content": "<think>\\nhm\\n</think>\\n\\nHi"} -> ("hm", "Hi").
    """
    content = message.get("content") or ""
    for f in REASONING_FIELDS:
        r = message.get(f)
        if isinstance(r, str) and r.strip():
            return r, content
    if isinstance(content, str) and "</think>" in content:
        r = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
        return (r if r.strip() else None), content.split("</think>")[-1].lstrip("\n")
    return None, content


def tool_call_names(message: dict) -> list[str]:
    out = []
    for tc in message.get("tool_calls") or []:
        if isinstance(tc, dict):
            fn = tc.get("function") if isinstance(tc.get("function"), dict) else tc
            name = fn.get("name")
            if isinstance(name, str) and name:
                out.append(name)
    return out


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
    specials: tuple[str, ...] = ()  # the tokenizer's special tokens: content is never matched inside one
    probe_ok: bool = False
    probe_error: str = ""


_INFO_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def analyze_template(tokenizer, template: str, render_fn) -> TemplateInfo:
    """Learn a template's structure from probe conversations (cached per tokenizer and template).

    render_fn: core.templates.render (passed in, so that this module does not import the renderer).
    """
    # Keyed on the tokenizer object (weakly) and what the analysis reads of it: a tokenizer whose special tokens
    # change (add_special_tokens) is analysed again.
    per_tok = _INFO_CACHE.setdefault(tokenizer, {})
    key = (template, tokenizer.bos_token, tokenizer.eos_token, special_tokens(tokenizer))
    info = per_tok.get(key)
    if info is None:
        info = per_tok[key] = _analyze(tokenizer, template, render_fn)
    return info


def _candidates(gap: str, rx: re.Pattern | None, bos: str | None) -> list[str]:
    if rx is None:
        return []
    return [m.group() for m in rx.finditer(gap) if m.group() != bos]


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


def _analyze(tokenizer, template: str, render) -> TemplateInfo:
    sys_, u1, a1, u2, a2 = PROBE
    convs = [
        [{"role": "user", "content": u1}, {"role": "assistant", "content": a1},
         {"role": "user", "content": u2}, {"role": "assistant", "content": a2}],
        [{"role": "system", "content": sys_}, {"role": "user", "content": u1}, {"role": "assistant", "content": a1},
         {"role": "user", "content": u2}, {"role": "assistant", "content": a2}],
    ]
    text, err = None, ""
    for conv in convs:
        try:
            text, _ = render(tokenizer, conv, template)
        except MaskLensError as e:
            err = str(e)
            continue
        if all(p in text for p in (u1, a1, u2, a2)):
            break
        text = None
    if text is None:
        return TemplateInfo(probe_error=err or "the probe conversation's contents were not rendered verbatim")
    rx = special_regex(tokenizer)
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    pos = {p: text.find(p) for p in (sys_, u1, a1, u2, a2)}
    gap_user = text[pos[u1] + len(u1): pos[a1]]  # [user closer][separator][assistant header]
    gap_mid = text[pos[a1] + len(a1): pos[u2]]  # [assistant closer][separator][user header]
    gap_last = text[pos[a2] + len(a2):]  # [assistant closer][EOS?]
    user_closers = set(_candidates(gap_user, rx, bos))
    last_cands = _candidates(gap_last, rx, bos)
    first_last = last_cands[0] if last_cands else None
    # The closer of an assistant turn is the first special token after it that is EOS, also closes user turns
    # (ChatML <|im_end|>, Llama 3 <|eot_id|>, Gemma <end_of_turn>), or also closes the final turn (DeepSeek's
    # <｜end▁of▁sentence｜> when the tokenizer names another EOS). A token that merely opens the next turn is none.
    mid = next((c for c in _candidates(gap_mid, rx, bos) if c == eos or c in user_closers or c == first_last), None)
    # A closer followed at once by the token that closes user turns (or EOS) closes the turn with it: Cohere's
    # <|END_RESPONSE|><|END_OF_TURN_TOKEN|>. The whole sequence is the end-of-turn marker.
    user_first = next(iter(_candidates(gap_user, rx, bos)), None)
    base_mid = mid
    mid = _extend_closer(gap_mid, mid, (eos, user_first))
    eots: list[str] = [mid] if mid else []
    if mid and mid != base_mid and user_first and mid.endswith(user_first):
        # A turn that does not end with the full sequence (Command-A's tool-call turns end <|END_ACTION|>) still
        # ends with the turn closer.
        eots.append(user_first)
    # The final turn's closer: the first special token right after it (gpt-oss closes it with <|return|>).
    if first_last and (first_last == eos or first_last in user_closers or first_last == mid
                       or gap_last.lstrip().startswith(first_last)):
        first_last = _extend_closer(gap_last, first_last, (eos, user_first))
        if first_last not in eots:
            eots.append(first_last)
    # Longest first: where a sequence and its first token both match, the locator takes the sequence.
    eots.sort(key=len, reverse=True)

    gen = ""
    try:
        base, _ = render(tokenizer, convs[0][:1], template)
        with_gp, _ = render(tokenizer, convs[0][:1], template, add_generation_prompt=True)
        if with_gp.startswith(base):
            gen = with_gp[len(base):]
    except MaskLensError:
        pass
    # The assistant header is the generation prompt, where a (non-final) assistant turn is preceded by it; what the
    # template adds after it (Qwen3 twin's empty think block, gpt-oss's channel) is the turn's own text.
    gp = gen.strip()
    if gen and gap_user.rfind(gen) >= 0:
        a_header = gen
    elif gp and gap_user.rfind(gp) >= 0:
        a_header = gap_user[gap_user.rfind(gp):gap_user.rfind(gp) + len(gp)]
        rest = gap_user[gap_user.rfind(gp) + len(gp):]
        a_header += rest[: len(rest) - len(rest.lstrip())]  # the whitespace after it
    else:  # no generation prompt: whatever follows the user's closer
        closer = next((c for c in _candidates(gap_user, rx, bos) if c in (eos,) or c == mid), None)
        a_header = gap_user[gap_user.find(closer) + len(closer):].lstrip() if closer else gap_user.lstrip()
    # A think opener the generation prompt supplies (Qwen3.5/3.6 "<think>\n") opens the turn's think block: it is
    # the reasoning's delimiter (or part of an empty block's scaffolding), not the role header. TRL's twins put it
    # inside {% generation %}.
    if "<think>" in a_header:
        a_header = a_header[: a_header.find("<think>")]
    # The user header is what follows the assistant's closer before the next user turn.
    u_header = gap_mid[gap_mid.find(mid) + len(mid):].lstrip() if mid else gap_mid.lstrip()
    headers = {"user": u_header, "assistant": a_header}

    # Reasoning: which field the template renders, and what wraps it.
    reasoning_field, think_open, think_close = None, "", ""
    for fld in REASONING_FIELDS:
        conv = [{"role": "user", "content": u1}, {"role": "assistant", "content": a1, fld: PROBE_REASONING}]
        try:
            t, _ = render(tokenizer, conv, template)
        except MaskLensError:
            continue
        r, c = t.find(PROBE_REASONING), t.find(a1)
        if 0 <= r < c:
            reasoning_field = fld
            h = t.rfind(a_header.strip(), 0, r) if a_header.strip() else -1
            think_open = t[h + len(a_header.strip()):r].lstrip("\n") if h >= 0 else ""
            think_close = t[r + len(PROBE_REASONING):c]
            break
    # Scaffolding: what the template puts between the header and the content of a final turn without reasoning.
    scaffold = ""
    try:
        t, _ = render(tokenizer, convs[0][:2], template)
        c = t.find(a1)
        h = t.rfind(a_header, 0, c) if a_header else -1
        if h >= 0 and c >= 0:
            scaffold = t[h + len(a_header):c]
    except MaskLensError:
        pass
    # Tool calls: a template may close them with their own marker (gpt-oss <|call|>) instead of the end-of-turn one.
    call_closer = ""
    conv = [{"role": "user", "content": u1},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "MLPROBEfn", "arguments": {"MLPROBEk": "MLPROBEv"}}}]},
            {"role": "tool", "name": "MLPROBEfn", "content": "MLPROBEtool"}, {"role": "assistant", "content": a2}]
    try:
        t, _ = render(tokenizer, conv, template)
        v, r = t.find("MLPROBEv"), t.find("MLPROBEtool")
        if 0 <= v < r:
            c = _candidates(t[v:r], rx, bos)
            if c and c[0] not in eots and not u_header.startswith(c[0]):
                call_closer = c[0]
            # The tool message's header: what follows the assistant's closer (Llama 3's
            # <|start_header_id|>ipython<|end_header_id|>\n\n, Qwen3's <|im_start|>user\n<tool_response>\n).
            gap = t[v + len("MLPROBEv"):r]
            ends = [gap.find(mk) + len(mk) for mk in (*eots, call_closer) if mk and mk in gap]
            if ends:
                tool_header = gap[max(ends):].lstrip()  # after the last closer (Qwen3: </tool_call><|im_end|>)
                if tool_header and "MLPROBE" not in tool_header:
                    headers["tool"] = tool_header
    except MaskLensError:
        pass
    return TemplateInfo(eot=tuple(eots), headers=headers, generation_prompt=gen, reasoning_field=reasoning_field,
                        think_open=think_open, think_close=think_close, scaffold=scaffold, call_closer=call_closer,
                        specials=special_tokens(tokenizer), probe_ok=True)


# ------------------------------------------------------------------------------------------------ locating messages
@dataclass
class MessageSpan:
    """Where one message lies in the rendered text (character offsets) and its parts."""

    index: int
    role: str
    found: bool
    header_start: int = 0
    content_start: int = 0
    content_end: int = 0
    eot_start: int = -1  # -1: no end-of-turn marker found for this message
    eot_end: int = -1
    eos_start: int = -1  # an EOS the template appends after the last message (Phi-3 renders "<|end|>\n<|endoftext|>")
    eos_end: int = -1
    body_start: int = -1  # where the assistant's own output starts (after its header); -1: the content start
    reasoning: tuple[int, int] | None = None  # the reasoning text itself
    reasoning_part: tuple[int, int] | None = None  # the think block, delimiters included
    tool_calls: tuple[int, int] | None = None
    scaffold: tuple[int, int] | None = None
    has_reasoning: bool = False  # the message carries reasoning (rendered or not)

    @property
    def end(self) -> int:
        return max(self.eos_end, self.eot_end, self.content_end,
                   self.tool_calls[1] if self.tool_calls else -1,
                   self.reasoning_part[1] if self.reasoning_part else -1)

    @property
    def parts(self) -> list[tuple[str, int, int]]:
        """(part, start, end) ranges in text order; empty ranges dropped."""
        if not self.found:
            return []
        body = self.body_start if self.body_start >= 0 else self.content_start
        out = [("header", self.header_start, body)]
        if self.scaffold:
            out.append(("scaffold", *self.scaffold))
        if self.reasoning_part:
            out.append(("reasoning", *self.reasoning_part))
        out.append(("content", self.content_start, self.content_end))
        tail = self.content_end
        if self.tool_calls:
            out.append(("tool_calls", *self.tool_calls))
            tail = max(tail, self.tool_calls[1])
        if self.eot_start >= 0:
            # For an assistant, text between its output and the marker (Cohere's <|END_RESPONSE|>, a space before
            # </s>) is written by the model: the closing sequence. For other roles it is template text.
            out.append(("eot", tail if self.role == "assistant" and tail <= self.eot_start else self.eot_start,
                        self.eot_end))
        if self.eos_start >= 0:
            out.append(("eot", self.eos_start, self.eos_end))
        out.sort(key=lambda p: p[1])
        return [p for p in out if p[2] > p[1]]


def _find_content(text: str, content: str, start: int, end: int | None = None,
                  specials: re.Pattern | None = None) -> tuple[int, str]:
    """Find content (or the trimmed variants templates print) in text[start:end], never inside a special token.

    Returns (position, matched text); position -1 when absent.
    """
    end = len(text) if end is None else end
    for c in dict.fromkeys((content, content.strip("\n"), content.strip())):
        if not c:
            continue
        p = text.find(c, start, end)
        while p >= 0 and specials is not None and _inside_special(text, p, p + len(c), specials):
            p = text.find(c, p + 1, end)
        if p >= 0:
            return p, c
    return -1, content


def _inside_special(text: str, a: int, b: int, specials: re.Pattern) -> bool:
    """True when [a, b) cuts into a special token ("a" inside "<|channel|>")."""
    lo = max(0, a - 64)
    for m in specials.finditer(text, lo, min(len(text), b + 64)):
        if m.start() < b and a < m.end() and not (a <= m.start() and m.end() <= b):
            return True
    return False


def locate_messages(text: str, messages: list[dict], info: TemplateInfo,
                    eos_token: str | None = None) -> list[MessageSpan]:
    """Find each message's parts, in order, in the rendered text.

    Example: "<|im_start|>user\\nHi<|im_end|>\\n" with [user "Hi"] -> content at 17..19.
    """
    specials = _special_regex_cached(info.specials) if info.specials else None
    scaffolds = [info.scaffold] if info.scaffold else []
    spans: list[MessageSpan] = []
    cursor = 0
    for i, m in enumerate(messages):
        role = m.get("role", "")
        if role == "assistant":
            reasoning, content = reasoning_of(m)
            if reasoning and not _renders_reasoning(m, info):
                searched = None  # the template drops it: never look for its text (it may be another message's)
            else:
                searched = reasoning or _blank_reasoning(m)  # whitespace-only: found only with its delimiter
        else:
            reasoning, content = None, m.get("content") or ""
            searched = None
        content = content if isinstance(content, str) else ""
        hdr = info.headers.get(role, "")
        anchor = body = start = -1  # header start, text after the header, content start
        matched = content
        rz = None
        if content and not searched and hdr:
            # Anchor on header (+ what the template inserts) + content, so that a short content ("a") never matches
            # inside a header.
            # The earliest of the two (a later turn may repeat this content after the scaffold).
            for lead in dict.fromkeys((hdr + info.scaffold, hdr)):
                p = text.find(lead + content, cursor)
                if p >= 0 and (anchor < 0 or p < anchor):
                    anchor, body, start = p, p + len(hdr), p + len(lead)
        if start < 0:
            own = -1  # where this message's own text starts
            if searched:
                # Before the next message's text: a template that drops this turn's reasoning must not lend it
                # a later message's identical text.
                stop = _next_text_at(text, messages, i + 1, cursor, specials, info.headers)
                rp, rm = _find_closed(text, searched, info.think_close, cursor, stop)
                if rp < 0 and searched.strip():
                    rp, rm = _find_content(text, searched, cursor, specials=specials)
                if rp > stop or (rp == stop and rp >= 0 and _next_text_at(
                        text, messages, i + 1, rp + len(rm), specials, info.headers) >= len(text)):
                    rp = -1  # what was found is the next message's text (or a later one's)
                if rp >= 0:
                    rz, own = (rp, rp + len(rm)), rp
            if content:
                after = rz[1] + _prefix_len(text, rz[1], info.think_close) if rz else cursor
                start, matched = -1, content
                if rz and after > rz[1]:  # right after the learnt closing delimiter (gpt-oss: "...final<|message|>")
                    start, matched = _find_content(text, content, after, after + len(content), specials=specials)
                if start < 0:
                    start, matched = _find_content(text, content, rz[1] if rz else cursor, specials=specials)
                if start < 0 and rz:
                    # The "reasoning" found was text of the content (a template that drops this turn's reasoning)
                    rz, own = None, -1
                    start, matched = _find_content(text, content, cursor, specials=specials)
                if own < 0:
                    own = start
            if own >= 0 and hdr:
                for h in _header_forms(hdr, specials):
                    p = text.rfind(h, cursor, own)
                    if p >= 0:
                        anchor, body = p, p + len(h)
                        break
            elif own < 0 and not content and hdr:
                # No text of its own (an assistant message with only tool calls): its header, before the next
                # message's text.
                stop = _next_text_at(text, messages, i + 1, cursor, specials, info.headers)
                for bound in (stop, len(text)):  # the next text may be a short one found too early ("a")
                    for h in _header_forms(hdr, specials):
                        p = text.find(h, cursor, bound)
                        if p >= 0:
                            anchor, body = p, p + len(h)
                            break
                    if anchor >= 0:
                        break
            if not content:  # the (empty) content sits after the think block, or right after the header
                start = rz[1] + _prefix_len(text, rz[1], info.think_close) if rz else (body if body >= 0 else cursor)
                matched = ""
        if role == "assistant" and not content and not rz and body >= 0 and start == body:
            # An assistant turn with no content (only tool calls): the empty think block a template inserts before
            # the calls is scaffolding, as before content.
            for sc in scaffolds:
                if text.startswith(sc, body):
                    start = body + len(sc)
                    break
        if start < 0:
            spans.append(MessageSpan(i, role, False, cursor, cursor, cursor, has_reasoning=bool(reasoning)))
            continue
        sp = MessageSpan(i, role, True, anchor, start, start + len(matched), has_reasoning=bool(reasoning))
        if role == "assistant":
            sp.body_start = body if 0 <= body <= start else -1
            b0 = sp.body_start if sp.body_start >= 0 else (rz[0] if rz else start)
            if rz and rz[1] <= start:
                sp.reasoning = rz
                # The think block runs from the body start to the content (its delimiters included); with no
                # content, up to the end of the learnt closing delimiter.
                r_end = start
                sp.reasoning_part = (min(b0, rz[0]), r_end)
                if sp.body_start < 0:
                    sp.body_start = sp.reasoning_part[0]
            elif not rz and sp.body_start >= 0 and start > sp.body_start:
                sp.scaffold = (sp.body_start, start)  # text the template inserted before the content
        spans.append(sp)
        cursor = max(sp.content_end, rz[1] if rz else -1)
        if role == "assistant" and m.get("tool_calls"):
            # Past its tool calls: a tool result's text must not be found inside the call's arguments.
            cursor = _past_tool_calls(text, m["tool_calls"], cursor,
                                      _next_text_at(text, messages, i + 1, cursor, specials, info.headers))
    _attach_closers(text, spans, messages, info, eos_token)
    return spans


def _past_tool_calls(text: str, calls: list, cursor: int, stop: int) -> int:
    """Where the rendered tool calls end, as far as their names and string arguments show, searched in order."""
    q = cursor
    for tc in calls:
        fn = tc.get("function") if isinstance(tc, dict) and isinstance(tc.get("function"), dict) else tc
        if not isinstance(fn, dict):
            continue
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                args = {}
        pieces = [fn.get("name")] + (list(args.values()) if isinstance(args, dict) else [])
        for v in pieces:
            if not isinstance(v, str) or not v:
                continue
            for form in dict.fromkeys((v, json.dumps(v, ensure_ascii=False)[1:-1], json.dumps(v)[1:-1])):
                p = text.find(form, q, max(stop, q))
                if p >= 0:
                    q = p + len(form)
                    break
    return q


def _blank_reasoning(message: dict) -> str | None:
    """A reasoning field holding only whitespace ("\n"): templates that test `if reasoning_content` still render it."""
    for f in REASONING_FIELDS:
        r = message.get(f)
        if isinstance(r, str) and r:
            return r if not r.strip() else None
    return None


def _find_closed(text: str, reasoning: str, close: str, start: int, stop: int) -> tuple[int, str]:
    """The reasoning followed by the template's closing delimiter ("\n</think>"), before stop: a strong anchor."""
    if not close.strip():
        return -1, reasoning
    for r in dict.fromkeys((reasoning, reasoning.strip("\n"), reasoning.strip())):
        for c in dict.fromkeys((close, close.rstrip(), close.strip())):
            if r and c and (r.strip() or c == close):  # whitespace-only reasoning: with the whole delimiter only
                p = text.find(r + c, start, stop + len(r) + len(c))
                if p >= 0:
                    return p, r
    return -1, reasoning


def _renders_reasoning(message: dict, info: TemplateInfo) -> bool:
    """Whether the template can render this message's reasoning: inline <think> content is always there; a reasoning
    field only when the probe saw the template render one (transformers copies the first reasoning field present into
    both `reasoning_content` and `thinking` before rendering, so the field's name does not matter)."""
    content = message.get("content")
    if isinstance(content, str) and "</think>" in content:
        return True
    return info.reasoning_field is not None or not info.probe_ok


def _header_forms(hdr: str, specials: re.Pattern | None) -> list[str]:
    """The header, then the shorter forms templates print before a turn that is not plain text: without its
    trailing whitespace (Mistral "[/INST][TOOL_CALLS]"), without its last special token (Command-A's tool turns
    open with <|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_THINKING|>, not <|START_RESPONSE|>)."""
    forms = [hdr, hdr.rstrip()]
    if specials is not None:
        last = None
        for m in specials.finditer(hdr):
            last = m
        if last is not None and last.start() > 0 and not hdr[last.end():].strip() \
                and specials.search(hdr[: last.start()]):
            forms.append(hdr[: last.start()])
    return [f for f in dict.fromkeys(forms) if f]


def _next_text_at(text: str, messages: list[dict], j: int, cursor: int, specials, headers: dict | None = None) -> int:
    """Where the next message with text (content or reasoning) of its own first appears after cursor: its header +
    text where that is found (the same text may come earlier, as this message's own), else the text."""
    for m in messages[j:]:
        r, c = reasoning_of(m) if m.get("role") == "assistant" else (None, m.get("content") or "")
        for t in (r, c):
            if isinstance(t, str) and t.strip():
                hdr = (headers or {}).get(m.get("role"), "")
                if hdr and t is c:
                    p = text.find(hdr + t, cursor)
                    if p >= 0:
                        return p
                p, _ = _find_content(text, t, cursor, specials=specials)
                return p if p >= 0 else len(text)
    return len(text)


def _prefix_len(text: str, at: int, closer: str) -> int:
    """How much of `closer` (or its stripped form) text has at position `at`."""
    for c in (closer, closer.rstrip(), closer.strip()):
        if c and text.startswith(c, at):
            return len(c)
    return 0


def _attach_closers(text: str, spans: list[MessageSpan], messages: list[dict], info: TemplateInfo,
                    eos_token: str | None) -> None:
    specials = _special_regex_cached(info.specials) if info.specials else None
    # End-of-turn markers: the first marker after each message's output, before the next message's content.
    nxt = len(text)
    eots = info.eot
    found = [sp for sp in spans if sp.found]
    for k in range(len(found) - 1, -1, -1):  # walking backwards, nxt is the next found message's start
        sp = found[k]
        tail = max(sp.content_end, sp.reasoning_part[1] if sp.reasoning_part else -1)
        best, best_marker = -1, ""
        for marker in eots:
            p = text.find(marker, tail, nxt)
            if p >= 0 and (best < 0 or p < best):
                best, best_marker = p, marker
        if info.call_closer and messages[sp.index].get("tool_calls"):
            # Tool calls closed by their own marker. Where an end-of-turn marker follows it directly (LFM2
            # <|tool_call_end|><|im_end|>, DeepSeek's <｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>)
            # the calls run to that marker; otherwise the turn ends with the call (gpt-oss <|call|>). One closer
            # per call: the text after the n-th may be a tool result the locator did not find.
            p, q = -1, tail
            for _ in range(len(messages[sp.index]["tool_calls"])):
                q = text.find(info.call_closer, q, nxt)
                if q < 0:
                    break
                p, q = q, q + len(info.call_closer)
            between = text[p + len(info.call_closer):best] if p >= 0 and best >= 0 else ""
            if p >= 0 and (best < 0 or p > best or (specials.sub("", between) if specials else between).strip()):
                best, best_marker = p, info.call_closer
        if best >= 0:
            sp.eot_start, sp.eot_end = best, best + len(best_marker)
        if (sp.role == "assistant" and not messages[sp.index].get("tool_calls") and best > tail
                and sp.content_start == sp.content_end and sp.reasoning_part is None and sp.scaffold is None
                and sp.body_start >= 0):
            # An empty turn that still renders text before its closer (a whitespace-only think block from the data,
            # "<think>\n</think>"): the model writes it, like scaffolding, not the closer.
            sp.scaffold = (tail, best)
            sp.content_start = sp.content_end = best
        if sp.role == "assistant" and messages[sp.index].get("tool_calls"):
            stop = best if best >= 0 else nxt
            if k + 1 < len(found) and found[k + 1].header_start >= 0:
                stop = min(stop, found[k + 1].header_start)
            if stop > tail:
                sp.tool_calls = (tail, stop)
        nxt = sp.header_start if sp.header_start >= 0 and sp.header_start < sp.content_start else sp.content_start
        if sp.reasoning_part:
            nxt = min(nxt, sp.reasoning_part[0])
    # An EOS appended after the last message (and its end-of-turn marker) belongs to that message.
    last = spans[-1] if spans else None
    if eos_token and last is not None and last.found:
        tail = text[max(last.end, 0):]
        p = tail.find(eos_token)
        if p >= 0 and not tail[:p].strip(" \n") and not tail[p + len(eos_token):].strip():
            last.eos_start = len(text) - len(tail) + p
            last.eos_end = last.eos_start + len(eos_token)
    # Headers run from the previous message's end to this message's body.
    prev_end = 0
    for sp in spans:
        if sp.found:
            if sp.header_start < 0 or sp.header_start < prev_end:  # no anchored header: all since the previous message
                first = sp.reasoning_part[0] if sp.reasoning_part else sp.content_start
                sp.header_start = min(prev_end, first)
            prev_end = sp.end
