"""One process renders two chunks at once (core.parallel._in_threads): the same output, the same order, the same
errors as one chunk at a time, and TOKENIZERS_PARALLELISM and the GIL's longer turns set only while it runs."""

import os
import random
import threading
import time
from pathlib import Path

import pytest

import core.parallel as P
from core.cli import main
from core.errors import MaskLensError
from core.parallel import WorkerSpec, _in_threads, chunk_threads

SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "samples"


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(P, "THREADS", 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)


def test_threads_render_byte_for_byte_what_one_thread_renders(tmp_path, monkeypatch, two_cores):
    monkeypatch.setattr(P, "CHUNK", 3)
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join((SAMPLES / n).read_text() for n in ("chat_multiturn.jsonl", "agent_traces.jsonl",
                                                                 "reasoning.jsonl", "weighted.jsonl")))
    seen = []
    real = P.render_json_chunk

    def spy(tok, cfg, chunk, source):
        seen.append(threading.current_thread().name)
        return real(tok, cfg, chunk, source)

    outs = []
    for threads in (1, 2):
        monkeypatch.setattr(P, "THREADS", threads)
        monkeypatch.setattr(P, "render_json_chunk", spy)
        monkeypatch.setattr("core.pipeline.render_json_chunk", spy)
        out = tmp_path / f"t{threads}.jsonl"
        for strategy in ("assistant_only", "last_assistant"):
            assert main(["render", "--data", str(data), "--strategy", strategy, "--output", str(out)]) == 0
            outs.append(out.read_bytes())
    assert outs[0] == outs[2] and outs[1] == outs[3] and outs[0] != outs[1]
    assert len(seen) >= 4 * 6  # several chunks a run
    assert any(n.startswith("masklens-chunk") for n in seen)  # the threads did run


def test_results_come_in_input_order_whatever_finishes_first():
    def task(tok, cfg, chunk, source):
        time.sleep(random.random() / 100)
        return chunk

    assert list(_in_threads(task, None, None, iter(range(60)), None, 3)) == list(range(60))


def test_a_chunk_error_comes_before_a_later_read_error_as_in_one_thread():
    def rows(bad_read_at):
        for i in range(6):
            if i == bad_read_at:
                raise MaskLensError("bad line", file="d.jsonl", row=i)
            yield i

    def task(tok, cfg, chunk, source):
        if chunk == 1:
            raise MaskLensError("unknown role", file="d.jsonl", row=chunk)
        return chunk

    for threads in (1, 2, 4):
        got = []
        with pytest.raises(MaskLensError, match="unknown role"):
            for r in _in_threads(task, None, None, rows(3), None, threads):
                got.append(r)
        assert got == [0]
        got = []
        with pytest.raises(MaskLensError, match="bad line"):
            for r in _in_threads(lambda *a: a[2], None, None, rows(3), None, threads):
                got.append(r)
        assert got == [0, 1, 2]  # the chunks read before the bad one are all delivered first


def test_the_tokenizer_keeps_to_one_thread_only_while_chunks_run(monkeypatch):
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    inside = []

    def task(tok, cfg, chunk, source):
        inside.append(os.environ.get("TOKENIZERS_PARALLELISM"))
        return chunk

    assert list(_in_threads(task, None, None, iter(range(5)), None, 2)) == list(range(5))
    assert inside == ["false"] * 5 and "TOKENIZERS_PARALLELISM" not in os.environ
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")  # the user's choice stands
    inside.clear()
    list(_in_threads(task, None, None, iter(range(3)), None, 2))
    assert inside == ["true"] * 3 and os.environ["TOKENIZERS_PARALLELISM"] == "true"


def test_two_pipelines_at_once_unset_it_only_when_both_end(monkeypatch):
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    a = _in_threads(lambda *x: x[2], None, None, iter(range(10)), None, 2)
    b = _in_threads(lambda *x: x[2], None, None, iter(range(10)), None, 2)
    next(a), next(b)
    a.close()
    assert os.environ.get("TOKENIZERS_PARALLELISM") == "false"
    b.close()
    assert "TOKENIZERS_PARALLELISM" not in os.environ


