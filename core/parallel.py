"""Rendering a dataset chunk by chunk, in this process or in N worker processes, results in input order.

Workers get everything as plain data: the tokenizer's *name or path*, the MaskConfig, and the user files (--rules,
--strategy-file, --collator), which each worker registers again (once, and again when their contents change). On Linux
a process with no other thread running forks its workers: they start at once with this process's tokenizer (nothing
imported or loaded again, ~10 ms). Elsewhere they are started with "spawn" and each loads the tokenizer once (seconds:
transformers and torch import). Nothing else crosses the process boundary but rows going in and small results (JSON
lines, a chunk's audit stats) coming back; at most ``2 * num_proc`` chunks are in flight, so memory does not grow with
the dataset. The workers are kept for the next call with the same tokenizer and stopped at exit (shutdown_pool). In
this process (num_proc 1) two chunks are rendered at once in threads, one in the tokenizer while the other runs Python
(_in_threads, chunk_threads). `auto_procs` is what `--num-proc auto` (the CLI's default) resolves to.

Example:
    spec = WorkerSpec(tokenizer=None)                       # None: the embedded SmolLM2
    rows = chunks(iter_rows("big.jsonl"))                   # core.reader: streamed
    for lines in map_chunks(render_json_chunk, spec, cfg, rows, num_proc=2, source="big.jsonl"):
        ...                                                 # one list of JSON lines per chunk, in order
"""

from __future__ import annotations

import atexit
import collections
import hashlib
import multiprocessing
import os
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import orjson  # JSON lines: 5-10x json.dumps on lists of ids (JSON was 10% of `core render`)

from .errors import MaskLensError
from .gc_pause import gc_paused
from .process_switch import ProcessSwitch

CHUNK = 512  # rows per chunk: big enough for batch tokenization, small enough to keep memory flat
THREADS = 2  # chunks rendered at once in one process (--num-proc 1): one in the tokenizer while one runs Python
AUTO_MAX_PROCS = 8  # --num-proc auto: at most this many workers ...
AUTO_MIN_BYTES = 4 << 20  # ... for a local JSONL file of at least this size (~2,000 multi-turn rows): smaller ones
# render in this process (forking and collecting cost more than a second core saves)
SWITCH_INTERVAL = 0.1  # seconds: the GIL's switch interval while they run (_LONG_GIL_TURNS; Python's default 0.005)


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to render like the parent: plain data only (it is pickled to each worker)."""

    tokenizer: str | None = None  # hub id or local directory; None = the embedded SmolLM2
    trust_remote_code: bool = False
    rules_files: tuple[str, ...] = ()
    strategy_files: tuple[str, ...] = ()
    collator_files: tuple[str, ...] = ()

    def register(self) -> dict[str, object]:
        """Register the user files' strategies in this process. Returns {strategy name: Rules or file path}.

        Example: WorkerSpec(rules_files=("first_turn.yaml",)).register() -> {"rules:first_turn": Rules(...)}.
        """
        from .masking.rules import load_rules, register_rules  # noqa: PLC0415
        from .masking.user_code import load_collator_file, load_strategy_file  # noqa: PLC0415

        names: dict[str, object] = {}
        for f in self.rules_files:
            rules = load_rules(f)
            names[register_rules(rules)] = rules
        for f in self.strategy_files:
            for n in load_strategy_file(f):
                names[n] = f
        for f in self.collator_files:
            names[load_collator_file(f)] = f
        return names

    def load_tokenizer(self):
        from .models import load_tokenizer  # noqa: PLC0415

        return load_tokenizer(self.tokenizer, trust_remote_code=self.trust_remote_code)


def chunks(rows: Iterable, size: int | None = None, total: int | None = None) -> Iterator[list]:
    """Group an iterator into lists of `size` (default CHUNK; the last may be shorter). With `total`, the number of
    rows it yields when known, the last 2 * size rows come in quarter chunks, so that chunks rendered side by side
    (_in_threads) end close together instead of one running alone at the end.
    Example: chunks(range(5), 2) -> [0,1] [2,3] [4]; chunks(range(10), 4, total=10) -> [0..3] [4] [5] ... [9]."""
    size = size or CHUNK
    tail = max(1, size // 4)
    want = size if total is None or total > 2 * size else tail
    buf = []
    done = 0
    for r in rows:
        buf.append(r)
        if len(buf) >= want:
            yield buf
            done += len(buf)
            buf = []
            if total is not None and total - done <= 2 * size:
                want = tail
    if buf:
        yield buf


@dataclass(frozen=True)
class FileRange:
    """A chunk that a worker reads itself: the rows [row, row + rows) of a local JSONL file, on the lines that begin in
    bytes [start, end), the first of them after line `line`. Only these few numbers (and the schema union, a few
    hundred bytes) cross the process boundary, not the rows: the parent neither parses nor pickles them again."""

    path: str
    start: int
    end: int
    row: int
    line: int
    rows: int
    union: object = None  # core.schema.SchemaUnion of the whole file, for the schema_nulls_injected finding

    def read(self) -> list:
        """[(row, object, line, findings), ...], as cli._stream gives them in this process."""
        from .data.formats import schema_findings  # noqa: PLC0415
        from .data.reader import iter_jsonl  # noqa: PLC0415

        span = (self.start, self.end, self.row, self.line)
        out = [(i, obj, line, schema_findings(self.union, obj, i) if self.union is not None else [])
               for i, obj, line in iter_jsonl(Path(self.path), span=span)]
        if len(out) != self.rows:
            raise MaskLensError(f"the file changed while it was read: rows {self.row}-{self.row + self.rows - 1} are "
                                "not where the first pass found them", file=self.path, row=self.row,
                                fix="do not write to the file during the run; run again")
        return out


def jsonl_ranges(path: str | os.PathLike, limit: int | None = None, size: int | None = None) -> list[FileRange]:
    """Pass 1 over a local JSONL file, in this process: every line is read and checked (a bad line raises its
    MaskLensError here, before any rendering, as the in-process stream does), the schema `datasets` would give the
    rows is predicted, and the file is cut into ranges of `size` rows for workers to read (see FileRange).

    Example: jsonl_ranges("big.jsonl")[1] -> FileRange(path="big.jsonl", start=523011, end=1046620, row=512, ...).
    """
    from .data.formats import schema_union  # noqa: PLC0415
    from .data.reader import iter_jsonl  # noqa: PLC0415

    size = size or CHUNK
    p = Path(path)
    cursor = [0]
    bounds: list[tuple[int, int, int, int, int]] = []  # (start, end, row, line, rows)
    state = {"start": 0, "row": 0, "line": 0, "rows": 0, "error": None}  # the open range; rows read in all

    def objects():
        try:
            for i, obj, line in iter_jsonl(p, limit, cursor=cursor):
                yield obj
                state["rows"] = i + 1
                if state["rows"] - state["row"] == size:
                    bounds.append((state["start"], cursor[0], state["row"], state["line"], size))
                    state.update(start=cursor[0], row=i + 1, line=line)
        except MaskLensError as e:  # raised below: schema_union would take it for a row it cannot predict
            state["error"] = e

    gen = objects()
    union = schema_union(gen)
    for _ in gen:  # schema_union may stop early (a row it cannot predict): the ranges still need every row
        pass
    if state["error"] is not None:
        raise state["error"]
    if state["rows"] > state["row"]:
        bounds.append((state["start"], cursor[0], state["row"], state["line"], state["rows"] - state["row"]))
    return [FileRange(str(path), a, b, r, ln, n, union) for a, b, r, ln, n in bounds]


# ------------------------------------------------------------------------------------------------------- tasks
# A task renders one chunk and returns something small. A chunk is a list of raw rows [(row, object, line[,
# findings]), ...] or a FileRange that the worker reads itself. Module-level functions, so that a worker finds them
# by name.
def _row_span(chunk) -> tuple[int, int]:
    """The first and last row of a chunk, for messages."""
    if isinstance(chunk, FileRange):
        return chunk.row, chunk.row + chunk.rows - 1
    return chunk[0][0], chunk[-1][0]


def _examples(chunk, source: str | None) -> list:
    from .data.formats import normalize_row  # noqa: PLC0415

    if isinstance(chunk, FileRange):
        chunk = chunk.read()
    out = []
    for row, obj, line, *notes in chunk:  # (row, object, line[, findings to attach: see cli._stream])
        ex = normalize_row(obj, row, source=source, line=line)
        if notes:
            ex.notes.extend(notes[0])
        out.append(ex)
    return out


def render_json_chunk(tokenizer, cfg, chunk: list, source: str | None) -> list[str]:
    """`python -m core render`'s records (one compact JSON line per rendered example, UTF-8 kept), in input order."""
    from .masking.engine import render_examples  # noqa: PLC0415

    with gc_paused():
        return [orjson.dumps(r.to_json()).decode() for r in render_examples(_examples(chunk, source), tokenizer, cfg)]


def audit_chunk(tokenizer, cfg, chunk: list, source: str | None):
    """The chunk's AuditReport (compact stats; nothing rendered is kept), to merge in input order."""
    from .audit import audit_chunk as audit_examples  # noqa: PLC0415

    with gc_paused():
        examples = _examples(chunk, source)
        rep = audit_examples(examples, tokenizer, cfg)
    rep.rows = len(examples)
    return rep


# ------------------------------------------------------------------------------------------------------- workers
_WORKER: dict = {}  # in a worker process: its tokenizer (loaded once)
_POOL: list = []  # in the parent: [(key, executor)], the last pool, kept for the next call with the same spec
_INHERITED: list = []  # in the parent of forked workers: [the tokenizer they start with] (read by _init_worker)


def _init_worker(tokenizer: str | None, trust_remote_code: bool) -> None:
    # N workers are the parallelism: a tokenizer thread pool in each would put 2N busy threads on N cores.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        _WORKER["tokenizer"] = (_INHERITED[0] if _INHERITED  # forked: the parent's, already loaded
                                else WorkerSpec(tokenizer, trust_remote_code).load_tokenizer())
    except MaskLensError as e:  # reported with the first chunk (an initializer's exception breaks the whole pool)
        _WORKER["error"] = (e.message, e.file, e.row, e.field, e.fix)


def _run(task: Callable, cfg, chunk: list, source: str | None, spec: WorkerSpec, digest: str):
    """In a worker: the task's result, or the MaskLensError's fields (they travel as plain data). The spec's user
    files are registered once per worker (again when their contents change)."""
    if "error" in _WORKER:
        return False, _WORKER["error"]
    try:
        if _WORKER.get("registered") != (spec, digest):
            spec.register()
            _WORKER["registered"] = (spec, digest)
        return True, task(_WORKER["tokenizer"], cfg, chunk, source)
    except MaskLensError as e:
        return False, (e.message, e.file, e.row, e.field, e.fix)


def _files_digest(spec: WorkerSpec) -> str:
    """What the user files hold now: a pool whose workers registered older contents is not reused."""
    h = hashlib.sha256()
    for f in (*spec.rules_files, *spec.strategy_files, *spec.collator_files):
        try:
            h.update(Path(f).read_bytes())
        except OSError:
            h.update(f.encode())
    return h.hexdigest()


def can_fork() -> bool:
    """Workers may be forked: Linux, and no other thread running in this process (a thread holding a lock at the fork
    would leave it locked in the child; the app's server threads, the sandbox's). Elsewhere they are spawned."""
    return sys.platform.startswith("linux") and threading.active_count() == 1


