"""Bad dataset files (issue 9): each gets a MaskLensError naming the file, the line and the fix, through
load_examples and through the CLI (exit 2, no traceback). Hostile ones run in a subprocess under OS limits."""

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.cli import main
from core.data.formats import load_examples
from core.errors import MaskLensError
from core.data.reader import iter_rows

REPO = Path(__file__).resolve().parents[1]
GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
LINE = json.dumps(GOOD).encode()


def expect_error(path: Path, *fragments: str, capsys=None):
    """The same error through load_examples and the CLI; returns its text."""
    with pytest.raises(MaskLensError) as e:
        load_examples(path)
    text = str(e.value)
    assert str(path) in text, text
    for f in fragments:
        assert f in text, (f, text)
    if capsys is not None:
        assert main(["audit", "--data", str(path), "--strategy", "full"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err and str(path) in err
        for f in fragments:
            assert f in err, (f, err)
    return text


# ------------------------------------------------------------------------------------------------------- JSONL
def test_non_utf8_bytes_name_line_offset_and_iconv(tmp_path, capsys):
    f = tmp_path / "latin1.jsonl"
    bad = json.dumps({"messages": [{"role": "user", "content": "café"}]}, ensure_ascii=False).encode("latin-1")
    f.write_bytes(LINE + b"\n" + bad + b"\n")
    offset = len(LINE) + 1 + bad.index(b"\xe9")
    text = expect_error(f, "row 1", "line 2", "byte 0xe9", f"byte offset {offset}", "iconv -f", capsys=capsys)
    assert "Fix:" in text


def test_utf16_file_is_named_as_such(tmp_path, capsys):
    f = tmp_path / "utf16.jsonl"
    f.write_bytes((json.dumps(GOOD) + "\n").encode("utf-16"))
    expect_error(f, "UTF-16", "iconv -f UTF-16", capsys=capsys)


def test_bom_is_accepted_silently(tmp_path, capsys):
    plain, bom = tmp_path / "plain.jsonl", tmp_path / "bom.jsonl"
    plain.write_bytes(LINE + b"\n" + LINE + b"\n")
    bom.write_bytes(b"\xef\xbb\xbf" + LINE + b"\n" + LINE + b"\n")
    a, b = load_examples(plain), load_examples(bom)
    assert [x.raw for x in a] == [x.raw for x in b] and [x.line for x in b] == [1, 2]
    assert main(["audit", "--data", str(bom), "--strategy", "full"]) == 0
    js = tmp_path / "bom.json"
    js.write_bytes(b"\xef\xbb\xbf" + json.dumps([GOOD]).encode())
    assert [x.raw for x in load_examples(js)] == [GOOD]


def test_truncated_last_line_is_named(tmp_path, capsys):
    f = tmp_path / "cut.jsonl"
    f.write_bytes(LINE + b"\n" + LINE + b"\n" + LINE[:25])
    expect_error(f, "row 2", "line 3, the last line, is truncated", "cut off", capsys=capsys)
    # the same damage in the middle of the file is an ordinary invalid line
    g = tmp_path / "middle.jsonl"
    g.write_bytes(LINE[:25] + b"\n" + LINE + b"\n")
    assert "is truncated" not in expect_error(g, "line 1 is not valid JSON")


def test_a_complete_last_line_without_newline_is_fine(tmp_path):
    f = tmp_path / "no_newline.jsonl"
    f.write_bytes(LINE + b"\n" + LINE)
    assert len(load_examples(f)) == 2


def test_blank_lines_are_skipped_and_lines_still_counted(tmp_path):
    f = tmp_path / "blank.jsonl"
    f.write_bytes(b"\n" + LINE + b"\n  \n\r\n\t\n" + LINE + b"\n\n")
    ex = load_examples(f)
    assert [(e.row, e.line) for e in ex] == [(0, 2), (1, 6)]


def test_empty_and_blank_only_files(tmp_path, capsys):
    e = tmp_path / "empty.jsonl"
    e.write_bytes(b"")
    expect_error(e, "the file is empty", capsys=capsys)
    b = tmp_path / "blank_only.jsonl"
    b.write_bytes(b"\n \n\n")
    expect_error(b, "no examples (only 3 blank lines)", capsys=capsys)


def test_line_that_is_not_an_object(tmp_path, capsys):
    f = tmp_path / "array.jsonl"
    f.write_bytes(LINE + b"\n[1, 2]\n")
    expect_error(f, "row 1", "line 2 is a JSON array, not an object", capsys=capsys)


def test_long_line_limit_reads_no_further(tmp_path, monkeypatch, capsys):
    import core.data.reader

    monkeypatch.setattr(core.data.reader, "MAX_LINE_BYTES", 2**20)
    f = tmp_path / "long.jsonl"
    big = json.dumps({"text": "x" * (2 * 2**20)}).encode()
    f.write_bytes(LINE + b"\n" + big + b"\n" + LINE + b"\n")
    expect_error(f, "row 1", "line 2 is longer than 1 MB", capsys=capsys)
    # a lenient reader skips it and goes on at the right line
    errors = []
    rows = list(iter_rows(f, on_error=errors.append))
    assert [(r, ln) for r, _, ln in rows] == [(0, 1), (2, 3)] and len(errors) == 1 and errors[0].row == 1


def test_lenient_reading_collects_each_bad_line(tmp_path):
    f = tmp_path / "mixed.jsonl"
    f.write_bytes(LINE + b"\n" + b'{"oops\n' + b'{"text": "caf\xe9"}\n' + LINE + b"\n")
    errors = []
    rows = list(iter_rows(f, on_error=errors.append))
    assert [r for r, _, _ in rows] == [0, 3]
    assert ["line 2" in str(errors[0]), "line 3" in str(errors[1]) and "0xe9" in str(errors[1])] == [True, True]


# -------------------------------------------------------------------------------------------------------- JSON
@pytest.mark.parametrize("doc,fragments", [
    (42, ["is a JSON number, not an array of examples"]),
    (GOOD, ["holds one example object", "wrap it in [ ... ]"]),
    ({"a": [GOOD], "b": [GOOD]}, ["keys 'a', 'b'", "not an array of examples"]),
    ([GOOD, "hello"], ["row 1", "element 1 of the array is a JSON string"]),
    ([], ["no examples"]),
], ids=["number", "one_example", "two_keys", "string_element", "empty_array"])
def test_json_that_is_not_a_list_of_rows(tmp_path, capsys, doc, fragments):
    f = tmp_path / "data.json"
    f.write_text(json.dumps(doc))
    expect_error(f, *fragments, capsys=capsys)


def test_json_forms_that_are_accepted(tmp_path):
    f = tmp_path / "list.json"
    f.write_text(json.dumps([GOOD, GOOD]))
    assert len(load_examples(f)) == 2
    g = tmp_path / "wrapped.json"
    g.write_text(json.dumps({"train": [GOOD, GOOD, GOOD]}))
    assert len(load_examples(g)) == 3 and len(load_examples(g, limit=2)) == 2


def test_json_non_utf8_and_truncated(tmp_path, capsys):
    f = tmp_path / "latin1.json"
    f.write_bytes(b'[\n  {"text": "ok"},\n  {"text": "caf\xe9"}\n]\n')
    expect_error(f, "line 3", "byte 0xe9", "iconv", capsys=capsys)
    g = tmp_path / "cut.json"
    g.write_text(json.dumps([GOOD, GOOD])[:-10])
    expect_error(g, "not valid JSON", "truncated", capsys=capsys)


# -------------------------------------------------------------------------------------------- hostile (limited)
def _limited():
    resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))
    resource.setrlimit(resource.RLIMIT_CPU, (60, 60))


