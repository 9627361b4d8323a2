"""Demonstration (not CI): the same short SFT run of the embedded SmolLM2 under different loss masks.

    .venv/bin/python benchmarks/demo_strategies.py [--steps 30] [--strategies full assistant_only last_assistant]

Data: assets/samples/chat_multiturn.jsonl. Its last 2 conversations are held out; the first 4 are repeated to fill
steps x batch examples. Every strategy trains with the same seed, model, steps, batch and learning rate, each in the
child process the app and the CLI use (core.runs), one after the other.

The training losses are NOT comparable across masks: each is averaged over the tokens its own mask trains (`full`
averages over system prompts, user turns and template tokens too, many of them easy). What is comparable: every
trained model's loss on the same tokens, the assistant tokens (assistant_only mask) of the held-out conversations and
of the training conversations, computed here after training. Greedy samples from each model, on a held-out prompt
and on the first turn of a training conversation (an answer every mask but last_assistant trains), show what the
numbers mean. Two held-out conversations are far too few to measure generalisation: read that column as a check
that nothing broke, not as a result.

Writes assets/demo_loss.png and prints a Markdown table: seconds per step on this CPU (step 1, the warm-up, left
out), peak RSS of each training child (os.wait4's rusage; resource.getrusage(RUSAGE_CHILDREN) for all of them), and
the losses.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SAMPLE = REPO / "assets" / "samples" / "chat_multiturn.jsonl"
FIGURE = REPO / "assets" / "demo_loss.png"
N_HELD_OUT = 2
COLOURS = {"full": "#64748b", "assistant_only": "#059669", "last_assistant": "#d97706", "base": "#cbd5e1"}


def render(examples, tokenizer, strategy):
    from core.masking.engine import MaskConfig, render_examples

    return [{"input_ids": r.input_ids, "labels": r.labels}
            for r in render_examples(examples, tokenizer, MaskConfig(strategy=strategy))]


def train(strategy, data, args, root):
    """One run in a child process; returns (run record, metrics, peak RSS in MB, wall seconds)."""
    from core.training import runs
    from core.training.train import TrainConfig

    config = TrainConfig(model="embedded", max_steps=args.steps, per_device_train_batch_size=args.batch,
                         learning_rate=args.lr, seed=args.seed, max_length=1024,
                         mask_config={"strategy": strategy}, data_path=str(SAMPLE))
    started = time.perf_counter()
    handle = runs.start_run(data, config, root, name=strategy)
    _, status, usage = os.wait4(handle.process.pid, 0)  # this child's own peak RSS (ru_maxrss: KiB on Linux)
    handle.process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    record = runs.read_run(handle.run_dir)
    if record["status"] != "completed":
        sys.exit(f"{strategy}: run {record['status']}: {record.get('error')}\n{runs.read_log(handle.run_dir)[-3000:]}")
    return record, runs.read_metrics(handle.run_dir), usage.ru_maxrss / 1024, wall


def assistant_loss(model, rendered):
    """Mean NLL per assistant token (token-weighted over all the examples), the same tokens for every model."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for ex in rendered:
            ids = torch.tensor([ex["input_ids"]])
            labels = torch.tensor([ex["labels"]])
            logits = model(input_ids=ids).logits[0, :-1].float()
            target = labels[0, 1:]
            keep = target != -100
            nll = torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum")
            total += nll.item()
            count += int(keep.sum())
    return total / count


def prompt_of(example, turn=-1):
    """The messages before the example's `turn`-th assistant message."""
    return example.messages[:[i for i, m in enumerate(example.messages) if m["role"] == "assistant"][turn]]


def sample_prompts(train_ex, held_ex):
    """A held-out prompt, and the first turn of a training conversation with several assistant turns: every mask
    but last_assistant trains that first answer."""
    multi = [e for e in train_ex if sum(m["role"] == "assistant" for m in e.messages) >= 2]
    first = min(multi, key=lambda e: len(e.messages[len(prompt_of(e, 0))]["content"]))
    return {"held out": prompt_of(held_ex[-1]), "training, first turn": prompt_of(first, 0)}


def per_step(metrics):
    if len(metrics) < 2:
        return float("nan")
    return (metrics[-1]["elapsed_s"] - metrics[0]["elapsed_s"]) / (metrics[-1]["step"] - metrics[0]["step"])


