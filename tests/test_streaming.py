"""render/audit stream the file chunk by chunk and, with --num-proc N, render in N worker processes: the output is
identical to one process, in input order, and memory does not grow with the dataset (bounded read-ahead, compact
audit stats)."""

import json
from pathlib import Path

import pytest

import core.parallel
import core.pipeline
from core.audit import AuditReport, ProblemRows, audit
from core.cli import main
from core.masking.options import MaskConfig
from core.data.formats import load_examples
from core.parallel import WorkerSpec, audit_chunk, chunks, map_chunks
from core.data.reader import iter_rows
from core.masking.strategies import strategy_names, unregister

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "assets" / "samples"
RULES = Path(__file__).parent / "assets" / "rules" / "first_turn.json"


@pytest.fixture(autouse=True)
def clean_registry():
    before = set(strategy_names())
    yield
    for n in set(strategy_names()) - before:
        unregister(n)


@pytest.fixture
def mixed(tmp_path, monkeypatch):
    """Chats, tool-calling traces and reasoning rows in one file, read 5 rows a chunk (several chunks)."""
    monkeypatch.setattr(core.parallel, "CHUNK", 5)
    f = tmp_path / "mixed.jsonl"
    text = "".join((SAMPLES / n).read_text() for n in ("chat_multiturn.jsonl", "agent_traces.jsonl",
                                                        "reasoning.jsonl", "weighted.jsonl"))
    f.write_text(text)
    assert len(load_examples(f)) > 15
    return f


def render(tmp_path, data, name, *flags) -> bytes:
    out = tmp_path / name
    assert main(["render", "--data", str(data), "--output", str(out), *flags]) == 0
    return out.read_bytes()


@pytest.fixture(params=["fork", "spawn"])
def start(request, monkeypatch):
    """Workers forked with the loaded tokenizer where the process can (core.parallel.can_fork), or spawned."""
    if request.param == "spawn":
        monkeypatch.setattr(core.parallel, "can_fork", lambda: False)
        monkeypatch.setattr(core.pipeline, "can_fork", lambda: False)
    core.parallel.shutdown_pool()
    yield request.param
    core.parallel.shutdown_pool()


def test_render_num_proc_2_is_identical_and_in_order(tmp_path, mixed, smol_tok, start):
    one = render(tmp_path, mixed, "one.jsonl", "--strategy", "assistant_only", "--num-proc", "1")
    two = render(tmp_path, mixed, "two.jsonl", "--strategy", "assistant_only", "--num-proc", "2")
    assert one == two
    recs = [json.loads(x) for x in one.decode().splitlines()]
    assert [r["row"] for r in recs] == list(range(len(load_examples(mixed))))
    ref = [r.labels for r in __import__("core.masking.engine", fromlist=["x"]).render_examples(
        load_examples(mixed), smol_tok, MaskConfig("assistant_only"))]
    assert [r["labels"] for r in recs] == ref


def test_workers_register_the_rules_file_again(tmp_path, mixed):
    flags = ["--rules", str(RULES), "--mask-tokens", "<|im_end|>"]
    assert render(tmp_path, mixed, "one.jsonl", *flags) == render(tmp_path, mixed, "two.jsonl", *flags,
                                                                   "--num-proc", "2")


def test_audit_num_proc_2_equals_the_in_memory_audit(tmp_path, mixed, capsys, smol_tok):
    reports = []
    for n in ("1", "2"):
        assert main(["audit", "--data", str(mixed), "--strategy", "last_assistant", "--max-length", "64",
                     "--format", "json", "--num-proc", n]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    assert reports[0] == reports[1]
    ex = load_examples(mixed)
    rep, _ = audit(ex, smol_tok, MaskConfig("last_assistant", max_length=64))
    assert reports[0] == rep.to_json() and reports[0]["rows"] == len(ex) and reports[0]["examples_truncated"] > 0


def test_error_in_a_later_chunk_names_row_and_file(tmp_path, mixed, capsys):
    bad = tmp_path / "bad.jsonl"
    lines = mixed.read_text().splitlines()
    lines[12] = '{"messages": [{"role": "wizard", "content": "Hi"}]}'
    bad.write_text("\n".join(lines) + "\n")
    for n in ("1", "2"):
        assert main(["render", "--data", str(bad), "--strategy", "full", "--output", str(tmp_path / "o.jsonl"),
                     "--num-proc", n]) == 2
        err = capsys.readouterr().err
        assert str(bad) in err and "row 12" in err and "unknown role 'wizard'" in err and "Traceback" not in err
        assert not (tmp_path / "o.jsonl").exists()


def test_read_ahead_is_bounded():
    pulled = []

    def source():
        for i in range(40):
            pulled.append(i)
            yield [(i, {"text": f"row {i}"}, i + 1)]

    spec = WorkerSpec()
    cfg = MaskConfig("full")
    results = map_chunks(audit_chunk, spec, cfg, source(), num_proc=2)
    first = next(results)
    assert first.rows == 1 and len(pulled) <= 2 * 2 + 1
    rest = list(results)
    assert len(rest) == 39 and len(pulled) == 40
    merged = AuditReport()
    for r in [first, *rest]:
        merged.merge(r)
    assert merged.examples == 40


def test_chunk_reports_merge_into_the_whole_report(smol_tok):
    rows = list(iter_rows(SAMPLES / "agent_traces.jsonl")) + list(iter_rows(SAMPLES / "weighted.jsonl"))
    rows = [(i, obj, ln) for i, (_, obj, ln) in enumerate(rows)]
    cfg = MaskConfig("assistant_only", max_length=80)
    merged = AuditReport(max_length=80)
    for c in chunks(rows, 3):
        merged.merge(audit_chunk(smol_tok, cfg, c, "x"))
    whole, _ = audit([__import__("core.data.formats", fromlist=["x"]).normalize_row(o, i) for i, o, _ in rows], smol_tok, cfg)
    assert merged == whole and merged.to_json() == whole.to_json()
    assert len(merged.trained_share) == len(merged.lengths) == len(rows)


def test_problem_rows_are_compact_and_read_as_dicts():
    p = ProblemRows()
    for i in range(10_000):
        p.append({"row": i, "codes": ["no_trained_tokens"], "severity": "warning"})
    p.append({"row": 10_000, "codes": ["a", "b"], "severity": "error"})
    assert len(p) == 10_001 and len(p.table) == 2
    assert p[0] == {"row": 0, "codes": ["no_trained_tokens"], "severity": "warning"}
    assert p[-1] == {"row": 10_000, "codes": ["a", "b"], "severity": "error"}
    assert [x["row"] for x in p[:3]] == [0, 1, 2]
    assert p.rows.itemsize * len(p.rows) + p.kinds.itemsize * len(p.kinds) < 120_000


def test_a_tokenizer_the_workers_cannot_load_is_a_clear_error(tmp_path, capsys, start):
    """Spawned workers load the tokenizer (the parent does not): their error comes back, not a broken pool. Forked
    ones start with the parent's, which reports it."""
    data = SAMPLES / "chat_multiturn.jsonl"
    assert main(["audit", "--data", str(data), "--strategy", "full", "--num-proc", "2",
                 "--tokenizer", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nope") in err and "worker process stopped" not in err and "Traceback" not in err


# ----------------------------------------------------------------------------------- workers read their own ranges
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from core.errors import MaskLensError  # noqa: E402
from core.parallel import FileRange, jsonl_ranges  # noqa: E402

_LINE = st.one_of(
    st.builds(lambda t: json.dumps({"text": t}, ensure_ascii=False), st.text(max_size=12)),
    st.builds(lambda t: json.dumps({"messages": [{"role": "user", "content": t}], "extra": {t[:3]: 1}}),
              st.text(max_size=8)),
    st.sampled_from(["", "   ", "\t"]),  # blank lines: no row number, but counted as lines
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_LINE, min_size=1, max_size=25), bom=st.booleans(), final_newline=st.booleans(),
       size=st.integers(1, 4), limit=st.one_of(st.none(), st.integers(1, 10)))
def test_ranges_cover_every_row_once_with_its_row_and_line_number(tmp_path, lines, bom, final_newline, size, limit):
    """The byte ranges the workers read give back exactly the rows, objects and line numbers of the one-pass reader,
    whatever the blank lines, a BOM, a missing final newline, the chunk size or --limit."""
    if not any(x.strip() for x in lines):
        lines = [*lines, '{"text": "x"}']
    f = tmp_path / "d.jsonl"
    f.write_bytes((b"\xef\xbb\xbf" if bom else b"") + ("\n".join(lines) + ("\n" if final_newline else "")).encode())
    want = list(iter_rows(f, limit=limit))
    ranges = jsonl_ranges(f, limit=limit, size=size)
    got = [(i, obj, line) for r in ranges for i, obj, line, _ in r.read()]
    assert got == want
    assert [r.rows for r in ranges[:-1]] == [size] * (len(ranges) - 1) and 1 <= ranges[-1].rows <= size
    assert all(a.end == b.start for a, b in zip(ranges, ranges[1:])) and ranges[0].start == 0


def test_a_bad_line_is_raised_by_the_first_pass_as_the_reader_raises_it(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(b'{"text": "a"}\n\n{"text": "b"}\n{"text": \xff}\n{"text": "c"}\n')
    with pytest.raises(MaskLensError) as want:
        list(iter_rows(f))
    with pytest.raises(MaskLensError) as got:
        jsonl_ranges(f, size=1)
    assert str(got.value) == str(want.value) and "line 4" in str(got.value)


def test_ranges_carry_the_schema_findings(tmp_path):
    """Rows `datasets` would pad with nulls get schema_nulls_injected from a worker's range as from the whole file."""
    rows = [{"messages": [{"role": "user", "content": "w?"},
                          {"role": "assistant", "content": "", "tool_calls": [
                              {"type": "function", "function": {"name": "f", "arguments": args}}]}]}
            for args in ({"city": "Paris"}, {"unit": "C"})]
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    notes = [n for r in jsonl_ranges(f, size=1) for *_, found in r.read() for n in found]
    want = [n for ex in load_examples(f) for n in ex.notes if n.code == "schema_nulls_injected"]
    assert [n.message for n in notes] == [n.message for n in want] and len(want) == 2


def test_audit_with_workers_reports_schema_nulls_as_one_process(tmp_path, mixed, capsys):
    reports = []
    for n in ("1", "2"):
        assert main(["audit", "--data", str(mixed), "--strategy", "assistant_only", "--format", "json",
                     "--num-proc", n]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    assert reports[0] == reports[1]
    assert "schema_nulls_injected" in json.dumps(reports[0])


def test_a_file_range_is_a_few_numbers_not_rows(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps({"text": "x" * 1000}) + "\n" for _ in range(20)))
    (r, *_) = jsonl_ranges(f, size=10)
    assert isinstance(r, FileRange) and r.rows == 10 and len(__import__("pickle").dumps(r)) < 1000


def test_a_file_changed_between_the_passes_is_an_error_not_missing_rows(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps({"text": str(i)}) + "\n" for i in range(6)))
    ranges = jsonl_ranges(f, size=3)
    f.write_text("".join(json.dumps({"text": str(i)}) + "\n" for i in range(4)))
    assert len(ranges[0].read()) == 3
    with pytest.raises(MaskLensError, match="changed while it was read"):
        ranges[1].read()


@pytest.mark.parametrize("keep", [True, False])
def test_a_small_file_parsed_once_renders_as_one_read_twice(tmp_path, mixed, monkeypatch, keep, capsys):
    """core.pipeline keeps pass 1's rows for a JSONL file up to KEEP_ROWS_BYTES: the same output, schema findings and
    errors as reading it twice (KEEP_ROWS_BYTES 0), and the rows are let go as they are taken."""
    import core.pipeline as pipeline

    monkeypatch.setattr(pipeline, "KEEP_ROWS_BYTES", 1 << 30 if keep else 0)
    reads = []
    import core.data.reader as reader

    orig = reader.iter_rows

    def counting(*a, **k):
        reads.append(a[0])
        return orig(*a, **k)

    monkeypatch.setattr(reader, "iter_rows", counting)
    lines = mixed.read_text().splitlines()
    lines.insert(3, json.dumps({"messages": [{"role": "user", "content": "w?"}, {"role": "assistant", "content": "",
                 "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"unit": "C"}}}]}]}))
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out = render(tmp_path, data, f"{keep}.jsonl", "--strategy", "assistant_only")
    assert len(reads) == (1 if keep else 2)
    monkeypatch.setattr(pipeline, "KEEP_ROWS_BYTES", 0 if keep else 1 << 30)
    assert render(tmp_path, data, f"{keep}_other.jsonl", "--strategy", "assistant_only") == out
    assert b"schema_nulls_injected" in out
    lines[14] = '{"messages": [{"role": "wizard", "content": "Hi"}]}'
    data.write_text("\n".join(lines) + "\n")
    assert main(["render", "--data", str(data), "--strategy", "full", "--output", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "row 14" in err and "unknown role 'wizard'" in err and not (tmp_path / "o.jsonl").exists()


def test_kept_rows_are_let_go_as_they_are_taken():
    import collections

    from core.pipeline import _drain

    rows = collections.deque(range(5))
    it = _drain(rows)
    assert next(it) == 0 and len(rows) == 4
    assert list(it) == [1, 2, 3, 4] and not rows
