"""The held-out evaluation (core.training.evaluate): what the eval set holds, the loss against transformers' own,
and the generation metrics on hand-written replies (stop, role leak, empty, length, think block)."""

import pytest
import torch

from core.data.formats import load_examples, normalize_row
from core.training.evaluate import EvalRow, EvalSet, build_eval_set, eval_loss, generation_metrics, load_eval_set

from .conftest import tiny_llama


@pytest.fixture(scope="module")
def reasoning_set(smol_tok):
    return build_eval_set(load_examples("assets/samples/reasoning.jsonl"), smol_tok)


def test_eval_set_reads_the_template(reasoning_set, smol_tok, tmp_path):
    es = reasoning_set
    im_end = smol_tok.convert_tokens_to_ids("<|im_end|>")
    assert es.stop_ids == [im_end] and es.think == ["<think>", "</think>"]
    assert set(es.headers) == {"<|im_start|>user", "<|im_start|>assistant", "<|im_start|>system"}
    assert [r.reasoning for r in es.rows].count(True) >= 1
    for r in es.rows:
        assert len(r.parts) == len(r.input_ids) == len(r.labels) and r.prompt_ids
        assert {p for p, y in zip(r.parts, r.labels) if y != -100} <= {"content", "reasoning", "eot"}
        assert smol_tok.decode(r.prompt_ids).endswith("<|im_start|>assistant\n")  # the generation prompt
    es.save(tmp_path / "es.json")
    again = load_eval_set(tmp_path / "es.json")
    assert again == es and again.tokens == es.tokens == sum(r.n_scored for r in es.rows)


def test_loss_equals_transformers_own_per_row(smol_tok):
    ex = [normalize_row({"messages": [{"role": "user", "content": "Hi?"},
                                      {"role": "assistant", "content": "Hello there, friend."}]})]
    es = build_eval_set(ex, smol_tok, generate=False)
    model = tiny_llama(smol_tok, 3)
    got = eval_loss(model, es)
    r = es.rows[0]
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([r.input_ids]), labels=torch.tensor([r.labels])).loss.item()
    assert got["loss"] == pytest.approx(ref, rel=1e-5) and got["tokens"] == r.n_scored == es.tokens
    assert set(got["parts"]) == {"content", "eot"} and got["perplexity"] == pytest.approx(2.718281828 ** got["loss"])
    assert sum(p["tokens"] for p in got["parts"].values()) == got["tokens"]
    assert model.training  # eval mode restored


def test_generation_metrics_on_hand_written_replies(smol_tok):
    enc = lambda s: smol_tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    end = smol_tok.convert_tokens_to_ids("<|im_end|>")
    rows = [EvalRow(row=i, input_ids=[1], labels=[-100], parts=[""], prompt_ids=[1], reference_tokens=4,
                    reasoning=i == 3) for i in range(5)]
    es = EvalSet(rows=rows + [EvalRow(row=9, input_ids=[1], labels=[-100], parts=[""])], stop_ids=[end],
                 headers=["<|im_start|>user", "<|im_start|>assistant"], think=["<think>", "</think>"])
    replies = [
        enc("Paris.") + [end],                                    # stops
        enc("Paris. And then<|im_start|>user\nmore"),              # no stop, runs into a user turn
        [end],                                                     # empty
        enc("<think>hmm</think>Rome.") + [end],                    # reasoning reply, think closed
        enc("<think>still thinking and thinking"),                 # no stop, think never closed
        None,                                                      # a row without a prompt
    ]
    m = generation_metrics(es, replies, smol_tok, max_new_tokens=24)
    assert m["generated"] == 5
    assert m["stop_rate"] == pytest.approx(3 / 5) and m["role_leak_rate"] == pytest.approx(1 / 5)
    assert m["empty_rate"] == pytest.approx(2 / 5)  # the empty reply, and the one that never left its think block
    assert m["think_open_rate"] == 1.0 and m["think_close_rate"] == 1.0  # row 3 is the one with reasoning
    assert m["length_ratio"] == pytest.approx(sum(len(r) - (r[-1] == end) for r in replies[:5]) / 4 / 5)
    assert [s["row"] for s in m["samples"]] == [0, 1, 2] and m["samples"][0] == {"row": 0, "reply": "Paris.",
                                                                                  "stopped": True}


def test_batched_loss_equals_row_by_row(reasoning_set, smol_tok):
    from core.training.evaluate import _batches

    model = tiny_llama(smol_tok, 5)
    one = eval_loss(model, reasoning_set, batch_tokens=1)  # every row alone: no padding at all
    batched = eval_loss(model, reasoning_set, batch_tokens=4096)
    assert len(_batches(reasoning_set.rows, 4096)) < len(reasoning_set.rows) == len(_batches(reasoning_set.rows, 1))
    assert batched["tokens"] == one["tokens"] and batched["loss"] == pytest.approx(one["loss"], rel=1e-6)
    for part, v in one["parts"].items():
        assert batched["parts"][part]["loss"] == pytest.approx(v["loss"], rel=1e-6)


def test_batched_generation_equals_one_prompt_at_a_time(reasoning_set, smol_tok):
    from core.training.evaluate import generate_replies

    model = tiny_llama(smol_tok, 7)
    one = generate_replies(model, smol_tok, reasoning_set, 6, batch_size=1)
    batched = generate_replies(model, smol_tok, reasoning_set, 6, batch_size=16)
    assert len({len(r.prompt_ids) for r in reasoning_set.rows}) > 1  # prompts of different lengths: padding
    assert batched == one and all(r is not None and 1 <= len(r) <= 6 for r in one)