def test_longer_gil_turns_only_while_chunks_run():
    """The GIL's switch interval is SWITCH_INTERVAL while chunk threads run (a user's longer one stands), and what was
    there before comes back when the last of two pipelines ends."""
    import sys

    before = sys.getswitchinterval()
    inside = []

    def task(tok, cfg, chunk, source):
        inside.append(sys.getswitchinterval())
        return chunk

    try:
        sys.setswitchinterval(0.005)
        assert list(_in_threads(task, None, None, iter(range(4)), None, 2)) == list(range(4))
        assert inside == pytest.approx([P.SWITCH_INTERVAL] * 4) and P.SWITCH_INTERVAL > 0.005  # (kept in µs)
        assert sys.getswitchinterval() == 0.005
        a = _in_threads(lambda *x: x[2], None, None, iter(range(10)), None, 2)
        b = _in_threads(lambda *x: x[2], None, None, iter(range(10)), None, 2)
        next(a), next(b)
        a.close()
        assert sys.getswitchinterval() == pytest.approx(P.SWITCH_INTERVAL)
        b.close()
        assert sys.getswitchinterval() == 0.005
        sys.setswitchinterval(1.0)  # longer than ours: kept
        inside.clear()
        list(_in_threads(task, None, None, iter(range(2)), None, 2))
        assert inside == [1.0, 1.0] and sys.getswitchinterval() == 1.0
        inside.clear()
        list(_in_threads(task, None, None, iter(range(2)), None, 1))  # one thread: nothing changed
        assert inside == [1.0, 1.0]
    finally:
        sys.setswitchinterval(before)


def test_stopping_early_drops_the_chunks_read_ahead():
    ran = []

    def task(tok, cfg, chunk, source):
        ran.append(chunk)
        time.sleep(0.01)
        return chunk

    gen = _in_threads(task, None, None, iter(range(100)), None, 2)
    assert next(gen) == 0
    gen.close()
    assert len(ran) <= 4


def test_user_python_runs_in_one_thread(two_cores, tmp_path):
    assert chunk_threads(WorkerSpec()) == 2
    assert chunk_threads(WorkerSpec(rules_files=("r.yaml",))) == 2  # rules are data
    assert chunk_threads(WorkerSpec(strategy_files=("s.py",))) == 1
    assert chunk_threads(WorkerSpec(collator_files=("c.py",))) == 1


def test_one_core_gets_one_thread(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0}, raising=False)
    assert chunk_threads(WorkerSpec()) == 1


@pytest.mark.parametrize("total,size", [(0, 8), (5, 8), (16, 8), (17, 8), (40, 8), (1000, 64), (7, 1)])
def test_chunks_end_in_quarter_chunks_when_the_total_is_known(total, size):
    """With the row count known (the schema pass counts a local file's rows), the last 2 * size rows come in chunks
    of size // 4, so that the two chunk threads end close together; every row once, in order, either way."""
    rows = list(range(total))
    plain = list(P.chunks(iter(rows), size))
    tapered = list(P.chunks(iter(rows), size, total=total))
    assert [r for c in tapered for r in c] == rows == [r for c in plain for r in c]
    assert all(len(c) == size for c in plain[:-1])
    tail = max(1, size // 4)
    done = 0
    for c in tapered:
        assert 1 <= len(c) <= (size if total - done > 2 * size else tail)
        done += len(c)
    if total > 2 * size and tail < size:
        assert len(tapered) > len(plain)


@pytest.mark.parametrize("claimed", [0, 3, 30, 10**6])
def test_chunks_with_a_wrong_total_still_give_every_row(claimed):
    rows = list(range(25))
    assert [r for c in P.chunks(iter(rows), 4, total=claimed) for r in c] == rows
