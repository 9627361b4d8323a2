"""What bounded rendering costs: the embedded SmolLM2 template rendered in-process vs through core.sandbox.

    .venv/bin/python benchmarks/bench_sandbox.py [--n 2000] [--batch 512] [--repeat 11]

Data: bench_engine.py's N synthetic multi-turn conversations. In-process = core.templates.render per conversation
(what the engine calls today); sandboxed = render_batch in batches of --batch through the worker pool (started and
warmed before timing; its start-up is reported apart). Texts and generation spans are checked identical first.

Two measures, because this 2-core machine is shared: wall seconds (best of --repeat, median in brackets) and CPU
seconds (parent + workers, best of --repeat), which a loaded machine disturbs far less; on an idle machine the wall
time of a sequential render_batch is about its CPU time. The last rows are the floor the engine is compared with
(render + one batch tokenize) done in-process vs pipelined: the worker renders batch k+1 (submit_batch) while this
process tokenizes batch k. The overhead is also given as a share of the engine's total for the same data
(render_examples, assistant_only; README: 0.82 s on a quiet machine).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_engine import conversations  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")


def worker_cpu() -> float:
    """CPU seconds used so far by this process's render workers (from /proc)."""
    from core.masking import sandbox

    total = 0.0
    pool = sandbox._POOL  # benchmark-only peek at the pool's workers
    for w in list(pool._all) if pool else []:
        try:
            with open(f"/proc/{w.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICK
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def run_once(fn):
    gc.collect()
    c0, w0, t0 = time.process_time(), worker_cpu(), time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, time.process_time() - c0 + worker_cpu() - w0, result


def measure(fns, repeat):
    """Run the functions in turn, `repeat` rounds (interleaved, so a change of load hits all of them alike).
    -> per function (best wall, median wall, best cpu, result). CPU = this process (all threads) + render workers."""
    runs = [[] for _ in fns]
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            runs[k].append(run_once(fn))
    return [(min(r[0] for r in rs), statistics.median(r[0] for r in rs), min(r[1] for r in rs), rs[-1][2])
            for rs in runs]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=11)
    ns = ap.parse_args()

    from core.masking import sandbox
    from core.masking.checks import add_generation_markers
    from core.data.formats import normalize_row
    from core.masking.engine import MaskConfig, encode_batch, render_examples
    from core.models import load_tokenizer
    from core.masking.templates import render

    tok = load_tokenizer()
    special = dict(tok.special_tokens_map)
    plain, marked = tok.chat_template, add_generation_markers(tok)
    rows = conversations(ns.n)
    msgs = [r["messages"] for r in rows]
    examples = [normalize_row(r, i) for i, r in enumerate(rows)]
    chunks = [msgs[s:s + ns.batch] for s in range(0, len(msgs), ns.batch)]

    t = time.perf_counter()
    sandbox.render_batch(plain, [{"messages": msgs[0], "kwargs": special}])
    startup = time.perf_counter() - t

    def inproc(template, gen):
        return [render(tok, m, template, return_generation=gen, special_map=special) for m in msgs]

    def inproc_one(m):
        return render(tok, m, plain, special_map=special)

    def jobs(chunk, gen=False):
        return [{"messages": m, "return_generation": gen, "kwargs": special} for m in chunk]

    def boxed(template, gen):
        out = []
        for chunk in chunks:
            out += sandbox.render_batch(template, jobs(chunk, gen))
        return out

    def floor_inproc():
        texts = [render(tok, m, plain, special_map=special)[0] for m in msgs]
        return encode_batch(tok, texts, False)

    def floor_pipelined():
        ids, fut = [], sandbox.submit_batch(plain, jobs(chunks[0]))
        for k in range(len(chunks)):
            texts = [r[0] for r in fut.result()]
            if k + 1 < len(chunks):
                fut = sandbox.submit_batch(plain, jobs(chunks[k + 1]))
            ids += encode_batch(tok, texts, False)
        return ids

    table = []
    for label, template, gen in (("plain template", plain, False), ("marked template + spans", marked, True)):
        assert boxed(template, gen) == inproc(template, gen), f"{label}: sandboxed rendering differs"
        table.append((label, *measure([lambda: inproc(template, gen), lambda: boxed(template, gen)], ns.repeat)))
    fi, fp = measure([floor_inproc, floor_pipelined], ns.repeat)
    assert [e.ids for e in fi[3]] == [e.ids for e in fp[3]], "pipelined floor tokenized differently"
    table.append(("floor: render + tokenize", fi, fp))
    one = jobs(msgs[:1])
    lat_in, lat_box = measure([lambda: [inproc_one(m) for m in msgs[:100]],
                               lambda: [sandbox.render_batch(plain, one) for _ in range(100)]], ns.repeat)
    eng = measure([lambda: render_examples(examples, tok, MaskConfig(strategy="assistant_only"))], 3)[0]
    sandbox.shutdown()

    load = os.getloadavg()[0]
    print(f"{ns.n} conversations, batches of {ns.batch}, SmolLM2 template; best of {ns.repeat} (median in brackets); "
          f"load average {load:.1f} on {os.cpu_count()} cores")
    print(f"worker start-up (once per process, not in the timings): {startup:.2f} s")
    print(f"{'':26} {'in-process wall':>17} {'sandboxed wall':>17} {'overhead':>9} {'CPU in':>7} {'CPU sbx':>7} "
          f"{'CPU +':>6} {'% render':>8} {'% engine':>8}")
    for label, a, b in table:
        over, cover = b[0] - a[0], b[2] - a[2]
        print(f"{label:26} {a[0]:7.3f} ({a[1]:6.3f}) {b[0]:7.3f} ({b[1]:6.3f}) {over:+9.3f} {a[2]:7.3f} {b[2]:7.3f} "
              f"{cover:+6.3f} {100 * over / a[0]:+7.0f}% {100 * over / eng[0]:+7.1f}%")
    print(f"one conversation per call (the app's token view), 100 calls: in-process {lat_in[0] * 10:.2f} ms/call, "
          f"render_batch {lat_box[0] * 10:.2f} ms/call")
    print(f"engine total (render_examples, assistant_only): wall {eng[0]:.3f} s (median {eng[1]:.3f}), CPU {eng[2]:.3f} s"
          f"; '% render' and '% engine' = wall overhead / in-process render or engine wall (best of each)")
    print("(last row's sandboxed column: the worker renders batch k+1 while this process tokenizes batch k)")
    print("texts, spans and token ids identical to in-process rendering: yes")


if __name__ == "__main__":
    main()
