"""core.masking.encoding: a text tokenized piece by piece (pieces cut at added tokens, repeated pieces tokenized once) gives
exactly what tokenizing the whole text gives: ids, offsets, char_to_token, token_to_chars; and the engine's results
(ids, labels, per-token details) are the same with piece reuse forced on and off, on every template TRL ships."""

from __future__ import annotations

import copy
import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import core.masking.encoding as encoding
from core.data.formats import normalize_row
from core.masking.encoding import SegmentEncoder, encode_texts
from core.masking.engine import MaskConfig, render_examples
from tests.trl_reference import FAMILIES, load_conversations

PIECES = ["Hello", " world", "\n", "\n\n", " ", "  ", "\t", "é", "日本語", "😀", "a", "1234", ",.!", "user", "assistant",
          "<", "|", ">", "think", "</", "▁"]


def assert_same(whole, mine, text):
    assert mine.ids == whole.ids
    assert mine.offsets == [tuple(o) for o in whole.offsets]
    for c in range(len(text) + 1):
        assert mine.char_to_token(c) == whole.char_to_token(c), c
    for t in range(len(whole.ids) + 1):
        w, m = whole.token_to_chars(t), mine.token_to_chars(t)
        assert (tuple(w) if w else None) == (tuple(m) if m else None), t


def texts_for(tok):
    specials = [t for t in tok.get_added_vocab() if t][:12]
    return st.lists(st.sampled_from(PIECES + specials), min_size=0, max_size=30).map("".join)


@pytest.mark.parametrize("family", ["smollm2", "qwen3", "gptoss", "deepseekv3", "llama3", "gemma"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_pieces_encode_as_the_whole_text(family, data, smol_tok, family_tok):
    tok = smol_tok if family == "smollm2" else family_tok(family)
    seg = SegmentEncoder.for_tokenizer(tok)
    assert seg is not None, f"{family}: expected to qualify for piece reuse"
    texts = data.draw(st.lists(texts_for(tok), min_size=1, max_size=4))
    whole = tok._tokenizer.encode_batch(texts, add_special_tokens=False)
    for reuse in (False, True, True):  # the second reuse answers from the cache
        for text, w, m in zip(texts, whole, seg.encode(texts, reuse=reuse)):
            assert_same(w, m, text)


def test_tokenizers_whose_pieces_are_not_independent_are_refused(smol_tok, spm_tok):
    from tokenizers import AddedToken

    strip = copy.deepcopy(smol_tok)
    strip.add_tokens([AddedToken("<sep>", lstrip=True, rstrip=True, special=True)])
    assert SegmentEncoder.for_tokenizer(strip) is None  # <sep> eats the spaces around it: pieces would keep them
    spm = SegmentEncoder.for_tokenizer(spm_tok)  # Llama-2 SentencePiece: qualifies only if the probes prove it
    if spm is not None:
        text = "<s>[INST] Hello [/INST] Hi</s>"
        assert_same(spm_tok._tokenizer.encode(text, add_special_tokens=False), spm.encode([text])[0], text)


def test_tokens_added_later_rebuild_the_splitter(smol_tok):
    tok = copy.deepcopy(smol_tok)
    first = SegmentEncoder.for_tokenizer(tok)
    tok.add_tokens(["<|mine|>"], special_tokens=True)
    again = SegmentEncoder.for_tokenizer(tok)
    assert again is not first
    text = "a<|mine|>b"
    assert again.encode([text])[0].ids == tok._tokenizer.encode(text, add_special_tokens=False).ids


def test_the_cache_is_bounded_and_results_stay_exact(smol_tok, monkeypatch):
    tok = copy.deepcopy(smol_tok)
    seg = SegmentEncoder.for_tokenizer(tok)
    monkeypatch.setattr(encoding, "MAX_CACHED_TOKENS", 50)
    rng = random.Random(0)
    texts = [f"<|im_start|>user\n{' '.join(rng.choice(PIECES) for _ in range(20))}<|im_end|>" for _ in range(40)]
    for start in range(0, 40, 8):
        batch = texts[start:start + 8]
        for t, w, m in zip(batch, tok._tokenizer.encode_batch(batch, add_special_tokens=False), seg.encode(batch)):
            assert_same(w, m, t)
        assert seg.cached_tokens <= 50


def test_auto_reuses_pieces_only_when_the_batch_repeats(smol_tok, monkeypatch):
    tok = copy.deepcopy(smol_tok)
    seg = SegmentEncoder.for_tokenizer(tok)
    calls = []
    monkeypatch.setattr(SegmentEncoder, "encode", lambda self, texts, **kw: calls.append(len(texts)) or [])
    rng = random.Random(1)
    # not ASCII (no word by word), nothing repeats: whole texts
    unique = [f"<|im_start|>user\nété {rng.random()} {rng.random()}<|im_end|>" for _ in range(20)]
    assert len(encode_texts(tok, unique, False)) == 20 and calls == []
    system = "<|im_start|>system\n" + "You are a careful assistant. " * 40 + "<|im_end|>\n"
    shared = [system.replace("You", "Vous êtes") + u for u in unique]
    encode_texts(tok, shared, False)
    assert calls == [20] and seg is SegmentEncoder.for_tokenizer(tok)
    ascii_unique = [f"<|im_start|>user\n{rng.random()} {rng.random()}<|im_end|>" for _ in range(20)]
    encode_texts(tok, ascii_unique, False)  # ASCII: word by word (core.masking.words), repeats or not
    assert calls == [20, 20]


def _shared_rows(n=12):
    """Rows repeating a long system prompt, as agent and distillation datasets do."""
    system = "You are a helpful agent. " * 30
    rows = []
    for name in ("plain", "reasoning", "tools"):
        for r in load_conversations(name):
            r = json.loads(json.dumps(r))
            if r["messages"][0]["role"] != "system":
                r["messages"].insert(0, {"role": "system", "content": system})
            rows.append(r)
    return rows[: n * 3] if n else rows


def _outcome(tok, rows, cfg, mode, monkeypatch):
    monkeypatch.setenv("MASKLENS_PIECES", mode)
    examples = []
    for i, r in enumerate(rows):
        try:
            examples.append(normalize_row(r, i))
        except Exception:  # noqa: BLE001  (rows a family cannot take are skipped on both sides alike)
            continue
    out = render_examples(examples, tok, cfg, errors="finding")
    return [(r.input_ids, r.labels, [f.code for f in r.findings], r.offsets,
             [(t.label, t.part, t.text) for t in r.tokens(tok)] if r.input_ids else None) for r in out]


@pytest.mark.parametrize("family", ["smollm2", *FAMILIES])
def test_engine_is_the_same_with_and_without_piece_reuse(family, smol_tok, family_tok, monkeypatch):
    tok = smol_tok if family == "smollm2" else family_tok(family)
    rows = _shared_rows(None)
    for cfg in (MaskConfig("assistant_only"), MaskConfig("full"), MaskConfig("last_assistant", max_length=200),
                MaskConfig("assistant_only", split_turns=True, template_source="own")):
        never = _outcome(tok, rows, cfg, "never", monkeypatch)
        always = _outcome(tok, rows, cfg, "always", monkeypatch)
        assert always == never, f"{family} {cfg.strategy}: piece reuse changed the result"
