"""Tokenizing rendered conversations, reusing what repeats.

A fast tokenizer cuts its input at added tokens (`<|im_start|>`, `<|im_end|>`, ...) before anything else, and
tokenizes the pieces between them independently. So a rendered conversation is the concatenation of its pieces'
encodings, and a piece that recurs across a dataset (a shared system prompt, a tool schema, a role header, every
history an example of `split_turns` repeats) needs tokenizing once. `SegmentEncoder` does that, for tokenizers where
the identity holds exactly: it checks the tokenizer's configuration and then proves it on probe texts (ids and
offsets equal to encoding the whole text) before it is used; any other tokenizer encodes whole texts as before.
A piece not seen before that is ASCII is encoded word by word where the tokenizer allows it (core.masking.words: a
byte-level BPE tokenizer, each distinct word encoded once by the tokenizer itself; proved on ASCII probes too), which
costs about a quarter of the tokenizer's own time; a text whose pieces all went that way is one `Words` encoding.

Example:
    enc = SegmentEncoder.for_tokenizer(tok)               # None when the tokenizer does not qualify
    encodings = encode_texts(tok, texts, add_special_tokens=False)
    encodings[0].ids, encodings[0].char_to_token(5), encodings[0].offsets   # as tokenizers.Encoding
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from bisect import bisect_right
from itertools import chain

from ..errors import MaskLensError
from .words import WordEncoder, Words

MAX_CACHED_TOKENS = 1_000_000  # tokens of cached pieces (~80 bytes each with their Encoding): cleared when full
MAX_UNIQUE_SHARE = 0.6  # at most this share of characters not seen before: reuse pays for the splitting
SAMPLE = 32  # texts of a batch the share is estimated on before splitting them all (splitting costs ~0.3 ms)
MODES = ("auto", "always", "never")  # MASKLENS_PIECES: reuse pieces when it pays (default), whenever possible, never


def _backend(tokenizer):
    """The tokenizer's Rust backend; the one place a slow tokenizer is refused."""
    be = getattr(tokenizer, "_tokenizer", None) or getattr(tokenizer, "backend_tokenizer", None)
    if be is None or not hasattr(be, "encode_batch"):
        raise MaskLensError(f"{type(tokenizer).__name__} is not a fast (Rust) tokenizer; MaskLens needs character "
                            "offsets", fix="load the tokenizer with use_fast=True (tokenizer.json)")
    return be


def encode_batch(tokenizer, texts: list[str], add_special_tokens: bool):
    """Tokenize many texts at once; identical ids to tokenizer(text, add_special_tokens=...)."""
    if not texts:
        return []
    return _backend(tokenizer).encode_batch(texts, add_special_tokens=add_special_tokens)


# Word-by-word probes (core.masking.words): every ASCII character, alone and after each kind of character, and the
# places its patterns treat specially: contractions in both cases, digit runs, runs of spaces and newlines.
_ASCII = "".join(map(chr, range(128)))
_ASCII_PROBES = [_ASCII, _ASCII[::-1], *(f"{k}{c}{k}" for k in ("a", "1", " ", "\n", ".", "  ") for c in _ASCII),
                 "It's I'M we'Re they'VE he'd I'll 'S 's't ''s", "12345 1234567 3.14159 1,000,000 x2y33z444",
                 "a  b   c\n\n d \n\n\t\r\n  e   \n", "   leading and trailing   ", "\n\n\n", " \t \x0b\x0c\x1c\x1f ",
                 "def f(x):\n    return x**2  # ok\n\n\tif a!=b: pass", "CamelCase HTTPServer iPhone ABC123def",
                 "<tag attr=\"v\">text</tag> {\"k\": [1, 2]} $$ \\frac{a}{b}", "end.", "x", " ", ""]


class Spliced:
    """The encoding of a text assembled from its pieces' encodings: ids, offsets, char_to_token and token_to_chars
    give what tokenizers.Encoding gives for the whole text (SegmentEncoder proves it per tokenizer)."""

    __slots__ = ("ids", "_parts", "_char_starts", "_tok_parts", "_tok_starts", "_offsets")

    def __init__(self, ids: list[int], parts: list[tuple[int, int, int, object]]):
        self.ids = ids
        self._parts = parts  # (char start, char length, token start, Encoding or None for one added token)
        self._char_starts = [p[0] for p in parts]
        self._tok_parts = None
        self._tok_starts = None
        self._offsets = None

    def __len__(self) -> int:
        return len(self.ids)

    def char_to_token(self, c: int) -> int | None:
        k = bisect_right(self._char_starts, c) - 1
        if k < 0:
            return None
        cs, n, ts, enc = self._parts[k]
        if c >= cs + n:
            return None
        if enc is None:
            return ts
        t = enc.char_to_token(c - cs)
        return None if t is None else ts + t

    def token_to_chars(self, t: int) -> tuple[int, int] | None:
        if self._tok_starts is None:
            self._tok_parts = [p for p in self._parts if p[3] is None or len(p[3].ids)]
            self._tok_starts = [p[2] for p in self._tok_parts]
        k = bisect_right(self._tok_starts, t) - 1
        if k < 0 or t >= len(self.ids):
            return None
        cs, n, ts, enc = self._tok_parts[k]
        if enc is None:
            return (cs, cs + n)
        span = enc.token_to_chars(t - ts)
        return None if span is None else (span[0] + cs, span[1] + cs)

    @property
    def offsets(self) -> list[tuple[int, int]]:
        if self._offsets is None:
            out = []
            for cs, n, _, enc in self._parts:
                if enc is None:
                    out.append((cs, cs + n))
                else:
                    out.extend((s + cs, e + cs) for s, e in enc.offsets)
            self._offsets = out
        return self._offsets


