"""Engine throughput vs TRL 1.16's own dataset preparation vs the floor (render + batch tokenize, nothing else).

    .venv/bin/python benchmarks/bench_engine.py [--n 2000] [--repeat 3]

Data: N synthetic multi-turn conversations (system prompt, 2-5 exchanges, varied lengths), the embedded SmolLM2
tokenizer. TRL's `assistant_only_loss` needs {% generation %} markers, which SmolLM2's template lacks, so TRL gets the
marked twin MaskLens produces (byte-identical rendering); the engine is timed on both the marked template (exact TRL
path) and the plain one (its own span finding). Labels are checked identical before anything is reported.
Two datasets: "varied" (every system prompt different: nothing repeats but role headers) and "shared" (the same
conversations with one of 8 long system prompts each, as agent and distillation datasets repeat theirs). Repeated
pieces of text are tokenized once (core.encoding); every timed repeat starts with an empty piece cache.
Prints a table per dataset; targets: engine >= 3x TRL, <= 1.0x the floor.
"""

from __future__ import annotations

import argparse
import copy
import gc
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ("the model learns which tokens count toward the loss so masks matter a great deal when you fine tune "
         "chat models on conversations with system prompts tools and many turns of dialogue about code data "
         "maths travel cooking history music and science").split()


def sentence(rng, lo, hi):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."


def conversations(n, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        msgs = [{"role": "system", "content": sentence(rng, 5, 15)}]
        for _ in range(rng.randint(2, 5)):
            msgs.append({"role": "user", "content": " ".join(sentence(rng, 4, 20) for _ in range(rng.randint(1, 3)))})
            msgs.append({"role": "assistant", "content": " ".join(sentence(rng, 6, 25) for _ in range(rng.randint(1, 5)))})
        out.append({"messages": msgs})
    return out


def shared_conversations(n, seed=0, prompts=8):
    """The same conversations, each with one of a few long system prompts (40 sentences, ~450 tokens), as agent and
    distillation datasets repeat theirs: what core.encoding tokenizes once."""
    rng = random.Random(seed + 1)
    pool = [" ".join(sentence(rng, 8, 20) for _ in range(40)) for _ in range(prompts)]
    rows = conversations(n, seed)
    for r in rows:
        r["messages"][0]["content"] = rng.choice(pool)
    return rows


def best_of(fn, repeat):
    times, result = [], None
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times), result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data", choices=("varied", "shared", "both"), default="both",
                    help="varied: every system prompt different; shared: 8 long system prompts shared by all rows")
    ns = ap.parse_args()
    for name in (("varied", "shared") if ns.data == "both" else (ns.data,)):
        run(ns, name)


def run(ns, data_name):
    from datasets import Dataset
    from transformers.utils.chat_template_utils import render_jinja_template
    from trl import SFTConfig, SFTTrainer

    from core.masking.checks import add_generation_markers
    from core.data.formats import normalize_row
    from core.masking.engine import MaskConfig, encode_batch, render_examples
    from core.models import load_tokenizer
    from tests.conftest import tiny_llama

    tok = load_tokenizer()
    marked = add_generation_markers(tok)
    tok_m = copy.deepcopy(tok)
    tok_m.chat_template = marked
    rows = (conversations if data_name == "varied" else shared_conversations)(ns.n)
    examples = [normalize_row(r, i) for i, r in enumerate(rows)]

    # TRL: time exactly SFTTrainer._prepare_dataset on the full dataset (the trainer is built once on 2 rows).
    with tempfile.TemporaryDirectory() as d:
        args = SFTConfig(output_dir=d, report_to=[], bf16=False, use_cpu=True, assistant_only_loss=True, max_length=None,
                         dataset_num_proc=None)
        trainer = SFTTrainer(model=tiny_llama(tok_m), args=args, train_dataset=Dataset.from_list(rows[:2]),
                             processing_class=tok_m)
        ds = Dataset.from_list(rows)

        def trl_prep():
            return trainer._prepare_dataset(ds, tok_m, args, False, None, "bench")

        trl_best, trl_med, trl_ds = best_of(trl_prep, ns.repeat)
        trl_labels = trl_ds["labels"]

    from core.masking.encoding import SegmentEncoder

    def cold(tokenizer):  # every repeat starts with no piece cached: what one pass over a dataset costs
        seg = SegmentEncoder.for_tokenizer(tokenizer)  # built once per tokenizer (its probes: ~0.1 s), not timed
        if seg is not None:
            seg.cache.clear()
            seg.cached_tokens = 0

    def engine_marked():
        cold(tok_m)
        return render_examples(examples, tok_m, MaskConfig(strategy="assistant_only"))

    def engine_plain():
        cold(tok)
        return render_examples(examples, tok, MaskConfig(strategy="assistant_only"))

    special = dict(tok.special_tokens_map)

    def floor():
        texts, _ = render_jinja_template(conversations=[r["messages"] for r in rows], chat_template=tok.chat_template,
                                         **special)
        return encode_batch(tok, texts, False)

    def floor_call():  # the same floor through the tokenizer's public __call__ (what NOTES.md measured)
        texts, _ = render_jinja_template(conversations=[r["messages"] for r in rows], chat_template=tok.chat_template,
                                         **special)
        return tok(texts, add_special_tokens=False)["input_ids"]

    em_best, em_med, em = best_of(engine_marked, ns.repeat)
    ep_best, ep_med, ep = best_of(engine_plain, ns.repeat)
    fl_best, fl_med, fl = best_of(floor, ns.repeat)
    fc_best, fc_med, _ = best_of(floor_call, ns.repeat)

    diff = [i for i, (r, t) in enumerate(zip(em, trl_labels)) if r.labels != t]
    assert not diff and len(em) == len(trl_labels), f"engine (marked template) labels differ from TRL's: rows {diff[:10]}"
    assert [r.labels for r in ep] == trl_labels, "engine (plain template) labels differ from TRL's"
    assert [r.input_ids for r in ep] == trl_ds["input_ids"]
    n_tokens = sum(len(x) for x in trl_ds["input_ids"])

    print(f"\n[{data_name}] {ns.n} conversations, {n_tokens:,} tokens, SmolLM2 tokenizer; best of {ns.repeat} "
          "(median in brackets)")
    print(f"{'':44} {'seconds':>16} {'examples/s':>11} {'tokens/s':>11}")
    table = [("TRL 1.16 SFTTrainer prep (assistant_only_loss)", trl_best, trl_med),
             ("MaskLens engine, marked template (exact TRL)", em_best, em_med),
             ("MaskLens engine, plain template (span finding)", ep_best, ep_med),
             ("floor: render + encode_batch", fl_best, fl_med),
             ("floor: render + tokenizer(texts)", fc_best, fc_med)]
    for name, b, m in table:
        print(f"{name:44} {b:8.3f} ({m:5.3f}) {ns.n / b:11,.0f} {n_tokens / b:11,.0f}")
    print(f"labels identical to TRL: yes ({ns.n} examples)")
    for name, t in (("marked", em_best), ("plain", ep_best)):
        print(f"engine ({name}): {trl_best / t:.2f}x faster than TRL (target >= 3), {t / fl_best:.2f}x the floor "
              f"(target <= 1.0); {t / fc_best:.2f}x the tokenizer(texts) floor")


if __name__ == "__main__":
    main()
