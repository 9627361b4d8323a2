"""Reading dataset files row by row, with an error that names the file, the line and the fix for every bad file.

JSONL is streamed: one line in memory at a time (at most MAX_LINE_BYTES of it), so a file of any size can be read.
A .json file is one document and is read whole (up to MAX_JSON_BYTES; past that, convert it to JSONL). Parquet and
CSV go through `datasets` (memory-mapped Arrow) and come out in batches. Hub datasets load through core.data.

What a bad file gets (JSONL):
- a UTF-8 BOM: accepted silently;            - blank / whitespace-only lines: skipped (they take no row number);
- bytes that are not UTF-8: the line, the byte offset in the file and an `iconv` command;
- a truncated last line (no newline, JSON cut off): named as such;
- a line nested too deeply for the JSON parser: an error, not a RecursionError;
- a line over MAX_LINE_BYTES: an error, read no further than the limit;
- an empty file, or only blank lines: "no examples".

Example: for row, obj, line in iter_rows("chat.jsonl"): ...   # (0, {"messages": [...]}, 1), ...
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterator

import orjson

from ..errors import MaskLensError

JSON_FIELDS = ("messages", "conversations", "prompt", "completion", "tools", "input_ids", "labels", "chat_template_kwargs")


MAX_LINE_BYTES = 64 * 2**20  # one JSONL row; 64 MB is ~16M tokens, far past any training example
MAX_JSON_BYTES = 256 * 2**20  # a .json document is parsed whole; bigger ones should be JSONL
BOM = b"\xef\xbb\xbf"
EXAMPLE_FIELDS = ("messages", "conversations", "prompt", "completion", "text", "input_ids")
SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")

Row = tuple[int, dict, "int | None"]  # (0-based row index, the raw row, 1-based line in a JSONL file or None)


def iter_rows(path: str | os.PathLike, split: str = "train", limit: int | None = None,
              on_error: Callable[[MaskLensError], None] | None = None, config: str | None = None) -> Iterator[Row]:
    """Yield (row, object, line) for each example of a JSONL/JSON/Parquet/CSV file, a folder (a save_to_disk
    folder, or shards: core.data.sources) or a hub dataset (``org/name``, ``org/name:config:split``).

    File-level problems (missing, empty, unsupported type, no examples) always raise MaskLensError. A bad JSONL line
    raises too, unless `on_error` is given: then it receives the error, the line keeps its row number, and reading
    goes on (the app's lenient loading).
    """
    for i, obj, line, _ in iter_located_rows(path, split, limit, on_error, config):
        yield i, obj, line


def iter_located_rows(path: str | os.PathLike, split: str = "train", limit: int | None = None,
                      on_error: Callable[[MaskLensError], None] | None = None,
                      config: str | None = None) -> Iterator[tuple[int, dict, "int | None", str]]:
    """iter_rows, with the file each row comes from (a folder's shard; the path itself for one file)."""
    from .sources import hub_rows, iter_dir_rows, parse_hub_spec  # noqa: PLC0415

    p = Path(path)
    src = str(path)
    if not p.exists():
        spec = parse_hub_spec(src) if not src.startswith(("/", ".", "~")) else None
        if spec is not None:
            name, cfg, spl = spec
            yield from hub_rows(name, spl or split, cfg if cfg is not None else config, limit)
            return
        raise MaskLensError("no such file or folder", file=src,
                            fix="give a path to a .jsonl/.json/.parquet/.csv file, a dataset folder (save_to_disk, "
                                "or shards), or a hub dataset id (org/name, org/name:config:split)")
    if p.is_dir():
        yield from iter_dir_rows(p, split, limit, on_error, iter_file_rows)
        return
    for i, obj, line in iter_file_rows(p, limit, on_error):
        yield i, obj, line, src


def iter_file_rows(p: Path, limit: int | None = None, on_error: Callable[[MaskLensError], None] | None = None,
                   empty_ok: bool = False) -> Iterator[Row]:
    """One data file's rows. empty_ok: a file without rows yields nothing (a folder's shard) instead of raising."""
    src = str(p)
    suffix = p.suffix.lower()
    if suffix == ".zip":
        raise MaskLensError("is a zip file", file=src,
                            fix="unzip it and point at the folder (the app unpacks uploaded zips itself)")
    if suffix not in SUFFIXES:
        raise MaskLensError(f"unsupported file type {suffix or '(none)'!r}", file=src,
                            fix="use .jsonl, .json, .parquet or .csv (or a dataset folder)")
    if p.stat().st_size == 0:
        if empty_ok:
            return
        raise MaskLensError("the file is empty", file=src, fix="add at least one example")
    if suffix == ".jsonl":
        rows = iter_jsonl(p, limit, on_error, span=(0, None, 0, 0) if empty_ok else None)
    elif suffix == ".json":
        rows = _json_rows(p, limit)
    else:
        rows = _arrow_rows(p, suffix, limit)
    n = 0
    for r in rows:
        n += 1
        yield r
    if n == 0 and suffix != ".jsonl" and not empty_ok:  # iter_jsonl says it itself, naming blank lines
        raise MaskLensError("the file has no examples", file=src, fix="add at least one example")


# ------------------------------------------------------------------------------------------------------- JSONL
def iter_jsonl(p: Path, limit: int | None = None, on_error: Callable[[MaskLensError], None] | None = None,
               max_line_bytes: int | None = None, *, span: tuple[int, int, int, int] | None = None,
               cursor: list[int] | None = None) -> Iterator[Row]:
    """Stream a JSONL file: (row, object, line) per non-blank line. See the module docstring for bad files.

    span=(start, end, row, line): read only the lines that begin in bytes [start, end) of the file, numbering rows
    from `row` and lines from `line` + 1 (a worker reading its own part of a file: core.parallel.jsonl_ranges).
    cursor: a one-item list that holds, whenever a row is yielded, the byte offset just after that row's line.
    """
    src = str(p)
    cap = max_line_bytes or MAX_LINE_BYTES
    start0, end, row, lineno = span if span is not None else (0, None, 0, 0)
    blank = 0
    with open(p, "rb") as f:
        f.seek(start0)
        offset = start0  # byte offset of the current line's start
        while end is None or offset < end:
            raw = f.readline(cap + 1)
            if not raw:
                break
            lineno += 1
            start = offset
            offset += len(raw)
            if len(raw) > cap and not raw.endswith(b"\n"):
                offset += _skip_rest_of_line(f)
                err = MaskLensError(
                    f"line {lineno} is longer than {cap // 2**20} MB (one row this long is not a training example)",
                    file=src, row=row,
                    fix="remove or split that line; if the row is meant, raise core.reader.MAX_LINE_BYTES")
            else:
                err = None
                obj = None
                try:
                    obj = _decode_line(raw, lineno, start, src, row, last=not raw.endswith(b"\n"))
                except MaskLensError as e:
                    err = e
                if err is None and obj is None:
                    blank += 1
                    continue
            if err is not None:
                if on_error is None:
                    raise err
                on_error(err)
            else:
                if cursor is not None:
                    cursor[0] = offset
                yield row, obj, lineno
            row += 1
            if limit and row >= limit:
                return
    if row == 0 and span is None:
        raise MaskLensError("the file has no examples" + (f" (only {blank} blank lines)" if blank else ""), file=src,
                            fix="add at least one example: one JSON object per line")


def _skip_rest_of_line(f) -> int:
    n = 0
    while True:
        chunk = f.readline(2**20)
        n += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            return n


# 19 digits in a row: maybe an integer orjson cannot hold (beyond 64 bits it gives a float, json.loads an int).
# Found by mapping every digit to "0" (bytes.translate and `in` run in C; a regex is 10x slower here).
_DIGITS_TO_0 = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


def _decode_line(raw: bytes, lineno: int, start: int, src: str, row: int, last: bool) -> dict | None:
    """One JSONL line -> its object, or None for a blank line. Raises MaskLensError naming the line."""
    # Fast path: orjson, which gives exactly what json.loads gives where it succeeds (it refuses NaN, lone surrogates,
    # invalid UTF-8, deep nesting: json.loads below then decides, and names the line).
    if raw[:1] == b"{" and _LONG_NUMBER not in raw.translate(_DIGITS_TO_0):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    if lineno == 1 and raw.startswith(BOM):  # written by Windows tools; harmless
        raw, start = raw[len(BOM):], start + len(BOM)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(raw, e.start, lineno, start, src, row, e.reason) from None
    if not text.strip():
        return None
    text = text.rstrip("\r\n")  # so that an error at the line's end gets this line's column, not "line 2 column 1"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if last and (e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated")):
            raise MaskLensError(f"line {lineno}, the last line, is truncated: the file ends in the middle of a JSON "
                                f"value ({e.msg})", file=src, row=row,
                                fix="the file was cut off (an interrupted download or write?): write it again, or "
                                    "delete its incomplete last line") from None
        raise MaskLensError(f"line {lineno} is not valid JSON ({e.msg}: column {e.colno})", file=src, row=row,
                            fix="make each line one JSON object") from None
    except RecursionError:
        raise MaskLensError(f"line {lineno} is nested too deeply to read (more than ~{_depth_limit()} levels)",
                            file=src, row=row,
                            fix="a conversation nests a few levels; this line is damaged or generated wrongly: "
                                "remove it") from None
    if not isinstance(obj, dict):
        raise MaskLensError(f"line {lineno} is a JSON {_json_type(obj)}, not an object", file=src, row=row,
                            fix='make each line an object such as {"messages": [...]}')
    return obj


def _not_utf8(line: bytes, pos: int, lineno: int, start: int, src: str, row: int | None,
              reason: str) -> MaskLensError:
    """`line` (starting at byte `start` of the file) has a byte at `pos` that is not UTF-8."""
    if lineno == 1 and line[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return MaskLensError("is UTF-16 text, not UTF-8", file=src,
                             fix=f"convert it: iconv -f UTF-16 -t UTF-8 {src} > converted.jsonl")
    column = len(line[:pos].decode("utf-8", errors="replace")) + 1
    return MaskLensError(
        f"line {lineno}: byte 0x{line[pos]:02x} at byte offset {start + pos} (column {column}) is not UTF-8 "
        f"({reason})", file=src, row=row,
        fix=f"convert the file to UTF-8, e.g. iconv -f WINDOWS-1252 -t UTF-8 {src} > converted.jsonl "
            "(name the file's real encoding after -f)")


def _depth_limit() -> int:
    import sys  # noqa: PLC0415

    return sys.getrecursionlimit()


def _json_type(obj) -> str:
    return {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(obj), type(obj).__name__)


# -------------------------------------------------------------------------------------------------------- JSON
def _json_rows(p: Path, limit: int | None) -> Iterator[Row]:
    """A .json document: an array of example objects, or an object with one key holding that array
    ({"train": [...]}, as some exports write). Read whole: bounded by MAX_JSON_BYTES."""
    src = str(p)
    size = p.stat().st_size
    if size > MAX_JSON_BYTES:
        raise MaskLensError(f"is {size / 2**20:.0f} MB, over the {MAX_JSON_BYTES // 2**20} MB that a .json document "
                            "may take (it is parsed whole)", file=src,
                            fix=f"convert it to JSONL, which is streamed: jq -c '.[]' {src} > data.jsonl")
    raw = p.read_bytes()
    bom = len(BOM) if raw.startswith(BOM) else 0
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = bom + e.start
        ls = raw.rfind(b"\n", 0, at) + 1
        le = raw.find(b"\n", at)
        raise _not_utf8(raw[ls:le if le >= 0 else len(raw)], at - ls, raw.count(b"\n", 0, at) + 1, ls, src, None,
                        e.reason) from None
    text = text.rstrip("\r\n")  # an error at the document's end is on its last line, not one line further
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        truncated = e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated")
        raise MaskLensError(f"not valid JSON ({e.msg}: line {e.lineno}, column {e.colno})"
                            + (": the file ends in the middle of the document (truncated?)" if truncated else ""),
                            file=src,
                            fix="a .json file holds one array of example objects (use .jsonl for one object a line)"
                            ) from None
    except RecursionError:
        raise MaskLensError(f"nested too deeply to read (more than ~{_depth_limit()} levels)", file=src,
                            fix="the file is damaged or generated wrongly: conversations nest a few levels") from None
    rows = _rows_of_document(obj, src)
    for i, r in enumerate(rows):
        if limit and i >= limit:
            return
        if not isinstance(r, dict):
            raise MaskLensError(f"element {i} of the array is a JSON {_json_type(r)}, not an object", file=src, row=i,
                                fix='make each element an object such as {"messages": [...]}')
        yield i, r, None


def _rows_of_document(obj, src: str) -> list:
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict):
        keys = list(obj)
        if len(keys) == 1 and isinstance(obj[keys[0]], list) and keys[0] not in EXAMPLE_FIELDS:
            return obj[keys[0]]
        if any(k in obj for k in EXAMPLE_FIELDS):
            raise MaskLensError("holds one example object, not an array of examples", file=src,
                                fix="wrap it in [ ... ], or write it as a .jsonl file (one object a line)")
        raise MaskLensError(f"is a JSON object with keys {', '.join(map(repr, keys[:5]))}"
                            f"{' ...' if len(keys) > 5 else ''}, not an array of examples", file=src,
                            fix='a .json dataset is [{"messages": [...]}, ...] (or {"train": [...]}, one key)')
    raise MaskLensError(f"is a JSON {_json_type(obj)}, not an array of examples", file=src,
                        fix='a .json dataset is [{"messages": [...]}, ...]')


# ------------------------------------------------------------------------------------------------ Parquet / CSV
def _arrow_rows(p: Path, suffix: str, limit: int | None, batch: int = 1024) -> Iterator[Row]:
    import datasets  # noqa: PLC0415  (heavy: only when needed)

    src = str(p)
    try:
        ds = datasets.Dataset.from_parquet(src) if suffix == ".parquet" else datasets.Dataset.from_csv(src)
    except Exception as e:  # datasets raises many types; the user needs the message and the file
        raise MaskLensError(f"could not be read as {suffix[1:]}: {e}", file=src,
                            fix=f"check it is a valid {suffix[1:]} file") from None
    n = min(limit, len(ds)) if limit else len(ds)
    for s in range(0, n, batch):
        for i, r in enumerate(ds.select(range(s, min(s + batch, n))).to_list(), s):
            yield i, _decode_json_cells(r, src, i), None


def _decode_json_cells(r: dict, src: str, i: int) -> dict:
    """CSV cells hold JSON text for nested fields."""
    for k in JSON_FIELDS:
        v = r.get(k)
        if isinstance(v, str) and v[:1] in "[{":
            try:
                r[k] = json.loads(v)
            except json.JSONDecodeError as e:
                raise MaskLensError(f"holds text that is not valid JSON ({e.msg})", file=src, row=i, field=k,
                                    fix="store nested fields as JSON") from None
            except RecursionError:
                raise MaskLensError("holds JSON nested too deeply to read", file=src, row=i, field=k,
                                    fix="the cell is damaged or generated wrongly: remove the row") from None
    return r
