"""What loading rows through Hugging Face `datasets` does to them, predicted without building a Dataset.

TRL trains on the rows a `datasets.Dataset` gives back, and Arrow stores a column with ONE schema: every object at one
structural path has the same keys (a list's elements share one element schema, across rows and within a row). So rows
come back changed:

- ``Dataset.from_list(rows)`` (also ``from_dict``/``from_pandas``, and every parquet/hub dataset saved from one): each
  object gains, as ``null``, the keys that other objects at its path have (tool-call ``arguments``, tool schemas'
  ``properties``, ``reasoning_content``/``tool_calls`` on every message); keys come back in the order first seen;
  integers (and booleans) in a column Arrow infers as float come back as floats (``1`` -> ``1.0``); only the FIRST
  row's columns are kept (a ``tools`` column that row 0 lacks is dropped from every row). Mixed types (a string and a
  number, an object and a string, a bool and an int, an int beyond int64) make loading fail (see ``_STOPS``).
- ``load_dataset("json", data_files=...)`` (datasets 5.2): on the file's first chunk (10 MiB) it finds the fields
  whose objects have different keys (or mix objects/lists with other values) and stores them as ``Json``, kept as
  written: no nulls there, but a string at such a field that holds JSON comes back decoded (``"1"`` -> ``1``, an
  ``arguments`` JSON string -> an object). Elsewhere Arrow's JSON reader applies: rows missing a column get it as
  ``null``, ints beside floats become floats, strings that all read as ISO-8601 timestamps become ``datetime``s.
  Rows after the first chunk are cast to the first chunk's schema: missing keys come back ``null``; a new key or
  column makes loading fail; a value of another type is cast or fails (``SchemaUnion.uncertain``).
  Not modelled (json loader): floats inside Json fields re-encoded by ujson (3.141592653589793 came back
  3.1415926536), and Arrow's JSON reader after a null item in one list (``[null, "2024-01-01"]`` stays a string,
  ``[null, 2**63]`` fails).

Transformers' apply_chat_template drops a MESSAGE's null keys, so message-level nulls are harmless; nulls anywhere
deeper (tool-call arguments, tool schemas, chat_template_kwargs) are rendered (`tojson` prints ``"unit": null``; a
template's ``is defined`` holds for None) and the model learns to emit them. See ``paths_that_matter``.

Two passes, linear in the data, memory in the number of distinct field paths (1M rows stream through):

    union = SchemaUnion()               # or SchemaUnion(loader="json")
    for row in rows: union.add(row)     # pass 1 (json: add(row, nbytes=len(line)) for the exact chunk boundary)
    for row in rows: union.null_paths(row)  # pass 2 -> ["messages[1].tool_calls[0].function.arguments.unit"]

Example: schema_null_paths([{"a": {"x": 1}}, {"a": {"y": 2}}]) -> {0: ["a.y"], 1: ["a.x"]}.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*\Z")
EACH = ...  # a list level in a structural path: format_path(["tools", EACH, "name"]) -> "tools[].name"
JSON_CHUNK_BYTES = 10 << 20  # datasets 5.2 JsonConfig.chunksize: mixed fields are detected on this first chunk
LOADERS = ("from_list", "json")
_MAX_DEPTH = 200
_INT64 = (-(1 << 63), (1 << 63) - 1)
_EXACT_IN_FLOAT = 1 << 53  # Arrow refuses to turn a larger int into a double ("not exactly representable")


def format_path(parts) -> str:
    """Join keys (str) and list indices (int; EACH for any) into one path; odd keys are quoted: ``a["b.c"][0]``."""
    out = []
    for p in parts:
        if p is EACH:
            out.append("[]")
        elif isinstance(p, int) and not isinstance(p, bool):
            out.append(f"[{p}]")
        elif isinstance(p, str) and _PLAIN_KEY.match(p):
            out.append(f".{p}" if out else p)
        else:
            out.append(f"[{json.dumps(str(p), ensure_ascii=True)}]")
    return "".join(out)


@dataclass
class RowChanges:
    """How one row comes back from `datasets`, as field paths of the row. Empty when it comes back as written."""

    nulls: list[str] = field(default_factory=list)  # keys added with a null value
    floats: list[str] = field(default_factory=list)  # integers (and booleans) that come back as floats (1 -> 1.0)
    reordered: list[str] = field(default_factory=list)  # objects whose keys come back in another order
    dropped: list[str] = field(default_factory=list)  # from_list: columns the first row lacks are dropped
    decoded: list[str] = field(default_factory=list)  # json: strings holding JSON, at a Json field, come back decoded
    timestamps: list[str] = field(default_factory=list)  # json: ISO-8601 strings that come back as datetime objects

    def __bool__(self) -> bool:
        return any((self.nulls, self.floats, self.reordered, self.dropped, self.decoded, self.timestamps))


class _Node:
    """What pass 1 saw at one structural path."""

    __slots__ = ("kinds", "keys", "item", "keyset", "keys_differ", "ts_strings", "json", "big_int", "huge_int",
                 "counted", "arrow", "objects", "present", "null_keys", "nullable")

    def __init__(self):
        self.counted: set[str] = set()  # from_list: the scalar kinds Arrow's type inference looks at (see _STOPS)
        self.arrow: str | None = None  # from_list: the scalar type Arrow infers: float, int, bool or str
        self.kinds: dict[str, int] = {}  # kind -> first row where seen: struct, list, str, int, float, bool
        self.keys: dict[str, _Node] = {}  # object keys, in the order first seen (Arrow's field order)
        self.item: _Node | None = None  # the shared element schema of lists at this path
        self.keyset: frozenset | None = None  # json: the first object's keys (first chunk)
        self.keys_differ = False  # json: objects here have different keys (first chunk)
        self.ts_strings: set[str] | None = set()  # json: the distinct strings, while all may be timestamps; else None
        self.json = False  # json: stored as datasets' Json type (kept as written)
        self.big_int: int | None = None  # first row with an int Arrow cannot hold exactly as a double
        self.huge_int: int | None = None  # first row with an int beyond int64
        self.objects = 0  # objects seen here (pass 1)
        self.present = 0  # objects of the parent path that have this key, null or not (pass 1)
        self.null_keys: tuple = ()  # from_list, after pass 1: (key, child) of the keys some object here lacks, or
        #                             whose values have such objects below
        self.nullable = False  # from_list, after pass 1: some row gets a null key at or below this path


_KIND_OF = {dict: "struct", list: "list", tuple: "list", str: "str", int: "int", float: "float", bool: "bool"}


def _kind(v) -> str:
    kind = _KIND_OF.get(type(v))
    if kind is not None:
        return kind
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "str"
    if isinstance(v, dict):
        return "struct"
    if isinstance(v, (list, tuple)):
        return "list"
    return type(v).__name__


_KIND_NAMES = {"struct": "an object", "list": "a list", "str": "a string", "int": "an integer", "float": "a float",
               "bool": "a boolean"}
_TS_CANDIDATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# pyarrow's type inference (pa.array, which datasets calls on each column) stops looking at a Python list, or at a
# column's values, after the first bool, float or string in it; values in objects are all looked at. The type is then
# float if a float was looked at, else int, else bool, else string, and every value must convert to it: a float column
# takes ints and bools (1 -> 1.0, True -> 1.0), the others only their own kind. So [1, 0.5, True] loads as floats but
# [True, 0.5] and [1, True, 0.5] fail, while {"k": True} then {"k": 0.5} in two rows loads (measured, pyarrow 26).
_STOPS = ("bool", "float", "str")
_ACCEPTS = {"float": ("float", "int", "bool")}


class SchemaUnion:
    """Two-pass prediction of what `datasets` does to rows: add() every row, then null_paths()/changes() per row.

    loader: "from_list" (Dataset.from_list/from_dict, parquet written from them) or "json" (load_dataset("json") of
    datasets 5.2, one JSONL file). chunk_bytes: the json loader's chunk size (10 MiB, its default).
    """

    def __init__(self, loader: str = "from_list", chunk_bytes: int = JSON_CHUNK_BYTES):
        if loader not in LOADERS:
            raise ValueError(f"loader must be one of {LOADERS}, got {loader!r}")
        self.loader = loader
        self.chunk_bytes = chunk_bytes
        self.root = _Node()
        self.rows = 0
        self.first_chunk_rows = 0  # json: rows read with the first chunk
        self._offset = 0
        self._final = False
        self._conflicts: dict[str, str] = {}  # structural path -> why loading fails
        self._column_counts: dict[str, bool] = {}  # from_list: columns whose values Arrow's inference still reads
        self._casts: dict[str, str] = {}  # json, later chunks: a scalar of another type (cast, or loading fails)

    # ------------------------------------------------------------------------------------------------- pass 1
    def add(self, row: dict, nbytes: int | None = None) -> None:
        """Pass 1: one row, in file order. nbytes (json loader): the bytes of its JSONL line, newline included
        (default: its compact JSON size, close to `json.dumps` output)."""
        if not isinstance(row, dict):
            raise TypeError(f"a row must be a dict, got {type(row).__name__}")
        r = self.rows
        self.rows += 1
        if self.loader == "from_list":
            if r == 0:
                self.root.keys = {k: _Node() for k in row}  # from_list keeps the first row's columns only
                self._column_counts = dict.fromkeys(row, True)
            self._final = False
            self.root.kinds.setdefault("struct", r)
            for k, child in self.root.keys.items():  # a column is one sequence for Arrow's inference (see _STOPS)
                v = row.get(k)
                self._add(child, v, r, 1, self._column_counts[k])
                if _kind(v) in _STOPS:
                    self._column_counts[k] = False
            return
        start = self._offset
        self._offset += nbytes if nbytes is not None else len(json.dumps(row, ensure_ascii=False).encode()) + 1
        # datasets reads chunk_bytes, then finishes the line: every line starting at or before that offset is in it
        if start <= self.chunk_bytes:
            self.first_chunk_rows += 1
            self._add(self.root, row, r, 0)
        else:
            self._finalize()
            self._check_later(self.root, row, r, [], 0)

    def _add(self, node: _Node, value, r: int, depth: int, counted: bool = True) -> None:
        if value is None:
            return
        if depth > _MAX_DEPTH:
            raise ValueError(f"row {r} is nested more than {_MAX_DEPTH} levels deep")
        kind = _KIND_OF.get(type(value)) or _kind(value)
        node.kinds.setdefault(kind, r)
        if counted:
            node.counted.add(kind)
        if kind == "struct":
            if self.loader == "json":
                ks = frozenset(value)
                if node.keyset is None:
                    node.keyset = ks
                elif ks != node.keyset:
                    node.keys_differ = True
            keys = node.keys
            node.objects += 1
            for k, v in value.items():
                child = keys.get(k)
                if child is None:
                    child = keys[k] = _Node()
                child.present += 1
                if type(v) is str and self.loader == "from_list":  # most leaves: _add's str case, inlined
                    child.kinds.setdefault("str", r)
                    child.counted.add("str")
                else:
                    self._add(child, v, r, depth + 1)
        elif kind == "list":
            item = node.item
            if item is None:
                item = node.item = _Node()
            count = True
            for v in value:
                self._add(item, v, r, depth + 1, count)
                count = count and _KIND_OF.get(type(v)) not in _STOPS
        elif kind == "str":
            if node.ts_strings is not None and self.loader == "json":
                if len(value) <= 40 and _TS_CANDIDATE.match(value):
                    node.ts_strings.add(value)
                else:
                    node.ts_strings = None
        elif kind == "int":
            if not _INT64[0] <= value <= _INT64[1]:
                if node.huge_int is None:
                    node.huge_int = r
            elif abs(value) > _EXACT_IN_FLOAT and node.big_int is None:
                node.big_int = r

    def _finalize(self) -> None:
        """After pass 1 (json: after the first chunk): decide each field's Arrow type, and what cannot load."""
        if self._final:
            return
        self._final = True
        if self.loader == "json":
            self._mark_json(self.root, True, [])
        else:
            self._conflicts.clear()
            self._type_from_list(self.root, [])
            _mark_nullable(self.root)

    def _type_from_list(self, node: _Node, parts: list) -> None:
        """from_list: the type Arrow infers at each path, and the paths where converting a value to it fails."""
        kinds = node.kinds
        for k, child in node.keys.items():
            parts.append(k)
            self._type_from_list(child, parts)
            parts.pop()
        if node.item is not None:
            parts.append(EACH)
            self._type_from_list(node.item, parts)
            parts.pop()
        if not kinds:
            return
        key = format_path(parts)
        first, r0 = next(iter(kinds.items()))
        if len(kinds) > 1 and set(kinds) & {"struct", "list"}:
            other, r1 = list(kinds.items())[1]
            self._conflicts[key] = f"{_KIND_NAMES[first]} in row {r0}, {_KIND_NAMES.get(other, other)} in row {r1}"
            return
        node.arrow = next((t for t in ("float", "int", "bool", "str") if t in node.counted), first)
        refused = [(k, r) for k, r in kinds.items() if k not in _ACCEPTS.get(node.arrow, (node.arrow,))]
        if refused:
            k, r = refused[0]
            self._conflicts[key] = (f"{_KIND_NAMES.get(k, k)} in row {r} that Arrow cannot convert to the "
                                    f"{node.arrow} type it infers here (from row {kinds[node.arrow]})")
        elif node.huge_int is not None:
            self._conflicts[key] = f"an integer beyond int64 in row {node.huge_int}"
        elif node.arrow == "float" and node.big_int is not None:
            self._conflicts[key] = (f"an integer above 2**53 in row {node.big_int} in a float column (row "
                                    f"{kinds['float']}): Arrow cannot turn it into a float exactly")

    def _mark_json(self, node: _Node, is_root: bool, parts: list) -> None:
        # datasets.utils.json.find_mixed_struct_types_field_paths, then the fields Arrow's JSON reader refuses
        # ("changed from int64 to string"), which datasets also turns into Json (an int beside floats is promoted).
        kinds = set(node.kinds)
        if not kinds:
            return
        if kinds == {"struct"}:
            if not is_root and (node.keys_differ or not node.keyset):
                node.json = True
                return
            for k, child in node.keys.items():
                self._mark_json(child, False, parts + [k])
        elif kinds == {"list"}:
            if node.item is not None:
                self._mark_json(node.item, False, parts + [EACH])
        elif kinds == {"int", "float"} and node.big_int is not None and node.huge_int is None:
            # Arrow's JSON reader promotes the ints to doubles and refuses one it cannot hold exactly
            self._conflicts[format_path(parts)] = (f"an integer above 2**53 in row {node.big_int} beside floats: Arrow "
                                                   "cannot turn it into a float exactly")
        elif kinds & {"struct", "list"} or not kinds <= {"int", "float"} and len(kinds) > 1:
            node.json = True
        elif kinds == {"str"} and node.ts_strings:
            if not _arrow_reads_as_timestamps(tuple(sorted(node.ts_strings))):
                node.ts_strings = None
        if "str" not in kinds or node.json:
            node.ts_strings = None

    def _check_later(self, node: _Node, value, r: int, parts: list, depth: int) -> None:
        """json: a row after the first chunk is cast to the first chunk's schema. Record what makes that fail."""
        if value is None or node.json or depth > _MAX_DEPTH:
            return
        kind = _kind(value)
        have = set(node.kinds)
        why = None
        if not have:
            why = f"{_KIND_NAMES.get(kind, kind)} in row {r}, where the first chunk has only nulls"
        elif kind == "struct":
            if "struct" not in have:
                why = f"{_KIND_NAMES['struct']} in row {r}, where the first chunk has {_names(have)}"
            else:
                for k, v in value.items():
                    child = node.keys.get(k)
                    parts.append(k)
                    if child is None:
                        self._conflict(parts, f"a key the first chunk never has, in row {r}")
                    else:
                        self._check_later(child, v, r, parts, depth + 1)
                    parts.pop()
        elif kind == "list":
            if "list" not in have:
                why = f"a list in row {r}, where the first chunk has {_names(have)}"
            elif node.item is None or not node.item.kinds:
                if any(v is not None for v in value):
                    why = f"list items in row {r}, where the first chunk has only empty lists or null items"
            else:
                parts.append(EACH)
                for v in value:
                    self._check_later(node.item, v, r, parts, depth + 1)
                parts.pop()
        elif have & {"struct", "list"}:
            why = f"{_KIND_NAMES.get(kind, kind)} in row {r}, where the first chunk has {_names(have)}"
        elif node.ts_strings and not (kind == "str" and _arrow_reads_as_timestamps((value,))) or \
                not node.ts_strings and kind not in have and not (kind == "int" and "float" in have):
            # Arrow casts some of these to the first chunk's type (1.5 into a string column -> "1.5") and refuses
            # others (1.5 into an int column): not predicted value by value, reported as uncertain.
            self._casts.setdefault(format_path(parts), f"{_KIND_NAMES.get(kind, kind)} in row {r}, where the first "
                                   f"chunk has {_names(have)}: datasets casts it to that type or fails to load")
        if why:
            self._conflict(parts, why)

    def _conflict(self, parts: list, why: str) -> None:
        self._conflicts.setdefault(format_path(parts) or "(row)", why)

    @property
    def conflicts(self) -> list[str]:
        """Why `datasets` cannot load these rows at all (empty when it can), one line per field path."""
        self._finalize()
        return [f"{path}: {why}" for path, why in self._conflicts.items()]

    @property
    def uncertain(self) -> list[str]:
        """json loader: scalars in later chunks whose type differs from the first chunk's column. Arrow casts some
        (a number into a string column becomes its text) and refuses others; not predicted value by value."""
        return [f"{path}: {why}" for path, why in self._casts.items()]

    # ------------------------------------------------------------------------------------------------- pass 2
    def changes(self, row: dict) -> RowChanges:
        """Pass 2: how this row (added in pass 1) comes back from `datasets`."""
        self._finalize()
        out = RowChanges()
        root = self.root
        if self.loader == "from_list":
            out.dropped = [format_path([k]) for k in row if k not in root.keys]
        for k, child in root.keys.items():
            if k not in row:
                out.nulls.append(format_path([k]))
            else:
                self._diff(child, row[k], format_path([k]), out, 1)
        return out

    def null_paths(self, row: dict) -> list[str]:
        """Pass 2: the paths of the keys `datasets` adds to this row (one added in pass 1) with a null value; what
        changes(row).nulls gives, visiting only the paths where pass 1 saw an object without one of its keys."""
        self._finalize()
        if self.loader != "from_list":
            return self.changes(row).nulls
        out = []
        for k, child in self.root.keys.items():
            if k not in row:
                out.append(format_path([k]))
            elif child.nullable:
                _nulls(child, row[k], format_path([k]), out, 1)
        return out

    def _diff(self, node: _Node, value, path: str, out: RowChanges, depth: int) -> None:
        """Pass 2 below one field; path is the field's formatted path (built as we descend: no list of parts)."""
        if value is None or depth > _MAX_DEPTH:
            return
        if node.json:
            if isinstance(value, str) and _ujson_parses(value):
                out.decoded.append(path)
            return
        kind = _KIND_OF.get(type(value)) or _kind(value)
        if kind == "struct":
            keys = node.keys
            if len(value) > 1 and [k for k in keys if k in value] != [k for k in value if k in keys]:
                out.reordered.append(path)
            for k, child in keys.items():
                v = value.get(k, _MISSING)
                if v is _MISSING:
                    out.nulls.append(path + _segment(k))
                elif v is not None:
                    self._diff(child, v, path + _segment(k), out, depth + 1)
        elif kind == "list":
            item = node.item
            if item is not None:
                for i, v in enumerate(value):
                    if v is not None:
                        self._diff(item, v, f"{path}[{i}]", out, depth + 1)
        elif kind in ("int", "bool"):  # a bool in a float column comes back 0.0/1.0 too
            if (node.arrow == "float" if self.loader == "from_list" else
                    "float" in node.kinds or node.huge_int is not None):
                out.floats.append(path)
        elif kind == "str" and node.ts_strings:
            out.timestamps.append(path)


