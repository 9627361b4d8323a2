"""Chat templates: rendering exactly as transformers does, and finding each message in the rendered text.

Rendering goes through transformers' own ``render_jinja_template`` (a sandboxed jinja environment with the
``{% generation %}`` extension), so the text is byte-identical to what ``apply_chat_template`` and TRL 1.16 tokenize.

For templates without ``{% generation %}`` markers, MaskLens attributes the rendered text to messages itself, for any
template and with no per-model code: each message's content is located, in order, in the one full rendering (which
works for templates that rewrite history, where diffing renders of ``messages[:i]`` fails), and each assistant turn's
end-of-turn marker is learnt once per template from a probe conversation.
"""

from __future__ import annotations

import functools
import hashlib
import re
import weakref
from dataclasses import dataclass, field

from .errors import MaskLensError

_GEN_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")
PROBE = ("MLPROBEsys", "MLPROBEu1", "MLPROBEa1", "MLPROBEu2", "MLPROBEa2")


def has_generation_markers(template: str | None) -> bool:
    """True when a template marks assistant output with {% generation %}. Example: "{% generation %}x{% endgeneration %}" -> True."""
    return bool(template) and bool(_GEN_RE.search(template))


def get_template(tokenizer, chat_template: str | None = None) -> str:
    """The template to render with: the given one, else the tokenizer's (its 'default' if it ships several)."""
    if chat_template:
        return chat_template
    t = getattr(tokenizer, "chat_template", None)
    if isinstance(t, dict):
        t = t.get("default")
    if not t:
        raise MaskLensError(
            "the tokenizer has no chat template, so conversational data cannot be rendered",
            fix="pass --chat-template FILE (a jinja template), or use a chat model's tokenizer",
        )
    return t


def template_hash(template: str) -> str:
    return hashlib.sha1(template.encode()).hexdigest()[:12]


def render(tokenizer, messages: list[dict], template: str, tools=None, add_generation_prompt: bool = False,
           return_generation: bool = False, special_map: dict | None = None,
           **kwargs) -> tuple[str, list[tuple[int, int]]]:
    """Render one conversation as apply_chat_template(tokenize=False) does. Returns (text, generation char spans).

    special_map: the tokenizer's special_tokens_map, precomputed by callers rendering many conversations.
    """
    from transformers.utils.chat_template_utils import render_jinja_template  # noqa: PLC0415

    convo = [{k: v for k, v in m.items() if v is not None} for m in messages]
    base = special_map if special_map is not None else tokenizer.special_tokens_map
    template_kwargs = {**base, **kwargs}
    try:
        texts, gen = render_jinja_template(
            conversations=[convo], tools=tools, chat_template=template,
            return_assistant_tokens_mask=return_generation and has_generation_markers(template),
            add_generation_prompt=add_generation_prompt, **template_kwargs,
        )
    except MaskLensError:
        raise
    except Exception as e:  # jinja TemplateError, raise_exception(...) from the template, TypeError...
        raise MaskLensError(f"the chat template failed to render: {type(e).__name__}: {e}",
                            fix="check the template (and that the messages alternate as it requires)") from None
    return texts[0], (gen[0] if gen else [])


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


# ------------------------------------------------------------------------------------------------ template analysis
@dataclass(frozen=True)
class TemplateInfo:
    """What a probe conversation taught us about a template."""

    eot: tuple[str, ...] = ()  # end-of-turn marker strings for assistant turns (e.g. "<|im_end|>")
    headers: dict = field(default_factory=dict)  # role -> header text right before a (non-first) message's content
    generation_prompt: str = ""  # what add_generation_prompt appends (the assistant header)
    probe_ok: bool = False
    probe_error: str = ""


def _candidates(gap: str, rx: re.Pattern | None, bos: str | None) -> list[tuple[int, int, str]]:
    if rx is None:
        return []
    return [(m.start(), m.end(), m.group()) for m in rx.finditer(gap) if m.group() != bos]


def analyze_template(tokenizer, template: str) -> TemplateInfo:
    """Learn the end-of-turn markers and role headers of a template from a probe conversation (cached per template)."""
    # Keyed on the tokenizer object (weakly) and what the analysis reads of it: a tokenizer whose special tokens
    # change (add_special_tokens) is analysed again.
    per_tok = _INFO_CACHE.setdefault(tokenizer, {})
    key = (template, tokenizer.bos_token, tokenizer.eos_token, special_tokens(tokenizer))
    info = per_tok.get(key)
    if info is None:
        info = per_tok[key] = _analyze(tokenizer, template)
    return info


