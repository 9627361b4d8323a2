"""Tokenizing plain ASCII text word by word, with the tokenizer's own encoding of each distinct word cached.

A byte-level BPE tokenizer (GPT-2, SmolLM2, Llama 3, Qwen2/3, gpt-oss, ...) cuts text into pre-tokens ("words") with
one regular expression, then runs BPE on each word alone. So a text's ids are its words' ids end to end, and natural
language repeats its words: each distinct word needs the tokenizer once. The Rust tokenizer costs ~1.7 µs a token
here (offsets, alignments and an Encoding per text); a regular expression and a dictionary lookup cost a fraction
of that. This is exact by construction, and used only where it is:
- the tokenizer: no normaliser, pre-tokeniser ByteLevel(use_regex) or Split(regex, Isolated) + ByteLevel(no regex),
  without a prefix space, BPE without dropout; its pattern written for Python's `re` on ASCII (\\p{L} = [A-Za-z],
  \\p{N} = [0-9], \\s = the six ASCII spaces Oniguruma's \\s matches), no lookbehind;
- the text: ASCII only (`str.isascii`), where that translation is the tokenizer's pattern. Other text goes to the
  tokenizer as before;
- proved before use on probe texts against the tokenizer (ids, offsets, char_to_token, token_to_chars:
  core.masking.encoding.SegmentEncoder), and each word the tokenizer encodes for the cache must come back as one
  pre-token (its word ids), or the word path is switched off for that tokenizer.
Offsets need no cache: in ASCII a byte-level token covers as many characters as its string has (one per byte).

Example:
    words = WordEncoder.for_backend(tok._tokenizer)        # None when the tokenizer does not qualify
    words.encode(["user\\nHello there", "héllo"])           # [[4093, 198, 19556, 665], None]: not ASCII
    Words(ids, words.lens).char_to_token(6)                 # an encoding over those ids: 2
"""

from __future__ import annotations

import json
import re
import threading
from bisect import bisect_right
from itertools import accumulate, chain

MAX_WORDS = 500_000  # cached distinct words (~100 bytes each): cleared when full

# GPT-2's pattern, which ByteLevel(use_regex=True) applies (tokenizers' byte_level.rs)
BYTE_LEVEL_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

_SPACE = "\\t\\n\\x0b\\x0c\\r "  # Oniguruma's \s on ASCII (Python's \s adds \x1c-\x1f)
# ASCII members of the Unicode classes these patterns use; '' = none in ASCII
_CLASSES = {"L": "A-Za-z", "N": "0-9", "Nd": "0-9", "Lu": "A-Z", "Ll": "a-z", "Lt": "", "Lm": "", "Lo": "", "M": "",
            "Mn": "", "Mc": "", "Me": ""}
_ESCAPE = re.compile(r"\\p\{(\w+)\}|\\[pP]|\\([sSdDwWbBhHRXk])|\\.|\[\^?|\]|\(\?<[=!]|.", re.S)


def ascii_pattern(pattern: str) -> re.Pattern | None:
    """An Oniguruma pre-tokenizer pattern as a Python pattern that matches the same on ASCII text, or None where it
    uses something this does not translate. Example: " ?\\p{L}+" -> " ?[A-Za-z]+"."""
    out, in_class, class_start = [], False, 0
    for m in _ESCAPE.finditer(pattern):
        tok, prop, esc = m.group(), m.group(1), m.group(2)
        if prop is not None:
            if prop not in _CLASSES:
                return None
            ascii_ = _CLASSES[prop]
            out.append(ascii_ if in_class else (f"[{ascii_}]" if ascii_ else "(?!)"))
        elif tok in ("\\p", "\\P") or tok.startswith("(?<"):
            return None  # \P{..}, \p without braces, lookbehind
        elif esc is not None:
            if esc == "s":
                out.append(_SPACE if in_class else f"[{_SPACE}]")
            elif esc == "S" and not in_class:
                out.append(f"[^{_SPACE}]")
            else:
                return None  # \S in a class, \d, \w, \b, ...: not needed by the known patterns
        elif tok.startswith("[") and not in_class:
            in_class, class_start = True, len(out)
            out.append(tok)
        elif tok == "]" and in_class and len(out) > class_start + 1:  # (a "]" first in a class is a character)
            in_class = False
            if not "".join(out[class_start + 1:]):
                return None  # a class left empty (e.g. [\p{Lo}]): would not compile
            out.append(tok)
        elif tok.startswith("[") and in_class:
            return None  # a nested class
        else:
            out.append(tok)
    if in_class:
        return None
    try:
        return re.compile("".join(out))
    except re.error:
        return None


