"""Loss weights between 0 and 1, engine side (issue #14 part 1): prompt_loss_weight, per-message data weights, rules'
part weights — built in one place (core.masking.labels.build_labels) and carried to records, exports and audits.

Invariants: W = 0 is today's masking exactly (no weights); W = 1 labels every token like `full`; otherwise every token
the strategy trains has weight 1 (or its part/message weight), every other token W, mask_tokens 0, and the label is
the token id exactly where the weight is above 0.
"""

from __future__ import annotations

import json

import pytest

from core.audit import audit
from core.data.formats import normalize_row
from core.export import export_parquet, export_records, option_notes
from core.masking import IGNORE, MaskConfig, render_examples
from core.masking.rules import parse_rules, rules_config
from tests.trl_reference import load_conversations

ROWS = load_conversations("plain")[:4]


def examples(rows=ROWS):
    return [normalize_row(r, i) for i, r in enumerate(rows)]


def test_zero_weight_is_todays_masking_and_one_is_full(smol_tok):
    base = render_examples(examples(), smol_tok, MaskConfig("assistant_only"))
    zero = render_examples(examples(), smol_tok, MaskConfig("assistant_only", prompt_loss_weight=0.0))
    one = render_examples(examples(), smol_tok, MaskConfig("assistant_only", prompt_loss_weight=1.0))
    full = render_examples(examples(), smol_tok, MaskConfig("full"))
    assert [(r.labels, r.weights) for r in zero] == [(r.labels, None) for r in base]
    assert [r.labels for r in one] == [r.labels for r in full] and all(r.weights is None for r in one)


@pytest.mark.parametrize("w", [0.01, 0.1, 0.5])
def test_prompt_weight_on_every_untrained_token(smol_tok, w):
    base = render_examples(examples(), smol_tok, MaskConfig("assistant_only"))
    got = render_examples(examples(), smol_tok, MaskConfig("assistant_only", prompt_loss_weight=w))
    for b, g in zip(base, got):
        assert g.input_ids == b.input_ids and g.labels == g.input_ids  # every token carries its id
        assert g.weights == [1.0 if lab != IGNORE else w for lab in b.labels]
        assert g.n_trained == b.n_trained and g.n_weighted == b.labels.count(IGNORE)
        assert g.weight_sum == pytest.approx(b.n_trained + w * b.labels.count(IGNORE))
        assert [f.code for f in g.findings] == [f.code for f in b.findings]  # findings read the strategy's mask
        assert json.loads(json.dumps(g.to_json()))["loss_weights"] == g.weights


def test_mask_tokens_stay_at_zero_under_a_prompt_weight(smol_tok):
    (r,) = render_examples(examples()[:1], smol_tok, MaskConfig("assistant_only", prompt_loss_weight=0.1,
                                                                mask_tokens=("<|im_end|>",)))
    end = smol_tok.convert_tokens_to_ids("<|im_end|>")
    at = [i for i, t in enumerate(r.input_ids) if t == end]
    assert at and all(r.weights[i] == 0.0 and r.labels[i] == IGNORE for i in at)
    assert all(r.labels[i] == t for i, t in enumerate(r.input_ids) if i not in at)


def test_fractional_message_weight_scales_that_turn(smol_tok):
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there.",
                                                             "weight": 0.5},
                        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]}
    (base,) = render_examples([normalize_row({"messages": [{k: v for k, v in m.items() if k != "weight"}
                                                           for m in row["messages"]]})], smol_tok,
                              MaskConfig("assistant_only"))
    (r,) = render_examples([normalize_row(row)], smol_tok, MaskConfig("assistant_only"))
    assert r.labels == base.labels and r.weights is not None
    half = smol_tok.decode([t for t, w in zip(r.input_ids, r.weights) if w == 0.5])
    full = smol_tok.decode([t for t, w in zip(r.input_ids, r.weights) if w == 1.0])
    assert half.startswith("Hello there.") and "Goodbye." not in half
    assert full.startswith("Goodbye.")
    assert all(w == 0.0 for w, lab in zip(r.weights, r.labels) if lab == IGNORE)


def test_rules_weigh_a_part(family_tok):
    tok = family_tok("qwen3")
    rules = parse_rules({"name": "half_reasoning", "train": [
        {"role": "assistant", "parts": ["content", "tool_calls", "eot"]},
        {"role": "assistant", "parts": ["reasoning"], "weight": 0.5}]})
    assert rules.train[1].weight == 0.5 and "weight 0.5" in rules.summary()
    row = {"messages": [{"role": "user", "content": "2+2?"},
                        {"role": "assistant", "reasoning_content": "Add them.", "content": "4."}]}
    (r,) = render_examples([normalize_row(row)], tok, rules_config(rules))
    half = tok.decode([t for t, w in zip(r.input_ids, r.weights) if w == 0.5])
    one = tok.decode([t for t, w in zip(r.input_ids, r.weights) if w == 1.0])
    assert "Add them." in half and "4." not in half and "4." in one
    with pytest.raises(Exception, match=r"train\[0\].weight"):
        parse_rules({"train": [{"role": "assistant", "weight": 0}]})


def test_weights_follow_truncation(smol_tok):
    (full,) = render_examples(examples()[:1], smol_tok, MaskConfig("assistant_only", prompt_loss_weight=0.1))
    for mode in ("keep_start", "keep_end"):
        (r,) = render_examples(examples()[:1], smol_tok, MaskConfig("assistant_only", prompt_loss_weight=0.1,
                                                                    max_length=20, truncation=mode))
        want = full.weights[:20] if mode == "keep_start" else full.weights[-20:]
        assert r.weights == want or (r.weights is None and set(want) <= {0.0, 1.0})


def test_exports_audit_and_notes_carry_the_weights(smol_tok, tmp_path):
    cfg = MaskConfig("assistant_only", prompt_loss_weight=0.1)
    rendered = render_examples(examples(), smol_tok, cfg)
    recs = export_records(rendered)
    assert all(rec["loss_weights"] == r.weights for rec, r in zip(recs, rendered))
    import pyarrow.parquet as pq

    table = pq.read_table(export_parquet(rendered, tmp_path / "w.parquet"))
    assert table.column("loss_weights").to_pylist()[0] == pytest.approx(rendered[0].weights)
    assert "loss_weights" not in export_records(render_examples(examples(), smol_tok, MaskConfig("assistant_only")))[0]
    rep, _ = audit(examples(), smol_tok, cfg)
    assert rep.weighted_tokens == sum(r.n_weighted for r in rendered) > 0
    assert rep.to_json()["weight_sum"] == pytest.approx(sum(r.weight_sum for r in rendered), abs=1e-3)
    assert "weighted tokens" in rep.to_text()
    for target in ("trl", "axolotl", "llamafactory"):
        assert any("loss_weights" in n and "do not read it" in n for n in option_notes(cfg, target)), target


def test_cli_flag(smol_tok, tmp_path):
    from core.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "o.jsonl"
    assert main(["render", "--data", str(data), "--strategy", "assistant_only", "--prompt-loss-weight", "0.1",
                 "--output", str(out)]) == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    want = render_examples(examples(), smol_tok, MaskConfig("assistant_only", prompt_loss_weight=0.1))
    assert [r["loss_weights"] for r in recs] == [w.weights for w in want]  # JSON floats round-trip exactly
    assert main(["render", "--data", str(data), "--strategy", "assistant_only", "--prompt-loss-weight", "1.5",
                 "--output", str(out)]) == 2


def test_fractional_message_weight_on_trls_training_twin(family_tok):
    """The generation-marker path (TRL's qwen3 twin): labels stay exactly TRL's, the weighted turn's tokens get 0.5."""
    tok = family_tok("qwen3")
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."},
            {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]
    (base,) = render_examples([normalize_row({"messages": msgs})], tok, MaskConfig("assistant_only"))
    msgs[1] = {**msgs[1], "weight": 0.5}
    (r,) = render_examples([normalize_row({"messages": msgs})], tok, MaskConfig("assistant_only"))
    assert r.template_swapped and r.labels == base.labels
    half = tok.decode([t for t, w in zip(r.input_ids, r.weights) if w == 0.5])
    assert "Hello there." in half and "Goodbye." not in half