_INFO_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _analyze(tokenizer, template: str) -> TemplateInfo:
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
    gap_user = text[pos[u1] + len(u1): pos[a1]]
    gap_mid = text[pos[a1] + len(a1): pos[u2]]
    gap_last = text[pos[a2] + len(a2):]
    user_closers = {c for _, _, c in _candidates(gap_user, rx, bos)}
    eots: list[str] = []
    # A turn closer is a special token that follows an assistant turn and either is EOS (Mistral, DeepSeek close
    # only assistant turns, with </s>) or closes user turns too (ChatML <|im_end|>, Llama 3 <|eot_id|>, Gemma...).
    # A header token that merely opens the next turn (<|user|>) is neither.
    mid = next((c for _, _, c in _candidates(gap_mid, rx, bos) if c == eos or c in user_closers), None)
    if mid:
        eots.append(mid)
    last = next((c for _, _, c in _candidates(gap_last, rx, bos) if c == eos or c in user_closers or c == mid), None)
    if last and last not in eots:  # gpt-oss closes the final turn with <|return|>, earlier ones with <|end|>
        eots.append(last)

    def header(content: str, prev_end: int) -> str:
        return text[prev_end: pos[content]].lstrip()

    a1_end = pos[a1] + len(a1)
    mid_eot_end = a1_end + gap_mid.find(mid) + len(mid) if mid else a1_end
    u2_end = pos[u2] + len(u2)
    user_eot = next((c for _, _, c in _candidates(text[u2_end: pos[a2]], rx, bos) if c in user_closers), None)
    u_eot_end = u2_end + text[u2_end: pos[a2]].find(user_eot) + len(user_eot) if user_eot else u2_end
    headers = {"user": header(u2, mid_eot_end), "assistant": header(a2, u_eot_end)}
    gen = ""
    try:
        base, _ = render(tokenizer, convs[0][:1], template)
        with_gp, _ = render(tokenizer, convs[0][:1], template, add_generation_prompt=True)
        if with_gp.startswith(base):
            gen = with_gp[len(base):]
    except MaskLensError:
        pass
    return TemplateInfo(eot=tuple(eots), headers=headers, generation_prompt=gen, probe_ok=True)


# ------------------------------------------------------------------------------------------------ locating messages
@dataclass
class MessageSpan:
    """Where one message lies in the rendered text (character offsets)."""

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

    @property
    def end(self) -> int:
        return max(self.eos_end, self.eot_end, self.content_end)


def locate_messages(text: str, messages: list[dict], info: TemplateInfo, eos_token: str | None = None) -> list[MessageSpan]:
    """Find each message's content (in order) and each assistant turn's end-of-turn marker in the rendered text.

    Example: "<|im_start|>user\\nHi<|im_end|>\\n" with [user "Hi"] -> content at 17..19.
    """
    spans: list[MessageSpan] = []
    cursor = 0
    for i, m in enumerate(messages):
        role = m.get("role", "")
        content = m.get("content") or ""
        start = -1
        anchor = -1  # where the role header found before the content starts, when it was found
        if content:
            hdr = info.headers.get(role, "")
            if hdr:  # anchor on header+content so that a short content ("a") does not match inside a header
                p = text.find(hdr + content, cursor)
                if p >= 0:
                    start, anchor = p + len(hdr), p
            if start < 0:
                start = text.find(content, cursor)
            if start < 0 and content.strip() != content and content.strip():
                content = content.strip()  # templates that trim
                start = text.find(content, cursor)
        else:
            # Empty content (an assistant message with only tool calls): its body starts after its header.
            gp = info.generation_prompt.lstrip() if role == "assistant" else ""
            p = text.find(gp, cursor) if gp else -1
            start, anchor = (p + len(gp), p) if p >= 0 else (cursor, -1)
        if start < 0:
            spans.append(MessageSpan(i, role, False, cursor, cursor, cursor))
            continue
        end = start + len(content)
        sp = MessageSpan(i, role, True, anchor, start, end)
        spans.append(sp)
        cursor = end
    # End-of-turn markers: the first marker after each message's content, before the next message's content.
    nxt = len(text)
    eots = info.eot
    for sp in reversed(spans):  # walking backwards, nxt is the next found message's content start
        if not sp.found:
            continue
        best = -1
        best_marker = ""
        for marker in eots:
            p = text.find(marker, sp.content_end, nxt)
            if p >= 0 and (best < 0 or p < best):
                best, best_marker = p, marker
        if best >= 0:
            sp.eot_start = best
            sp.eot_end = best + len(best_marker)
        nxt = sp.content_start
    # An EOS appended after the last message (and its end-of-turn marker) belongs to that message.
    last = spans[-1] if spans else None
    if eos_token and last is not None and last.found:
        tail = text[max(last.content_end, last.eot_end):]
        p = tail.find(eos_token)
        if p >= 0 and not tail[:p].strip(" \n") and not tail[p + len(eos_token):].strip():
            last.eos_start = len(text) - len(tail) + p
            last.eos_end = last.eos_start + len(eos_token)
    # Headers run from the previous message's end to this message's content.
    # Text between the two that is neither (a default system prompt the template injects, separators) is template text.
    prev_end = 0
    for sp in spans:
        if sp.found:
            if sp.header_start < 0 or sp.header_start < prev_end:  # no anchored header: all since the previous message
                sp.header_start = min(prev_end, sp.content_start)
            prev_end = sp.end
    return spans
