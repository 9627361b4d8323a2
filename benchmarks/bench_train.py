"""Training throughput through MaskLens vs plain TRL: does MaskLens' training layer cost anything?

    .venv/bin/python benchmarks/bench_train.py [--steps 20] [--batch 4] [--rounds 1] [--model embedded]

Both arms train the same model (the embedded SmolLM2 by default; --model takes a local checkpoint) on the same
pre-tokenized examples (the engine's assistant_only labels of assets/samples/chat_multiturn.jsonl, repeated to fill
steps x batch) with the same SFTConfig (core.train.sft_config_kwargs: same steps, batch, seed, learning rate):
  masklens  core.train.run_training: example checks, the trainer-dataset assertion, metrics.jsonl written and fsynced
            every step, the STOP-file check every step
  trl       AutoModelForCausalLM + SFTTrainer(train_dataset=Dataset(input_ids, labels)) + train(), nothing else
Timed by the same TrainerCallback on both: the training loop (on_train_begin -> on_train_end) and each step; tokens =
the trainer's num_input_tokens_seen. Model loading and trainer construction are reported apart ("setup").
The order alternates (masklens, trl, trl, masklens per round) in one process to cancel warm-up and drift.
Prints a Markdown table; target: masklens tokens/s >= 0.95 x trl.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SAMPLE = REPO / "assets" / "samples" / "chat_multiturn.jsonl"


def make_timer():
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self):
            self.steps, self.begin, self.end, self.tokens, self.loss = [], None, None, None, None

        def on_train_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            self._s = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(time.perf_counter() - self._s)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.loss = logs["loss"]

        def on_train_end(self, args, state, control, **kwargs):
            self.end = time.perf_counter()
            self.tokens = int(state.num_input_tokens_seen)

    return Timer()


def run_masklens(data, config, work):
    from core.training.train import run_training

    timer = make_timer()
    started = time.perf_counter()
    run_training(data, config, work / "masklens", on_trainer=lambda trainer: trainer.add_callback(timer))
    return timer, time.perf_counter() - started


def run_trl(data, config, work):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from core.models import resolve_model_path
    from core.training.train import sft_config_kwargs

    timer = make_timer()
    started = time.perf_counter()
    path = resolve_model_path(config.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    args = SFTConfig(**sft_config_kwargs(config, work / "trl"), use_cpu=True, bf16=False)
    dataset = Dataset.from_dict({"input_ids": [e["input_ids"] for e in data], "labels": [e["labels"] for e in data]})
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[timer])
    trainer.train()
    return timer, time.perf_counter() - started


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=1, help="each round runs masklens, trl, trl, masklens")
    ap.add_argument("--model", default="embedded")
    args = ap.parse_args()

    import torch

    from core.data.formats import load_examples
    from core.masking.engine import MaskConfig, render_examples
    from core.models import load_tokenizer
    from core.training.train import TrainConfig

    tokenizer = load_tokenizer(None if args.model == "embedded" else args.model)
    examples = load_examples(SAMPLE)
    rendered = render_examples(examples, tokenizer, MaskConfig(strategy="assistant_only"))
    one = [{"input_ids": r.input_ids, "labels": r.labels} for r in rendered]
    data = one * -(-args.steps * args.batch // len(one))
    config = TrainConfig(model=args.model, max_steps=args.steps, per_device_train_batch_size=args.batch,
                         save_final=False, mask_config={"strategy": "assistant_only"})
    print(f"{args.model}: {len(data)} examples ({sum(len(e['input_ids']) for e in one) / len(one):.0f} tokens each on "
          f"average), {args.steps} steps, batch {args.batch}; torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs", flush=True)

    arms = {"masklens": run_masklens, "trl": run_trl}
    results = {name: [] for name in arms}
    with tempfile.TemporaryDirectory(prefix="masklens-bench-") as tmp:
        for rnd in range(args.rounds):
            for name in ("masklens", "trl", "trl", "masklens"):
                gc.collect()
                work = Path(tmp) / f"{rnd}-{name}-{len(results[name])}"
                timer, wall = arms[name](data, config, work)
                train_s = timer.end - timer.begin
                results[name].append({"train_s": train_s, "wall": wall, "tokens": timer.tokens, "loss": timer.loss,
                                      "steps": timer.steps})
                print(f"  {name:8s} {timer.tokens / train_s:7.1f} tokens/s  loop {train_s:6.1f} s  "
                      f"median step {statistics.median(timer.steps):.2f} s  setup {wall - train_s:5.1f} s  "
                      f"last loss {timer.loss}", flush=True)

    def agg(rs):
        tokens, secs = sum(r["tokens"] for r in rs), sum(r["train_s"] for r in rs)
        steps = [s for r in rs for s in r["steps"][1:]]  # the first step of each run warms up
        return {"tps": tokens / secs, "median_step": statistics.median(steps), "setup": statistics.median(
            r["wall"] - r["train_s"] for r in rs), "tokens": rs[0]["tokens"], "loss": rs[0]["loss"]}

    m, t = agg(results["masklens"]), agg(results["trl"])
    print()
    print("| arm | runs | tokens per run | tokens/s (training loop) | median s/step (step 1 left out) | setup (load + init) "
          "| last logged loss |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, a in (("MaskLens run_training", m), ("plain TRL SFTTrainer", t)):
        n = len(results["masklens" if name.startswith("MaskLens") else "trl"])
        print(f"| {name} | {n} | {a['tokens']} | {a['tps']:.1f} | {a['median_step']:.2f} | {a['setup']:.1f} s "
              f"| {a['loss']:.4f} |")
    ratio = m["tps"] / t["tps"]
    step_ratio = t["median_step"] / m["median_step"]
    print(f"\nthroughput ratio MaskLens / TRL: {ratio:.3f} (tokens/s); {step_ratio:.3f} (median step time) — target >= "
          f"0.95: {'PASS' if ratio >= 0.95 else 'FAIL'}")
    same = all(r["tokens"] == m["tokens"] for rs in results.values() for r in rs)
    print(f"same tokens in every run: {same}; same last loss: "
          f"{len({round(r['loss'], 4) for rs in results.values() for r in rs}) == 1}")
    return 0 if ratio >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
