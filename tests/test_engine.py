"""Engine unit tests: per-token details, options, and rules consistent with labels (truth table over strategies)."""

import pytest

from core.data.formats import normalize_row
from core.masking.engine import STRATEGIES, MaskConfig, render_examples

CONV = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."},
        {"role": "tool", "content": "TOOLRESULT"}, {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "Bye now."}]


def trained_text(tok, r):
    return tok.decode([t for t, la in zip(r.input_ids, r.labels) if la != -100])


def one(tok, msgs=CONV, **cfg):
    return render_examples([normalize_row({"messages": msgs})], tok, MaskConfig(**cfg))[0]


def test_token_details(smol_tok):
    r = one(smol_tok, strategy="assistant_only")
    toks = r.tokens(smol_tok)
    assert [t.id for t in toks] == r.input_ids and [t.label for t in toks] == r.labels
    # SmolLM2 injects a default system prompt when there is none: it is template text, not the user's header
    assert toks[0].part == "template" and toks[0].message is None
    hello = next(t for t in toks if t.text == "Hello")
    assert (hello.message, hello.role, hello.part, hello.label) == (1, "assistant", "content", hello.id)
    assert hello.rule.startswith("trained")
    header = [t for t in toks if t.part == "header" and t.role == "assistant"]
    assert smol_tok.decode([t.id for t in header[:4]]) == "<|im_start|>assistant\n"
    assert all(t.label == -100 and "role header" in t.rule for t in header)
    eot = [t for t in toks if t.text == "<|im_end|>" and t.role == "assistant"]
    assert eot and all(t.part == "eot" and t.label != -100 and t.special for t in eot)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_rules_agree_with_labels(smol_tok, strategy):
    kw = {"response_template": "<|im_start|>assistant\n"} if strategy == "response_template" else {}
    r = one(smol_tok, strategy=strategy, **kw)
    for t in r.tokens(smol_tok):
        assert t.rule.startswith("trained") == (t.label != -100), (t.position, t.text, t.rule)


@pytest.mark.parametrize("eos,expect", [("every_turn", 2), ("last_turn", 1), ("none", 0)])
def test_eos_modes(smol_tok, eos, expect):
    r = one(smol_tok, strategy="assistant_only", eos=eos)
    assert trained_text(smol_tok, r).count("<|im_end|>") == expect
    assert ("eos_not_trained" in {f.code for f in r.findings}) == (expect == 0)


def test_train_roles_include_tool(smol_tok):
    assert "TOOLRESULT" not in trained_text(smol_tok, one(smol_tok, strategy="assistant_only"))
    assert "TOOLRESULT" in trained_text(smol_tok, one(smol_tok, strategy="assistant_only",
                                                     train_roles=("assistant", "tool")))


def test_last_assistant(smol_tok):
    t = trained_text(smol_tok, one(smol_tok, strategy="last_assistant"))
    assert t == "Bye now.<|im_end|>"


@pytest.mark.parametrize("truncation", ["keep_start", "keep_end"])
def test_truncation_findings(smol_tok, truncation):
    r = one(smol_tok, strategy="last_assistant", max_length=30, truncation=truncation)
    assert r.n_tokens == 30 and r.n_before_truncation > 30
    codes = {f.code for f in r.findings}
    if truncation == "keep_start":  # the last turn is cut away entirely
        assert {"truncated_supervision", "no_trained_tokens"} <= codes
    else:
        assert r.truncated_at_start == r.n_before_truncation - 30 and "no_trained_tokens" not in codes
        assert len(r.offsets) == 30 and r.tokens(smol_tok)[-1].text == "\n"


def test_empty_content_tool_call_message(smol_tok):
    msgs = [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "",
             "tool_calls": [{"type": "function", "function": {"name": "w", "arguments": {}}}]},
            {"role": "tool", "content": "Sunny"}, {"role": "assistant", "content": "It is sunny."}]
    r = one(smol_tok, msgs, strategy="assistant_only")
    assert trained_text(smol_tok, r).startswith("<|im_end|>It is sunny.")  # empty turn: just its end-of-turn
