"""`core render` end to end, and the time of each stage, next to the floor (render + tokenize) and TRL's preparation.

    .venv/bin/python benchmarks/bench_stages.py [--n 20000] [--data varied|shared] [--repeat 2]

Data: N synthetic multi-turn conversations (benchmarks/bench_engine.py's generator) written as JSONL; the embedded
SmolLM2 tokenizer; `assistant_only` (SmolLM2's template is not one TRL can patch: MaskLens's own masking).
- end to end: core.pipeline.render_to_file (read, schema pass, normalise, render, locate, decide, tokenize, labels,
  findings, JSON lines written), the tokenizer loaded beforehand: as `core render` runs by default (--num-proc auto:
  here one worker per core, forked with the tokenizer; started and stopped inside each timed run, so their word caches
  start empty; CPU counts the workers'), then as `--num-proc 1` runs (this process, two chunks at once in threads),
  and again one chunk at a time (THREADS=1);
- stages: the same work done stage by stage with a timer around each (core.masking's stage functions called as the
  engine calls them, chunks of 512);
- floor: jinja render of every conversation in one call + one encode_batch of all texts (nothing else), the
  Encodings let go before the clock stops, as end to end lets go of its own;
- TRL: SFTTrainer._prepare_dataset with assistant_only_loss on the {% generation %}-marked twin of the same template
  (the labels are checked equal to MaskLens's first).
Targets (issue #16): end to end <= 1.2x the floor and <= 0.5x TRL on varied data; <= 1.0x the floor where prompts
repeat (--data shared). End to end and the floors run in interleaved rounds (--repeat of them; the machine is
shared and its speed drifts: runs side by side see the same stretch); each line gives its best round, and the
per-round ratios are printed too.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_engine import conversations, shared_conversations  # noqa: E402


def cpu_s() -> float:
    """CPU seconds of this process and of its children that have ended (forked workers, once stopped)."""
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def timed_run(fn):
    """(wall seconds, CPU seconds of this process and its ended children, result) of one run."""
    gc.collect()
    t, c = time.perf_counter(), cpu_s()
    out = fn()
    return time.perf_counter() - t, cpu_s() - c, out


def best(fn, repeat):
    """(best wall seconds, best CPU seconds of this process, result) over `repeat` runs."""
    runs = [timed_run(fn) for _ in range(repeat)]
    return min(r[0] for r in runs), min(r[1] for r in runs), runs[-1][2]


def interleaved(fns: dict, rounds: int, keep: str) -> tuple[dict, object]:
    """Each function once per round, in turn (the machine's speed drifts: runs side by side see the same stretch).
    -> ({name: [(wall, cpu), ...]}, the last result of fns[keep])."""
    times, kept = defaultdict(list), None
    for _ in range(rounds):
        for name, fn in fns.items():
            w, c, out = timed_run(fn)
            times[name].append((w, c))
            if name == keep:
                kept = out
    return times, kept


def cold(tok):
    from core.masking.encoding import SegmentEncoder

    seg = SegmentEncoder.for_tokenizer(tok)
    if seg is not None:
        seg.cache.clear()
        seg.cached_tokens = 0
        if seg.words is not None:
            seg.words.cache = {}


def stages(path: Path, tok, cfg) -> dict[str, float]:
    """The pipeline's work, stage by stage, each timed (seconds summed over chunks)."""
    from core.data.formats import schema_union
    from core.data.reader import iter_rows
    from core.gc_pause import gc_paused
    from core.masking.strategies import get_strategy

    t = defaultdict(float)
    cold(tok)

    def timed(name, fn, *a):  # wall seconds: the tokenizer's idle threads would pollute CPU time (run on a quiet box)
        s = time.perf_counter()
        r = fn(*a)
        t[name] += time.perf_counter() - s
        return r

    union = timed("read + schema pass (pass 1)", lambda: schema_union(o for _, o, _ in iter_rows(str(path))))
    rows = timed("read (pass 2)", lambda: list(iter_rows(str(path))))
    spec = get_strategy(cfg.strategy)
    for k in range(0, len(rows), 512):
        with gc_paused():  # as core.parallel and the engine work on a chunk
            _chunk_stages(rows[k:k + 512], path, union, tok, cfg, spec, timed)
    return dict(t)


def _chunk_stages(part, path, union, tok, cfg, spec, timed):
    """One chunk of 512 rows through the stages, each timed."""
    import orjson

    from core.data.formats import normalize_row, schema_findings
    from core.masking import engine as E
    from core.masking.decide import decide
    from core.masking.diagnose import diagnose
    from core.masking.labels import build_labels
    from core.masking.layout import locate
    from core.masking.rendering import render_batch

    notes = timed("schema findings", lambda: [schema_findings(union, o, i) for i, o, _ in part])
    exs = timed("normalise rows", lambda: [normalize_row(o, i, source=str(path), line=ln) for i, o, ln in part])
    for ex, n in zip(exs, notes):
        ex.notes.extend(n)
    batch = timed("  (batch set-up)", E._Batch.start, exs, tok, cfg, spec)
    rend = timed("1 render (jinja)", render_batch, exs, tok, batch.plan)
    staged = []
    for ex, r in zip(exs, rend):
        lay = timed("2 locate (spans)", locate, ex, r, batch.info_for, batch.eos)
        staged.append(E._Staged(ex, r, lay, timed("3 decide", decide, ex, r, lay, cfg, spec)))
    timed("  encode (tokenize)", E._encode, tok, staged)
    lctx = batch.label_context(tok, staged)
    recs = []
    for s in staged:
        lab = timed("4 labels", build_labels, s.ex, s.rendering, s.decision, s.enc, s.prompt_enc, lctx, id(s))
        found = [*s.rendering.findings, *s.layout.findings, *s.decision.findings, *lab.findings]
        found += timed("5 findings", diagnose, s.ex, s.rendering.text, s.layout, s.decision, lab, s.enc,
                       batch.diagnose, found)
        recs.append(timed("  result objects", E.result, s, lab, found, cfg.strategy))
    timed("JSON lines", lambda: [orjson.dumps(r.to_json()).decode() for r in recs])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--data", choices=("varied", "shared"), default="varied")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-trl", action="store_true", help="skip TRL's preparation (slow)")
    ns = ap.parse_args()

    from transformers.utils.chat_template_utils import render_jinja_template

    from core.masking import MaskConfig
    from core.masking.encoding import encode_batch
    from core.models import load_tokenizer
    import core.parallel as P
    from core.parallel import WorkerSpec, chunk_threads
    from core.pipeline import Job, Source, render_to_file

    tok = load_tokenizer()
    rows = (conversations if ns.data == "varied" else shared_conversations)(ns.n)
    cfg = MaskConfig("assistant_only")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out, out_auto = Path(d) / "out.jsonl", Path(d) / "out_auto.jsonl"
        job = Job(Source(str(path)), cfg, WorkerSpec(), tokenizer=tok)  # --num-proc 1
        auto = Job(Source(str(path)), cfg, WorkerSpec(), num_proc=None, tokenizer=tok)  # the default
        procs = auto.procs

        def e2e():
            cold(tok)
            return render_to_file(job, out)

        def e2e_auto():
            cold(tok)
            try:
                return render_to_file(auto, out_auto)
            finally:
                P.shutdown_pool()  # as a CLI run ends: the workers stop (and their CPU is counted)

        special = dict(tok.special_tokens_map)

        def one_chunk():
            threads, P.THREADS = P.THREADS, 1
            try:
                return e2e()
            finally:
                P.THREADS = threads

        # Each floor lets go of what it built before its clock stops (it returns only the token count), as end to end
        # does: dropping 20,000 Encodings is 0.40-0.46 s of one core here, which a floor whose result outlived its
        # timing left out.
        def floor():
            texts, _ = render_jinja_template(conversations=[r["messages"] for r in rows],
                                             chat_template=tok.chat_template, **special)
            return sum(map(len, encode_batch(tok, texts, False)))  # len(Encoding): its tokens, no list built

        def floor_call():  # the same through the tokenizer's public __call__ (Python lists of ids: NOTES.md's floor)
            texts, _ = render_jinja_template(conversations=[r["messages"] for r in rows],
                                             chat_template=tok.chat_template, **special)
            return sum(map(len, tok(texts, add_special_tokens=False)["input_ids"]))

        times, n_tok = interleaved({"auto": e2e_auto, "e2e": e2e, "one": one_chunk, "floor": floor,
                                    "call": floor_call}, ns.repeat, keep="floor")
        (auto_s, auto_c), (e2e_s, e2e_c), (one_s, one_c), (floor_s, floor_c), (call_s, call_c) = (
            (min(w for w, _ in times[k]), min(c for _, c in times[k])) for k in ("auto", "e2e", "one", "floor", "call"))
        ratios = sorted(a[0] / b[0] for a, b in zip(times["auto"], times["floor"]))
        ratios_call = sorted(a[0] / b[0] for a, b in zip(times["auto"], times["call"]))
        ratios_1 = sorted(a[0] / b[0] for a, b in zip(times["e2e"], times["floor"]))
        parts = stages(path, tok, cfg)
        ours = [json.loads(line)["labels"] for line in out.read_text().splitlines()]
        assert out_auto.read_bytes() == out.read_bytes(), "--num-proc auto and 1 wrote different files"
    trl_s = trl_c = None
    if not ns.no_trl:
        trl_s, trl_c, trl_labels = trl_prep(tok, rows)
        assert trl_labels == ours, "labels differ from TRL's"
    print(f"\n[{ns.data}] {ns.n} conversations, {n_tok:,} tokens, SmolLM2 tokenizer, assistant_only; best of "
          f"{ns.repeat} interleaved rounds")
    print(f"{'':44} {'wall s':>8} {'x floor':>8} {'CPU s':>8} {'x floor':>8}")
    name = f"core render, end to end (auto: {procs} process{'es' if procs > 1 else ''})"
    print(f"{name:44} {auto_s:8.2f} {auto_s / floor_s:8.2f} {auto_c:8.2f} {auto_c / floor_c:8.2f}")
    name = f"  --num-proc 1 ({chunk_threads(WorkerSpec())} threads)"
    print(f"{name:44} {e2e_s:8.2f} {e2e_s / floor_s:8.2f} {e2e_c:8.2f} {e2e_c / floor_c:8.2f}")
    print(f"{'  the same, one chunk at a time':44} {one_s:8.2f} {one_s / floor_s:8.2f} {one_c:8.2f} "
          f"{one_c / floor_c:8.2f}")
    print(f"{'floor: jinja render + encode_batch':44} {floor_s:8.2f} {1:8.2f} {floor_c:8.2f} {1:8.2f}")
    print(f"{'floor: jinja render + tokenizer(texts)':44} {call_s:8.2f} {call_s / floor_s:8.2f} {call_c:8.2f} "
          f"{call_c / floor_c:8.2f}   (end to end = {auto_s / call_s:.2f}x this one)")
    if trl_s is not None:
        print(f"{'TRL 1.16 preparation (assistant_only_loss)':44} {trl_s:8.2f} {trl_s / floor_s:8.2f} {trl_c:8.2f} "
              f"{trl_c / floor_c:8.2f}")
    for label, rs in (("the encode_batch floor", ratios), ("the tokenizer(texts) floor", ratios_call),
                      ("the encode_batch floor, --num-proc 1", ratios_1)):
        print(f"per round, end to end / {label} (wall): {' '.join(f'{r:.2f}' for r in rs)} "
              f"(median {rs[len(rs) // 2]:.2f})")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    bound = auto_c / cores  # the least CPU of any round
    fast_w, fast_c = min(times["auto"])  # the fastest round: how many cores it kept busy
    print(f"the least wall time end to end's CPU allows: {auto_c:.2f} CPU s / {cores} cores = {bound:.2f} s = "
          f"{bound / floor_s:.2f}x the encode_batch floor, {bound / call_s:.2f}x the tokenizer(texts) floor (no "
          f"scheduling ends sooner; its fastest round used {fast_c / fast_w:.2f} cores)")
    print("stages (one pass, each timed alone; wall seconds):")
    for name, s in parts.items():
        print(f"  {name:42} {s:8.2f} {s / floor_s:8.2f}")
    total = sum(parts.values())
    print(f"  {'sum of stages':42} {total:8.2f} {total / floor_s:8.2f}")
    if trl_s is not None:
        print(f"end to end = {auto_s / floor_s:.2f}x the floor by wall time, {auto_c / floor_c:.2f}x by CPU time "
              f"(target <= {1.2 if ns.data == 'varied' else 1.0}); {auto_s / trl_s:.2f}x TRL's preparation "
              f"(target <= 0.5; --num-proc 1: {e2e_s / trl_s:.2f}x); labels identical to TRL's")


def trl_prep(tok, rows):
    """TRL's own preparation, timed alone (the trainer is built on 2 rows first)."""
    import datasets
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()

    from core.masking.checks import add_generation_markers
    from tests.conftest import tiny_llama

    tok_m = copy.deepcopy(tok)
    tok_m.chat_template = add_generation_markers(tok)
    with tempfile.TemporaryDirectory() as d:
        args = SFTConfig(output_dir=d, report_to=[], bf16=False, use_cpu=True, assistant_only_loss=True,
                         max_length=None, dataset_num_proc=None)
        trainer = SFTTrainer(model=tiny_llama(tok_m), args=args, train_dataset=Dataset.from_list(rows[:2]),
                             processing_class=tok_m)
        ds = Dataset.from_list(rows)
        s, c, out = best(lambda: trainer._prepare_dataset(ds, tok_m, args, False, None, "bench"), 1)
    return s, c, out["labels"]


if __name__ == "__main__":
    main()