def backend_pattern(backend) -> str | None:
    """The regular expression the tokenizer cuts words with, where the tokenizer qualifies (see the module)."""
    try:
        if backend.normalizer is not None or type(backend.model).__name__ != "BPE" or backend.model.dropout:
            return None
        pre = json.loads(backend.pre_tokenizer.__getstate__())
    except Exception:  # noqa: BLE001  (no pre-tokenizer, an unusual model: not for words)
        return None
    if pre.get("type") == "ByteLevel":
        return BYTE_LEVEL_PATTERN if pre.get("use_regex", True) and not pre.get("add_prefix_space") else None
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not steps or len(steps) != 2:
        return None
    split, byte_level = steps
    if (split.get("type") != "Split" or split.get("behavior") != "Isolated" or split.get("invert")
            or "Regex" not in (split.get("pattern") or {}) or byte_level.get("type") != "ByteLevel"
            or byte_level.get("use_regex", True) or byte_level.get("add_prefix_space")):
        return None
    return split["pattern"]["Regex"]


class Words:
    """The encoding of one ASCII piece of text from its words' cached ids: ids, char_to_token, token_to_chars and
    offsets as tokenizers.Encoding gives them (character positions within the piece)."""

    __slots__ = ("ids", "_lens", "_starts")

    def __init__(self, ids: list[int], lens: list[int]):
        self.ids = ids
        self._lens = lens  # characters of each token id's string: its bytes, in ASCII its characters
        self._starts = None

    def __len__(self) -> int:
        return len(self.ids)

    def _bounds(self) -> list[int]:
        if self._starts is None:
            self._starts = list(accumulate(map(self._lens.__getitem__, self.ids), initial=0))
        return self._starts

    def char_to_token(self, c: int) -> int | None:
        s = self._bounds()
        return bisect_right(s, c) - 1 if 0 <= c < s[-1] else None

    def token_to_chars(self, t: int) -> tuple[int, int] | None:
        s = self._bounds()
        return (s[t], s[t + 1]) if 0 <= t < len(self.ids) else None

    @property
    def offsets(self) -> list[tuple[int, int]]:
        s = self._bounds()
        return list(zip(s, s[1:]))


class WordEncoder:
    """Word ids cached per tokenizer backend (see the module). Build with for_backend()."""

    def __init__(self, backend, pattern: re.Pattern):
        self.backend = backend
        self.findall = pattern.findall
        self.cache: dict[str, tuple[int, ...]] = {}  # word -> its ids; () where they are not one character a byte
        size = backend.get_vocab_size(with_added_tokens=True)
        self.lens = [len(backend.id_to_token(i) or "") for i in range(size)]
        self.broken = False  # a word the tokenizer split: words are off for this tokenizer
        self._lock = threading.Lock()

    @classmethod
    def for_backend(cls, backend) -> WordEncoder | None:
        source = backend_pattern(backend)
        pattern = ascii_pattern(source) if source else None
        return cls(backend, pattern) if pattern is not None else None

    def encode(self, pieces: list[str]) -> list[list[int] | None]:
        """Each piece's ids; None for a piece that is not ASCII, that the pattern does not cover, or that has a word the
        tokenizer does not encode one character per byte (a byte missing from its vocabulary); None for every piece
        once a word broke the rule."""
        if self.broken:
            return [None] * len(pieces)
        findall, cache = self.findall, self.cache  # (this call's dict: _fresh may start a new one)
        get = cache.get
        out: list[list[int] | None] = []
        slow = []  # (index, words) of pieces with a word not cached (or irregular)
        for p in pieces:
            if not p.isascii():
                out.append(None)
                continue
            words = findall(p)
            if len("".join(words)) != len(p):  # characters no alternative matched: Split keeps them as words of
                out.append(None)  # their own, findall drops them (no known pattern leaves any; the check costs ~1 %)
                continue
            known = list(filter(None, map(get, words)))  # missing (None) and irregular (()) words drop out
            if len(known) == len(words):
                out.append(list(chain.from_iterable(known)))
            else:
                slow.append((len(out), words))
                out.append(None)
        if not slow:
            return out
        fresh = self._fresh(list({w for _, words in slow for w in words if get(w) is None}))
        if fresh is None:
            return [None] * len(pieces)
        for k, words in slow:
            known = [v if v is not None else get(w) for w, v in zip(words, map(fresh.get, words))]
            if all(known):  # no irregular word
                out[k] = list(chain.from_iterable(known))
        return out

    def _fresh(self, words: list[str]) -> dict[str, tuple[int, ...]] | None:
        """The tokenizer's ids of words not cached (and cached now): () for a word whose tokens do not cover it one
        character per byte; None if one came back as more than one word (words are then off for the tokenizer)."""
        encs = self.backend.encode_batch(words, add_special_tokens=False) if words else []
        fresh: dict[str, tuple[int, ...]] = {}
        lens = self.lens
        for w, e in zip(words, encs):
            if len(set(e.word_ids)) > 1:  # our pattern joined what the tokenizer's cuts: never guess
                self.broken = True
                return None
            mine = Words(e.ids, lens)
            regular = mine._bounds()[-1] == len(w) and e.offsets == mine.offsets
            fresh[w] = tuple(mine.ids) if regular else ()
        with self._lock:
            if len(self.cache) + len(fresh) > MAX_WORDS:
                self.cache = {}  # a new dict: a call still reading the old one keeps it
            self.cache.update(fresh)
        return fresh
