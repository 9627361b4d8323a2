"""Where each message, and each part of it, lies in one rendered conversation — for any template, no per-model code.

With what probes taught about the template (core.masking.template_info), `locate_messages` cuts a rendering into
message parts, in order, in the one full rendering (which works for templates that rewrite history, where diffing
renders of ``messages[:i]`` fails).

Parts of a message (``MessageSpan.parts``), as (part, start, end) character ranges:
    header      role header: text the template (or, at inference, the generation prompt) supplies
    reasoning   the think block of a message with reasoning, delimiters included
    content     the message content
    tool_calls  the rendered tool calls of an assistant message, delimiters included
    eot         the closing sequence: text after the content up to and including the end-of-turn marker, and an EOS a
                template appends after the last turn
    scaffold    template text inside an assistant turn the model never writes itself (an empty think block)
Text outside every message is "template".

Example: locate_messages("<|im_start|>user\\nHi<|im_end|>\\n", [{"role": "user", "content": "Hi"}], info)[0]
         -> MessageSpan(index=0, role="user", found=True, content_start=17, content_end=19, ...)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from operator import itemgetter

from ..data.content import content_text
from .template_info import (PROBE, REASONING_FIELDS, TemplateInfo, analyze_template,  # noqa: F401  (re-exported)
                            special_regex, special_regex_for, special_tokens)

_PLAIN_KEYS = frozenset(("role", "content"))  # a message of only these (most of a dataset) is located inline
PARTS = ("header", "reasoning", "content", "tool_calls", "eot", "scaffold")
_START = itemgetter(1)  # a part's start: (part, start, end)


def reasoning_of(message: dict) -> tuple[str | None, str]:
    """(reasoning text, content as a template shows it). Inline "<think>r</think>c" content is split as templates do.

    Example: {"content": "<think>\\nhm\\n</think>\\n\\nHi"} -> ("hm", "Hi").
    """
    content = message.get("content") or ""
    if isinstance(content, list):  # typed parts: the text a template that reads them shows
        content = content_text(message)
    for f in REASONING_FIELDS:
        r = message.get(f)
        if isinstance(r, str) and r.strip():
            return r, content
    if isinstance(content, str) and "</think>" in content:
        r = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
        return (r if r.strip() else None), content.split("</think>")[-1].lstrip("\n")
    return None, content


# ------------------------------------------------------------------------------------------------ the result
@dataclass(slots=True)
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
    content_dropped: bool = False  # found by its tool calls: the template drops the text beside them
    inlined: tuple[int, int] | None = None  # following messages' text the template puts inside this turn (Gemma 4)
    _parts: list | None = field(default=None, repr=False, compare=False)  # set once located (locate_messages)

    @property
    def end(self) -> int:
        return max(self.eos_end, self.eot_end, self.content_end,
                   self.tool_calls[1] if self.tool_calls else -1,
                   self.reasoning_part[1] if self.reasoning_part else -1)

    @property
    def parts(self) -> list[tuple[str, int, int]]:
        """(part, start, end) ranges in text order; empty ranges dropped."""
        return self._parts if self._parts is not None else self.compute_parts()

    def compute_parts(self) -> list[tuple[str, int, int]]:
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
        out.sort(key=_START)
        return [p for p in out if p[2] > p[1]]


# ------------------------------------------------------------------------------------------------ locating messages
def locate_messages(text: str, messages: list[dict], info: TemplateInfo,
                    eos_token: str | None = None) -> list[MessageSpan]:
    """Find each message's parts, in order, in the rendered text (then their closers: _attach_closers).

    Example: "<|im_start|>user\\nHi<|im_end|>\\n" with [user "Hi"] -> content at 17..19.
    """
    loc = _Locator(text, messages, info)
    spans: list[MessageSpan] = []
    cursor = 0
    for i, m in enumerate(messages):
        sp, cursor = loc.message(i, m, cursor)
        spans.append(sp)
    _attach_closers(text, spans, messages, info, eos_token, loc.specials)
    for sp in spans:  # final: every stage after this reads the parts, several times
        sp._parts = sp.compute_parts()
    return spans


class _Locator:
    """One rendering being cut into messages: each message is searched from a cursor that only moves forward."""

    def __init__(self, text: str, messages: list[dict], info: TemplateInfo):
        self.text, self.messages, self.info = text, messages, info
        self.specials = special_regex_for(info.specials) if info.specials else None

    def message(self, i: int, m: dict, cursor: int) -> tuple[MessageSpan, int]:
        """Message i's span, and where the next message's search starts."""
        content = m.get("content")
        if type(content) is str and content and m.keys() <= _PLAIN_KEYS:
            # Most messages: role + text, anchored on their header (what the steps below do for them, inline).
            role = m.get("role")
            leads = self.info.leads.get(role)
            if leads is not None and (role != "assistant" or "</think>" not in content):
                anchor, hdr_len, start = self._anchor(leads, content, cursor)
                if start >= 0:
                    sp = _span(i, role, anchor, anchor + hdr_len, start, content, None, False)
                    return sp, sp.content_end
        role = m.get("role", "")
        reasoning, content, searched = _texts(m, role, self.info)
        hdr = self.info.headers.get(role, "")
        calls = m.get("tool_calls") if role == "assistant" else None
        anchor = body = start = -1
        matched, rz = content, None
        if content and not searched and hdr:
            anchor, body, start = self._anchor_on_header(role, content, cursor)
        if start < 0:
            anchor, body, start, matched, rz = self._search(i, hdr, content, searched, cursor)
        dropped = start < 0 and bool(content) and bool(calls)
        if dropped:
            # The template renders only the calls of a turn with text before them (Llama 3.1, gpt-oss, Mistral v3,
            # Command-A's tool-use template): the turn is found as one without content, by its header.
            content = ""
            anchor, body, start, matched, rz = self._search(i, hdr, content, searched, cursor)
        if role == "assistant" and not content and not rz:
            anchor, body, start = self._empty_turn(calls, anchor, body, start, cursor)
        if start < 0:
            return MessageSpan(i, role, False, cursor, cursor, cursor, has_reasoning=bool(reasoning)), cursor
        sp = _span(i, role, anchor, body, start, matched, rz, bool(reasoning))
        sp.content_dropped = dropped
        cursor = max(sp.content_end, rz[1] if rz else -1)
        if calls:
            if sp.scaffold:
                self._calls_before_content(sp, calls)
            # Past its tool calls: a tool result's text must not be found inside the call's arguments.
            cursor = _past_tool_calls(self.text, calls, cursor, self.next_text_at(i + 1, cursor))
        return sp, cursor

    def _empty_turn(self, calls, anchor: int, body: int, start: int, cursor: int) -> tuple[int, int, int]:
        """(header start, body start, content start) of an assistant turn without text of its own (only tool calls,
        or nothing rendered)."""
        if calls:
            anchor, body, start = self._calls_turn_start(calls, anchor, body, start, cursor)
        if start == cursor and anchor < 0:
            # Nothing of the turn is there (a template that drops tool calls and writes no header after an assistant
            # turn, Phi-3's "<|end|>\n<|end|>\n"): it follows the previous turn's end-of-turn marker, not shares it.
            start = self._past_marker(cursor)
        if 0 <= body == start:
            # The empty think block a template inserts before the calls is scaffolding.
            start += next((len(sc) for sc in (self.info.scaffold,) if sc and self.text.startswith(sc, body)), 0)
        return anchor, body, start

    def _past_marker(self, cursor: int) -> int:
        """After the end-of-turn marker at cursor and the whitespace around it, else cursor."""
        head = self.text[cursor:cursor + 64]
        at = cursor + len(head) - len(head.lstrip())
        mk = next((mk for mk in self.info.eot if self.text.startswith(mk, at)), "")
        if not mk:
            return cursor
        tail = self.text[at + len(mk):at + len(mk) + 64]
        return at + len(mk) + len(tail) - len(tail.lstrip())

    def _calls_turn_start(self, calls: list, anchor: int, body: int, start: int, cursor: int) -> tuple[int, int, int]:
        """(header start, body start, content start) of a turn that is only tool calls. Where its header is not before
        its first call, the template continues the turn without one after the tool results (Gemma 4
        "...<tool_response|><|tool_call>call:", Mistral v3 "...[/TOOL_RESULTS][TOOL_CALLS]"): the turn starts at the
        text that opens the calls (learnt by the probe), not at the end of the previous message (the tool result's
        closing text, which is not the model's)."""
        f = _first_call_at(self.text, calls, cursor, len(self.text))
        if f < 0 or 0 <= anchor < f:
            return anchor, body, start
        for form in _opener_forms(self.info.call_opener, self.specials):
            p = self.text.rfind(form, cursor, f)
            if p >= 0:
                return p, p, p
        return anchor, body, start

    def _calls_before_content(self, sp: MessageSpan, calls: list) -> None:
        """A turn whose calls come before its content, with text between that is not the model's: Gemma 4 renders the
        calls, then the results of the following tool messages, then the turn's text. The calls (and their closer)
        are the turn's tool calls; the results are template text (`inlined`), never trained as this turn's."""
        text, a, b = self.text, sp.scaffold[0], sp.content_start
        f = _first_call_at(text, calls, a, b)
        if f < 0:
            return
        sc = self.info.scaffold
        sp.scaffold = (a, a + len(sc)) if sc and text.startswith(sc, a) and a + len(sc) <= f else None
        q = _past_tool_calls(text, calls, f, b)
        c = text.find(self.info.call_closer, q, b) if self.info.call_closer else -1
        q = c + len(self.info.call_closer) if c >= 0 else q  # up to the closer: '...celsius<|"|>}<tool_call|>'
        sp.tool_calls = (sp.scaffold[1] if sp.scaffold else a, q)
        if q < b:
            sp.inlined = (q, b)

    def _anchor_on_header(self, role: str, content: str, cursor: int) -> tuple[int, int, int]:
        """(header start, body start, content start) of header (+ what the template inserts) + content, so that a
        short content ("a") never matches inside a header; the earliest of the two (a later turn may repeat this
        content after the scaffold). (-1, -1, -1) when neither is there."""
        anchor, hdr_len, start = self._anchor(self.info.leads[role], content, cursor)
        return anchor, (anchor + hdr_len if anchor >= 0 else -1), start

    def _anchor(self, leads, content: str, cursor: int) -> tuple[int, int, int]:
        """(header start, header length, content start) of the earliest lead + content; (-1, 0, -1) when none."""
        anchor, hdr_len, start = -1, 0, -1
        for lead, n in leads:
            p = self.text.find(lead + content, cursor)
            if p >= 0 and (anchor < 0 or p < anchor):
                anchor, hdr_len, start = p, n, p + len(lead)
        return anchor, hdr_len, start

    def _search(self, i: int, hdr: str, content: str, searched: str | None, cursor: int):
        """The message's text searched on its own (reasoning first, then content), then its header before it.
        Returns (header start, body start, content start, matched content, reasoning span or None)."""
        rz, own = self._find_reasoning(i, searched, cursor) if searched else (None, -1)
        start, matched = -1, content
        if content:
            start, matched, rz, own = self._find_content(content, rz, own, cursor)
        anchor = body = -1
        if own >= 0 and hdr:
            anchor, body = self._header_before(hdr, cursor, own)
        elif own < 0 and not content and hdr:
            anchor, body = self._header_of_empty(i, hdr, cursor)
        if not content:  # the (empty) content sits after the think block, or right after the header
            start = rz[1] + _prefix_len(self.text, rz[1], self.info.think_close) if rz else (
                body if body >= 0 else cursor)
            matched = ""
        return anchor, body, start, matched, rz

    def _find_reasoning(self, i: int, searched: str, cursor: int) -> tuple[tuple[int, int] | None, int]:
        """The reasoning's span, before the next message's text: a template that drops this turn's reasoning must not
        lend it a later message's identical text."""
        text = self.text
        stop = self.next_text_at(i + 1, cursor)
        rp, rm = _find_closed(text, searched, self.info.think_close, cursor, stop)
        if rp < 0 and searched.strip():
            rp, rm = find_content(text, searched, cursor, specials=self.specials)
        if rp > stop or (rp == stop and rp >= 0 and self.next_text_at(i + 1, rp + len(rm)) >= len(text)):
            rp = -1  # what was found is the next message's text (or a later one's)
        return ((rp, rp + len(rm)), rp) if rp >= 0 else (None, -1)

    def _find_content(self, content: str, rz, own: int, cursor: int):
        """(content start, matched text, reasoning span, own start): right after the learnt closing delimiter (gpt-oss:
        "...final<|message|>"), else anywhere after the reasoning; where it is not there, the "reasoning" found was
        text of the content (a template that drops this turn's reasoning)."""
        text, close = self.text, self.info.think_close
        start, matched = -1, content
        after = rz[1] + _prefix_len(text, rz[1], close) if rz else cursor
        if rz and after > rz[1]:
            start, matched = find_content(text, content, after, after + len(content), specials=self.specials)
        if start < 0:
            start, matched = find_content(text, content, rz[1] if rz else cursor, specials=self.specials)
        if start < 0 and rz:
            rz, own = None, -1
            start, matched = find_content(text, content, cursor, specials=self.specials)
        return start, matched, rz, (start if own < 0 else own)

    def _header_before(self, hdr: str, cursor: int, own: int) -> tuple[int, int]:
        for h in _header_forms(hdr, self.specials):
            p = self.text.rfind(h, cursor, own)
            if p >= 0:
                return p, p + len(h)
        return -1, -1

    def _header_of_empty(self, i: int, hdr: str, cursor: int) -> tuple[int, int]:
        """No text of its own (an assistant message with only tool calls): its header, before the next message's
        text — or anywhere after, since the next text may be a short one found too early ("a")."""
        for bound in (self.next_text_at(i + 1, cursor), len(self.text)):
            for h in _header_forms(hdr, self.specials):
                p = self.text.find(h, cursor, bound)
                if p >= 0:
                    return p, p + len(h)
        return -1, -1

    def next_text_at(self, j: int, cursor: int) -> int:
        """Where the next message with text (content or reasoning) of its own first appears after cursor: its header +
        text where that is found (the same text may come earlier, as this message's own), else the text. A text the
        template drops is passed over: Alpaca and Phi-3 drop tool results, and the bound is then the answer after them
        (else a call's argument "Paris" is found inside that answer, and the answer is lost)."""
        for m in self.messages[j:]:
            r, c = reasoning_of(m) if m.get("role") == "assistant" else (None, content_text(m))
            for t in (r, c):
                if isinstance(t, str) and t.strip():
                    hdr = self.info.headers.get(m.get("role"), "")
                    if hdr and t is c:
                        p = self.text.find(hdr + t, cursor)
                        if p >= 0:
                            return p
                    p, _ = find_content(self.text, t, cursor, specials=self.specials)
                    if p >= 0:
                        return p
        return len(self.text)


def _texts(m: dict, role: str, info: TemplateInfo) -> tuple[str | None, str, str | None]:
    """(reasoning, content as rendered, the reasoning text to search for or None)."""
    if role != "assistant":
        return None, content_text(m), None
    reasoning, content = reasoning_of(m)
    if reasoning and not _renders_reasoning(m, info):
        searched = None  # the template drops it: never look for its text (it may be another message's)
    else:
        searched = reasoning or _blank_reasoning(m)  # whitespace-only: found only with its delimiter
    return reasoning, content if isinstance(content, str) else "", searched


def _span(i: int, role: str, anchor: int, body: int, start: int, matched: str, rz, has_reasoning: bool) -> MessageSpan:
    sp = MessageSpan(i, role, True, anchor, start, start + len(matched), has_reasoning=has_reasoning)
    if role != "assistant":
        return sp
    sp.body_start = body if 0 <= body <= start else -1
    b0 = sp.body_start if sp.body_start >= 0 else (rz[0] if rz else start)
    if rz and rz[1] <= start:
        # The think block runs from the body start to the content (its delimiters included).
        sp.reasoning = rz
        sp.reasoning_part = (min(b0, rz[0]), start)
        if sp.body_start < 0:
            sp.body_start = sp.reasoning_part[0]
    elif not rz and sp.body_start >= 0 and start > sp.body_start:
        sp.scaffold = (sp.body_start, start)  # text the template inserted before the content
    return sp


def find_content(text: str, content: str, start: int, end: int | None = None,
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


def _call_values(calls: list):
    """Each call's name, then its string argument values, in order."""
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
        for v in [fn.get("name")] + (list(args.values()) if isinstance(args, dict) else []):
            if isinstance(v, str) and v:
                yield v


def _value_forms(v: str):
    return dict.fromkeys((v, json.dumps(v, ensure_ascii=False)[1:-1], json.dumps(v)[1:-1]))


def _past_tool_calls(text: str, calls: list, cursor: int, stop: int) -> int:
    """Where the rendered tool calls end, as far as their names and string arguments show, searched in order."""
    q = cursor
    for v in _call_values(calls):
        for form in _value_forms(v):
            p = text.find(form, q, max(stop, q))
            if p >= 0:
                q = p + len(form)
                break
    return q


def _first_call_at(text: str, calls: list, start: int, stop: int) -> int:
    """Where the first call's name is rendered in text[start:stop] (-1: nowhere)."""
    fn = calls[0].get("function") if calls and isinstance(calls[0], dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str) or not name:
        return -1
    return min((p for p in (text.find(f, start, stop) for f in _value_forms(name)) if p >= 0), default=-1)


def _opener_forms(opener: str, specials: re.Pattern | None) -> list[str]:
    """The text that opens a turn's tool calls (Mistral '[TOOL_CALLS][{"name": "'), then its leading special token
    alone ("[TOOL_CALLS]": the rest can differ between the probe and real calls)."""
    forms = [opener, opener.lstrip()]
    m = specials.match(opener.lstrip()) if specials is not None else None
    if m:
        forms.append(m.group())
    return [f for f in dict.fromkeys(forms) if f]


def _blank_reasoning(message: dict) -> str | None:
    """A reasoning field holding only whitespace ("\\n"): templates that test `if reasoning_content` still render it."""
    for f in REASONING_FIELDS:
        r = message.get(f)
        if isinstance(r, str) and r:
            return r if not r.strip() else None
    return None


def _find_closed(text: str, reasoning: str, close: str, start: int, stop: int) -> tuple[int, str]:
    """The reasoning followed by the template's closing delimiter ("\\n</think>"), before stop: a strong anchor."""
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


def _prefix_len(text: str, at: int, closer: str) -> int:
    """How much of `closer` (or its stripped form) text has at position `at`."""
    for c in (closer, closer.rstrip(), closer.strip()):
        if c and text.startswith(c, at):
            return len(c)
    return 0


# ------------------------------------------------------------------------------------------------ closers
def _attach_closers(text: str, spans: list[MessageSpan], messages: list[dict], info: TemplateInfo,
                    eos_token: str | None, specials) -> None:
    """End-of-turn markers (the first marker after each message's output, before the next message's content), tool
    call ranges, an EOS appended after the last message, and header starts."""
    nxt = len(text)
    found = [sp for sp in spans if sp.found]
    for k in range(len(found) - 1, -1, -1):  # walking backwards, nxt is the next found message's start
        sp = found[k]
        calls = messages[sp.index].get("tool_calls")
        tail = max(sp.content_end, sp.reasoning_part[1] if sp.reasoning_part else -1)
        best, marker = _first_marker(text, info.eot, tail, nxt)
        if info.call_closer and calls:
            best, marker = _calls_closer(text, info.call_closer, len(calls), tail, nxt, best, marker, specials)
        if best >= 0:
            sp.eot_start, sp.eot_end = best, best + len(marker)
        if sp.role == "assistant":
            _turn_rest(text, sp, bool(calls), best, tail, nxt, found[k + 1] if k + 1 < len(found) else None)
        nxt = sp.header_start if 0 <= sp.header_start < sp.content_start else sp.content_start
        if sp.reasoning_part:
            nxt = min(nxt, sp.reasoning_part[0])
    _final_eos(text, spans, eos_token)
    _header_starts(spans)


def _first_marker(text: str, markers, tail: int, nxt: int) -> tuple[int, str]:
    best, best_marker = -1, ""
    for marker in markers:
        p = text.find(marker, tail, nxt)
        if p >= 0 and (best < 0 or p < best):
            best, best_marker = p, marker
    return best, best_marker


def _calls_closer(text, closer, n_calls, tail, nxt, best, marker, specials) -> tuple[int, str]:
    """Tool calls closed by their own marker. Where an end-of-turn marker follows it directly (LFM2
    <|tool_call_end|><|im_end|>, DeepSeek's <｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>) the calls run
    to that marker; otherwise the turn ends with the call (gpt-oss <|call|>). One closer per call: the text after the
    n-th may be a tool result the locator did not find."""
    p, q = -1, tail
    for _ in range(n_calls):
        q = text.find(closer, q, nxt)
        if q < 0:
            break
        p, q = q, q + len(closer)
    between = text[p + len(closer):best] if p >= 0 and best >= 0 else ""
    if p >= 0 and (best < 0 or p > best or (specials.sub("", between) if specials else between).strip()):
        return p, closer
    return best, marker


def _turn_rest(text: str, sp: MessageSpan, has_calls: bool, best: int, tail: int, nxt: int, following) -> None:
    """An assistant turn's text between its output and its closer: an empty turn's whitespace-only think block from
    the data ("<think>\\n</think>": the model writes it, like scaffolding), or its rendered tool calls."""
    if (not has_calls and best > tail and sp.content_start == sp.content_end and sp.reasoning_part is None
            and sp.scaffold is None and sp.body_start >= 0):
        sp.scaffold = (tail, best)
        sp.content_start = sp.content_end = best
    if has_calls and sp.tool_calls is None:  # not already found before the content (Gemma 4)
        stop = best if best >= 0 else nxt
        if following is not None and following.header_start >= 0:
            stop = min(stop, following.header_start)
        if stop > tail and not text[tail:stop].isspace():  # whitespace alone: the template dropped the calls
            sp.tool_calls = (tail, stop)


def _final_eos(text: str, spans: list[MessageSpan], eos_token: str | None) -> None:
    """An EOS appended after the last message (and its end-of-turn marker) belongs to that message."""
    last = spans[-1] if spans else None
    if eos_token and last is not None and last.found:
        tail = text[max(last.end, 0):]
        p = tail.find(eos_token)
        if p >= 0 and not tail[:p].strip(" \n") and not tail[p + len(eos_token):].strip():
            last.eos_start = len(text) - len(tail) + p
            last.eos_end = last.eos_start + len(eos_token)


def _header_starts(spans: list[MessageSpan]) -> None:
    """Headers run from the previous message's end to this message's body (where none was anchored)."""
    prev_end = 0
    for sp in spans:
        if sp.found:
            if sp.header_start < 0 or sp.header_start < prev_end:
                first = sp.reasoning_part[0] if sp.reasoning_part else sp.content_start
                sp.header_start = min(prev_end, first)
            prev_end = sp.end