class SegmentEncoder:
    """Encodes texts piece by piece with a cache of pieces. Use for_tokenizer(): it returns None for a tokenizer
    where pieces do not encode independently (added tokens that strip or match whole words or normalised text, a
    normaliser or pre-tokeniser that treats the first piece differently, truncation or padding set on the backend)."""

    _by_tokenizer: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, backend, pattern: re.Pattern, added_ids: dict[str, int], words: WordEncoder | None = None):
        self.backend = backend
        self.pattern = pattern
        self.added_ids = added_ids
        self.words = words  # ASCII pieces tokenized word by word (core.masking.words), when the tokenizer qualifies
        self._cut = re.compile(f"({pattern.pattern})").split
        self._added = {c: (None, (i,)) for c, i in added_ids.items()}
        self._added[""] = (None, ())
        self.cache: dict[str, tuple[object, list[int]]] = {}  # piece -> (Encoding, its ids)
        self.cached_tokens = 0
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self._cache_lock = threading.Lock()

    @classmethod
    def for_tokenizer(cls, tokenizer) -> SegmentEncoder | None:
        try:
            hit = cls._by_tokenizer.get(tokenizer, False)
        except TypeError:  # not weak-referenceable
            return None
        if hit is not False and (hit is None or hit.vocab_size == _backend(tokenizer).get_vocab_size(True)):
            return hit  # (tokens added since: built again)
        with cls._lock:
            enc = cls._build(tokenizer)
            cls._by_tokenizer[tokenizer] = enc
        return enc

    @classmethod
    def _build(cls, tokenizer) -> SegmentEncoder | None:
        try:
            be = _backend(tokenizer)
            if be.truncation is not None or be.padding is not None:
                return None
            added = be.get_added_tokens_decoder()  # {id: AddedToken}
            has_normalizer = be.normalizer is not None
        except Exception:  # noqa: BLE001  (anything unusual: encode whole texts)
            return None
        if not added:
            return None
        if any(a.lstrip or a.rstrip or a.single_word for a in added.values()):
            return None
        if has_normalizer and any(a.normalized for a in added.values()):
            return None
        added_ids = {a.content: i for i, a in added.items() if a.content}
        contents = sorted(added_ids, key=len, reverse=True)  # longest first: tokenizers matches leftmost-longest
        pattern = re.compile("|".join(re.escape(c) for c in contents))
        words = WordEncoder.for_backend(be)
        if words is not None and any(words.lens[i] != len(c) for c, i in added_ids.items()):
            words = None  # a Words over a whole text takes an added token's characters from its string
        enc = cls(be, pattern, added_ids, words)
        if enc.words is not None and not enc._proves_out(contents):
            enc.words = None  # pieces may still qualify: proved again without words
        return enc if enc._proves_out(contents) else None

    def _proves_out(self, contents: list[str]) -> bool:
        """Pieces encode as the whole text does, on texts built to break it: added tokens at the start, the end,
        back to back, around whitespace, newlines, multi-byte characters and words a prefix space would change."""
        specials = contents[:8]
        probes = []
        for s in specials:
            probes += [f"{s}user\nHello there{s}\n", f"x{s}y", f" {s} hello ", f"\n\n{s}\n\n{s}{s}  word",
                       f"héllo 😀{s}日本語 {s}é", f"{s}", f"Hello{s} world\t{s}\t 1234 ,.!", f"  {s}assistant"]
        if self.words is not None:
            probes += _ASCII_PROBES
        try:
            whole = self.backend.encode_batch(probes, add_special_tokens=False)
            mine = self.encode(probes, reuse=False)
        except Exception:  # noqa: BLE001
            return False
        return all(w.ids == m.ids and [tuple(o) for o in w.offsets] == m.offsets
                   and all(w.char_to_token(c) == m.char_to_token(c) for c in range(len(p)))
                   and all(tuple(w.token_to_chars(t) or ()) == tuple(m.token_to_chars(t) or ())
                           for t in range(len(w.ids)))
                   for p, w, m in zip(probes, whole, mine))

    def split(self, text: str) -> list[str]:
        """[piece, added token, piece, ..., piece]: pieces at even places (possibly ''), added tokens between."""
        return self._cut(text)

    def unique_share(self, splits: list[list[str]]) -> float:
        """The share of characters in pieces not seen before (in this batch or the cache) that the tokenizer would
        encode (ASCII pieces are encoded word by word, when the tokenizer allows: core.masking.words)."""
        total = new = 0
        seen = set()
        words = self.words is not None
        for parts in splits:
            total += sum(map(len, parts))
            for piece in parts[::2]:
                if piece not in seen and piece not in self.cache and not (words and piece.isascii()):
                    seen.add(piece)
                    new += len(piece)
        return new / total if total else 1.0

    def encode(self, texts: list[str], reuse: bool = True, splits: list | None = None) -> list:
        """Encode texts (add_special_tokens=False) from their pieces; pieces not cached are encoded in one batch, ASCII
        ones word by word (core.masking.words). A text whose pieces all went word by word comes back as one Words,
        any other as a Spliced. splits: the texts' split(), when already made."""
        splits = splits if splits is not None else [self.split(t) for t in texts]
        cache = self.cache if reuse else {}
        # this call's view (another thread may clear the cache): piece -> (its Encoding, or None where its ids are one
        # character a byte (words), its ids); added tokens are in it already
        found: dict[str, tuple[object, list[int]] | None] = dict(self._added)
        for parts in splits:
            for piece in parts[::2]:
                if piece not in found:
                    found[piece] = cache.get(piece)
        fresh = self._fresh([k for k, v in found.items() if v is None])
        found.update(fresh)
        lens = self.words.lens if self.words is not None else None
        out = []
        for parts in splits:
            entries = list(map(found.__getitem__, parts))
            if lens is not None and all(e[0] is None for e in entries):
                out.append(Words(list(chain.from_iterable([e[1] for e in entries])), lens))
            else:
                out.append(self._spliced(parts, entries))
        if reuse and fresh:
            n = sum(len(v[1]) for v in fresh.values())
            with self._cache_lock:
                if self.cached_tokens + n > MAX_CACHED_TOKENS:
                    self.cache.clear()
                    self.cached_tokens = 0
                if n <= MAX_CACHED_TOKENS:
                    self.cache.update(fresh)
                    self.cached_tokens += n
        return out

    def _spliced(self, parts: list[str], entries: list) -> Spliced:
        ids: list[int] = []
        spans = []
        pos = 0
        for k, (piece, (enc, pids)) in enumerate(zip(parts, entries)):
            if piece:
                if enc is None and not k & 1:  # a piece encoded word by word
                    enc = Words(list(pids), self.words.lens)
                spans.append((pos, len(piece), len(ids), enc))  # an added token: enc None
                ids.extend(pids)
                pos += len(piece)
        return Spliced(ids, spans)

    def _fresh(self, pieces: list[str]) -> dict[str, tuple[object, list[int]]]:
        """{piece: (its Encoding or None, its ids)}: word by word where it can (ASCII), the rest in one tokenizer
        batch."""
        by_words = self.words.encode(pieces) if self.words is not None else [None] * len(pieces)
        out = {p: (None, ids) for p, ids in zip(pieces, by_words) if ids is not None}
        rest = [p for p, ids in zip(pieces, by_words) if ids is None]
        if rest:
            out.update((p, (e, e.ids)) for p, e in zip(rest, self.backend.encode_batch(rest, add_special_tokens=False)))
        return out


def encode_texts(tokenizer, texts: list[str], add_special_tokens: bool):
    """Encodings of texts, identical to tokenizer(texts, add_special_tokens=...) in ids and offsets. Pieces that
    repeat are tokenized once when the tokenizer qualifies (SegmentEncoder) and the batch repeats enough."""
    if not texts:
        return []
    mode = os.environ.get("MASKLENS_PIECES", "auto")
    if mode not in MODES:
        raise MaskLensError(f"MASKLENS_PIECES={mode!r} is not a mode", field="MASKLENS_PIECES",
                            fix=f"set it to one of {', '.join(MODES)} (or unset it)")
    if not add_special_tokens and mode != "never":
        seg = SegmentEncoder.for_tokenizer(tokenizer)
        if seg is not None and (mode == "always"
                                or seg.unique_share([seg.split(t) for t in texts[:SAMPLE]]) <= MAX_UNIQUE_SHARE):
            return seg.encode(texts)
    return _backend(tokenizer).encode_batch(texts, add_special_tokens=add_special_tokens)
