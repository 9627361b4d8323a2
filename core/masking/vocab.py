"""Token strings and ids: the few questions the engine asks a tokenizer's vocabulary.

Example: vocab_id(tok, "<|im_end|>") -> 2; marker_ids(tok, ("<|im_end|>",)) -> {2}
"""

from __future__ import annotations

from ..errors import MaskLensError
from .spans import special_regex


def vocab_id(tokenizer, token: str) -> int | None:
    """The id of a token string in the tokenizer's vocabulary (added tokens included), or None: a string that is not
    one token maps to the unk id (or None), which only the unk token itself may. Example: vocab_id(tok, "<|im_end|>")
    -> 2; vocab_id(tok, "notatoken_xyz") -> None."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(tid, int) or (tid == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return tid


def pad_id_for(tokenizer, pad_token: str | None = None) -> int | None:
    """The pad id the old collator masks: the one asked for, else the tokenizer's, else its EOS (TRL 0.19.1's
    SFTTrainer set pad = eos when the tokenizer had none, which masks every EOS)."""
    if pad_token:
        tid = vocab_id(tokenizer, pad_token)
        if tid is None:
            raise MaskLensError(f"pad token {pad_token!r} is not in the tokenizer's vocabulary", field="pad_token",
                                fix="name a token the tokenizer has (e.g. <|pad|>, or its unk token)")
        return tid
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def marker_ids(tokenizer, eot_strings=()) -> frozenset[int]:
    """Ids that end a turn: the tokenizer's EOS and every special token of the template's end-of-turn sequences (a
    closing sequence, Cohere's <|END_RESPONSE|><|END_OF_TURN_TOKEN|>, counts each of its tokens)."""
    out = set() if tokenizer.eos_token_id is None else {tokenizer.eos_token_id}
    rx = special_regex(tokenizer)
    for s in eot_strings:
        for piece in (rx.findall(s) if rx is not None else []) or [s]:
            tid = vocab_id(tokenizer, piece)
            if tid is not None:
                out.add(tid)
    return frozenset(out)


def token_ids(tokenizer, strings) -> frozenset[int]:
    """The ids of the strings that are single tokens (mask_tokens on pre-tokenized rows)."""
    return frozenset(t for t in (vocab_id(tokenizer, s) for s in strings) if t is not None)


def ids_in_context(text: str, ids: list[int], offsets, s: str) -> list[int] | None:
    """The ids of the tokens that cover the first occurrence of s in text (None if absent): those lying inside it,
    else (one token merging text around it) those overlapping it. Example: SentencePiece "### Assistant:" after
    "\\n\\n" -> [27332, 21631, 28747] (alone it is [774, 21631, 28747])."""
    p = text.find(s)
    if p < 0:
        return None
    e = p + len(s)
    toks = [i for i, (a, b) in enumerate(offsets) if a < e and b > p and b > a]
    inside = [i for i in toks if offsets[i][0] >= p and offsets[i][1] <= e]
    return [ids[i] for i in (inside or toks)]
