"""Stage 4 — the one place labels are built: `build_labels` turns a Decision (core.masking.decide) and the tokens into
labels, in four steps: the base labels from the decision's source, mask_tokens, loss weights, truncation.

Labels are unshifted (labels[i] is the target at position i; the model shifts them itself, as every Hugging Face
causal LM does) and hold -100 (IGNORE) where a token is not trained. With loss weights (prompt_loss_weight, a
message's data weight, a rule's part weight) a token with weight w > 0 carries its id as label and w in `weights`;
training minimises sum(w * nll) / sum(w).

A token is trained when its characters overlap a trained character span. Byte-level BPE splits one character (an
emoji, many CJK characters) over several tokens that all carry that character's offsets; they are all trained
together, so decoding the trained tokens of a turn never yields half a character.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ..findings import Finding

IGNORE = -100


class LabelSource(str, Enum):
    """Where an example's labels come from: core.masking.decide chooses, build_labels builds."""

    ALL = "all"  # every token (full)
    SPANS = "spans"  # the trained character spans of message parts (MaskLens's own masking)
    GENERATION = "generation"  # TRL's {% generation %} mask, minus what the options take out
    COMPLETION = "completion"  # tokens after the prompt's tokens (TRL's completion_only_loss)
    GIVEN = "given"  # the labels in the data row
    NONE = "none"  # the strategy does not apply to this row
    OLD_COLLATOR = "old_collator"  # TRL <= 0.19.1's DataCollatorForCompletionOnlyLM, per token id
    USER_COLLATOR = "user_collator"  # a team's collator (--collator)


@dataclass(frozen=True)
class LabelContext:
    """What label building needs beyond one example, decided once per batch (core.masking.engine)."""

    cfg: object  # MaskConfig
    mask_token_ids: frozenset = frozenset()  # mask_tokens that are single tokens (pre-tokenized rows)
    old_collator: object = None  # core.masking.legacy_collator.OldCollator, for the response_template strategy
    collator_labels: dict = field(default_factory=dict)  # example key -> a user collator's labels


@dataclass(frozen=True, slots=True)
class Labels:
    input_ids: list[int]
    labels: list[int]  # the strategy's labels (-100: not trained), after mask_tokens and truncation
    train_labels: list[int]  # what training uses: the token id wherever the loss weight is > 0
    weights: list[float] | None  # per token; None when every weight is 0 or 1 (train_labels say it)
    token_rules: dict[int, str]  # position -> rule, where a token-level step decided
    n_before_truncation: int
    cut_start: int  # tokens cut from the start (keep_end)
    keep: slice | None  # the kept tokens of the untruncated sequence
    untruncated: list[int]  # the strategy's labels before truncation (findings that read token positions)
    findings: tuple[Finding, ...]  # what building the labels found (prompt_not_prefix, the old collator's)
    truncation: tuple[Finding, ...]  # truncated_supervision


def build_labels(ex, rendering, decision, enc, prompt_enc, ctx: LabelContext, key: int) -> Labels:
    """Stage 4 for one example: base labels -> mask_tokens -> weights -> truncation."""
    ids = list(ex.input_ids) if enc is None else enc.ids
    rules: dict[int, str] = {}
    findings: list[Finding] = []
    src = decision.source
    if src is LabelSource.ALL:
        labels = list(ids)
    elif src is LabelSource.GIVEN:
        labels = list(ex.labels)
    elif src is LabelSource.SPANS:
        labels = labels_from_char_spans(enc, ids, decision.trained)
    elif src is LabelSource.GENERATION:
        labels = labels_from_generation(enc, ids, rendering.generation)
        if decision.masks:
            unlabel_char_ranges(enc, labels, decision.masks, decision.keep)
    elif src is LabelSource.COMPLETION:
        labels = _after_prompt(ids, prompt_enc.ids, rules, findings)
    elif src is LabelSource.OLD_COLLATOR:
        labels = ctx.old_collator.labels(ids, rendering.text, enc, rules, findings)
    elif src is LabelSource.USER_COLLATOR:
        labels = ctx.collator_labels[key]
        for i, lab in enumerate(labels):
            rules[i] = f"{'trained' if lab != IGNORE else 'not trained'}: the collator's label ({ctx.cfg.strategy})"
    else:  # LabelSource.NONE
        labels = [IGNORE] * len(ids)
    masked = _mask_tokens(ids, labels, rendering.text, enc, ctx, src is not LabelSource.GIVEN, rules)
    weights = _weights(labels, enc, decision.weighted, ctx.cfg.prompt_loss_weight, masked)
    return _truncate(ids, labels, weights, rules, findings, ctx.cfg)


def _after_prompt(ids: list[int], prompt_ids: list[int], rules: dict, findings: list) -> list[int]:
    """TRL 1.16's completion mask: the tokens after the longest prefix shared with the prompt's own tokens."""
    n = common_prefix_length(prompt_ids, ids)
    if n < len(prompt_ids):
        findings.append(Finding("prompt_not_prefix", f"the prompt's last {len(prompt_ids) - n} token(s) differ inside "
                                f"prompt+completion; the completion starts at token {n}", location={"token": n}))
    if n < len(ids):
        rules[n] = "trained: first completion token (where prompt and prompt+completion tokens diverge)"
    return [IGNORE] * n + ids[n:]


