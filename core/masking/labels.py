"""The one place labels are built.

Labels are unshifted (labels[i] is the target at position i; the model shifts them itself, as every Hugging Face
causal LM does) and hold -100 (IGNORE) where a token is not trained.

A token is trained when its characters overlap a trained character span. Byte-level BPE splits one character (an
emoji, many CJK characters) over several tokens that all carry that character's offsets; they are all trained
together, so decoding the trained tokens of a turn never yields half a character.
"""

from __future__ import annotations

IGNORE = -100


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
    n = len(enc.ids)
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


def labels_from_char_spans(enc, ids: list[int], spans: list[tuple[int, int]]) -> list[int]:
    """Token ids where a trained character span covers the token, else -100."""
    labels = [IGNORE] * len(ids)
    for s, e in spans:
        r = token_range(enc, s, e)
        if r:
            a, b = r
            labels[a:b] = ids[a:b]
    return labels


def labels_from_generation(enc, ids: list[int], gen: list[tuple[int, int]]) -> list[int]:
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


def unlabel_char_ranges(enc, labels: list[int], ranges: list[tuple[int, int]],
                        keep: list[tuple[int, int]] = ()) -> list[int]:
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


def labels_from_ids_masked(ids: list[int], labels: list[int], masked_ids: set[int]) -> list[int]:
    """-100 wherever the token id is in masked_ids (mask_tokens on pre-tokenized rows)."""
    return [IGNORE if t in masked_ids else lab for t, lab in zip(ids, labels)]