_MISSING = object()


def _mark_nullable(node: _Node) -> bool:
    """from_list, after pass 1: where nulls can appear below each path (iterative: paths nest up to _MAX_DEPTH)."""
    order, stack = [], [node]
    while stack:
        n = stack.pop()
        order.append(n)
        stack.extend(n.keys.values())
        if n.item is not None:
            stack.append(n.item)
    for n in reversed(order):  # children before parents
        n.null_keys = tuple((k, c) for k, c in n.keys.items() if c.nullable or c.present < n.objects)
        n.nullable = bool(n.null_keys) or (n.item is not None and n.item.nullable)
    return node.nullable


def _nulls(node: _Node, value, path: str, out: list, depth: int) -> None:
    """SchemaUnion._diff's nulls alone, below a nullable path (from_list): the same paths in the same order."""
    if value is None or depth > _MAX_DEPTH:
        return
    kind = _KIND_OF.get(type(value)) or _kind(value)
    if kind == "struct":
        for k, child in node.null_keys:
            v = value.get(k, _MISSING)
            if v is _MISSING:
                out.append(path + _segment(k))
            elif v is not None and child.nullable:
                _nulls(child, v, path + _segment(k), out, depth + 1)
    elif kind == "list" and node.item is not None and node.item.nullable:
        for i, v in enumerate(value):
            if v is not None:
                _nulls(node.item, v, f"{path}[{i}]", out, depth + 1)