def figure(results, base, path, steps):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.4), dpi=120, layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.35, 1])
    for r in results:
        xs = [m["step"] for m in r["metrics"] if m["loss"] is not None]
        ys = [m["loss"] for m in r["metrics"] if m["loss"] is not None]
        left.plot(xs, ys, label=f"{r['strategy']} ({r['trained']} of {r['tokens']} tokens trained)", color=COLOURS.get(r["strategy"]),
                  linewidth=1.8)
    left.set_title("Training loss: each over its OWN mask's tokens (not comparable across masks)", fontsize=10)
    left.set_xlabel("step")
    left.set_ylabel("loss")
    left.grid(alpha=0.3)
    left.legend(fontsize=8, frameon=False)
    names = ["base"] + [r["strategy"] for r in results]
    train_vals = [base["train"]] + [r["eval_train"] for r in results]
    held_vals = [base["held"]] + [r["eval_held"] for r in results]
    xs = range(len(names))
    w = 0.38
    b1 = right.bar([x - w / 2 for x in xs], train_vals, w, label="training conversations", color="#94a3b8")
    b2 = right.bar([x + w / 2 for x in xs], held_vals, w, label=f"held-out conversations ({N_HELD_OUT})",
                   color="#059669")
    for bars in (b1, b2):
        right.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    right.set_xticks(list(xs), names, fontsize=8)
    right.set_title(f"Comparable: loss on the assistant tokens only, after {steps} steps", fontsize=10)
    right.set_ylabel("mean NLL per assistant token")
    right.legend(fontsize=8, frameon=False)
    right.grid(alpha=0.3, axis="y")
    fig.savefig(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--strategies", nargs="+", default=["full", "assistant_only", "last_assistant"])
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--figure", type=Path, default=FIGURE)
    args = ap.parse_args()

    import torch

    from core.data.formats import load_examples
    from core.models import load_model, load_tokenizer
    from core.training.train import sample_generations

    tokenizer = load_tokenizer()
    examples = load_examples(SAMPLE)
    train_ex, held_ex = examples[:-N_HELD_OUT], examples[-N_HELD_OUT:]
    repeat = -(-args.steps * args.batch // len(train_ex))
    eval_train, eval_held = render(train_ex, tokenizer, "assistant_only"), render(held_ex, tokenizer, "assistant_only")
    prompts = sample_prompts(train_ex, held_ex)
    print(f"{len(train_ex)} training conversations x {repeat} = {len(train_ex) * repeat} examples, {len(held_ex)} held "
          f"out; {args.steps} steps, batch {args.batch}, lr {args.lr}, seed {args.seed}; torch threads "
          f"{torch.get_num_threads()}, {os.cpu_count()} CPUs", flush=True)

    base_model = load_model()
    base = {"train": assistant_loss(base_model, eval_train), "held": assistant_loss(base_model, eval_held),
            "samples": sample_generations(base_model, list(prompts.values()), tokenizer, args.max_new_tokens)}
    del base_model

    results = []
    with tempfile.TemporaryDirectory(prefix="masklens-demo-") as root:
        for strategy in args.strategies:
            data = render(train_ex, tokenizer, strategy) * repeat
            print(f"training {strategy} ...", flush=True)
            record, metrics, rss, wall = train(strategy, data, args, root)
            model = load_model(record["final_dir"])
            results.append({
                "strategy": strategy, "metrics": metrics, "rss_mb": rss, "wall": wall, "per_step": per_step(metrics),
                "first_step": metrics[0]["elapsed_s"], "final_loss": metrics[-1]["loss"],
                "trained": sum(sum(y != -100 for y in e["labels"]) for e in data[: len(train_ex)]),
                "tokens": sum(len(e["labels"]) for e in data[: len(train_ex)]),
                "eval_train": assistant_loss(model, eval_train), "eval_held": assistant_loss(model, eval_held),
                "samples": sample_generations(model, list(prompts.values()), tokenizer, args.max_new_tokens),
            })
            del model
            r = results[-1]
            print(f"  {r['per_step']:.2f} s/step, peak RSS {rss:.0f} MB, final loss {r['final_loss']:.3f}, held-out "
                  f"assistant loss {r['eval_held']:.3f}", flush=True)
    all_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    args.figure.parent.mkdir(parents=True, exist_ok=True)
    figure(results, base, args.figure, args.steps)
    print(f"\nwrote {args.figure.relative_to(REPO) if args.figure.is_relative_to(REPO) else args.figure}\n")
    print("| strategy | trained / all tokens | s/step | step 1 (warm-up) | run wall | peak RSS | final loss (own mask) "
          "| assistant-token loss, train | assistant-token loss, held out |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| base model | – | – | – | – | – | – | {base['train']:.3f} | {base['held']:.3f} |")
    for r in results:
        print(f"| {r['strategy']} | {r['trained']} / {r['tokens']} | {r['per_step']:.2f} s | {r['first_step']:.1f} s | {r['wall']:.0f} s "
              f"| {r['rss_mb']:.0f} MB | {r['final_loss']:.3f} | {r['eval_train']:.3f} | {r['eval_held']:.3f} |")
    print(f"\npeak RSS of any training child (getrusage RUSAGE_CHILDREN): {all_children:.0f} MB")
    for k, (what, prompt) in enumerate(prompts.items()):
        print(f"\nsample ({what} prompt, greedy): {prompt[-1]['content']!r}")
        print(f"- base: {base['samples'][k]!r}")
        for r in results:
            print(f"- {r['strategy']}: {r['samples'][k]!r}")


if __name__ == "__main__":
    main()
