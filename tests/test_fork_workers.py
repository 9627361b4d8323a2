"""Worker processes forked with the loaded tokenizer (core.parallel): on Linux, with no other thread running, workers
start at once with this process's tokenizer and render byte for byte what one process renders; with another thread
running they are spawned instead; `--num-proc auto` (the CLI's default) forks one worker per core (at most 8) for a big
local JSONL file and renders anything else in this process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import core.parallel as P
from core.cli import build_parser
from core.parallel import WorkerSpec, auto_procs, can_fork

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "assets" / "samples"


def test_forked_workers_start_with_the_parents_tokenizer_and_render_the_same(tmp_path):
    """In a fresh interpreter (one thread): the pool is forked, the workers hold the parent's tokenizer (its word
    cache, filled in the parent before the fork, is theirs too), and the output equals --num-proc 1's."""
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join((SAMPLES / n).read_text() for n in ("chat_multiturn.jsonl", "agent_traces.jsonl",
                                                                 "reasoning.jsonl", "weighted.jsonl")) * 3)
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        import core.parallel as P
        from core.masking import MaskConfig
        from core.models import load_tokenizer
        from core.pipeline import Job, Source, render_to_file
        from pathlib import Path
        P.CHUNK = 7
        tok = load_tokenizer()
        cfg = MaskConfig("assistant_only")
        src = Source({str(data)!r})
        render_to_file(Job(src, cfg, P.WorkerSpec(), num_proc=1, tokenizer=tok), Path({str(tmp_path / "one.jsonl")!r}))
        assert P.can_fork(), "a fresh interpreter runs one thread"
        render_to_file(Job(src, cfg, P.WorkerSpec(), num_proc=2, tokenizer=tok), Path({str(tmp_path / "two.jsonl")!r}))
        (key, forked_with), ex = P._POOL[0]
        assert ex._mp_context.get_start_method() == "fork" and forked_with is tok and P._INHERITED == [tok]
        pids = {{f.result() for f in [ex.submit(os.getpid) for _ in range(8)]}}
        assert os.getpid() not in pids and 1 <= len(pids) <= 2
        print("forked", len(pids))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "forked" in done.stdout
    assert "huggingface/tokenizers" not in done.stderr  # no fork-after-parallelism warning from the tokenizer
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()


def test_with_another_thread_running_workers_are_spawned(smol_tok):
    P.shutdown_pool()  # (a pool kept by an earlier test in this process would be reused as it is)
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)
    t.start()
    try:
        assert not can_fork()
        ex = P._pool(WorkerSpec(), 2, smol_tok)  # spawned lazily: nothing starts until a chunk is submitted
        assert ex._mp_context.get_start_method() == "spawn" and P._INHERITED == []
        assert P._POOL[0][0][1] is None  # reused only as a spawned pool
    finally:
        stop.set()
        t.join()
        P.shutdown_pool()
    assert P._INHERITED == [] and P._POOL == []


@pytest.fixture
def cores(monkeypatch):
    def set_cores(n):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(n)), raising=False)
    return set_cores


def test_auto_forks_a_worker_per_core_for_a_big_local_jsonl_only(tmp_path, monkeypatch, cores):
    big = tmp_path / "big.jsonl"
    big.write_text('{"text": "x"}\n' * 100)
    monkeypatch.setattr(P, "AUTO_MIN_BYTES", big.stat().st_size)
    monkeypatch.setattr(P, "can_fork", lambda: True)
    cores(4)
    assert auto_procs(big) == 4
    cores(64)
    assert auto_procs(big) == P.AUTO_MAX_PROCS == 8
    cores(1)
    assert auto_procs(big) == 1  # one core: nothing to gain
    cores(4)
    small = tmp_path / "small.jsonl"
    small.write_text('{"text": "x"}\n')
    assert auto_procs(small) == 1  # forking and collecting would cost more than a second core saves
    parquet = tmp_path / "big.parquet"
    parquet.write_bytes(big.read_bytes())
    assert auto_procs(parquet) == 1 and auto_procs(None) == 1 and auto_procs(tmp_path / "missing.jsonl") == 1
    monkeypatch.setattr(P, "can_fork", lambda: False)
    assert auto_procs(big) == 1  # spawned workers would each import transformers: never for auto


def test_num_proc_flag_takes_a_number_or_auto(capsys):
    p = build_parser()
    base = ["render", "--data", "x.jsonl", "--output", "o.jsonl"]
    assert p.parse_args(base).num_proc is None  # auto
    assert p.parse_args(base + ["--num-proc", "auto"]).num_proc is None
    assert p.parse_args(base + ["--num-proc", "3"]).num_proc == 3
    for bad in ("0", "two", "-1"):
        with pytest.raises(SystemExit):
            p.parse_args(base + ["--num-proc", bad])
        assert "or auto" in capsys.readouterr().err
