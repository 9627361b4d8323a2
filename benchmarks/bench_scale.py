"""Scale: `python -m core audit` over N synthetic conversations, with --num-proc 1 and 2.

Prints one table row per run: rows, processes, wall seconds, rows/s, speed-up over --num-proc 1, CPU seconds of the
CLI and its workers (getrusage RUSAGE_CHILDREN: load-independent), the peak RSS of the whole process tree (parent + workers) and of its largest single process, sampled every 0.1 s with psutil; at the end, the exact
largest RSS any child reached (resource.getrusage(RUSAGE_CHILDREN).ru_maxrss).

    .venv/bin/python benchmarks/bench_scale.py                      # 20,000 and 200,000 conversations
    .venv/bin/python benchmarks/bench_scale.py --million            # and 1,000,000
    .venv/bin/python benchmarks/bench_scale.py --sizes 2000 --num-proc 1 2

The data: multi-turn chats (a system prompt shared by most rows, 1-4 user/assistant exchanges of 5-60 words, some
assistant turns with weight 0), written once per size into --dir and reused. Audited with the embedded SmolLM2
tokenizer under assistant_only, as a user would run it (`python -m core audit ... --format json`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
WORDS = ("the model learns what the labels say and nothing else so every masked token is a choice someone made "
         "about which words matter in a conversation between a user and an assistant that answers questions about "
         "cooking travel code mathematics history weather music and the small details of daily life").split()
SYSTEMS = ["You are a helpful assistant.", "You are a concise assistant. Answer in one paragraph.", None]


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."


def conversation(rng: random.Random) -> dict:
    msgs = []
    system = rng.choices(SYSTEMS, weights=(6, 3, 1))[0]
    if system:
        msgs.append({"role": "system", "content": system})
    for _ in range(rng.randint(1, 4)):
        msgs.append({"role": "user", "content": sentence(rng, 5, 30)})
        m = {"role": "assistant", "content": sentence(rng, 10, 60)}
        if rng.random() < 0.05:
            m["weight"] = 0
        msgs.append(m)
    return {"messages": msgs}


def write_data(path: Path, n: int, seed: int = 0) -> Path:
    if path.exists() and sum(1 for _ in open(path, "rb")) == n:
        return path
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(json.dumps(conversation(rng)) + "\n")
    tmp.replace(path)
    return path


def tree_rss(p: psutil.Process) -> tuple[int, int]:
    """(sum, largest) RSS of a process and its descendants, in bytes."""
    sizes = []
    for q in [p, *p.children(recursive=True)]:
        try:
            sizes.append(q.memory_info().rss)
        except psutil.Error:
            pass
    return sum(sizes), max(sizes, default=0)


def run_audit(data: Path, num_proc: int, strategy: str) -> dict:
    """One `python -m core audit` in a child; its wall time, peak tree RSS and its report."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [sys.executable, "-m", "core", "audit", "--data", str(data), "--strategy", strategy, "--format", "json",
           "--num-proc", str(num_proc)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    ps = psutil.Process(proc.pid)
    peak = largest = 0
    done = threading.Event()

    def sample():
        nonlocal peak, largest
        while not done.is_set():
            try:
                total, one = tree_rss(ps)
                peak, largest = max(peak, total), max(largest, one)
            except psutil.Error:
                pass
            done.wait(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"audit failed ({proc.returncode}): {err[-2000:]}")
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the CLI and its workers, once waited for
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "peak_tree_mb": peak / 2**20, "largest_mb": largest / 2**20,
            "report": json.loads(out)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    ap.add_argument("--million", action="store_true", help="also 1,000,000 conversations")
    ap.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--strategy", default="assistant_only")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "masklens_bench_scale",
                    help="where the generated JSONL files are kept (reused across runs)")
    ns = ap.parse_args(argv)
    sizes = ns.sizes + ([1_000_000] if ns.million else [])
    ns.dir.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} CPUs; `python -m core audit --strategy {ns.strategy} --format json`; embedded SmolLM2")
    print(f"load average at start: {os.getloadavg()[0]:.1f} (other work on the machine slows wall times)")
    print("| rows | --num-proc | wall s | rows/s | speed-up | CPU s (all processes) | peak RSS MB (all processes) | "
          "largest process MB | tokens | file MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        data = write_data(ns.dir / f"chat_{n}.jsonl", n)
        base = None
        for k in ns.num_proc:
            r = run_audit(data, k, ns.strategy)
            rep = r["report"]
            assert rep["rows"] == n, rep
            if base is None:
                base = (r["wall_s"], rep)
            else:
                assert rep == base[1], "reports differ between --num-proc values"
            print(f"| {n:,} | {k} | {r['wall_s']:.1f} | {n / r['wall_s']:,.0f} | {base[0] / r['wall_s']:.2f}x | "
                  f"{r['cpu_s']:.0f} | "
                  f"{r['peak_tree_mb']:,.0f} | {r['largest_mb']:,.0f} | {rep['tokens']:,} | "
                  f"{data.stat().st_size / 2**20:,.0f} |", flush=True)
    # exact, not sampled: the largest RSS any child process (the CLI or one of its workers) reached in all runs
    print(f"\nmax RSS of any child process over all runs (getrusage RUSAGE_CHILDREN): "
          f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:,.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
