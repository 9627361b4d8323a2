"""Loading a dataset: read its rows (core.data.reader: files, folders, hub datasets) and normalise every one
(core.data.normalize), adding the findings that need the whole dataset (schema nulls `datasets` would inject).

Example: load_examples("chat.jsonl")[0].kind -> "messages"; load_examples("ds_folder", split="test");
load_examples("org/name:config:train")
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import MaskLensError
from ..findings import Finding
from .example import Example
from .normalize import normalize_row
from .reader import iter_located_rows
from .schema import SchemaUnion, paths_that_matter


# --------------------------------------------------------------------------------------------------- reading files
def read_rows(path: str | os.PathLike, split: str = "train", limit: int | None = None,
              config: str | None = None) -> tuple[list[dict], list[int | None], str]:
    """Read raw rows from JSONL/JSON/Parquet/CSV, a dataset folder or a hub dataset. Returns (rows, line numbers or
    None, source).

    The reading and every bad-file error live in core.data.reader (which streams; this collects)."""
    rows, lines = [], []
    for _, obj, line, _src in iter_located_rows(path, split, limit, config=config):
        rows.append(obj)
        lines.append(line)
    return rows, lines, str(path)


def base_dir_of(source: str) -> str | None:
    """The folder a row's relative image paths are read from: the data file's folder (a folder's shard: the shard's
    folder; a hub dataset: none)."""
    p = Path(source)
    if p.is_file():
        return str(p.resolve().parent)
    if p.is_dir():
        return str(p.resolve())
    return None


# ---------------------------------------------------------------------------------------------------- normalising
def load_examples(path: str | os.PathLike, split: str = "train", limit: int | None = None,
                  config: str | None = None) -> list[Example]:
    """Read a dataset and normalise every row. Example: load_examples("chat.jsonl")[0].kind -> "messages"."""
    examples, rows = [], []
    bases: dict[str, str | None] = {}
    for i, obj, line, src in iter_located_rows(path, split, limit, config=config):
        base = bases[src] if src in bases else bases.setdefault(src, base_dir_of(src))
        examples.append(normalize_row(obj, i, source=src, line=line, base_dir=base))
        rows.append(obj)
    note_schema_nulls(examples, rows, str(path))
    return examples


def load_examples_lenient(path: str | os.PathLike, split: str = "train", limit: int | None = None,
                          config: str | None = None) -> tuple[list[Example], list[MaskLensError]]:
    """Like load_examples, but a bad row (or malformed JSONL line) is collected instead of stopping the rest.

    File-level problems (missing, empty, unsupported) still raise. Example: (examples, errors) for a file with one
    malformed line -> all other rows, and one error naming that line.
    """
    errors: list[MaskLensError] = []
    indexed = list(iter_located_rows(path, split, limit, on_error=errors.append, config=config))
    examples = []
    bases: dict[str, str | None] = {}
    for i, r, ln, src in indexed:
        base = bases[src] if src in bases else bases.setdefault(src, base_dir_of(src))
        try:
            examples.append(normalize_row(r, i, source=src, line=ln, base_dir=base))
        except MaskLensError as e:
            errors.append(e)
    errors.sort(key=lambda e: e.row if e.row is not None else -1)
    by_row = {i: r for i, r, _, _ in indexed}
    note_schema_nulls(examples, [by_row[e.row] for e in examples], str(path))
    return examples, errors


def note_schema_nulls(examples: list[Example], rows: list[dict], src: str | None) -> None:
    """Add a schema_nulls_injected finding to each example whose row `datasets` would change (as TRL's users load
    it: Dataset.from_list / load_dataset unify the Arrow schema, adding null keys that templates render), and a
    datasets_cannot_load finding to every example when `datasets` cannot load the rows at all. Rows as written are
    what MaskLens renders. Example: tool calls {"city": "Paris"} and {"city": "Oslo", "unit": "C"} in two rows -> the
    first gets "messages[1].tool_calls[0].function.arguments.unit"."""
    if len(rows) < 2:
        return
    union = schema_union(rows)
    if union is None:
        return
    for ex, r in zip(examples, rows):
        ex.notes.extend(schema_findings(union, r, ex.row))


def schema_union(rows) -> SchemaUnion | None:
    """Pass 1 of the schema prediction: the Arrow schema `Dataset.from_list` would infer for these raw rows (any
    iterable: a file is streamed, only the schema is kept). None when it cannot be predicted (a row is not a dict)."""
    union = SchemaUnion("from_list")
    try:
        for r in rows:
            if not isinstance(r, dict):
                return None
            union.add(r)
        union.conflicts  # noqa: B018  (finalises the union; a failure here is a failure to predict)
    except Exception:  # noqa: BLE001  (a prediction only: never stop loading over it)
        return None
    return union if union.rows >= 2 else None


def schema_findings(union, row: dict, index: int | None) -> list[Finding]:
    """Pass 2 for one raw row: [datasets_cannot_load] when the rows cannot be loaded at all, [schema_nulls_injected]
    naming the null keys `datasets` adds to this row, or []."""
    conflicts = union.conflicts
    if conflicts:
        msg = "; ".join(conflicts[:3]) + (f" (and {len(conflicts) - 3} more)" if len(conflicts) > 3 else "")
        return [Finding("datasets_cannot_load", msg)]
    try:
        paths = paths_that_matter(union.null_paths(row))
    except Exception:  # noqa: BLE001
        return []
    if not paths:
        return []
    shown = ", ".join(paths[:6]) + (f" (and {len(paths) - 6} more)" if len(paths) > 6 else "")
    return [Finding("schema_nulls_injected", f"row {index}: `datasets` adds {len(paths)} key(s) with null here: {shown}",
                    location={"paths": paths})]


