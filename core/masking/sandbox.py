"""Bounded rendering of chat templates: any template, even a hostile one, costs at most N seconds, M MB and K characters.

A chat template is code: a pasted or downloaded one can loop for hours (`{% for i in range(99999) %}{% for j in
range(99999) %}...`) or build one huge string (`{{ 'x' * 100000 * 100000 }}`). Jinja's sandbox (kept on: transformers'
ImmutableSandboxedEnvironment) stops access to Python internals and caps `range()`, but it cannot bound time or
memory. So templates render in a separate worker process under OS limits:

- RLIMIT_AS: the worker's address space may grow `max_memory_mb` above what it holds when a batch starts (a huge
  string fails with MemoryError inside the worker; the parent never sees the allocation), and never more than
  HARD_MEMORY_MB above its start (a hard limit, set once);
- RLIMIT_CPU: set per batch to the deadline + 2 s of CPU, so a worker whose parent died cannot spin forever;
- a wall-clock deadline per batch, enforced by the parent: past it the worker is killed (SIGKILL) and replaced;
- output: the worker counts the characters a render yields and stops at `max_output_chars` per conversation, and
  fails the jobs of a call past `max_batch_chars` in all (what the caller's process receives is bounded too).

A job that stops a fresh worker within a fresh deadline on its own is failed; the jobs after it are rendered by a new
worker (a watchdog thread in the worker sends finished results as soon as a job runs long, so the parent knows which
job it was). After MAX_KILLS_PER_CALL kills the rest of the call fails: a template hostile to every row costs a few
deadlines, not one per row.

The text is produced by the very code `core.templates.render` uses (core.masking.jinja_render: transformers'
`render_jinja_template`, faster), so it is byte-identical; only where it runs changes. Workers are started with
`subprocess` (`python -P core/sandbox.py`, a fresh interpreter: no fork of a parent that holds torch threads, and
unlike multiprocessing's "spawn" it does not re-import the parent's __main__, e.g. the whole app). A pool of 2
workers is shared by all threads: a hostile render holds one worker until its deadline while other sessions keep the
other one.

Cost (benchmarks/bench_sandbox.py, 2,000 conversations in batches of 512): about +0.05 s (plain SmolLM2 template) to
+0.10 s (with {% generation %} spans) over rendering in-process, i.e. pickling and pipe transfer; none when the caller
overlaps rendering with its own work (submit_batch: render batch k+1 while tokenizing batch k). One call ~0.4 ms.

Example:
    render_batch("{% for m in messages %}{{ m.content }}{% endfor %}", [{"messages": [{"role": "user", "content": "hi"}]}])
    -> [("hi", [])]
"""

from __future__ import annotations

import atexit
import io
import os
import pickle
import re
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time

try:
    from ..errors import MaskLensError
except ImportError:  # run as the worker script (python -P core/sandbox.py): the worker sends plain tuples, no errors
    MaskLensError = None  # type: ignore[assignment,misc]

__all__ = ["render_batch", "submit_batch", "render_sandboxed", "probe_template", "warm_up", "shutdown",
           "DEFAULT_TIMEOUT_S", "DEFAULT_MAX_OUTPUT_CHARS", "DEFAULT_MAX_MEMORY_MB", "DEFAULT_MAX_BATCH_CHARS",
           "POOL_SIZE", "HARD_MEMORY_MB", "MAX_KILLS_PER_CALL"]

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_OUTPUT_CHARS = 2_000_000
DEFAULT_MAX_MEMORY_MB = 1024
DEFAULT_MAX_BATCH_CHARS = 256_000_000  # all results of one call: 512 conversations of 500k characters
POOL_SIZE = 2  # workers shared by all threads of a process
HARD_MEMORY_MB = 4096  # a worker's address space never grows more than this above its start (max_memory_mb is capped)
MAX_KILLS_PER_CALL = 4  # a call that had to kill this many workers fails its remaining jobs: time stays bounded
STARTUP_TIMEOUT_S = 120.0  # a worker imports transformers (~1-2 s; much longer on a loaded machine)

_GEN_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")  # as core.templates.has_generation_markers
_HEADER = struct.Struct("!Q")
_FLUSH_BYTES = 1 << 18  # results go back in frames of about this many characters
_FLUSH_AFTER_S = 0.05  # ... or as soon as the job being rendered has run this long
_EXIT_MEMORY = 3  # the worker's exit status when a MemoryError escapes a render (while it sends a result)
_FIX_TEMPLATE = "check the template (and that the messages alternate as it requires)"


# ------------------------------------------------------------------------------------------------ frames on a pipe
def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _send(fd: int, obj) -> None:
    data = pickle.dumps(obj, protocol=5)
    _write_all(fd, _HEADER.pack(len(data)))
    _write_all(fd, data)


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class _PlainUnpickler(pickle.Unpickler):
    """Results come back as str/int/list/tuple only: refuse every class, so a worker can never make the parent run code."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"the render worker sent a {module}.{name}; only plain data is accepted")


# ------------------------------------------------------------------------------------------------------ the worker
class _OutputTooLarge(Exception):
    pass


_max_chars = DEFAULT_MAX_OUTPUT_CHARS  # the worker's bound for the batch being rendered


def _guard_output(compiled) -> None:
    """Count what a compiled template yields as it renders and stop it past _max_chars. Both Template.render and
    .generate (the {% generation %} path) drain root_render_func, so wrapping it covers both, without copying text."""
    if getattr(compiled, "_masklens_guarded", False):
        return
    inner = compiled.root_render_func

    def guarded(context):
        n = 0
        for chunk in inner(context):
            n += len(chunk)
            if n > _max_chars:
                raise _OutputTooLarge(n)
            yield chunk

    compiled.root_render_func = guarded
    compiled._masklens_guarded = True


def _render_one(ctu, template: str, job: dict) -> tuple:
    """One job, exactly as core.templates.render does it. -> ("ok", text, spans) | ("error", kind, message)."""
    try:
        convo = [{k: v for k, v in m.items() if v is not None} for m in job["messages"]]
        compile_ = getattr(ctu, "_compile_jinja_template", None)
        if compile_ is not None:  # the same lru-cached Template render_jinja_template will use
            _guard_output(compile_(template))
        texts, gen = ctu.render_jinja_template(
            conversations=[convo], tools=job.get("tools"), chat_template=template,
            return_assistant_tokens_mask=bool(job.get("return_generation")) and bool(_GEN_RE.search(template)),
            add_generation_prompt=bool(job.get("add_generation_prompt")), **(job.get("kwargs") or {}),
        )
        text, spans = texts[0], (gen[0] if gen else [])
        if len(text) > _max_chars or len(spans) > _max_chars:  # output inside one block, past the streaming count
            raise _OutputTooLarge(len(text))
        return ("ok", text, spans)  # spans: transformers' list of (start, end) int tuples
    except _OutputTooLarge as e:
        return ("error", "output", str(e.args[0]))
    except MemoryError:
        return ("error", "memory", "")
    except Exception as e:  # TemplateError/SecurityError, raise_exception(...), TypeError, RecursionError...
        return ("error", "template", f"{type(e).__name__}: {e}")


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Flusher:
    """The worker's results, sent in frames of ~_FLUSH_BYTES characters (one unpickle per frame in the parent), and
    also whenever a job has run for _FLUSH_AFTER_S (from a watchdog thread): when a job stops the worker, every
    result before it has reached the parent, so the parent knows which job did it."""

    def __init__(self, out: int):
        self.out, self.lock = out, threading.Lock()
        self.pending, self.size, self.job_started = [], 0, float("inf")
        threading.Thread(target=self._watch, daemon=True, name="flusher").start()

    def start_batch(self) -> None:
        self.job_started = time.monotonic()

    def add(self, result: tuple) -> None:
        with self.lock:
            self.pending.append(result)
            self.size += len(result[1]) + len(result[2])
            if self.size >= _FLUSH_BYTES:
                self._flush_locked()

    def flush(self) -> None:
        with self.lock:
            self._flush_locked()
            self.job_started = float("inf")

    def _flush_locked(self) -> None:
        if self.pending:
            _send(self.out, self.pending)
            self.pending, self.size = [], 0

    def _watch(self) -> None:
        while True:
            time.sleep(_FLUSH_AFTER_S / 2)
            if self.pending and time.monotonic() - self.job_started > _FLUSH_AFTER_S:
                try:
                    with self.lock:
                        self._flush_locked()
                except MemoryError:  # the job is eating the address space: try again on the next tick
                    pass


def _worker_main() -> None:
    try:
        _worker_loop()
    except MemoryError:
        os._exit(_EXIT_MEMORY)


class _FastRenderer:
    """What _render_one calls, as core.masking.jinja_render does it in the parent (the same texts as transformers'
    render_jinja_template, faster): the module is loaded from its file, the worker being a script, not the package."""

    def __init__(self, module):
        self._module = module
        self._compile_jinja_template = module.compiled_template

    def render_jinja_template(self, conversations, tools=None, chat_template=None,
                              return_assistant_tokens_mask=False, add_generation_prompt=False, **kwargs):
        return self._module.render_conversations(chat_template, conversations, tools=tools,
                                                 add_generation_prompt=add_generation_prompt,
                                                 return_generation=return_assistant_tokens_mask, **kwargs)


def _renderer() -> _FastRenderer:
    """core.masking.jinja_render in the worker, loaded from its file (it imports only jinja2 and transformers).
    transformers is imported here, before the worker measures its baseline memory, not at the first render."""
    import importlib.util  # noqa: PLC0415

    import transformers.utils.chat_template_utils  # noqa: F401, PLC0415

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jinja_render.py")
    spec = importlib.util.spec_from_file_location("masklens_jinja_render", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return _FastRenderer(module)


def _worker_loop() -> None:
    """Read a batch frame from stdin, render its jobs under the batch's limits, send their results; repeat."""
    global _max_chars
    out = os.dup(1)
    os.dup2(2, 1)  # a stray print() inside a library goes to stderr, never into the result stream
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent; it stops us by closing stdin
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a worker killed by RLIMIT_CPU leaves no core file
    try:
        ctu = _renderer()
    except BaseException as e:  # noqa: BLE001 - report why, then stop
        _send(out, ("fatal", f"{type(e).__name__}: {e}"))
        return
    flusher = _Flusher(out)  # its thread exists before the baseline is measured
    baseline = _vm_bytes()
    # A hard ceiling, set once and irreversibly: whatever a batch asks for later, this worker stays under it.
    _, as_hard = resource.getrlimit(resource.RLIMIT_AS)
    ceiling = baseline + int(sys.argv[1]) * 2**20
    as_hard = ceiling if as_hard == resource.RLIM_INFINITY else min(as_hard, ceiling)
    resource.setrlimit(resource.RLIMIT_AS, (as_hard, as_hard))
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    _send(out, ("ready", os.getpid(), baseline))
    while True:
        header = _read_exact(0, _HEADER.size)
        if header is None:
            return  # the parent closed the pipe (or died)
        body = _read_exact(0, _HEADER.unpack(header)[0])
        if body is None:
            return
        _, template, jobs, (timeout_s, max_chars, max_memory_mb, max_batch_chars) = pickle.loads(body)
        del body
        _max_chars = max_chars
        cpu_soft = int(_cpu_seconds() + timeout_s) + 2
        as_soft = _vm_bytes() + max_memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_soft if cpu_hard == resource.RLIM_INFINITY
                                                 else min(cpu_soft, cpu_hard), cpu_hard))
        resource.setrlimit(resource.RLIMIT_AS, (min(as_soft, as_hard), as_hard))
        flusher.start_batch()
        total = 0
        for job in jobs:
            flusher.job_started = time.monotonic()
            result = _render_one(ctu, template, job)
            if result[0] == "ok":
                total += len(result[1])
                if total > max_batch_chars:  # what the parent receives is bounded too, not only each conversation
                    result = ("error", "batch_output", "")
            flusher.add(result)
        result = None
        flusher.flush()
        jobs = None
        resource.setrlimit(resource.RLIMIT_AS, (as_hard, as_hard))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_hard, cpu_hard))
        if _vm_bytes() > baseline + max_memory_mb * 2**20:
            return  # grown (fragmentation, caches): exit and let the parent start a fresh worker


