"""Short TRL SFT runs on exactly the engine's labels (issue #4).

The engine hands over pre-tokenized examples `{"input_ids": [...], "labels": [...]}`: labels unshifted (the model
shifts them), -100 where a token does not train. TRL 1.16's SFTTrainer uses a dataset that already has a `labels`
column as is; its only change is to truncate to `max_length` and then drop the examples left without a trained
token. `prepare_examples` does the same beforehand, so after `SFTTrainer.__init__` the dataset must equal ours label
for label, and `run_training` asserts it (unless packing, which concatenates examples).

Example: run_training([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}], TrainConfig(max_steps=1), Path("r"))
         -> TrainResult(status="completed", global_step=1, ...) and r/metrics.jsonl, r/final/.

The child process that `core.runs.start_run` launches (`python -m core.run_child --run-dir DIR`) calls
`run_training`; this module never imports core.runs.

Heavy libraries (torch, transformers, trl, datasets, peft) are imported inside functions: importing this module (for
TrainConfig and its help texts) stays cheap for the app and the CLI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import MaskLensError
from ..models import EMBEDDED

__all__ = [
    "IGNORE_INDEX",
    "WEIGHTS",
    "TrainConfig",
    "TrainResult",
    "prepare_examples",
    "run_training",
    "sample_generations",
    "sft_config_kwargs",
    "training_rows",
]

IGNORE_INDEX = -100
STOP_FILE = "STOP"
METRICS_FILE = "metrics.jsonl"
WEIGHTS = "loss_weights"  # the training rows' per-token weights (core.training.weighted reads the same name)
FINAL_DIR = "final"
PACKING_STRATEGIES = ("bfd", "bfd_split", "wrapped")
LOSS_TYPES = ("nll", "dft")
EVAL_FILE = "eval.json"  # the final held-out evaluation of a run
EVAL_CURVE_FILE = "eval_curve.jsonl"  # {"step", "loss"} per periodic held-out evaluation


@dataclass
class TrainConfig:
    """Everything a run needs besides its examples. `field(metadata={"help": ...})` feeds the UI's help texts."""

    model: str = field(
        default=EMBEDDED,
        metadata={"help": "Model to fine-tune: 'embedded' (the built-in SmolLM2-135M-Instruct), a local checkpoint "
                          "directory, or a Hugging Face hub id. Its tokenizer must be the one the examples were "
                          "tokenized with."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow models whose hub repository ships custom Python code."}
    )
    lora: bool = field(
        default=False,
        metadata={"help": "Train a LoRA adapter instead of all weights (faster, far less memory; saves only the "
                          "adapter). LoRA usually wants a learning rate around 1e-4 to 2e-4."},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank: size of the low-rank update matrices."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling: the update is multiplied by alpha / r."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch during training."})
    lora_target_modules: str | list[str] = field(
        default="all-linear",
        metadata={"help": "Modules that get an adapter: 'all-linear' (every linear layer but the output head) or a "
                          "list of module names such as ['q_proj', 'v_proj']."},
    )
    max_steps: int = field(default=20, metadata={"help": "Optimizer steps to run (a short run to compare masks)."})
    learning_rate: float = field(
        default=2e-5, metadata={"help": "Peak learning rate of AdamW (TRL's default 2e-5 for full fine-tuning)."}
    )
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Examples per batch on each device."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Batches accumulated before each optimizer step (effective batch size = "
                                     "batch size x accumulation x devices)."}
    )
    max_length: int | None = field(
        default=1024,
        metadata={"help": "Examples longer than this are truncated (the end is cut); an example left without any "
                          "trained token is then dropped, as TRL does. With packing: the length of each pack."},
    )
    packing: bool = field(
        default=False, metadata={"help": "Pack several examples into each sequence of max_length tokens."}
    )
    packing_strategy: str = field(
        default="bfd",
        metadata={"help": "'bfd': best-fit decreasing, examples kept whole (overflow truncated), padding-free; "
                          "'bfd_split': like bfd but splits overflow; 'wrapped': concatenate and cut mid-example.",
                  "choices": list(PACKING_STRATEGIES)},
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute activations in the backward pass: less memory, about 30% slower. TRL turns it "
                          "on by default; off here because short runs of small models do not need it."},
    )
    seed: int = field(default=42, metadata={"help": "Random seed (data order, LoRA initialisation, dropout)."})
    logging_steps: int = field(default=1, metadata={"help": "Log loss and learning rate every this many steps."})
    save_final: bool = field(
        default=True, metadata={"help": "Save the final weights (or the LoRA adapter) and tokenizer into final/."}
    )
    loss_type: str = field(
        default="nll",
        metadata={"help": "TRL's loss: 'nll' (cross-entropy) or 'dft' (Dynamic Fine-Tuning: each token's loss scaled "
                          "by its probability). With loss weights: sum(w * loss) / sum(w) either way.",
                  "choices": list(LOSS_TYPES)},
    )
    report_to: str | list[str] = field(
        default="none",
        metadata={"help": "Where TRL also logs: 'none', or e.g. 'tensorboard', 'trackio', 'wandb' (a list for "
                          "several); the package must be installed."},
    )
    eval_set: str = field(
        default="",
        metadata={"help": "A held-out evaluation set (eval_set.json, written by an experiment or `python -m core "
                          "evaluate`): scored every eval_every_steps and after training (eval.json in the run)."},
    )
    eval_every_steps: int = field(
        default=0, metadata={"help": "Held-out eval loss every this many steps (0: only after training)."}
    )
    eval_max_new_tokens: int = field(
        default=64, metadata={"help": "Greedy generation length of the final held-out evaluation (0: no generation)."}
    )
    mask_config: dict = field(
        default_factory=dict,
        metadata={"help": "The mask configuration the examples were built with (stored with the run, not used "
                          "by training)."},
    )
    data_path: str = field(default="", metadata={"help": "The data file the examples came from (recorded only)."})

    def __post_init__(self):
        def bad(name: str, message: str, fix: str):
            raise MaskLensError(message, field=name, fix=fix)

        for name in ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps",
                     "lora_r"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                bad(name, f"must be a whole number of at least 1, got {value!r}.", f"set {name} to 1 or more.")
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 2):
            bad("max_length", f"must be a whole number of at least 2 or None, got {self.max_length!r}.",
                "set max_length to e.g. 1024, or None for no truncation (not with packing).")
        if not (isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate < 1):
            bad("learning_rate", f"must be between 0 and 1, got {self.learning_rate!r}.",
                "try 2e-5 (or 2e-4 with LoRA).")
        if not 0 <= self.lora_dropout < 1:
            bad("lora_dropout", f"must be in [0, 1), got {self.lora_dropout!r}.", "try 0.05.")
        if self.packing_strategy not in PACKING_STRATEGIES:
            bad("packing_strategy", f"unknown packing strategy {self.packing_strategy!r}.",
                f"use one of {', '.join(PACKING_STRATEGIES)}.")
        if self.packing and self.max_length is None:
            bad("max_length", "packing needs max_length (the length of each pack).", "set max_length, e.g. 1024.")
        if self.loss_type not in LOSS_TYPES:
            bad("loss_type", f"unknown loss type {self.loss_type!r}.", f"use one of {', '.join(LOSS_TYPES)}.")
        for name in ("eval_every_steps", "eval_max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                bad(name, f"must be a whole number of at least 0, got {value!r}.", f"set {name} to 0 or more.")
        if not (isinstance(self.report_to, str) or (isinstance(self.report_to, list)
                                                     and all(isinstance(x, str) for x in self.report_to))):
            bad("report_to", f"must be a name or a list of names, got {self.report_to!r}.",
                "use e.g. 'none', 'tensorboard' or ['tensorboard', 'wandb'].")
        if not isinstance(self.mask_config, dict):
            bad("mask_config", f"must be a dict, got {type(self.mask_config).__name__}.",
                "pass the mask config as a dict.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Build from a dict (config.json, a UI form); unknown keys are an error naming the field."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise MaskLensError(f"unknown training option {key!r}.", field=key,
                                    fix=f"remove it; known options: {', '.join(sorted(known))}.")
        return cls(**data)

    @classmethod
    def help(cls) -> dict[str, dict[str, Any]]:
        """{field name: {"default": ..., "help": ..., ["choices": [...]]}} for building a form."""
        out = {}
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            out[f.name] = {"default": default, **f.metadata}
        return out


@dataclass
class TrainResult:
    status: str  # "completed" or "stopped"
    global_step: int
    max_steps: int
    train_loss: float | None
    n_examples: int  # handed to the trainer
    n_dropped: int  # left without a trained token (after truncation), dropped
    n_truncated: int
    seconds: float
    final_dir: str | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def ids_and_labels(example: Any) -> tuple[Any, Any]:
    """(input_ids, labels) of a dict or of an object with those attributes (the engine's RenderedExample)."""
    if isinstance(example, dict):
        return example.get("input_ids"), example.get("labels")
    return getattr(example, "input_ids", None), getattr(example, "labels", None)


def weights_of(example: Any) -> Any:
    """The per-token loss weights of a row (`loss_weights`) or of a RenderedExample (`weights`), or None."""
    if isinstance(example, dict):
        return example.get(WEIGHTS)
    return getattr(example, "weights", None)


def training_rows(rendered: list) -> list[dict]:
    """The engine's RenderedExamples as training rows: {"input_ids", "labels"} plus "loss_weights" when the example
    has fractional weights (prompt_loss_weight, rules' part weights, per-message weights)."""
    rows = []
    for r in rendered:
        row = {"input_ids": list(r.input_ids), "labels": list(r.labels)}
        w = weights_of(r)
        if w is not None:
            row[WEIGHTS] = [float(x) for x in w]
        rows.append(row)
    return rows


def _check_weights(weights: Any, ids: list, labels: list, row: int) -> list[float]:
    if not isinstance(weights, (list, tuple)) or len(weights) != len(ids):
        n = len(weights) if isinstance(weights, (list, tuple)) else "no"
        raise MaskLensError(f"{n} loss_weights for {len(ids)} input_ids.", row=row, field=WEIGHTS,
                            fix="give one weight in [0, 1] per token (0 where the label is -100), or drop the column.")
    out = []
    for pos, (w, y) in enumerate(zip(weights, labels)):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= w <= 1.0:
            raise MaskLensError(f"weight {w!r} at position {pos} is not a number in [0, 1].", row=row, field=WEIGHTS,
                                fix="weights lie between 0 (not trained) and 1 (trained fully).")
        if (y == IGNORE_INDEX) != (w == 0):
            raise MaskLensError(
                f"position {pos} has label {y} and weight {w}: a weight is 0 exactly where the label is -100.",
                row=row, field=WEIGHTS,
                fix="set the label to the token id where the weight is > 0, and to -100 where it is 0.")
        out.append(float(w))
    return out


def prepare_examples(examples: list[dict], config: TrainConfig) -> tuple[list[dict], dict[str, int]]:
    """Validate the engine's examples and apply TRL's own truncation + drop, so the trainer changes nothing.

    Keeps `input_ids`, `labels` and, when any example has them, `loss_weights` (every kept row then has them: 1 where
    the label trains, 0 where it is -100, for rows without their own). Raises MaskLensError naming the row for a
    malformed example; labels must be unshifted: each one is -100 or the token id at the same position; a weight lies
    in [0, 1] and is 0 exactly where the label is -100. Weights are truncated with the ids; a row whose weights are
    all 0 (no trained token) is dropped, as TRL drops fully masked rows.
    Example: [{"input_ids": [5, 6], "labels": [-100, -100]}, {"input_ids": [7], "labels": [7]}]
             -> ([{"input_ids": [7], "labels": [7]}], {"n_examples": 1, "n_dropped": 1, "n_truncated": 0})
    """
    if not examples:
        raise MaskLensError("no examples to train on.", fix="load a data file with at least one example.")
    truncate = config.max_length if not config.packing else None  # TRL: packing truncates while packing
    weighted = any(weights_of(ex) is not None for ex in examples)
    kept, dropped, truncated = [], 0, 0
    for row, ex in enumerate(examples):
        ids, labels = ids_and_labels(ex)
        if not isinstance(ids, (list, tuple)) or not ids:
            raise MaskLensError("missing or empty input_ids.", row=row, field="input_ids",
                                fix="render the examples with the engine first.")
        if not isinstance(labels, (list, tuple)) or len(labels) != len(ids):
            n = len(labels) if isinstance(labels, (list, tuple)) else "no"
            raise MaskLensError(f"{n} labels for {len(ids)} input_ids.", row=row, field="labels",
                                fix="labels must have one entry per token (-100 for tokens that do not train).")
        for pos, (t, y) in enumerate(zip(ids, labels)):
            if y != IGNORE_INDEX and y != t:
                raise MaskLensError(
                    f"label {y} at position {pos} is neither -100 nor the token id {t}.", row=row, field="labels",
                    fix="labels are unshifted (the model shifts them): copy the token id, or -100 to not train it.")
        ids, labels = [int(t) for t in ids], [int(y) for y in labels]
        weights = None
        if weighted:
            w = weights_of(ex)
            weights = (_check_weights(w, ids, labels, row) if w is not None
                       else [0.0 if y == IGNORE_INDEX else 1.0 for y in labels])
        if truncate is not None and len(ids) > truncate:
            ids, labels, truncated = ids[:truncate], labels[:truncate], truncated + 1
            weights = weights[:truncate] if weights is not None else None
        if all(y == IGNORE_INDEX for y in labels):
            dropped += 1
            continue
        kept.append({"input_ids": ids, "labels": labels, **({WEIGHTS: weights} if weights is not None else {})})
    if not kept:
        raise MaskLensError(
            f"all {len(examples)} examples are fully masked (no token trains)"
            + (f" after truncation to max_length={truncate}" if truncated else "") + ".",
            fix="check the mask configuration (does any assistant token train?) or raise max_length.")
    return kept, {"n_examples": len(kept), "n_dropped": dropped, "n_truncated": truncated}


def _device_kind() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sft_config_kwargs(config: TrainConfig, output_dir: str | os.PathLike) -> dict[str, Any]:
    """The SFTConfig arguments of a run, as plain values: the in-process run and the exported script use these.
    Device-dependent ones (use_cpu, bf16) are left out and decided where the run happens."""
    padding_free = config.packing and config.packing_strategy in ("bfd", "bfd_split")  # as SFTTrainer decides
    return dict(
        output_dir=str(output_dir),
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        packing=config.packing,
        packing_strategy=config.packing_strategy,
        activation_checkpointing=config.gradient_checkpointing,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        shuffle_dataset=False,
        eval_strategy="no",
        save_strategy="no",  # only the final weights, saved explicitly
        report_to=config.report_to,
        loss_type=config.loss_type,
        dataloader_num_workers=0,
        # "non_padding" counts tokens != pad when there is no attention mask (padding-free packing), and SmolLM2's
        # pad token is its EOS <|im_end|>: padding-free batches have no padding, so count them all.
        include_num_input_tokens_seen="all" if padding_free else "non_padding",
        disable_tqdm=True,  # log.txt gets one line per logged step instead of progress-bar redraws
    )


def lora_config(config: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.lora_target_modules, task_type="CAUSAL_LM")


class _StopFlag:
    """Set by a SIGTERM (in the child) or by tests; the STOP file is checked beside it."""

    def __init__(self):
        self.event = threading.Event()


_STOP = _StopFlag()


def request_stop() -> bool:
    """Ask the training in this process to stop after the current step (the child's SIGTERM handler calls this).
    Returns True when a stop had already been asked for."""
    already = _STOP.event.is_set()
    _STOP.event.set()
    return already


def stop_requested() -> bool:
    return _STOP.event.is_set()


def _make_metrics_callback(run_dir: Path):
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        """One JSON line per logged step in metrics.jsonl (flushed + fsynced), and a clean stop on STOP/SIGTERM."""

        def __init__(self):
            self.path = run_dir / METRICS_FILE
            self.stop_path = run_dir / STOP_FILE
            self.started = None
            self.stopped = False

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" not in logs:  # the end-of-training summary (train_loss, train_runtime): goes to run.json
                return
            elapsed = time.monotonic() - (self.started or time.monotonic())
            step = state.global_step
            record = {
                "step": step,
                "loss": logs.get("loss"),
                "learning_rate": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"),
                "epoch": logs.get("epoch"),
                "elapsed_s": round(elapsed, 3),
                "tokens_seen": logs.get("num_input_tokens_seen"),
                "eta_s": round(elapsed / step * (state.max_steps - step), 1) if step else None,
            }
            # NaN/inf are not JSON: write null and keep the line parseable
            record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())

        def on_step_end(self, args, state, control, **kwargs):
            if _STOP.event.is_set() or self.stop_path.exists():
                self.stopped = True
                control.should_training_stop = True

    return MetricsCallback()


def _finite(obj: Any) -> Any:
    """NaN/inf are not JSON: None instead, at any depth."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _append_eval_point(run_dir: Path, step: int, loss: float) -> None:
    with open(run_dir / EVAL_CURVE_FILE, "a") as f:
        f.write(json.dumps(_finite({"step": step, "loss": loss})) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _make_eval_callback(run_dir: Path, eval_set, every: int):
    from transformers import TrainerCallback

    from .evaluate import eval_loss  # noqa: PLC0415

    class EvalCallback(TrainerCallback):
        """Held-out eval loss every `every` steps (the last step is scored by the final evaluation)."""

        seconds = 0.0  # time spent evaluating, inside the training time

        def on_step_end(self, args, state, control, model=None, **kwargs):
            step = state.global_step
            if model is not None and step % every == 0 and step < state.max_steps and state.is_world_process_zero:
                started = time.monotonic()
                _append_eval_point(run_dir, step, eval_loss(model, eval_set)["loss"])
                self.seconds += time.monotonic() - started

    return EvalCallback()


def check_trainer_labels(trainer, kept: list[dict]) -> None:
    """Assert the trainer's prepared dataset holds exactly the engine's labels.

    Without packing: the same examples, token for token. With bfd packing (examples kept whole, none longer than
    max_length): the packs hold the same trained tokens. Wrapped packing cuts examples anywhere: not checked.
    """
    ds = trainer.train_dataset
    if trainer.args.packing:
        if trainer.args.packing_strategy in ("bfd", "bfd_split") and all(
            len(e["input_ids"]) <= trainer.args.max_length for e in kept
        ):
            trained = Counter(y for e in kept for y in e["labels"] if y != IGNORE_INDEX)
            packed = Counter(y for labels in ds["labels"] for y in labels if y != IGNORE_INDEX)
            assert packed == trained, "packing changed which tokens train: not the engine's mask"
        return
    assert len(ds) == len(kept), f"the trainer dropped examples: {len(ds)} of {len(kept)} left"
    assert ds["input_ids"] == [e["input_ids"] for e in kept], "the trainer changed input_ids"
    assert ds["labels"] == [e["labels"] for e in kept], "the trainer changed the labels: not the engine's mask"
    if WEIGHTS in kept[0]:
        assert ds[WEIGHTS] == [e[WEIGHTS] for e in kept], "the trainer changed the loss weights"


def run_training(
    examples: list[dict],
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    on_trainer: Callable[[Any], None] | None = None,
) -> TrainResult:
    """Fine-tune `config.model` with TRL's SFTTrainer on exactly these pre-tokenized examples.

    Writes run_dir/metrics.jsonl (one JSON line per logged step) and, if config.save_final, run_dir/final/ (weights
    or LoRA adapter + tokenizer). Creating run_dir/STOP ends the run cleanly after the current step (status
    "stopped", weights still saved). `on_trainer(trainer)` is called after the trainer is built, before training:
    a test hook to inspect the dataset or a collated batch. Raises MaskLensError for bad examples or config.
    """
    from datasets import Dataset
    from transformers.utils import is_torch_bf16_gpu_available
    from trl import SFTConfig, SFTTrainer

    from ..models import load_model, load_tokenizer

    started = time.monotonic()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    kept, stats = prepare_examples(examples, config)
    tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
    model = load_model(config.model, trust_remote_code=config.trust_remote_code)
    cpu = _device_kind() == "cpu"
    args = SFTConfig(
        **sft_config_kwargs(config, run_dir / "trainer"),
        use_cpu=cpu,
        bf16=not cpu and is_torch_bf16_gpu_available(),
    )
    callback = _make_metrics_callback(run_dir)
    callbacks = [callback]
    eval_set = None
    if config.eval_set:
        from .evaluate import load_eval_set  # noqa: PLC0415

        eval_set = load_eval_set(config.eval_set)
        if config.eval_every_steps:
            callbacks.append(_make_eval_callback(run_dir, eval_set, config.eval_every_steps))
    columns = ["input_ids", "labels"] + ([WEIGHTS] if WEIGHTS in kept[0] else [])
    dataset = Dataset.from_dict({c: [e[c] for e in kept] for c in columns})
    if WEIGHTS in columns:  # fractional weights: sum(w * nll) / sum(w); else TRL's own loss, untouched
        from .weighted import WeightedSFTTrainer as trainer_class  # noqa: PLC0415
    else:
        trainer_class = SFTTrainer
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(config) if config.lora else None,
        callbacks=callbacks,
    )
    check_trainer_labels(trainer, kept)
    if on_trainer is not None:
        on_trainer(trainer)
    output = trainer.train()
    train_seconds = time.monotonic() - started
    with contextlib.suppress(OSError):  # Trainer's output_dir: empty, since nothing is saved mid-run
        os.rmdir(args.output_dir)
    final_dir = None
    if config.save_final:
        final_dir = run_dir / FINAL_DIR
        trainer.save_model(str(final_dir))
        tokenizer.save_pretrained(str(final_dir))
    if eval_set is not None and not callback.stopped:
        from .evaluate import evaluate_model  # noqa: PLC0415
        from .records import atomic_write_json  # noqa: PLC0415

        result = evaluate_model(trainer.model, eval_set, tokenizer, max_new_tokens=config.eval_max_new_tokens)
        periodic = sum(getattr(c, "seconds", 0.0) for c in callbacks[1:])
        result.update(step=trainer.state.global_step, train_seconds=round(train_seconds - periodic, 3),
                      periodic_eval_seconds=round(periodic, 3))
        _append_eval_point(run_dir, trainer.state.global_step, result["loss"])
        atomic_write_json(run_dir / EVAL_FILE, _finite(result))
    loss = output.training_loss
    return TrainResult(
        status="stopped" if callback.stopped else "completed",
        global_step=trainer.state.global_step,
        max_steps=config.max_steps,
        train_loss=loss if loss is not None and math.isfinite(loss) else None,
        seconds=round(time.monotonic() - started, 2),
        final_dir=str(final_dir) if final_dir else None,
        **stats,
    )


def sample_generations(
    model_dir_or_name: Any,
    prompts: list[list[dict]] | list[str],
    tokenizer: Any = None,
    max_new_tokens: int = 48,
) -> list[str]:
    """Greedy completions of held-out prompts, to compare a trained model with its base side by side.

    `model_dir_or_name`: a run's final/ directory (full weights or a LoRA adapter), any name `load_model` takes
    ('embedded', hub id, directory), or an already loaded model. Prompts are message lists or plain strings (a
    string becomes one user message when the tokenizer has a chat template); they are rendered with the
    generation prompt. Returns the new text only, special tokens removed.
    Example: sample_generations("embedded", ["What is 2+2?"]) -> ["2 + 2 = 4."]
    """
    import torch

    from ..models import load_model, load_tokenizer

    model = model_dir_or_name
    if isinstance(model_dir_or_name, (str, os.PathLike)) or model_dir_or_name is None:
        model = load_model(model_dir_or_name)
        if tokenizer is None:
            tokenizer = load_tokenizer(model_dir_or_name)
    if tokenizer is None:
        raise MaskLensError("a loaded model needs its tokenizer.", fix="pass tokenizer=...")
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    for prompt in prompts:
        if isinstance(prompt, str) and not tokenizer.chat_template:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
        else:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)["input_ids"]
        ids = ids.to(device)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            )
        outputs.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return outputs
