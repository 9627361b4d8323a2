"""Loss weights in training (core.training.weighted): sum(w * nll) / sum(w), against a hand computation with
transformers and against TRL 1.16's own SFTTrainer (weights in {0, 1} give its loss to 1e-6), under gradient
accumulation, padding-free packing, DFT and LoRA. A tiny random Llama on the SmolLM2 vocabulary: seconds on a CPU."""

import math

import pytest
import torch

from core.errors import MaskLensError
from core.masking.engine import render_examples
from core.masking.options import MaskConfig
from core.training.train import IGNORE_INDEX, TrainConfig, prepare_examples, run_training, training_rows
from core.training.weighted import WEIGHTS, WeightedDataCollator, WeightedSFTTrainer, weighted_token_loss

from .conftest import tiny_llama

IGNORE = IGNORE_INDEX


@pytest.fixture(scope="module")
def tok(smol_tok):
    return smol_tok


def _rows(tok, n=6, w=0.25):
    """Chats rendered by the engine with prompt_loss_weight=w: the assistant part weighs 1, the rest w."""
    from core.data.formats import normalize_row

    exs = [normalize_row({"messages": [{"role": "user", "content": f"Question {i}? " + "more " * i},
                                       {"role": "assistant", "content": "Yes. " * (i + 1)}]}, i) for i in range(n)]
    return training_rows(render_examples(exs, tok, MaskConfig("assistant_only", prompt_loss_weight=w)))


def _trainer(tok, rows, cls=WeightedSFTTrainer, seed=0, **args):
    from datasets import Dataset
    from trl import SFTConfig

    cols = [c for c in ("input_ids", "labels", WEIGHTS) if c in rows[0]]
    kw = dict(output_dir="/tmp/masklens-unused", max_steps=1, learning_rate=1e-2, per_device_train_batch_size=4,
              use_cpu=True, report_to="none", logging_steps=1, save_strategy="no", shuffle_dataset=False,
              max_length=512, seed=seed, disable_tqdm=True, train_sampling_strategy="sequential")
    kw.update(args)
    return cls(model=tiny_llama(tok, seed), args=SFTConfig(**kw),
               train_dataset=Dataset.from_dict({c: [r[c] for r in rows] for c in cols}), processing_class=tok)


def _hand_loss(model, batch, dft=False):
    """sum(w * nll) / sum(w) from the model's plain logits (transformers' own forward, no TRL kernel)."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", WEIGHTS)}
    with torch.no_grad():
        logits = model(**inputs).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1)
    labels = batch["labels"][:, 1:]
    w = batch[WEIGHTS][:, 1:].double()
    lp = logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0].double()
    nll = -lp * (labels != IGNORE)
    if dft:
        nll = nll * lp.exp()
    return float((w * nll).sum() / w.sum())


# ------------------------------------------------------------------------------------------------------ rows
def test_prepare_examples_keeps_checks_and_truncates_weights():
    rows = [{"input_ids": [5, 6, 7, 8], "labels": [5, 6, 7, 8], WEIGHTS: [0.1, 0.1, 1.0, 1.0]},
            {"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]},  # no weights of its own: 0 / 1 from its labels
            {"input_ids": [5, 6, 7, 8], "labels": [IGNORE, IGNORE, IGNORE, 8], WEIGHTS: [0, 0, 0, 1.0]}]
    kept, stats = prepare_examples(rows, TrainConfig(max_length=3))
    assert kept == [{"input_ids": [5, 6, 7], "labels": [5, 6, 7], WEIGHTS: [0.1, 0.1, 1.0]},
                    {"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7], WEIGHTS: [0.0, 1.0, 1.0]}]
    assert stats == {"n_examples": 2, "n_dropped": 1, "n_truncated": 2}  # the last: all weights 0 once cut
    kept, _ = prepare_examples(rows[1:2], TrainConfig())  # no row with weights: no column (TRL's own loss)
    assert kept == [{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}]


@pytest.mark.parametrize("weights, match", [
    ([0.5, 1.0], r"row 0, field 'loss_weights': 2 loss_weights for 3 input_ids"),
    ([0.0, 1.5, 1.0], r"weight 1.5 at position 1 is not a number in \[0, 1\]"),
    ([0.2, 1.0, 1.0], r"position 0 has label -100 and weight 0.2: a weight is 0 exactly where the label is -100"),
    ([0.0, 0.0, 1.0], r"position 1 has label 6 and weight 0.0"),
    ([0.0, "1", 1.0], r"weight '1' at position 1"),
])
def test_bad_weights_name_row_position_and_fix(weights, match):
    with pytest.raises(MaskLensError, match=match) as info:
        prepare_examples([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7], WEIGHTS: weights}], TrainConfig())
    assert info.value.fix


def test_engine_prompt_loss_weight_0_and_1_are_assistant_only_and_full(tok):
    from core.data.formats import normalize_row

    ex = [normalize_row({"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Yo."}]})]
    a0 = render_examples(ex, tok, MaskConfig("assistant_only", prompt_loss_weight=0.0))[0]
    a1 = render_examples(ex, tok, MaskConfig("assistant_only", prompt_loss_weight=1.0))[0]
    ao = render_examples(ex, tok, MaskConfig("assistant_only"))[0]
    full = render_examples(ex, tok, MaskConfig("full"))[0]
    assert (a0.labels, a0.weights) == (ao.labels, None)
    assert (a1.labels, a1.weights) == (full.labels, None)  # W = 1 trains like full: no weights needed
    assert training_rows([a0]) == [{"input_ids": ao.input_ids, "labels": ao.labels}]


# ------------------------------------------------------------------------------------------------------ the loss
def test_weighted_loss_equals_a_hand_computation(tok):
    rows = _rows(tok, 4, w=0.3)
    assert any(0 < x < 1 for x in rows[0][WEIGHTS])
    trainer = _trainer(tok, rows)
    assert isinstance(trainer.data_collator, WeightedDataCollator) and trainer.weighted
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert batch[WEIGHTS].shape == batch["labels"].shape
    assert torch.all(batch[WEIGHTS][batch["labels"] == IGNORE] == 0)  # padding never trains
    expected = _hand_loss(trainer.model, batch)
    with torch.no_grad():
        got = trainer.compute_loss(trainer.model, dict(batch)).item()
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-6)
    # and it is not the unweighted mean over the same labels
    unweighted = _hand_loss(trainer.model, {**batch, WEIGHTS: (batch["labels"] != IGNORE).float()})
    assert abs(unweighted - expected) > 1e-3


def test_dft_with_weights_scales_each_token_by_its_probability_and_weight(tok):
    trainer = _trainer(tok, _rows(tok, 4, w=0.3), loss_type="dft")
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        got = trainer.compute_loss(trainer.model, dict(batch)).item()
    assert got == pytest.approx(_hand_loss(trainer.model, batch, dft=True), rel=1e-6, abs=1e-9)


def test_weighted_token_loss_by_hand():
    lp = torch.tensor([[-1.0, -2.0, 0.0]])
    assert weighted_token_loss(lp, torch.tensor([[0.5, 1.0, 0.0]]), 1.5).item() == pytest.approx(2.5 / 1.5)
    assert weighted_token_loss(lp, torch.zeros(1, 3), 0.0).item() == 0.0  # all-zero micro-batch: 0, not NaN


def _losses(trainer) -> list[float]:
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize("strategy", ["assistant_only", "full"])
def test_weights_in_0_1_give_trls_own_loss(tok, strategy):
    """W = 0 is assistant_only and W = 1 is full: the same rows with explicit 0/1 weights through the weighted
    trainer give TRL's SFTTrainer's losses and weights to 1e-6."""
    from trl import SFTTrainer

    plain = [{"input_ids": r["input_ids"], "labels": r["labels"] if strategy == "assistant_only" else r["input_ids"]}
             for r in _rows(tok, 8)]
    weighted = [{**r, WEIGHTS: [0.0 if y == IGNORE else 1.0 for y in r["labels"]]} for r in plain]
    a = _trainer(tok, plain, cls=SFTTrainer, max_steps=3, gradient_accumulation_steps=2,
                 per_device_train_batch_size=2)
    b = _trainer(tok, weighted, max_steps=3, gradient_accumulation_steps=2, per_device_train_batch_size=2)
    assert type(a.data_collator).__name__ == "DataCollatorForLanguageModeling" and b.weighted
    la, lb = _losses(a), _losses(b)
    assert len(la) == 3 and lb == pytest.approx(la, rel=1e-6, abs=1e-6)
    for (name, pa), pb in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6), name


def test_gradient_accumulation_gives_the_gradient_of_one_big_batch(tok):
    """Micro-batches with different weight totals: each is divided by the step's total, not averaged per batch."""
    rows = _rows(tok, 4, w=0.1)
    totals = [sum(r[WEIGHTS][1:]) for r in rows]
    assert max(totals) > 1.5 * min(totals)
    # SGD: the update is the gradient itself (Adam's first step divides by |g| and magnifies rounding in tiny ones)
    sgd = dict(optim="sgd", lr_scheduler_type="constant")
    one = _trainer(tok, rows, per_device_train_batch_size=4, gradient_accumulation_steps=1, **sgd)
    acc = _trainer(tok, rows, per_device_train_batch_size=2, gradient_accumulation_steps=2, **sgd)
    one_acc = _trainer(tok, rows, per_device_train_batch_size=1, gradient_accumulation_steps=4, **sgd)
    l1, l2, l4 = _losses(one), _losses(acc), _losses(one_acc)
    assert l2 == pytest.approx(l1, rel=1e-6) and l4 == pytest.approx(l1, rel=1e-6)
    base = tiny_llama(tok, 0)
    for p1, p2, p4 in zip(one.model.parameters(), acc.model.parameters(), one_acc.model.parameters()):
        assert torch.allclose(p1, p2, atol=1e-6) and torch.allclose(p1, p4, atol=1e-6)
    assert max((p1 - p0).abs().max().item() for p0, p1 in zip(base.parameters(), one.model.parameters())) > 1e-4


def test_padding_free_packing_carries_the_weights(tok):
    rows = _rows(tok, 6, w=0.2)
    rows[0] = {**rows[0], "labels": list(rows[0]["input_ids"]), WEIGHTS: [0.7] * len(rows[0]["input_ids"])}
    trainer = _trainer(tok, rows, packing=True, packing_strategy="bfd", max_length=128)
    ds = trainer.train_dataset
    assert set(ds.column_names) >= {"input_ids", "labels", WEIGHTS, "seq_lengths"}
    assert sorted(x for w in ds[WEIGHTS] for x in w) == sorted(x for r in rows for x in r[WEIGHTS])
    batch = trainer.data_collator([ds[i] for i in range(len(ds))])
    assert "position_ids" in batch and "attention_mask" not in batch  # padding-free
    starts = batch["position_ids"] == 0
    assert torch.all(batch[WEIGHTS][starts] == 0)  # a packed sequence's first token is never predicted
    kept = sum(x for r in rows for x in r[WEIGHTS][1:])
    assert batch[WEIGHTS].sum().item() == pytest.approx(kept, rel=1e-6)
    with torch.no_grad():
        got = trainer.compute_loss(trainer.model, dict(batch)).item()
    assert got == pytest.approx(_hand_loss(trainer.model, batch), rel=1e-6)
    assert math.isfinite(_losses(trainer)[0])


def test_run_training_with_weights_full_and_lora(tok, tmp_path):
    model_dir = tmp_path / "tiny"
    tiny_llama(tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    rows = _rows(tok, 6, w=0.1)
    seen = {}

    def hook(trainer):
        seen["cls"] = type(trainer).__name__
        seen["batch"] = next(iter(trainer.get_train_dataloader()))

    for lora in (False, True):
        cfg = TrainConfig(model=str(model_dir), max_steps=2, learning_rate=1e-3, per_device_train_batch_size=2,
                          lora=lora, lora_r=4, lora_alpha=8)
        result = run_training(rows, cfg, tmp_path / f"run-{lora}", on_trainer=hook)
        assert result.status == "completed" and math.isfinite(result.train_loss)
        assert seen["cls"] == "WeightedSFTTrainer" and WEIGHTS in seen["batch"]