def run_limited(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_limited, env=env)


LOAD = "import sys; from core.data import load_examples; load_examples(sys.argv[1])"


def test_deep_nesting_is_an_error_not_a_crash(tmp_path):
    f = tmp_path / "deep.jsonl"
    f.write_bytes(LINE + b"\n" + b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n")
    p = run_limited(["-c", LOAD, str(f)])
    assert p.returncode == 1 and "MaskLensError" in p.stderr and "RecursionError" not in p.stderr
    assert "row 1" in p.stderr and "line 2 is nested too deeply" in p.stderr
    p = run_limited(["-m", "core", "audit", "--data", str(f), "--strategy", "full"])
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and str(f) in p.stderr and "line 2 is nested too deeply" in p.stderr
    g = tmp_path / "deep.json"
    g.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    p = run_limited(["-c", LOAD, str(g)])
    assert "nested too deeply" in p.stderr and "RecursionError" not in p.stderr


def test_200mb_line_is_refused_within_memory_limits(tmp_path):
    f = tmp_path / "huge.jsonl"
    with open(f, "wb") as out:
        out.write(LINE + b"\n" + b'{"text": "')
        chunk = b"x" * 2**20
        for _ in range(200):
            out.write(chunk)
        out.write(b'"}\n' + LINE + b"\n")
    try:
        p = run_limited(["-m", "core", "audit", "--data", str(f), "--strategy", "full"])
        assert p.returncode == 2, p.stderr
        assert "Traceback" not in p.stderr and str(f) in p.stderr and "line 2 is longer than 64 MB" in p.stderr
    finally:
        f.unlink()


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_an_unclosed_line_names_the_column_python_names_for_that_line(tmp_path, newline):
    """The line's own end, not "column 1" of the next line (the newline used to be parsed with the line)."""
    line = '{"messages": [{"role": "user", "content": "unterminated"}, {"role": "assistant", "content": "oops"}'
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "ok"}' + newline + line + newline + '{"text": "ok"}' + newline, newline="")
    with pytest.raises(json.JSONDecodeError) as py:
        json.loads(line)
    with pytest.raises(MaskLensError, match=rf"line 2 is not valid JSON \(Expecting ',' delimiter: column "
                                            rf"{py.value.colno}\)"):
        load_examples(f)
    assert py.value.colno == len(line) + 1