def auto_procs(path: str | os.PathLike | None) -> int:
    """What --num-proc auto renders `path` with: this machine's cores (at most AUTO_MAX_PROCS) in forked workers for a
    local JSONL file of at least AUTO_MIN_BYTES, where workers can be forked; else 1 (this process). Spawned workers
    each import transformers and load the tokenizer (seconds), so auto never spawns."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # (not Linux)
        cores = os.cpu_count() or 1
    p = Path(path) if path else None
    if cores < 2 or p is None or p.suffix.lower() != ".jsonl" or not p.is_file() or not can_fork():
        return 1
    return min(cores, AUTO_MAX_PROCS) if p.stat().st_size >= AUTO_MIN_BYTES else 1


def _pool(spec: WorkerSpec, num_proc: int, tokenizer=None) -> ProcessPoolExecutor:
    """Workers for spec's tokenizer: started once and reused by the next call with the same tokenizer; another
    tokenizer stops them first, so at most num_proc workers exist. With `tokenizer` (loaded here) and can_fork(), they
    are forked with it; else spawned, each loading spec's tokenizer (seconds)."""
    key = (spec.tokenizer, spec.trust_remote_code, num_proc)
    if _POOL and not getattr(_POOL[0][1], "_broken", False):
        (kept, forked_with), ex = _POOL[0]
        if kept == key and (forked_with is None or forked_with is tokenizer):  # spawned, or forked with this one
            return ex
    shutdown_pool()
    fork = tokenizer is not None and can_fork()  # (after the old pool's threads have stopped)
    _INHERITED[:] = [tokenizer] if fork else []
    with _SERIAL_TOKENIZER.held():  # forked workers keep TOKENIZERS_PARALLELISM=false (one core each)
        ex = ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context("fork" if fork else "spawn"),
                                 initializer=_init_worker, initargs=(spec.tokenizer, spec.trust_remote_code))
        if fork:  # fork them all now, from this thread, before the executor starts its own
            ex.submit(_noop).result()
    _POOL.append(((key, tokenizer if fork else None), ex))
    return ex


def _noop() -> None:
    return None


def start_workers(spec: WorkerSpec, num_proc: int, tokenizer=None) -> None:
    """Start spec's workers now, without waiting (spawned ones import transformers and load the tokenizer: seconds), so
    that they get ready while this process reads the file's first pass; map_chunks then finds them started."""
    ex = _pool(spec, num_proc, tokenizer)
    for _ in range(num_proc):  # a submit with no idle worker spawns one
        ex.submit(_noop)


@atexit.register
def shutdown_pool() -> None:
    """Stop the kept worker processes (at exit, or to free their memory)."""
    while _POOL:
        _POOL.pop()[1].shutdown(wait=True, cancel_futures=True)
    _INHERITED.clear()


def _tokenizer_serial() -> str | None:
    """TOKENIZERS_PARALLELISM=false unless the user set it; returns what was there."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    if before is None:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    return before


def _tokenizer_back(before: str | None) -> None:
    if before is None:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)


# TOKENIZERS_PARALLELISM=false while chunk threads run, unless the user set it: each encode_batch call then keeps to
# its own thread. (The tokenizer's thread pool beside a busy Python thread is slower than no overlap at all: one of its
# threads waits for a core and the whole batch waits for that one.) Unset again when the last pipeline ends.
_SERIAL_TOKENIZER = ProcessSwitch(_tokenizer_serial, _tokenizer_back)


def _long_turns() -> float:
    """The GIL's switch interval at SWITCH_INTERVAL while chunk threads run; returns the one before."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(max(before, SWITCH_INTERVAL))
    return before


# Longer GIL turns while chunk threads run. With Python's 5 ms, two threads in their Python stages take turns every
# 5 ms, advance at half speed side by side, and then reach the tokenizer together: phases where one core works
# alternate with phases where both tokenize. With 100 ms turns one thread gets through its stages and into the
# tokenizer (which releases the GIL) while the other takes the GIL: the two stay out of step, one in Python, one in
# the tokenizer (README Performance: 20,000 rows, faster in 13 of 17 interleaved rounds, ~0.8-1 s and ~0.5 CPU s less
# where the machine was quiet). Other threads of the process (the app's server) may wait up to 100 ms for the GIL
# meanwhile. Put back when the last pipeline ends.
_LONG_GIL_TURNS = ProcessSwitch(_long_turns, sys.setswitchinterval)


