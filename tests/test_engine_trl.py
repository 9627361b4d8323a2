"""The engine against the real TRL 1.16 installed in the venv: identical input_ids and labels to SFTTrainer's own
dataset preparation for full, completion_only and assistant_only (with a {% generation %} template), with and without
truncation."""

import pytest

from core.data.formats import normalize_row
from core.masking.engine import MaskConfig, render_examples
from tests import trl_reference as reference
from tests.trl_reference import TEMPLATES as TRL_TEMPLATES

MESSAGES = [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "Sure?"},
     {"role": "assistant", "content": "Yes. 2+2 is 4, always."}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "Write a haiku about tokens."},
     {"role": "assistant", "content": "Bytes merge into words\nmasks decide what will be learnt\n-100 sleeps"}],
    [{"role": "user", "content": "Ünïcödé — emojis 🚀 and\ttabs\n\nand newlines "},
     {"role": "assistant", "content": " leading space, trailing space "}],
    [{"role": "user", "content": "What is the weather in Paris?"},
     {"role": "assistant", "content": "Let me check."},
     {"role": "user", "content": "Thanks. " * 30},
     {"role": "assistant", "content": "It is sunny. " * 20}],
]
PC_TEXT = [
    {"prompt": "The sky is", "completion": " blue."},
    {"prompt": "Q: What is 2+2?\nA:", "completion": " 4"},
    {"prompt": "Translate to French: cheese\n", "completion": "fromage<|im_end|>"},
    {"prompt": "Long prompt " * 40, "completion": " short answer"},
]
PC_CONV = [
    {"prompt": [{"role": "user", "content": "Colour of the sky?"}],
     "completion": [{"role": "assistant", "content": "Blue."}]},
    {"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "Bye"}],
     "completion": [{"role": "assistant", "content": "Goodbye, take care."}]},
]
TEXT = [{"text": "Just some text."}, {"text": "Another line\nwith a newline."}, {"text": "Ends with eos<|im_end|>"},
        {"text": "word " * 80}]


def trl_prepare(tokenizer, rows, **cfg):
    """(input_ids, labels) of the rows SFTTrainer keeps, fed as its users do (Dataset.from_list)."""
    out = reference.trl_prepare(tokenizer, rows, as_written=False, **{"assistant_only_loss": False, **cfg})
    for i, r in enumerate(out):
        if isinstance(r, Exception):
            raise AssertionError(f"TRL could not prepare row {i}: {r!r}")
    return [(r["input_ids"], r["labels"]) for r in out if r is not None]


def engine(tokenizer, rows, **cfg):
    exs = [normalize_row(r, i) for i, r in enumerate(rows)]
    return render_examples(exs, tokenizer, MaskConfig(**cfg))


def assert_same(ours, theirs, max_length=None):
    # TRL drops examples left with no trained token after truncation; MaskLens keeps them and flags them.
    kept = [r for r in ours if not (max_length and r.n_trained == 0)]
    assert len(kept) == len(theirs)
    for r, (ids, labels) in zip(kept, theirs):
        assert r.input_ids == ids, f"row {r.row}: input_ids differ"
        assert r.labels == labels, f"row {r.row}: labels differ"
    for r in ours:
        if max_length and r.n_trained == 0:
            assert any(f.code == "no_trained_tokens" for f in r.findings)


TRUNC = [(None, "keep_start"), (24, "keep_start"), (24, "keep_end")]


@pytest.mark.parametrize("max_length,truncation", TRUNC)
def test_full_messages(smol_tok, max_length, truncation):
    rows = [{"messages": m} for m in MESSAGES]
    theirs = trl_prepare(smol_tok, rows, max_length=max_length, truncation_mode=truncation)
    ours = engine(smol_tok, rows, strategy="full", max_length=max_length, truncation=truncation)
    assert_same(ours, theirs, max_length)


@pytest.mark.parametrize("max_length,truncation", TRUNC)
def test_full_text(smol_tok, max_length, truncation):
    theirs = trl_prepare(smol_tok, TEXT, max_length=max_length, truncation_mode=truncation)
    ours = engine(smol_tok, TEXT, strategy="full", max_length=max_length, truncation=truncation)
    assert_same(ours, theirs, max_length)


@pytest.mark.parametrize("max_length,truncation", TRUNC)
@pytest.mark.parametrize("rows", [PC_TEXT, PC_CONV], ids=["text", "conversational"])
def test_completion_only(smol_tok, rows, max_length, truncation):
    theirs = trl_prepare(smol_tok, rows, completion_only_loss=True, max_length=max_length,
                         truncation_mode=truncation)
    ours = engine(smol_tok, rows, strategy="completion_only", max_length=max_length, truncation=truncation)
    assert_same(ours, theirs, max_length)
    assert all(r.n_trained < r.n_tokens for r in ours)


@pytest.mark.parametrize("max_length,truncation", [(None, "keep_start"), (24, "keep_end")])
@pytest.mark.parametrize("rows", [[{"messages": m} for m in MESSAGES], TEXT,
                                  [{"input_ids": [1, 9690, 198, 2]}, {"input_ids": list(range(30, 60))}]],
                         ids=["messages", "text", "tokens"])
def test_completion_only_without_a_completion_trains_every_token_as_trl_does(smol_tok, rows, max_length, truncation):
    """completion_only_loss on rows with no prompt/completion split: TRL 1.16 finds no completion mask and trains every
    token, silently. MaskLens shows what TRL trains (not nothing), with an error saying why."""
    theirs = trl_prepare(smol_tok, rows, completion_only_loss=True, max_length=max_length, truncation_mode=truncation)
    ours = engine(smol_tok, rows, strategy="completion_only", max_length=max_length, truncation=truncation)
    assert_same(ours, theirs, max_length)
    for r in ours:
        assert r.n_trained == r.n_tokens > 0
        assert [f.severity for f in r.findings if f.code == "completion_only_trains_all"] == ["error"]
        assert not any(f.code in ("strategy_not_applicable", "no_trained_tokens") for f in r.findings)


@pytest.mark.parametrize("rows", [PC_TEXT, PC_CONV], ids=["text", "conversational"])
def test_full_prompt_completion(smol_tok, rows):
    theirs = trl_prepare(smol_tok, rows, completion_only_loss=False, max_length=None)
    ours = engine(smol_tok, rows, strategy="full")
    assert_same(ours, theirs)


@pytest.fixture()
def marked_tok(smol_tok):
    """SmolLM2 (ChatML tokens) with TRL's Qwen2.5 training template, which carries {% generation %} markers."""
    import copy

    tok = copy.deepcopy(smol_tok)
    tok.chat_template = (TRL_TEMPLATES / "qwen2_5_training.jinja").read_text()
    return tok


@pytest.mark.parametrize("max_length,truncation", TRUNC)
def test_assistant_only_generation_markers(marked_tok, max_length, truncation):
    rows = [{"messages": m} for m in MESSAGES]
    theirs = trl_prepare(marked_tok, rows, assistant_only_loss=True, max_length=max_length,
                         truncation_mode=truncation)
    ours = engine(marked_tok, rows, strategy="assistant_only", max_length=max_length, truncation=truncation)
    assert_same(ours, theirs, max_length)
    assert all(0 < r.n_trained < r.n_tokens for r in ours if not max_length)


def test_assistant_only_markers_equal_engine_spans_on_content(marked_tok):
    """With markers off, the engine's own span finding trains the same content tokens as the template's markers."""
    rows = [{"messages": m} for m in MESSAGES]
    exact = engine(marked_tok, rows, strategy="assistant_only")
    found = engine(marked_tok, rows, strategy="assistant_only", use_generation_markers=False)
    for a, b in zip(exact, found):
        assert a.input_ids == b.input_ids
        # the engine's set is a subset: Qwen's training template also trains the "\n" around the content
        assert all(la != -100 for la, lb in zip(a.labels, b.labels) if lb != -100)


def test_weight_flag_under_generation_markers(marked_tok):
    rows = [{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5", "weight": 0},
                          {"role": "user", "content": "Again?"}, {"role": "assistant", "content": "4"}]}]
    (r,) = engine(marked_tok, rows, strategy="assistant_only")
    trained = marked_tok.decode([i for i, la in zip(r.input_ids, r.labels) if la != -100])
    assert "5" not in trained and "4" in trained
    assert any(f.code == "message_not_trained" for f in r.findings)


def test_exported_labels_are_used_as_is_by_trl(smol_tok):
    """The export (input_ids + labels) loads into SFTTrainer as a pre-tokenized dataset and keeps these labels."""
    rows = [{"messages": m} for m in MESSAGES]
    ours = engine(smol_tok, rows, strategy="last_assistant")
    exported = [{"input_ids": r.input_ids, "labels": r.labels} for r in ours]
    theirs = trl_prepare(smol_tok, exported)
    assert [t[1] for t in theirs] == [r.labels for r in ours]
