"""One pipeline for `render` and `audit`: read -> check -> render chunks -> write or fold.

    job = Job(Source("chat.jsonl"), MaskConfig("assistant_only"), WorkerSpec(), num_proc=2)
    n = render_to_file(job, Path("out.jsonl"))            # one JSON line per example, in input order
    report = audit(job)                                   # core.audit.AuditReport of the whole dataset

Reading streams (core.data.reader): 512 rows at a time, so memory does not grow with the dataset. A local file is read
twice: first for the Arrow schema `datasets` would give it (only the schema is kept: the check stage), so that rows it
would pad with nulls get the schema_nulls_injected finding exactly as with the file loaded whole; a JSONL file up to
KEEP_ROWS_BYTES is parsed once instead, its rows kept from the first pass (and every bad line reported before any
rendering). `num_proc` is only how chunks are executed (core.parallel): in this process, or in N workers (None:
auto, core.parallel.auto_procs); with N workers and a local JSONL file the first pass also cuts the file into byte
ranges each worker reads itself. Results come back in input order, identical either way.
"""

from __future__ import annotations

import collections
import itertools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .errors import MaskLensError
from .parallel import WorkerSpec, audit_chunk, auto_procs, can_fork, chunks, jsonl_ranges, map_chunks, \
    render_json_chunk, start_workers

# A local JSONL file up to this size is parsed once: its first pass (the schema check) keeps the rows for rendering
# (about 2.4x the file's size in memory: 85 MB for 36 MB, 20,000 multi-turn rows); a larger one is read twice.
KEEP_ROWS_BYTES = 64 << 20


@dataclass(frozen=True)
class Source:
    """Where rows come from: a local file (JSONL/JSON/Parquet/CSV) or a hub dataset id (with its split)."""

    data: str
    split: str = "train"
    limit: int | None = None

    @property
    def local(self) -> bool:
        return Path(self.data).is_file()

    @property
    def local_jsonl(self) -> bool:
        return self.local and Path(self.data).suffix.lower() == ".jsonl"


@dataclass(frozen=True)
class Job:
    source: Source
    cfg: object  # MaskConfig
    spec: WorkerSpec  # the tokenizer by name and the user files: what a worker needs
    num_proc: int | None = 1  # None: auto (core.parallel.auto_procs: forked workers for a big local JSONL file)
    tokenizer: object = None  # already loaded; else spec's is loaded when needed (by forked workers' parent, or each
    # spawned worker)

    @property
    def procs(self) -> int:
        return self.num_proc if self.num_proc is not None else auto_procs(self.source.data if self.source.local
                                                                           else None)


def render_to_file(job: Job, output: Path, on_rows: Callable[[int], None] | None = None) -> int:
    """`python -m core render`: every example's record (core.masking.rendered.RenderedExample.to_json) as one JSON line,
    in input order, written atomically. Returns how many examples were written."""
    n = 0

    def lines():
        nonlocal n
        for chunk_lines in _execute(render_json_chunk, job):
            n += len(chunk_lines)
            if on_rows:
                on_rows(n)
            yield from chunk_lines

    _atomic_write_lines(output, lines())
    return n


def audit(job: Job, on_rows: Callable[[int], None] | None = None):
    """`python -m core audit`: the chunks' reports folded into one, in input order (core.audit.AuditReport)."""
    from .audit import AuditReport  # noqa: PLC0415

    report = AuditReport(max_length=job.cfg.max_length)
    for part in _execute(audit_chunk, job):
        report.merge(part)
        if on_rows:
            on_rows(report.rows)
    return report


# ------------------------------------------------------------------------------------------------------ stages
def _execute(task: Callable, job: Job) -> Iterator:
    """task(tokenizer, cfg, chunk, source) over the job's chunks, in this process or in workers, in input order."""
    procs = job.procs
    tok, chunk_iter = _read_and_check(job, procs)
    return map_chunks(task, job.spec, job.cfg, chunk_iter, procs, tokenizer=tok, source=job.source.data)


def _read_and_check(job: Job, procs: int) -> tuple[object, Iterator]:
    """(the tokenizer, or None where only spawned workers need one; the chunks). The first chunk is read before the
    tokenizer loads, so a bad file is reported at once; options only a tokenizer can check are checked before any
    rendering. Workers that can be forked (core.parallel.can_fork) start with this process's tokenizer."""
    src = job.source
    fork = procs > 1 and can_fork()  # forked workers start with this process's tokenizer
    here = procs == 1 or job.cfg.pad_token is not None or fork  # the tokenizer is needed in this process
    if procs > 1 and src.local_jsonl:  # workers read their own byte ranges
        if not fork:  # spawned workers load the tokenizer (seconds) while this process reads the first pass
            start_workers(job.spec, procs)
        ranges = jsonl_ranges(src.data, limit=src.limit)  # (a bad line is reported before any tokenizer loads)
        tok = _tokenizer(job) if here else None  # (checked here, once)
        if fork:
            start_workers(job.spec, procs, tok)
        return tok, iter(ranges)
    rows, total = _rows_with_schema_findings(src)
    it = chunks(rows, total=total)  # of core.parallel.CHUNK rows (smaller at the end, where the total is known)
    first = next(it)  # the reader raises for a file without examples
    return (_tokenizer(job) if here else None), itertools.chain([first], it)


def _rows_with_schema_findings(src: Source) -> tuple[Iterator, int | None]:
    """((row, object, line, findings) for every row, how many rows: None where not counted). A local file's schema is
    read in a first pass (the check), which counts its rows."""
    from .data.formats import schema_findings, schema_union  # noqa: PLC0415
    from .data.reader import iter_rows  # noqa: PLC0415

    def read():
        return iter_rows(src.data, split=src.split, limit=src.limit)

    if not src.local:  # a hub dataset comes through `datasets`: its nulls are in the rows already
        return read(), None
    if src.local_jsonl and Path(src.data).stat().st_size <= KEEP_ROWS_BYTES:  # parsed once: pass 1 keeps the rows
        kept = collections.deque(read())
        union = schema_union(obj for _, obj, _ in kept)
        rows = _drain(kept)
    else:
        union = schema_union(obj for _, obj, _ in read())
        rows = read()
    if union is None:  # a schema datasets could not build: nothing to predict (datasets_cannot_load says why)
        return rows, None
    return ((i, obj, line, schema_findings(union, obj, i)) for i, obj, line in rows), union.rows


def _drain(rows: collections.deque) -> Iterator:
    """The kept rows, each let go once it is taken (memory falls as chunks are rendered)."""
    while rows:
        yield rows.popleft()


def _tokenizer(job: Job):
    """The job's tokenizer, with the options only it can check checked."""
    tok = job.tokenizer if job.tokenizer is not None else job.spec.load_tokenizer()
    check_options(job, tok)
    return tok


def check_options(job: Job, tok) -> None:
    """Options that only the tokenizer can check (a pad token it does not have), before any row is rendered."""
    from .masking.vocab import pad_id_for  # noqa: PLC0415

    if job.cfg.pad_token is not None:
        try:
            pad_id_for(tok, job.cfg.pad_token)
        except MaskLensError as e:
            raise MaskLensError(f"--pad-token: {e.message}", fix=e.fix) from None


def _atomic_write_lines(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