# ---------------------------------------------------------------------------------------------- the fast JSON path
_JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=True),
                          st.text(max_size=8), st.sampled_from(["\ud800", "é😀", "1" * 25, "\u2028"]))
_JSON_OBJECTS = st.dictionaries(st.text(max_size=4), st.recursive(
    _JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner,
                                                                                       max_size=3)), max_leaves=12),
    max_size=4)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(_JSON_OBJECTS, st.sampled_from([{}, {"ensure_ascii": False}, {"separators": (",", ":")}]))
def test_a_line_reads_exactly_as_json_loads_reads_it(obj, how):
    """The reader's fast path (orjson) gives what json.loads gives, or steps aside: integers beyond 64 bits, NaN and
    infinities, lone surrogates, duplicate keys."""
    from core.data.reader import _decode_line

    line = json.dumps(obj, **how)
    for raw in (line.encode("utf-8", "surrogatepass") + b"\n", line.encode("utf-8", "surrogatepass")):
        try:
            want = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            with pytest.raises(MaskLensError, match="not UTF-8"):
                _decode_line(raw, 1, 0, "x.jsonl", 0, last=False)
            continue
        got = _decode_line(raw, 1, 0, "x.jsonl", 0, last=False)
        assert repr(got) == repr(want)  # repr: 1 and 1.0, -0.0 and 0.0, nan all told apart


def test_duplicate_keys_and_big_numbers_read_as_json_loads_reads_them():
    from core.data.reader import _decode_line

    for text in ('{"a": 1, "b": 2, "a": 3}', '{"n": 100000000000000000000000}', '{"n": -9223372036854775809}',
                 '{"n": 1e400}', '{"n": NaN}', '{"s": "\\ud800"}', '{"n": 18446744073709551616}'):
        assert repr(_decode_line(text.encode(), 1, 0, "x.jsonl", 0, last=False)) == repr(json.loads(text)), text
