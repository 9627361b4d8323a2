"""Template checks, derived templates, and {% generation %}-marked twins of templates that have none.

Each check renders a small probe conversation (as TRL's `is_chat_template_*` predicates do) and returns a
:class:`Check` — data, formatted by the app or the CLI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..data.formats import normalize_row
from .engine import MaskConfig, encode_batch, render_examples
from ..errors import MaskLensError
from .templates import analyze_template, get_template, has_generation_markers, locate_messages, render

PROBE_CONVERSATION = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
]
PROBE_TOOL = [
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": "Let me check."},
    {"role": "tool", "content": "Cloudy, 4 C"},
    {"role": "assistant", "content": "Cloudy and 4 C."},
]


@dataclass
class Check:
    """One pass/fail check. passed is None when the check does not apply."""

    name: str
    passed: bool | None
    detail: str
    explanation: str = ""


def _render_ok(tok, conv, template, **kw):
    try:
        return render(tok, conv, template, **kw)[0]
    except MaskLensError:
        return None


def probe_conversations(tokenizer, template: str) -> list[list[dict]]:
    """Probe conversations the template renders (some templates refuse a system or tool role)."""
    out = []
    for conv in (PROBE_CONVERSATION, PROBE_CONVERSATION[1:], PROBE_TOOL):
        if _render_ok(tokenizer, conv, template) is not None:
            out.append(conv)
    return out


def template_checks(tokenizer, template: str | None = None) -> list[Check]:
    """All checks for a template. Example: [c.name for c in template_checks(tok)][0] -> "generation markers"."""
    template = get_template(tokenizer, template)
    convs = probe_conversations(tokenizer, template)
    checks: list[Check] = []
    marked = has_generation_markers(template)
    checks.append(Check(
        "generation markers", marked,
        "the template marks assistant output with {% generation %}" if marked else
        "no {% generation %} markers: TRL's assistant_only_loss=True raises on it (or swaps in a known training "
        "template); MaskLens can produce a marked twin (Templates tab / core.checks.add_generation_markers)",
        "TRL 1.16 builds assistant masks from {% generation %} blocks (return_assistant_tokens_mask)."))
    if not convs:
        checks.append(Check("renders every message", False, "the template rendered none of the probe conversations"))
        return checks

    # prefix-preserving: earlier turns render the same whatever follows
    conv = convs[0]
    full = _render_ok(tokenizer, conv, template)
    broken = []
    for k in range(1, len(conv)):
        part = _render_ok(tokenizer, conv[:k], template)
        if part is not None and not full.startswith(part):
            broken.append(k)
    checks.append(Check(
        "prefix-preserving", not broken,
        "earlier turns render identically whatever follows" if not broken else
        f"rendering the first {broken[0]} message(s) is not a prefix of the full rendering (the template rewrites "
        "history, e.g. drops reasoning): diffing renders of messages[:i] mis-attributes tokens; MaskLens locates "
        "messages in the one full rendering instead",
        "Multi-turn masking by incremental rendering needs this; TRL's tool-suffix extraction does too."))

    # every message rendered
    missing = []
    for c in convs:
        text = _render_ok(tokenizer, c, template)
        missing += [f"{m['role']}: {m['content']!r}" for m in c if m["content"] not in text]
    tool_ok = any(c is PROBE_TOOL for c in convs)
    checks.append(Check(
        "renders every message", not missing,
        ("every probe message appears verbatim" + ("" if tool_ok else " (the template refused the tool probe)"))
        if not missing else "not rendered verbatim: " + "; ".join(missing[:4]),
        "A message the template drops or rewrites cannot be trained as written."))

    # end-of-turn trained
    info = analyze_template(tokenizer, template)
    ex = normalize_row({"messages": conv})
    r = render_examples([ex], tokenizer, MaskConfig(strategy="assistant_only", chat_template=template))[0]
    spans = locate_messages(r.text, conv, info, tokenizer.eos_token)
    first_asst = next(sp for sp in spans if sp.role == "assistant")
    eot_tokens = [i for i, (s, e) in enumerate(r.offsets) if first_asst.eot_start >= 0 and s < first_asst.eot_end
                  and e > first_asst.eot_start]
    eot_trained = bool(eot_tokens) and all(r.labels[i] != -100 for i in eot_tokens)
    if marked:
        detail = ("the end-of-turn token after an assistant turn is inside {% generation %}" if eot_trained else
                  "the assistant's end-of-turn token falls outside {% generation %}: the model is never trained to "
                  "stop (TRL warns: is_chat_template_stop_token_trained)")
    elif not info.eot:
        detail = "no end-of-turn marker follows assistant turns: nothing teaches the model to stop"
    else:
        detail = f"assistant_only trains the end-of-turn marker {list(info.eot)}"
    checks.append(Check("end-of-turn token trained", eot_trained, detail,
                        "A model that never sees its stop token trained keeps generating."))

    # pad == eos
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    checks.append(Check(
        "pad != eos", pad is None or pad != eos,
        f"pad token {tokenizer.pad_token!r} is the EOS token: TRL <= 0.19.1's DataCollatorForCompletionOnlyLM (and "
        "loops that mask pad ids) never train EOS; TRL 1.16 is unaffected (labels come from masks)" if pad == eos
        else f"pad {tokenizer.pad_token!r} differs from EOS {tokenizer.eos_token!r}" if pad is not None
        else "no pad token (TRL uses EOS as pad: same caveat as pad == eos for the old collator)",
        "Collators that set labels[input_ids == pad_id] = -100 mask every EOS when pad == eos."))

    # BOS doubled
    bos = tokenizer.bos_token
    n_tpl = full.count(bos) if bos else 0
    with_special = encode_batch(tokenizer, [full], True)[0].ids
    doubled = bool(bos) and len(with_special) > 1 and with_special[0] == with_special[1] == tokenizer.bos_token_id
    checks.append(Check(
        "BOS not doubled", not doubled,
        f"the template writes {bos!r} and tokenizing with add_special_tokens=True adds another: use "
        "add_special_tokens=False on rendered chats (TRL does)" if doubled else
        (f"the template writes BOS {bos!r} itself; tokenizers add none on top" if n_tpl else "no doubled BOS"),
        "Two BOS tokens shift every position and waste a token."))
    return checks


# ------------------------------------------------------------------------------------------------ derived templates
@dataclass
class DerivedTemplate:
    name: str  # "response" or "instruction"
    text: str
    ids_alone: list[int]
    ids_in_context: list[int] | None
    note: str = ""


def derive_templates(tokenizer, template: str | None = None) -> list[DerivedTemplate]:
    """The response/instruction templates a user would pass to the old collator or Unsloth's
    train_on_responses_only, derived from the chat template. Example (ChatML): "<|im_start|>assistant\\n"."""
    template = get_template(tokenizer, template)
    info = analyze_template(tokenizer, template)
    convs = probe_conversations(tokenizer, template)
    text = _render_ok(tokenizer, convs[0], template) if convs else ""
    out = []
    for name, s in (("response", info.generation_prompt.lstrip() or info.headers.get("assistant", "")),
                    ("instruction", info.headers.get("user", ""))):
        if not s:
            out.append(DerivedTemplate(name, "", [], None, "could not be derived from this template"))
            continue
        alone = tokenizer.encode(s, add_special_tokens=False)
        ctx = ids_in_context(tokenizer, s, text) if text else None
        note = ("tokenizes the same in context" if ctx == alone else
                f"tokenizes differently in context: pass the in-context ids {ctx}" if ctx else "not found in the probe")
        out.append(DerivedTemplate(name, s, alone, ctx, note))
    return out


def ids_in_context(tokenizer, s: str, text: str) -> list[int] | None:
    """Token ids covering the first occurrence of s inside text (None if absent)."""
    p = text.find(s)
    if p < 0:
        return None
    enc = encode_batch(tokenizer, [text], False)[0]
    e = p + len(s)
    return [tid for tid, (a, b) in zip(enc.ids, enc.offsets) if a < e and b > p and b > a]


def template_usage(tokenizer, template_string: str, texts: list[str]) -> dict:
    """In how many rendered texts a template string is found, and how its ids alone compare with its ids there."""
    from .legacy_collator import find_template_in_context  # noqa: PLC0415

    return find_template_in_context(tokenizer, template_string, texts)


# ---------------------------------------------------------------------------------- adding {% generation %} markers
_OUT_RE = re.compile(r"\{\{(-?)(.*?)(-?)\}\}", re.S)
_FOR_RE = re.compile(r"\{%-?\s*for\s+(\w+)\s+in\s+(?:loop_messages|messages)\b")


def _split_plus(expr: str) -> list[str]:
    """Split a jinja expression at top-level '+' (outside strings and brackets). Example: "a + 'b+c' + d" -> 3 terms."""
    terms, depth, q, cur, i = [], 0, None, "", 0
    while i < len(expr):
        ch = expr[i]
        if q:
            cur += ch
            if ch == "\\" and i + 1 < len(expr):
                cur += expr[i + 1]
                i += 1
            elif ch == q:
                q = None
        elif ch in "'\"":
            q = ch
            cur += ch
        elif ch in "([{":
            depth += 1
            cur += ch
        elif ch in ")]}":
            depth -= 1
            cur += ch
        elif ch == "+" and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    terms.append(cur)
    return terms


def _split_literal_after(term: str, markers: list[str]) -> tuple[str, str | None]:
    """Split a quoted jinja string literal right after the first marker. Example: "'<e>\\n'" -> ("'<e>'", "'\\n'")."""
    t = term.strip()
    if len(t) < 2 or t[0] not in "'\"" or t[-1] != t[0] or t[0] in t[1:-1]:
        return term, None
    q, body = t[0], t[1:-1]
    hits = [(body.find(mk), mk) for mk in markers if mk and mk in body]
    if not hits:
        return term, None
    p, mk = min(hits)
    cut = p + len(mk)
    if cut >= len(body):
        return term, None
    return q + body[:cut] + q, q + body[cut:] + q


def add_generation_markers(tokenizer, template: str | None = None) -> str:
    """A twin of a template with {% generation %} around each assistant message's content and end-of-turn marker.

    Works on templates that print the content in an output expression ({{ ... message['content'] ... }}) in a loop
    over messages; the rewrite splits that expression at '+' and wraps the part from the content to the end-of-turn
    marker, only for assistant messages, so the rendering stays byte-identical. Raises MaskLensError otherwise.
    """
    template = get_template(tokenizer, template)
    if has_generation_markers(template):
        return template
    info = analyze_template(tokenizer, template)
    eots = list(info.eot) or ([tokenizer.eos_token] if tokenizer.eos_token else [])
    loops = list(_FOR_RE.finditer(template))
    if not loops:
        raise MaskLensError("no loop over messages found in the template", fix="add markers by hand")
    out, pos, n = [], 0, 0
    for m in _OUT_RE.finditer(template):
        var = next((lp.group(1) for lp in reversed(loops) if lp.start() < m.start()), None)
        expr = m.group(2)
        if expr.strip() == "eos_token" and eots:
            # an EOS appended after the last message (Phi-3): the engine trains it when the last turn is trained
            lo, hi = m.group(1), m.group(3)
            out.append(template[pos:m.start()])
            out.append("{{" + lo + " '' }}{% if messages and messages[-1]['role'] == 'assistant' %}{% generation %}"
                       "{{ eos_token }}{% endgeneration %}{% else %}{{ eos_token }}{% endif %}{{ '' " + hi + "}}")
            pos = m.end()
            continue
        if var is None or not re.search(rf"\b({var}\s*\[\s*['\"]content['\"]\s*\]|{var}\.content)", expr):
            continue
        terms = _split_plus(expr)
        ci = next(i for i, t in enumerate(terms) if re.search(rf"\b{var}\s*\[\s*['\"]content|\b{var}\.content", t))
        ei = next((i for i in range(ci + 1, len(terms)) if any(e in terms[i] for e in eots)), None)
        if ei is None:
            ei = ci  # no end-of-turn in this expression: mark the content only
        lo, hi = m.group(1), m.group(3)
        pre, mid, post = terms[:ci], terms[ci:ei + 1], terms[ei + 1:]
        if ei > ci:  # a literal like '<end_of_turn>\n': train up to the end of the marker only, as the engine does
            head, tail = _split_literal_after(mid[-1], eots)
            if tail:
                mid, post = mid[:-1] + [head], [tail] + post
        join = lambda ts: " + ".join(t.strip() for t in ts) or "''"  # noqa: E731
        # The rewrite starts and ends with output tags, never block tags: transformers renders with trim_blocks and
        # lstrip_blocks, which would eat the whitespace around a block tag that the original {{ }} kept.
        block = ("{{" + lo + " " + join(pre) + " }}"
                 + f"{{% if {var}['role'] == 'assistant' %}}{{% generation %}}{{{{ {join(mid)} }}}}"
                 + f"{{% endgeneration %}}{{% else %}}{{{{ {join(mid)} }}}}{{% endif %}}"
                 + "{{ " + join(post) + " " + hi + "}}")
        out.append(template[pos:m.start()])
        out.append(block)
        pos = m.end()
        n += 1
    if not n:
        raise MaskLensError("no output expression printing a message's content was found in the template",
                            fix="add {% generation %} ... {% endgeneration %} around the assistant output by hand")
    out.append(template[pos:])
    return "".join(out)


@dataclass
class GenerationProof:
    byte_identical: bool
    masks_equal: bool
    n_conversations: int
    differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.byte_identical and self.masks_equal


def verify_generation_template(tokenizer, original: str, marked: str, examples) -> GenerationProof:
    """Prove a marked twin: its rendering is byte-identical to the original's, and its {% generation %} mask (TRL's
    assistant_only_loss) equals the engine's assistant_only mask on the original, for every conversational example."""
    convs = [e for e in examples if e.kind == "messages"]
    diffs = []
    same_text = same_mask = True
    exact = render_examples(convs, tokenizer, MaskConfig(strategy="assistant_only", chat_template=marked))
    ours = render_examples(convs, tokenizer, MaskConfig(strategy="assistant_only", chat_template=original,
                                                        use_generation_markers=False))
    for e, a, b in zip(convs, exact, ours):
        if a.text != b.text:
            same_text = False
            diffs.append(f"row {e.row}: rendering differs")
        elif a.labels != b.labels:
            same_mask = False
            k = next(i for i, (x, y) in enumerate(zip(a.labels, b.labels)) if x != y)
            diffs.append(f"row {e.row}: masks differ first at token {k}")
    return GenerationProof(same_text, same_mask, len(convs), diffs)


def render_spans(tokenizer, messages: list[dict], template: str | None = None):
    """The rendered text of a conversation and each message's spans (header, content, end-of-turn)."""
    template = get_template(tokenizer, template)
    text, _ = render(tokenizer, messages, template)
    return text, locate_messages(text, messages, analyze_template(tokenizer, template), tokenizer.eos_token)
