"""core.masking.words: ASCII text tokenized word by word from a cache of the tokenizer's own word encodings gives
exactly what the tokenizer gives for the whole text (ids, offsets, char_to_token, token_to_chars), for each
pre-tokenizer it takes (GPT-2's ByteLevel regex, and Split patterns of Llama 3, Qwen2 and gpt-oss + ByteLevel);
tokenizers it cannot take exactly are refused, and a word its pattern would cut differently switches it off."""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Regex, normalizers, pre_tokenizers

import core.masking.words as words_mod
from core.masking.encoding import SegmentEncoder
from core.masking.words import BYTE_LEVEL_PATTERN, WordEncoder, ascii_pattern, backend_pattern
from tests.test_encoding import assert_same

LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
         r"|\s+(?!\S)|\s+")
O200K = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
         r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
         r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PATTERNS = {"byte_level": None, "llama3": LLAMA3, "qwen2": QWEN2, "o200k": O200K}

WORDS = ["Hello", " world", "It", "'s", "'S", "'ll", "'VE", "don't", "1234567", "3.14", "x2", " ", "  ", "   ", "\n",
         "\n\n", " \n", "\t", "\r\n", ".", ",", "!?", "...", "(", ")", "{\"k\": 1}", "def", " f(x):", "CamelCase",
         "HTTPServer", "a", "I", "\x0b", "\x0c", "\x1c", "\x7f", "\x00", "-", "/", "//", "é", "日本"]


def with_pattern(smol_tok, pattern: str | None):
    """The SmolLM2 tokenizer with its pre-tokenizer replaced by Split(pattern) + ByteLevel(no regex)."""
    tok = copy.deepcopy(smol_tok)
    if pattern is not None:
        tok._tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return tok


@pytest.fixture(scope="module")
def pattern_toks(smol_tok):
    return {name: with_pattern(smol_tok, p) for name, p in PATTERNS.items()}


def test_patterns_translate_and_what_they_cannot_is_refused():
    for p in (BYTE_LEVEL_PATTERN, LLAMA3, QWEN2, O200K):
        assert ascii_pattern(p) is not None, p
    assert ascii_pattern(r" ?\p{L}+").pattern == " ?[A-Za-z]+"
    assert ascii_pattern(r"[^\s\p{L}]").pattern == "[^\\t\\n\\x0b\\x0c\\r A-Za-z]"
    for bad in (r"\P{L}+", r"[\p{Lo}]+", r"\p{Greek}", r"(?<=a)b", r"\w+", r"[^\S]", r"\d"):
        assert ascii_pattern(bad) is None, bad


@pytest.mark.parametrize("name", list(PATTERNS))
def test_each_pre_tokenizer_qualifies_for_words(name, pattern_toks):
    tok = pattern_toks[name]
    assert backend_pattern(tok._tokenizer) == (PATTERNS[name] or BYTE_LEVEL_PATTERN)
    seg = SegmentEncoder.for_tokenizer(tok)
    assert seg is not None and seg.words is not None, f"{name}: the probes did not prove words exact"


@pytest.mark.parametrize("name", list(PATTERNS))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_words_encode_as_the_whole_text(name, data, pattern_toks):
    tok = pattern_toks[name]
    seg = SegmentEncoder.for_tokenizer(tok)
    specials = ["<|im_start|>", "<|im_end|>"]
    text_st = st.lists(st.one_of(st.sampled_from(WORDS + specials), st.text(alphabet=st.characters(max_codepoint=127),
                                                                           max_size=6)), max_size=25).map("".join)
    texts = data.draw(st.lists(text_st, min_size=1, max_size=4))
    whole = tok._tokenizer.encode_batch(texts, add_special_tokens=False)
    for reuse in (False, True, True):
        for text, w, m in zip(texts, whole, seg.encode(texts, reuse=reuse)):
            assert_same(w, m, text)


def test_tokenizers_words_cannot_take_are_refused(smol_tok):
    be = copy.deepcopy(smol_tok)._tokenizer
    be.normalizer = normalizers.NFC()
    assert WordEncoder.for_backend(be) is None
    be = copy.deepcopy(smol_tok)._tokenizer
    be.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    assert WordEncoder.for_backend(be) is None
    be = copy.deepcopy(smol_tok)._tokenizer
    be.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False)])
    assert WordEncoder.for_backend(be) is None


def test_spm_tokenizer_gets_no_words(spm_tok):
    assert WordEncoder.for_backend(spm_tok._tokenizer) is None  # Metaspace: pieces at most


def test_a_word_the_tokenizer_cuts_switches_words_off(smol_tok):
    """A pattern coarser than the tokenizer's (here: whitespace-separated runs) is caught on the first word the
    tokenizer cuts in two; the batch and every later one are then encoded by the tokenizer, exactly."""
    tok = copy.deepcopy(smol_tok)
    seg = SegmentEncoder.for_tokenizer(tok)
    import re

    seg.words = WordEncoder(tok._tokenizer, re.compile(r"\S+|\s+"))
    texts = ["<|im_start|>user\nHello, world!<|im_end|>", "plain words only"]
    for t, w, m in zip(texts, tok._tokenizer.encode_batch(texts, add_special_tokens=False), seg.encode(texts)):
        assert_same(w, m, t)
    assert seg.words.broken


def test_the_word_cache_is_bounded_and_results_stay_exact(smol_tok, monkeypatch):
    tok = copy.deepcopy(smol_tok)
    seg = SegmentEncoder.for_tokenizer(tok)
    monkeypatch.setattr(words_mod, "MAX_WORDS", 30)
    texts = [" ".join(f"w{i}x{j}" for j in range(12)) + f" tail {i}" for i in range(20)]
    for start in range(0, 20, 5):
        batch = texts[start:start + 5]
        for t, w, m in zip(batch, tok._tokenizer.encode_batch(batch, add_special_tokens=False), seg.encode(batch)):
            assert_same(w, m, t)
        assert len(seg.words.cache) <= 30 + 5 * 14


def test_a_pattern_that_leaves_characters_out_sends_those_pieces_to_the_tokenizer(smol_tok):
    """Split(Isolated) keeps what no alternative matches as words of their own; findall would drop them. A piece the
    pattern does not cover goes to the tokenizer whole (here a pattern of letters and spaces only, on digits)."""
    tok = with_pattern(smol_tok, r" ?\p{L}+|\s+")
    seg = SegmentEncoder.for_tokenizer(tok)
    assert seg is not None and seg.words is not None
    texts = ["<|im_start|>user\nabc 123 def<|im_end|>", "only letters here", "7"]
    assert seg.words.encode(["abc 123 def", "only letters"])[0] is None
    for t, w, m in zip(texts, tok._tokenizer.encode_batch(texts, add_special_tokens=False), seg.encode(texts)):
        assert_same(w, m, t)
    assert not seg.words.broken