# ------------------------------------------------------------------------------------------------------ the parent
class _Lost(Exception):
    """The worker is gone or stopped: reason is "time", "memory", "crash" or "protocol"."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


_ENV_KEPT = ("PATH", "HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV",
             "HF_HOME", "TZ")


def _worker_env() -> dict:
    # Only what an interpreter needs: no tokens or keys from the parent's environment reach code that runs templates.
    env = {k: v for k, v in os.environ.items() if k in _ENV_KEPT}
    # Offline; one thread and two malloc arenas: fewer address-space reservations under RLIMIT_AS.
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", MALLOC_ARENA_MAX="2",
               TRANSFORMERS_VERBOSITY="error", PYTHONDONTWRITEBYTECODE="1")
    return env


class _Worker:
    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-P", os.path.abspath(__file__), str(HARD_MEMORY_MB)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_worker_env(), start_new_session=True,
            close_fds=True, cwd="/",
        )
        self._in, self._out = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        self._buf = bytearray()
        self._poll = select.poll()  # not select(): that fails on descriptors >= 1024, which a busy app can reach
        self._poll.register(self._out, select.POLLIN)
        self.ready, self.generation = False, 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self) -> None:
        if self.ready:
            return
        msg = self.recv(time.monotonic() + STARTUP_TIMEOUT_S, 1 << 20)
        if msg[0] != "ready":
            raise _Lost("crash", msg[1] if msg[0] == "fatal" else f"unexpected first message {msg[0]!r}")
        self.ready = True

    def send_bytes(self, data: bytes) -> None:
        try:
            _write_all(self._in, _HEADER.pack(len(data)))
            _write_all(self._in, data)
        except OSError as e:
            raise _Lost("crash", f"the worker's pipe closed: {e}") from None

    def recv(self, deadline: float, max_bytes: int):
        buf = self._buf
        while True:
            if len(buf) >= _HEADER.size:
                n = _HEADER.unpack_from(buf)[0]
                if n > max_bytes:
                    raise _Lost("protocol", f"the worker sent a {n}-byte message (at most {max_bytes} expected)")
                if len(buf) >= _HEADER.size + n:
                    data = bytes(memoryview(buf)[_HEADER.size:_HEADER.size + n])
                    del buf[:_HEADER.size + n]
                    try:
                        return _PlainUnpickler(io.BytesIO(data)).load()
                    except Exception as e:  # noqa: BLE001
                        raise _Lost("protocol", str(e)) from None
            left = deadline - time.monotonic()
            if left <= 0 or not self._poll.poll(left * 1000):
                raise _Lost("time")
            chunk = os.read(self._out, 1 << 20)
            if not chunk:
                raise self._exit_reason()
            buf += chunk

    def _exit_reason(self) -> _Lost:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return _Lost("crash", "the worker closed its output but did not exit")
        if code == -signal.SIGXCPU:  # its RLIMIT_CPU
            return _Lost("time", f"CPU time limit, signal {-code}")
        if code == -signal.SIGKILL:
            return _Lost("crash", "killed by signal 9: the system ran out of memory, or someone killed it")
        if code == _EXIT_MEMORY:
            return _Lost("memory", "out of memory while sending a result")
        return _Lost("crash", f"exit status {code}")

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        """Ask politely (EOF on stdin), then kill."""
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


class _Pool:
    """Up to `size` workers, started lazily. A caller holds one worker (and one of `size` slots) for its whole call, so
    two threads never share a pipe, and a hostile render blocks only its own slot until its deadline."""

    def __init__(self, size: int = POOL_SIZE):
        self._slots = threading.Semaphore(size)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()  # started and not yet dropped (shutdown, benchmarks)
        self._generation = 0  # bumped by close(): a worker held across it is dropped when released

    def acquire(self) -> _Worker:
        self._slots.acquire()
        with self._lock:
            if self._idle:
                return self._idle.pop()
        try:
            return self._new()
        except BaseException:
            self._slots.release()
            raise

    def _new(self) -> _Worker:
        w = _Worker()
        with self._lock:
            w.generation = self._generation
            self._all.add(w)
        return w

    def _drop(self, w: _Worker) -> None:
        w.kill()
        with self._lock:
            self._all.discard(w)

    def replace(self, w: _Worker) -> _Worker:
        self._drop(w)
        return self._new()

    def release(self, w: _Worker | None) -> None:
        try:
            if w is not None:
                with self._lock:
                    keep = w.generation == self._generation and w.alive()
                    if keep:
                        self._idle.append(w)
                if not keep:
                    self._drop(w)
        finally:
            self._slots.release()

    def warm(self) -> None:
        if not self._slots.acquire(blocking=False):
            return
        with self._lock:
            have = bool(self._idle)
        if have:
            self._slots.release()
        else:
            self.release(self._new())

    def close(self) -> None:
        """Stop the idle workers now; those in use are stopped when their caller releases them."""
        with self._lock:
            self._generation += 1
            idle, self._idle = self._idle, []
            for w in idle:
                self._all.discard(w)
        for w in idle:
            w.close()


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> _Pool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = _Pool()
        return _POOL


def _forget_pool_after_fork() -> None:
    # A forked child (datasets.map(num_proc=...)) must not talk on its parent's pipes: it starts workers of its own.
    global _POOL, _POOL_LOCK, _EXECUTOR, _EXECUTOR_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()
    _EXECUTOR, _EXECUTOR_LOCK = None, threading.Lock()


if MaskLensError is not None:  # the parent only
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def warm_up() -> None:
    """Start one worker now, in the background (it imports transformers): the first render then does not wait."""
    _pool().warm()


def shutdown() -> None:
    """Stop every worker of this process (they restart lazily on the next render)."""
    with _POOL_LOCK:
        pool = _POOL
    if pool is not None:
        pool.close()


atexit.register(shutdown)


# ---------------------------------------------------------------------------------------------------- public API
def _limits_text(timeout_s, max_memory_mb, max_output_chars) -> str:
    return f"{timeout_s:g} s / {max_memory_mb} MB / {max_output_chars:,} characters per conversation"


def _bound_error(reason: str, detail: str, name: str, timeout_s, max_output_chars, max_memory_mb, max_batch_chars):
    fix = (f"check it for unbounded loops or huge strings (a render is bounded to "
           f"{_limits_text(timeout_s, max_memory_mb, max_output_chars)})")
    if reason == "time":
        msg = f"{name} ran past {timeout_s:g} s (the render deadline) and was stopped."
    elif reason == "memory":
        msg = f"{name} needed more than {max_memory_mb} MB of memory to render one conversation and was stopped."
    elif reason == "output":
        msg = f"{name} produced more than {max_output_chars:,} characters for one conversation and was stopped."
    elif reason == "batch_output":
        reason = "output"
        msg = (f"not rendered: {name} produced more than {max_batch_chars:,} characters for this batch of "
               f"conversations.")
        fix = "render fewer conversations per call, or " + fix
    else:
        msg = f"{name} stopped the render worker ({reason}{': ' + detail if detail else ''})."
    err = MaskLensError(msg, fix=fix)
    err.bound = reason if reason in ("time", "memory", "output") else "crash"
    return err


def _job(job: dict) -> dict:
    """The fields a worker needs, as plain data. Callable tools become their JSON schema here (as transformers would)."""
    tools = job.get("tools")
    if tools is not None and not all(isinstance(t, dict) for t in tools):
        from transformers.utils.chat_template_utils import get_json_schema  # noqa: PLC0415

        tools = [t if isinstance(t, dict) else get_json_schema(t) for t in tools]
    return {"messages": job["messages"], "tools": tools, "add_generation_prompt": job.get("add_generation_prompt", False),
            "return_generation": job.get("return_generation", False), "kwargs": job.get("kwargs") or {}}


def _plain_job(job: dict) -> dict:
    """A job rebuilt from plain JSON types by transformers' own _plain_template_data, which render_jinja_template
    applies to everything a template sees: the rendering cannot change, and the job now pickles."""
    from transformers.utils.chat_template_utils import _plain_template_data  # noqa: PLC0415

    return {**job, "messages": [_plain_template_data(m) for m in job["messages"]],
            "tools": _plain_template_data(job["tools"]), "kwargs": _plain_template_data(job["kwargs"])}


def _checked(frame, left: int) -> list:
    """A frame of results as the worker writes them, or _Lost("protocol"): never trust its shape blindly."""
    ok = isinstance(frame, list) and 0 < len(frame) <= left and all(
        isinstance(r, tuple) and len(r) == 3 and (r[0] == "ok" and isinstance(r[1], str) and isinstance(r[2], list)
                                                  or r[0] == "error" and isinstance(r[2], str)) for r in frame)
    if not ok:
        raise _Lost("protocol", "the worker sent a malformed result")
    return frame


def render_batch(template: str, jobs: list[dict], *, template_name: str = "the chat template",
                 timeout_s: float = DEFAULT_TIMEOUT_S, max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
                 max_memory_mb: int = DEFAULT_MAX_MEMORY_MB, max_batch_chars: int = DEFAULT_MAX_BATCH_CHARS) -> list:
    """Render conversations with one template in a bounded worker. Thread-safe.

    jobs: dicts {"messages": [...], "tools": list | None, "add_generation_prompt": bool, "return_generation": bool,
    "kwargs": dict (the tokenizer's special_tokens_map merged with template kwargs)}; missing keys take those defaults.
    Returns, per job, (text, generation char spans) exactly as core.templates.render returns it, or a MaskLensError:
    the template raised (today's message), or it exceeded a bound (`err.bound` is "time", "memory", "output" or
    "crash"). Bounds: timeout_s wall time for the whole batch (a kill grants the jobs after it a fresh worker and
    deadline; a job that stops a fresh worker on its own is failed; after MAX_KILLS_PER_CALL kills the rest fail),
    max_memory_mb above the worker's size, max_output_chars per conversation, max_batch_chars for the whole call
    (what this process receives; jobs past it fail with bound "output").
    """
    limits = (float(timeout_s), int(max_output_chars), min(int(max_memory_mb), HARD_MEMORY_MB), int(max_batch_chars))
    return _render_batch(template, jobs, template_name, limits, MAX_KILLS_PER_CALL)


def _render_batch(template: str, jobs: list[dict], template_name: str, limits: tuple, max_kills: int) -> list:
    if not jobs:
        return []
    bound = lambda reason, detail="": _bound_error(reason, detail, template_name, *limits)  # noqa: E731
    payloads = [_job(j) for j in jobs]
    results: list = [None] * len(jobs)
    max_frame = 16 * limits[1] + (1 << 20)  # a frame: ~_FLUSH_BYTES plus one result of <= max_output_chars
    pool = _pool()
    w = pool.acquire()
    try:
        i, kills, restarts = 0, 0, 0
        while i < len(jobs):
            if kills >= max_kills:  # bound the call's time too: a template that loops on every row
                for k in range(i, len(jobs)):
                    results[k] = MaskLensError(f"not rendered: {template_name} was stopped {kills} times in this "
                                               f"batch, so the rest was skipped.", fix=bound("time").fix)
                    results[k].bound = "skipped"
                break
            if not w.alive():
                w = pool.replace(w)
            try:
                w.wait_ready()
                try:
                    batch = pickle.dumps(("render", template, payloads[i:], limits), protocol=5)
                except (pickle.PicklingError, TypeError, AttributeError):  # e.g. an object of a local class
                    payloads = [_plain_job(p) for p in payloads]  # what the template would see anyway
                    batch = pickle.dumps(("render", template, payloads[i:], limits), protocol=5)
                w.send_bytes(batch)
                del batch
            except _Lost as e:  # the worker failed before any job was its: not the template's fault
                restarts += 1
                if restarts > 2:
                    raise MaskLensError(f"the template sandbox could not start a render worker ({e.detail or e.reason})",
                                        fix="check that `python -c 'import transformers'` works in this environment")
                w = pool.replace(w)
                continue
            first, deadline = i, time.monotonic() + limits[0]
            try:
                while i < len(jobs):
                    for tag, a, b in _checked(w.recv(deadline, max_frame), len(jobs) - i):
                        if tag == "ok":
                            results[i] = (a, b)
                        elif a == "template":
                            results[i] = MaskLensError(f"{template_name} failed to render: {b}", fix=_FIX_TEMPLATE)
                            results[i].bound = None
                        else:
                            results[i] = bound(a)
                        i += 1
            except _Lost as e:
                kills += 1
                w = pool.replace(w)
                if i == first:  # it stopped a fresh worker with a fresh deadline on its own: that job is the cause
                    results[i] = bound(e.reason, e.detail)
                    i += 1
                # else: the jobs before i came back (the worker flushes results before a job runs long), so job i may
                # be slow only after the others: it and the rest get a fresh worker and deadline
    except BaseException:
        w.kill()
        raise
    finally:
        pool.release(w)
    return results


def render_sandboxed(tokenizer, messages: list[dict], template: str, tools=None, add_generation_prompt: bool = False,
                     return_generation: bool = False, special_map: dict | None = None, *,
                     template_name: str = "the chat template", timeout_s: float = DEFAULT_TIMEOUT_S,
                     max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS, max_memory_mb: int = DEFAULT_MAX_MEMORY_MB,
                     **kwargs) -> tuple[str, list[tuple[int, int]]]:
    """A drop-in for core.templates.render (same arguments, same result, MaskLensError raised), rendered in the
    sandbox. One call costs ~0.4 ms more than in-process;
    send many conversations through render_batch."""
    base = special_map if special_map is not None else tokenizer.special_tokens_map
    job = {"messages": messages, "tools": tools, "add_generation_prompt": add_generation_prompt,
           "return_generation": return_generation, "kwargs": {**base, **kwargs}}
    (result,) = render_batch(template, [job], template_name=template_name, timeout_s=timeout_s,
                             max_output_chars=max_output_chars, max_memory_mb=max_memory_mb)
    if isinstance(result, Exception):
        raise result
    return result


_EXECUTOR = None
_EXECUTOR_LOCK = threading.Lock()


def submit_batch(template: str, jobs: list[dict], **limits):
    """render_batch on a background thread -> concurrent.futures.Future of its result list. The calling thread stays
    free while a worker renders (e.g. to tokenize the previous batch): rendering then costs the caller almost nothing."""
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

            _EXECUTOR = ThreadPoolExecutor(max_workers=POOL_SIZE, thread_name_prefix="masklens-render")
        ex = _EXECUTOR
    return ex.submit(render_batch, template, jobs, **limits)


_PROBES = (
    ([{"role": "user", "content": "MLPROBEu1"}, {"role": "assistant", "content": "MLPROBEa1"}], False),
    ([{"role": "system", "content": "MLPROBEsys"}, {"role": "user", "content": "MLPROBEu1"},
      {"role": "assistant", "content": "MLPROBEa1"}], False),
    ([{"role": "user", "content": "MLPROBEu1"}], True),
    # the shapes TRL's get_training_chat_template renders in-process (supports_tool_calling, prefix preservation)
    ([{"role": "user", "content": "MLPROBEu1"},
      {"role": "assistant", "content": "", "tool_calls": [
          {"type": "function", "function": {"name": "MLPROBEfn", "arguments": {"MLPROBEk": "MLPROBEv"}}}]},
      {"role": "tool", "name": "MLPROBEfn", "content": "MLPROBEtool"}], False),
)


def probe_template(template: str, special_map: dict | None = None, *, template_name: str = "the chat template",
                   timeout_s: float = 3.0, max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
                   max_memory_mb: int = DEFAULT_MAX_MEMORY_MB, **template_kwargs) -> str:
    """Render three tiny conversations (user/assistant, with a system prompt, a generation prompt) in the worker.
    Returns the first rendering that succeeds; raises MaskLensError when the template exceeds a bound on any of them
    or fails on all of them (a syntax error, a raise_exception it always hits). Quick rejection of a pasted template.
    """
    kwargs = {**(special_map or {}), **template_kwargs}
    jobs = [{"messages": m, "add_generation_prompt": gp, "kwargs": kwargs} for m, gp in _PROBES]
    limits = (float(timeout_s), int(max_output_chars), min(int(max_memory_mb), HARD_MEMORY_MB),
              DEFAULT_MAX_BATCH_CHARS)
    results = _render_batch(template, jobs, template_name, limits, 1)  # stop at the first kill
    errors = [r for r in results if isinstance(r, Exception)]
    for e in errors:
        if e.bound not in (None, "skipped"):
            raise e
    ok = [r[0] for r in results if not isinstance(r, Exception)]
    if not ok:
        raise errors[0]
    return ok[0]


if __name__ == "__main__":
    _worker_main()