def _mask_tokens(ids, labels, text, enc, ctx: LabelContext, by_id: bool, rules: dict) -> set[int]:
    """mask_tokens: never trained wherever they occur — by string in rendered text, by id in pre-tokenized rows
    (not where the row gives its own labels). Returns the positions masked."""
    masked: set[int] = set()
    if not ctx.cfg.mask_tokens:
        return masked
    if enc is None:
        if by_id:
            for i, t in enumerate(ids):
                if t in ctx.mask_token_ids and labels[i] != IGNORE:
                    labels[i] = IGNORE
                    rules[i] = "not trained: mask_tokens"
                    masked.add(i)
        return masked
    for s, e in string_ranges(text, ctx.cfg.mask_tokens):
        r = token_range(enc, s, e)
        for i in range(*r) if r else ():
            masked.add(i)
            if labels[i] != IGNORE:
                labels[i] = IGNORE
                rules[i] = f"not trained: mask_tokens ({text[s:e]!r})"
    return masked


def _weights(labels, enc, weighted, w_prompt: float, masked: set[int]) -> list[float] | None:
    """Per-token loss weights: 1 for trained tokens (less where a part is weighted), w_prompt for the others, 0 for
    mask_tokens. None when that is all 0 and 1 with no token gaining a label."""
    if not weighted and w_prompt <= 0:
        return None
    weights = [1.0 if lab != IGNORE else w_prompt for lab in labels]
    for s, e, w in weighted:
        r = token_range(enc, s, e) if enc is not None else None
        for i in range(*r) if r else ():
            if labels[i] != IGNORE:
                weights[i] = w
    for i in masked:
        weights[i] = 0.0
    return weights


def _truncate(ids, labels, weights, rules, findings, cfg) -> Labels:
    """TRL's truncation, after labels (max_length, keep_start | keep_end); the training labels follow the weights."""
    n_before, untruncated = len(ids), labels
    cut_start, keep, truncation = 0, None, ()
    if cfg.max_length is not None and len(ids) > cfg.max_length:
        L = cfg.max_length
        n_trained_before = len(labels) - labels.count(IGNORE)
        keep = slice(None, L) if cfg.truncation == "keep_start" else slice(-L, None)
        cut_start = 0 if cfg.truncation == "keep_start" else len(ids) - L
        ids, labels = ids[keep], labels[keep]
        weights = weights[keep] if weights is not None else None
        rules = {k - cut_start: v for k, v in rules.items() if cut_start <= k < cut_start + L}
        lost = n_trained_before - (len(labels) - labels.count(IGNORE))
        if lost:
            truncation = (Finding("truncated_supervision", f"truncation ({cfg.truncation}, max_length={L}) removed "
                                    f"{lost} of {n_trained_before} trained tokens"),)
    train_labels = labels
    if weights is not None:
        train_labels = [t if w > 0 else IGNORE for t, w in zip(ids, weights)]
        if all(w == 0.0 or w == 1.0 for w in weights):
            weights = None
    return Labels(ids, labels, train_labels, weights, rules, n_before, cut_start, keep, untruncated, tuple(findings),
                  truncation)


# ------------------------------------------------------------------------------------------------------ helpers
def common_prefix_length(a: list[int], b: list[int]) -> int:
    """Leading tokens two sequences share (TRL 1.16's completion start). Example: [1,2,3],[1,2,4] -> 2."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def token_range(enc, start: int, end: int) -> tuple[int, int] | None:
    """Tokens [a, b) whose characters overlap [start, end). Example: "héllo 😀" chars 5..7 -> tokens 3..5."""
    if end <= start:
        return None
    a = None
    for c in range(start, end):
        a = enc.char_to_token(c)
        if a is not None:
            break
    if a is None:
        return None
    b = None
    for c in range(end - 1, start - 1, -1):
        b = enc.char_to_token(c)
        if b is not None:
            break
    n = len(enc)  # (not len(enc.ids): a tokenizers Encoding builds a new list of its ids on each .ids)
    # char_to_token gives the first token of a character; the other tokens of a split character follow it.
    while b + 1 < n:
        span = enc.token_to_chars(b + 1)
        if span is None or span[0] >= end or span[1] <= span[0]:
            break
        b += 1
    while a > 0:
        span = enc.token_to_chars(a - 1)
        if span is None or span[1] <= start or span[1] <= span[0]:
            break
        a -= 1
    return a, b + 1


def labels_from_char_spans(enc, ids: list[int], spans) -> list[int]:
    """Token ids where a trained character span covers the token, else -100."""
    labels = [IGNORE] * len(ids)
    for s, e in spans:
        r = token_range(enc, s, e)
        if r:
            a, b = r
            labels[a:b] = ids[a:b]
    return labels


def labels_from_generation(enc, ids: list[int], gen) -> list[int]:
    """Exactly transformers' assistant mask (apply_chat_template(return_assistant_tokens_mask=True)), as labels.

    This is what TRL 1.16 trains with assistant_only_loss; its quirks are kept on purpose.
    """
    labels = [IGNORE] * len(ids)
    for s, e in gen:
        a = enc.char_to_token(s)
        b = enc.char_to_token(e - 1)
        if a is None:  # transformers stops at the first span it cannot place
            break
        stop = b + 1 if b else len(ids)  # transformers' quirk: an end token of 0/None runs to the end
        labels[a:stop] = ids[a:stop]
    return labels


def unlabel_char_ranges(enc, labels: list[int], ranges, keep=()) -> list[int]:
    """Set -100 on tokens overlapping `ranges`, except tokens that also overlap a `keep` range (trained wins)."""
    kept = set()
    for s, e in keep:
        r = token_range(enc, s, e)
        if r:
            kept.update(range(*r))
    for s, e in ranges:
        r = token_range(enc, s, e)
        if r:
            for i in range(*r):
                if i not in kept:
                    labels[i] = IGNORE
    return labels


def string_ranges(text: str, strings) -> list[tuple[int, int]]:
    """Every occurrence of each string in text. Example: ("a</think>b", ["</think>"]) -> [(1, 9)]."""
    out = []
    for s in strings:
        p = text.find(s)
        while p >= 0:
            out.append((p, p + len(s)))
            p = text.find(s, p + len(s))
    return out