def chunk_threads(spec: WorkerSpec) -> int:
    """How many chunks one process renders at once: THREADS where there are that many cores, else 1; 1 where the
    user's own Python (strategy or collator files) runs, which need not be thread-safe."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # (not Linux)
        cores = os.cpu_count() or 1
    return 1 if spec.strategy_files or spec.collator_files else max(1, min(THREADS, cores))


def _in_threads(task: Callable, tok, cfg, chunk_iter: Iterable[list], source: str | None, threads: int) -> Iterator:
    """task over the chunks in `threads` threads of this process, results in input order: while one thread's chunk
    is in the tokenizer (Rust, the GIL released, one core per call with TOKENIZERS_PARALLELISM=false) another runs
    the Python stages of its chunk, so two cores work (README Performance; the GIL's turns are longer meanwhile,
    _LONG_GIL_TURNS, so that the two stay out of step). An error in a chunk is raised when its turn comes, as in one
    thread; the chunks read ahead are dropped."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    if threads <= 1:
        for c in chunk_iter:
            yield task(tok, cfg, c, source)
        return
    with _SERIAL_TOKENIZER.held(), _LONG_GIL_TURNS.held(), \
            ThreadPoolExecutor(threads, thread_name_prefix="masklens-chunk") as ex:
        pending: collections.deque = collections.deque()
        it = iter(chunk_iter)
        try:
            while True:
                try:
                    c = next(it)
                except StopIteration:
                    break
                except Exception:  # a row that cannot be read: the chunks before it come first, as in one thread
                    while pending:
                        yield pending.popleft().result()
                    raise
                pending.append(ex.submit(task, tok, cfg, c, source))
                if len(pending) > threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()


def map_chunks(task: Callable, spec: WorkerSpec, cfg, chunk_iter: Iterable[list], num_proc: int = 1,
               tokenizer=None, source: str | None = None) -> Iterator:
    """task(tokenizer, cfg, chunk, source) for every chunk, results in input order.

    num_proc <= 1: in this process (with `tokenizer`, else spec's), in chunk_threads(spec) threads; the caller has
    registered spec's user files.
    num_proc > 1: in that many workers, forked with `tokenizer` where they can be (can_fork), else spawned, each
    loading spec's tokenizer once; at most 2 * num_proc chunks are read ahead. A MaskLensError raised for a chunk is
    raised here, with its file, row, field and fix.
    `source`: the data file, named in errors.
    """
    if num_proc <= 1:
        tok = tokenizer if tokenizer is not None else spec.load_tokenizer()
        yield from _in_threads(task, tok, cfg, chunk_iter, source, chunk_threads(spec))
        return
    from concurrent.futures.process import BrokenProcessPool  # noqa: PLC0415

    ex = _pool(spec, num_proc, tokenizer)
    digest = _files_digest(spec)
    pending: collections.deque = collections.deque()
    it = iter(chunk_iter)
    try:
        for c in it:
            pending.append((c, ex.submit(_run, task, cfg, c, source, spec, digest)))
            if len(pending) >= 2 * num_proc:
                break
        while pending:
            c, fut = pending.popleft()
            try:
                ok, value = fut.result()
            except BrokenProcessPool:
                shutdown_pool()
                first, last = _row_span(c)
                raise MaskLensError(f"a worker process stopped while rendering rows {first}-{last} (out of "
                                    "memory, or killed)", file=source,
                                    fix="run again with fewer --num-proc (or 1), or on a machine with more memory"
                                    ) from None
            except Exception:  # noqa: BLE001 - e.g. a row too deep to pickle: render the chunk here instead
                tok = tokenizer if tokenizer is not None else spec.load_tokenizer()
                ok, value = True, task(tok, cfg, c, source)
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, ex.submit(_run, task, cfg, nxt, source, spec, digest)))
            if not ok:
                message, file, row, fld, fix = value
                raise MaskLensError(message, file=file, row=row, field=fld, fix=fix)
            yield value
    finally:
        for _, fut in pending:  # an error or an early stop: drop what was read ahead
            fut.cancel()