@lru_cache(maxsize=65536)
def _segment(key: str) -> str:
    """One key's part of a path: ".city", or '["a.b"]' for a key that is not a plain name."""
    return "." + key if _PLAIN_KEY.match(key) else f"[{json.dumps(key, ensure_ascii=True)}]"


def _names(kinds) -> str:
    return " and ".join(_KIND_NAMES.get(k, k) for k in sorted(kinds))


@lru_cache(maxsize=4096)
def _arrow_reads_as_timestamps(strings: tuple) -> bool:
    """True when Arrow's JSON reader infers a timestamp column from these strings (its own ISO-8601 parser decides:
    "2024-01-01", "2024-01-01 10:00", "...T10:00:00+02:00" are; fractional seconds, "2024-1-1" are not)."""
    import pyarrow as pa  # noqa: PLC0415  (only for date-like strings)
    import pyarrow.json as paj  # noqa: PLC0415

    lines = "\n".join(json.dumps({"x": s}) for s in strings).encode()
    try:
        table = paj.read_json(io.BytesIO(lines))
    except pa.ArrowInvalid:
        return False
    return pa.types.is_timestamp(table.schema.field("x").type)


def _ujson_parses(s: str) -> bool:
    """datasets decodes a Json field's string when its ujson parses it ("1", "true", '{"a": 1}', " 7 ", "NaN")."""
    try:
        from pandas.io.json import ujson_loads  # noqa: PLC0415  (what datasets.utils.json uses)
    except ImportError:  # older pandas
        ujson_loads = json.loads
    try:
        ujson_loads(s)
    except Exception:  # ujson raises ValueError subclasses and others
        return False
    return True


