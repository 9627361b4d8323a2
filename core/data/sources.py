"""Datasets that are not one file: a ``Dataset.save_to_disk`` directory, a folder of parquet/jsonl/json/csv shards,
a hub dataset with a config and split (``org/name:config:split``), and a zip of any of them (the app's uploads).

How a folder is read:
- ``dataset_info.json`` + ``state.json`` (a saved Dataset) or ``dataset_dict.json`` (a saved DatasetDict, whose
  ``split`` is taken): ``datasets.load_from_disk``, memory-mapped, read in batches.
- otherwise its data files, split by `datasets`' own file-name rules (``datasets.data_files.get_data_patterns``:
  ``train-00000-of-00002.parquet``, ``data/test.jsonl``, ``train/*.jsonl``...; a folder whose names say no split is
  all ``train``), exactly the files ``load_dataset(folder)`` would read for that split, in its order. Each shard is
  read with core.data.reader's readers, so a bad line names its shard file and line; row numbers run on across shards.

Example: iter_dir_rows(Path("my_ds"), "train")  ->  (0, {"messages": [...]}, 1, "my_ds/data/train-00000.jsonl"), ...
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import zipfile
from pathlib import Path
from typing import Callable, Iterator

from ..errors import MaskLensError
from ..hub import offline_note, offline_while_unreachable

LocatedRow = tuple[int, dict, "int | None", str]  # (row, object, line in a JSONL file or None, the file it came from)
SHARD_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
_HUB_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?)(?::(?P<config>[^:/]*))?(?::(?P<split>[^:/]+))?$")


# --------------------------------------------------------------------------------------------------------------- hub
def parse_hub_spec(text: str) -> tuple[str, str | None, str | None] | None:
    """``org/name``, ``org/name:config`` or ``org/name:config:split`` (config may be empty: ``org/name::test``) ->
    (name, config or None, split or None); None for anything that is not such a spec.
    Example: parse_hub_spec("HuggingFaceM4/the_cauldron:ai2d:train") -> ("HuggingFaceM4/the_cauldron", "ai2d", "train")."""
    m = _HUB_SPEC.match(text.strip())
    if not m or "/" not in m["name"] and ":" not in text:
        return None
    name = m["name"]
    if name.startswith(".") or name.endswith(tuple(SHARD_SUFFIXES)) or ".." in name:
        return None
    return name, m["config"] or None, m["split"] or None


def hub_rows(name: str, split: str, config: str | None, limit: int | None) -> Iterator[LocatedRow]:
    """A hub dataset through `datasets` (needs the network, or its cache). Not testable offline: the code path is
    load_dataset(name, config, split=split), then the same batched reading as a saved dataset."""
    unreachable = None
    try:
        import datasets  # noqa: PLC0415

        with offline_while_unreachable(name) as unreachable:  # else datasets retries for ~25 s before it fails
            ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # noqa: BLE001  (datasets raises many types: the user needs its message)
        what = f"{name}" + (f" (config {config!r})" if config else "") + f", split {split!r}"
        offline = offline_note(unreachable)
        raise MaskLensError(f"not a local file or folder, and loading it as a hub dataset ({what}) failed{offline}: "
                            f"{e}", file=name, fix="check the path, or the dataset id, config and split (written "
                            "org/name:config:split) and your network / HF_TOKEN") from None
    src = f"{name}" + (f":{config}" if config else "") + f":{split}"
    yield from _dataset_rows(ds, src, limit)


def _dataset_rows(ds, src: str, limit: int | None, batch: int = 1024) -> Iterator[LocatedRow]:
    n = min(limit, len(ds)) if limit else len(ds)
    for s in range(0, n, batch):
        for i, r in enumerate(ds.select(range(s, min(s + batch, n))).to_list(), s):
            yield i, r, None, src


# ------------------------------------------------------------------------------------------------------------ folders
def is_saved_dataset(p: Path) -> bool:
    """A folder written by Dataset.save_to_disk or DatasetDict.save_to_disk."""
    return (p / "dataset_dict.json").is_file() or ((p / "state.json").is_file() and (p / "dataset_info.json").is_file())


def iter_dir_rows(p: Path, split: str, limit: int | None, on_error: Callable[[MaskLensError], None] | None,
                  read_file: Callable) -> Iterator[LocatedRow]:
    """Rows of a saved dataset or a folder of shards (see the module docstring). read_file(path, limit, on_error,
    empty_ok=True) reads one shard (core.data.reader.iter_file_rows, passed in: the reader calls this module)."""
    if is_saved_dataset(p):
        yield from _saved_rows(p, split, limit)
        return
    files = shard_files(p, split)

    n = 0
    for f in files:
        seen = [0]  # rows this shard used (a bad JSONL line keeps its row number, as in one file)

        def renumber(e: MaskLensError, offset=n, seen=seen) -> MaskLensError:
            if e.row is not None:
                seen[0] = max(seen[0], e.row + 1)
            return MaskLensError(e.message, file=e.file, row=None if e.row is None else e.row + offset, field=e.field,
                                 fix=e.fix)

        handler = (lambda e, r=renumber: on_error(r(e))) if on_error is not None else None
        try:
            for i, obj, line in read_file(f, None, handler, empty_ok=True):
                seen[0] = max(seen[0], i + 1)
                yield n + i, obj, line, str(f)
                if limit and n + i + 1 >= limit:
                    return
        except MaskLensError as e:
            raise renumber(e) from None
        n += seen[0]
    if n == 0:
        raise MaskLensError(f"the folder's {split!r} files hold no examples", file=str(p),
                            fix="add examples to its data files")


def shard_files(p: Path, split: str) -> list[Path]:
    """The data files `load_dataset(folder)` reads for `split`, in its order (only MaskLens's file types)."""
    try:
        from datasets.data_files import DataFilesDict, get_data_patterns  # noqa: PLC0415

        patterns = get_data_patterns(str(p))
        resolved = DataFilesDict.from_patterns(patterns, base_path=str(p))
    except Exception as e:  # noqa: BLE001  (EmptyDatasetError and friends)
        raise MaskLensError(f"is a folder without data files `datasets` can read ({type(e).__name__}: {e})",
                            file=str(p), fix="point at a folder of .jsonl/.json/.parquet/.csv shards, a "
                            "save_to_disk folder, or one data file") from None
    splits = {str(k): [Path(f) for f in v] for k, v in resolved.items()}
    if split not in splits:
        raise MaskLensError(f"has no {split!r} split (its files give: {', '.join(sorted(splits)) or 'none'})",
                            file=str(p), fix=f"choose one of {', '.join(sorted(splits))} (--split / :split)")
    files = [f for f in splits[split] if f.suffix.lower() in SHARD_SUFFIXES]
    if not files:
        others = sorted({f.suffix or f.name for f in splits[split]})
        raise MaskLensError(f"holds no .jsonl/.json/.parquet/.csv files for split {split!r} (found: "
                            f"{', '.join(others[:6]) or 'nothing'})", file=str(p),
                            fix="convert the shards to JSONL or Parquet")
    kinds = {f.suffix.lower() for f in files}
    if len(kinds) > 1 and kinds != {".json", ".jsonl"}:
        raise MaskLensError(f"mixes file types in split {split!r} ({', '.join(sorted(kinds))}): `datasets` reads one "
                            "type per split", file=str(p), fix="keep one file type per split")
    return files


def _saved_rows(p: Path, split: str, limit: int | None) -> Iterator[LocatedRow]:
    import datasets  # noqa: PLC0415

    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:  # noqa: BLE001
        raise MaskLensError(f"looks like a save_to_disk folder but could not be loaded: {e}", file=str(p),
                            fix="save it again with Dataset.save_to_disk (same `datasets` major version)") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise MaskLensError(f"is a saved DatasetDict without a {split!r} split (it has {', '.join(ds)})",
                                file=str(p), fix=f"choose one of {', '.join(ds)} (--split / :split)")
        ds = ds[split]
    if len(ds) == 0:
        raise MaskLensError("the saved dataset has no examples", file=str(p), fix="add at least one example")
    yield from _dataset_rows(ds, str(p), limit)


# --------------------------------------------------------------------------------------------------------------- zip
MAX_ZIP_FILES = 10_000
MAX_ZIP_BYTES = 2 * 2**30  # uncompressed; a zip bomb stops here


def unpack_zip(path: str | os.PathLike, dest: str | os.PathLike, max_bytes: int = MAX_ZIP_BYTES,
               max_files: int = MAX_ZIP_FILES) -> Path:
    """Unpack an uploaded zip (a dataset folder: a data file with its images, shards, a save_to_disk folder) into
    `dest` (a cache folder: the only place image bytes are ever written) and return the folder to read: `dest`, or
    the single folder the zip holds. Refused: member paths that leave `dest` (absolute, `..`), links, more than
    `max_files` entries or `max_bytes` uncompressed (checked while writing, not trusted from the header).
    Example: unpack_zip("ds.zip", cache / "uploads" / digest) -> cache/uploads/<digest>/ds"""
    dest = Path(dest)
    src = os.fspath(path)
    try:
        zf = zipfile.ZipFile(src)
    except (zipfile.BadZipFile, OSError) as e:
        raise MaskLensError(f"is not a readable zip file ({e})", file=src, fix="zip the dataset folder again") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > max_files:
            raise MaskLensError(f"holds {len(infos)} entries, more than {max_files}", file=src,
                                fix="zip only the dataset (its data files and images)")
        root = dest.resolve()
        dest.mkdir(parents=True, exist_ok=True)
        written = 0
        try:
            for info in infos:
                name = info.filename
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise MaskLensError(f"holds a link ({name!r}), which is not unpacked", file=src,
                                        fix="zip the files themselves, not links to them")
                target = (dest / name).resolve()
                if name.startswith(("/", "\\")) or ".." in Path(name).parts or not target.is_relative_to(root):
                    raise MaskLensError(f"holds a path that leaves its folder ({name!r})", file=src,
                                        fix="zip the dataset folder with relative paths inside it")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as fin, open(target, "wb") as fout:
                    while True:
                        chunk = fin.read(2**20)
                        if not chunk:
                            break
                        written += len(chunk)
                        if written > max_bytes:
                            raise MaskLensError(f"unpacks to more than {max_bytes // 2**20} MB", file=src,
                                                fix="upload a smaller dataset (or run MaskLens on the folder locally)")
                        fout.write(chunk)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    entries = [e for e in dest.iterdir() if not e.name.startswith((".", "__MACOSX"))]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest
