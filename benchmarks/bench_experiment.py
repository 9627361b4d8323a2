"""What loss weights and the held-out evaluation cost, at the demo's settings (assets/experiments/demo.yaml).

1. A weighted-loss training step (WeightedSFTTrainer, prompt_loss_weight 0.1: fractional weights) against an
   unweighted one (TRL's SFTTrainer, assistant_only), the same model, batch and rows: forward + backward +
   optimizer step, interleaved A/B so that machine load hits both alike; median seconds per step. Target <= 1.05x.
2. One demo run: its training time against its final held-out evaluation (loss on the held-out assistant tokens +
   greedy generation of every held-out prompt). Target: evaluation <= 25% of training.

Prints a Markdown table. Not a test: timings on a shared machine move; compare the ratios measured in one run.

    python benchmarks/bench_experiment.py [--steps 12] [--skip-run]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _trainer(cls, rows, cfg, model):
    from datasets import Dataset
    from trl import SFTConfig

    from core.models import load_tokenizer
    from core.training.train import lora_config, sft_config_kwargs

    cols = [c for c in ("input_ids", "labels", "loss_weights") if c in rows[0]]
    args = SFTConfig(**{**sft_config_kwargs(cfg, tempfile.mkdtemp()), "logging_steps": 10_000}, use_cpu=True)
    return cls(model=model, args=args, train_dataset=Dataset.from_dict({c: [r[c] for r in rows] for c in cols}),
               processing_class=load_tokenizer(cfg.model), peft_config=lora_config(cfg) if cfg.lora else None)


def step_ratio(demo, steps: int) -> dict:
    import torch
    from trl import SFTTrainer

    from core.data.formats import load_examples
    from core.masking.engine import render_examples
    from core.models import load_model, load_tokenizer
    from core.training.evaluate import select_rows
    from core.training.train import TrainConfig, prepare_examples, training_rows
    from core.training.weighted import WeightedSFTTrainer

    tok = load_tokenizer(demo.model)
    examples = load_examples(demo.data)
    held = set(select_rows(len(examples), demo.held_out))
    train = [e for i, e in enumerate(examples) if i not in held]
    by_name = {c.name: c for c in demo.configs}
    cfg = TrainConfig(**demo.train, model=demo.model)
    plain = prepare_examples(training_rows(render_examples(train, tok, demo.mask_config(by_name["assistant_only"]))),
                             cfg)[0]
    weighted = prepare_examples(training_rows(render_examples(train, tok, demo.mask_config(by_name["plw_0.1"]))),
                                cfg)[0]
    assert "loss_weights" not in plain[0] and "loss_weights" in weighted[0]
    trainers = {}
    for name, cls, rows in (("unweighted (TRL SFTTrainer)", SFTTrainer, plain),
                            ("weighted (WeightedSFTTrainer)", WeightedSFTTrainer, weighted)):
        torch.manual_seed(0)
        t = _trainer(cls, rows, cfg, load_model(demo.model))
        t.create_optimizer_and_scheduler(num_training_steps=steps + 2)
        batches = [t.data_collator([t.train_dataset[i] for i in range(j, j + cfg.per_device_train_batch_size)])
                   for j in range(0, cfg.per_device_train_batch_size * 2, cfg.per_device_train_batch_size)]
        trainers[name] = (t, batches)
    times: dict[str, list[float]] = {n: [] for n in trainers}
    for k in range(steps + 1):  # the first round warms up and is not counted
        for name, (t, batches) in trainers.items():
            batch = batches[k % len(batches)]
            n_items = t._get_num_items_in_batch([batch], t.args.device)
            t.model.train()
            start = time.perf_counter()
            t.training_step(t.model, dict(batch), n_items)
            t.optimizer.step()
            t.optimizer.zero_grad()
            if k:
                times[name].append(time.perf_counter() - start)
    med = {n: statistics.median(v) for n, v in times.items()}
    return {"median_s": med, "ratio": med["weighted (WeightedSFTTrainer)"] / med["unweighted (TRL SFTTrainer)"],
            "tokens_per_batch": sum(len(r["input_ids"]) for r in plain[:cfg.per_device_train_batch_size])}


def demo_run(demo) -> dict:
    """One demo run (assistant_only, first seed) with its final evaluation, in this process."""
    from core.data.formats import load_examples
    from core.masking.engine import render_examples
    from core.models import load_tokenizer
    from core.training.evaluate import build_eval_set, select_rows
    from core.training.train import run_training, training_rows

    tok = load_tokenizer(demo.model)
    examples = load_examples(demo.data)
    held = select_rows(len(examples), demo.held_out)
    train = [e for i, e in enumerate(examples) if i not in set(held)]
    work = Path(tempfile.mkdtemp(prefix="bench-exp-"))
    es = build_eval_set([examples[i] for i in held], tok, template_source=demo.template_source)
    es.save(work / "eval_set.json")
    entry = demo.configs[0]
    cfg = demo.train_config(entry, demo.seeds[0], str(work / "eval_set.json"))
    rows = training_rows(render_examples(train, tok, demo.mask_config(entry)))
    result = run_training(rows, cfg, work / "run")
    import json

    ev = json.loads((work / "run" / "eval.json").read_text())
    return {"train_s": ev["train_seconds"], "eval_s": ev["seconds"], "eval_loss_s": ev["loss_seconds"],
            "periodic_s": ev.get("periodic_eval_seconds", 0.0), "every": cfg.eval_every_steps,
            "steps": result.global_step, "eval_rows": len(es.rows), "eval_tokens": es.tokens,
            "max_new_tokens": cfg.eval_max_new_tokens, "mean_new_tokens": ev.get("mean_new_tokens")}


def main() -> None:
    from core.training.experiment import load_experiment_config

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "assets" / "experiments" / "demo.yaml"))
    p.add_argument("--steps", type=int, default=12, help="timed steps per trainer (default 12)")
    p.add_argument("--skip-run", action="store_true", help="only the step ratio")
    ns = p.parse_args()
    demo = load_experiment_config(ns.config)
    s = step_ratio(demo, ns.steps)
    batch = demo.train.get("per_device_train_batch_size")
    print(f"\n### Weighted vs unweighted training step ({demo.model}, batch {batch},"
          f" LoRA {bool(demo.train.get('lora'))}, {s['tokens_per_batch']} tokens/batch, median of {ns.steps})\n")
    print("| trainer | s/step |\n|---|---:|")
    for name, v in s["median_s"].items():
        print(f"| {name} | {v:.3f} |")
    print(f"| **ratio weighted / unweighted** | **{s['ratio']:.3f}x** (target <= 1.05x) |")
    if not ns.skip_run:
        r = demo_run(demo)
        share = (r["eval_s"] + r["periodic_s"]) / r["train_s"]
        print(f"\n### Evaluation against training, one demo run ({r['steps']} steps; {r['eval_rows']} held-out rows, "
              f"{r['eval_tokens']} scored tokens, greedy <= {r['max_new_tokens']} new tokens, mean "
              f"{r['mean_new_tokens']:.1f})\n")
        print("| | s |\n|---|---:|")
        print(f"| training (model load + {r['steps']} steps, periodic evaluations excluded) | {r['train_s']:.1f} |")
        print(f"| periodic held-out loss (every {r['every']} steps) | {r['periodic_s']:.1f} |")
        print(f"| final evaluation: held-out loss | {r['eval_loss_s']:.1f} |")
        print(f"| final evaluation: loss + generation | {r['eval_s']:.1f} |")
        print(f"| **all evaluation / training** | **{100 * share:.0f}%** (target <= 25%) |")


if __name__ == "__main__":
    main()