def schema_null_paths(rows, loader: str = "from_list") -> dict[int, list[str]]:
    """{row index: paths of the keys `datasets` adds with null} for the rows it changes. Two passes over `rows`
    (a list, or anything iterable twice). Example: [{"a": {"x": 1}}, {"a": {}}] -> {1: ["a.x"]}."""
    union = SchemaUnion(loader)
    for row in rows:
        union.add(row)
    out = {}
    for i, row in enumerate(rows):
        nulls = union.null_paths(row)
        if nulls:
            out[i] = nulls
    return out


# The columns whose null changes what TRL does: it picks the format by key presence ("prompt" in example), and
# `**example.get("chat_template_kwargs", {})` raises on None. A null `tools` is the same as none.
_FORMAT_COLUMNS = ("chat_template_kwargs", "prompt", "completion", "messages", "conversations", "text",
                   "input_ids", "labels")
_MESSAGE_KEY = re.compile(r"(messages|conversations|prompt|completion)\[\d+\]\.[A-Za-z_][A-Za-z0-9_\-]*\Z"
                          r"|(messages|conversations|prompt|completion)\[\d+\]\[\"(?:[^\"\\]|\\.)*\"\]\Z")


def paths_that_matter(paths) -> list[str]:
    """The null paths that change what is trained, in order. Kept: anything below a message's own keys (tool-call
    arguments and ids, nested fields), tool schemas, chat_template_kwargs and its variables (templates test `is
    defined`, which holds for None), and the format columns TRL dispatches on. Left out: a message's own keys
    (`messages[3].reasoning_content`: apply_chat_template drops a message's None values) and other columns.

    Example: ["messages[1].tool_calls", "messages[1].tool_calls[0].function.arguments.unit"]
    -> ["messages[1].tool_calls[0].function.arguments.unit"].
    """
    out = []
    for p in paths:
        if _MESSAGE_KEY.match(p):
            continue
        if "." not in p and "[" not in p and p not in _FORMAT_COLUMNS:
            continue
        out.append(p)
    return out
