"""Load on the app over loopback: many sessions at once, and token views while another session audits.

    .venv/bin/python benchmarks/bench_load.py [--sessions 16] [--requests 20] [--audit-rows 20000]

The app runs as `python -m app` in a child process on 127.0.0.1 (a free port); each session is its own
gradio_client.Client (its own session hash, so its own gr.State). A session opens the page (the load event), picks
a sample dataset, then alternates: switch strategy (between two), next example. Every answer's token view is checked
against the labels this process renders for that session's own dataset, example and strategy: a session that got
another's state (cross-talk) or an error box counts as an error.

Phase 2: one more session uploads N synthetic conversations and audits them while the others keep asking for token
views; it reports the token views' latency during the audit beside the idle figures, and how many finished before
the audit did (0 would mean the audit froze them).

Request loops are bounded in count and time; only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SAMPLES = ["chat_multiturn.jsonl", "tools.jsonl", "weighted.jsonl", "sharegpt.jsonl", "prompt_completion_chat.jsonl"]
LABEL_RE = re.compile(r'data-label="(-?\d+)"')


# ------------------------------------------------------------------------------------------------------ the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m app` on 127.0.0.1 in its own process group, stopped (SIGTERM, then SIGKILL) by close()."""

    def __init__(self, log_path: Path, env: dict | None = None, start_timeout: float = 180.0):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "ab")
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO),
                    "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(self.port)],
                                     cwd=REPO, env=full_env, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with {self.proc.returncode}; see {log_path}")
            try:
                if httpx.get(self.url + "/config", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the app did not answer within {start_timeout:.0f} s; see {log_path}")
            time.sleep(0.3)

    def close(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------------------------------------------ expectations
class Expected:
    """The labels each (sample, example index, strategy) must show, rendered here as the app renders them."""

    def __init__(self):
        from app.session import load_sample

        self._lock = threading.Lock()
        self._cache: dict[tuple, list[int]] = {}
        self.datasets = {s: load_sample(s) for s in SAMPLES}

    def warm(self, strategies: list[str]) -> None:
        """Render every (sample, example, strategy) now, so the timed loops only look them up."""
        for sample, data in self.datasets.items():
            for i in range(len(data.examples)):
                for strategy in strategies:
                    self.labels(sample, i, strategy)

    def size(self, sample: str) -> int:
        return len(self.datasets[sample].examples)

    def labels(self, sample: str, index: int, strategy: str) -> list[int]:
        key = (sample, index, strategy)
        with self._lock:
            if key not in self._cache:
                from app.session import Session
                from app.tab_inspect import fit_template

                s = Session(data=self.datasets[sample], index=index)
                fit_template(s)  # as the Data picker does: a sample whose tool calls need a template that renders them
                s.settings.strategy = strategy
                self._cache[key] = list(s.render_current().labels)
            return self._cache[key]


def settings_values(strategy: str) -> list:
    """The Inspect tab's masking controls (generated from MaskConfig's options), in Settings' field order, with this
    strategy: the values on_settings takes."""
    from app.session import SETTING_FIELDS, Settings

    s = Settings(strategy=strategy)
    return [list(v) if isinstance(v := getattr(s, f), tuple) else v for f in SETTING_FIELDS]


# ------------------------------------------------------------------------------------------------------ sessions
@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)  # seconds, token-view requests
    stamps: list[float] = field(default_factory=list)  # monotonic completion time of each
    errors: list[str] = field(default_factory=list)
    requests: int = 0


def _check(out, expected: list[int], number: int, who: str) -> str | None:
    """None if a token-view answer is this session's own; else what is wrong."""
    view, error, shown_number = out[0], out[6], out[4]
    if error:
        return f"{who}: error box: {re.sub('<[^>]+>', ' ', error)[:200]}"
    got = [int(x) for x in LABEL_RE.findall(view)]
    if got != expected:
        return f"{who}: labels differ from its own example ({len(got)} vs {len(expected)} tokens): cross-talk?"
    if shown_number != number:
        return f"{who}: shows example {shown_number}, expected {number}"
    return None


class Session:
    """One browser tab: its own gradio_client session, its own dataset and pair of strategies."""

    def __init__(self, url: str, k: int, expected: Expected, strategies: list[str]):
        from gradio_client import Client

        self.k, self.exp = k, expected
        self.sample = SAMPLES[k % len(SAMPLES)]
        rng = random.Random(k)
        self.strategies = rng.sample(strategies, 2)
        self.strategy, self.index = self.strategies[0], 0
        self.client = Client(url, verbose=False)
        self.client.predict(api_name="/load")
        self.client.predict(self.sample, api_name="/on_sample")
        self.client.predict(*settings_values(self.strategy), api_name="/on_settings")

    def step(self, j: int, stats: Stats) -> None:
        """Request j: even = switch strategy, odd = next example. Records latency and checks the answer."""
        t0 = time.monotonic()
        try:
            if j % 2 == 0:
                self.strategy = self.strategies[(j // 2 + 1) % 2]
                out = self.client.predict(*settings_values(self.strategy), api_name="/on_settings")
            else:
                out = self.client.predict(api_name="/on_next")
                self.index = (self.index + 1) % self.exp.size(self.sample)  # Next wraps around
        except Exception as e:  # noqa: BLE001 - counted, reported
            stats.errors.append(f"session {self.k} request {j}: {type(e).__name__}: {e}")
            return
        finally:
            stats.requests += 1
        now = time.monotonic()
        stats.latencies.append(now - t0)
        stats.stamps.append(now)
        want = self.exp.labels(self.sample, self.index, self.strategy)
        problem = _check(out, want, self.index + 1, f"session {self.k} ({self.sample}, {self.strategy}) req {j}")
        if problem:
            stats.errors.append(problem)


def run_sessions(sessions: list[Session], n_requests: int, time_limit: float, stop: threading.Event | None = None,
                 ) -> tuple[Stats, float]:
    """Every session in its own thread, n_requests each (fewer if time_limit passes or `stop` is set)."""
    stats = Stats()
    lock = threading.Lock()
    deadline = time.monotonic() + time_limit

    def worker(s: Session):
        local = Stats()
        for j in range(n_requests):
            if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                break
            s.step(j, local)
        with lock:
            stats.latencies += local.latencies
            stats.stamps += local.stamps
            stats.errors += local.errors
            stats.requests += local.requests

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in sessions]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 30)
    return stats, time.monotonic() - t0


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


# ------------------------------------------------------------------------------------------------------ the audit
def audit_dataset(path: Path, n: int, seed: int = 0) -> Path:
    """n synthetic multi-turn conversations (system prompt, 2-5 exchanges) as JSONL."""
    words = ("the model learns which tokens count toward the loss so masks matter when you fine tune chat models on "
             "conversations with system prompts tools and many turns about code data maths and science").split()
    rng = random.Random(seed)

    def sentence(lo, hi):
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi))).capitalize() + "."

    with open(path, "w") as f:
        for _ in range(n):
            msgs = [{"role": "system", "content": sentence(5, 15)}]
            for _ in range(rng.randint(2, 5)):
                msgs += [{"role": "user", "content": sentence(5, 30)},
                         {"role": "assistant", "content": sentence(10, 60)}]
            f.write(json.dumps({"messages": msgs}) + "\n")
    return path


def views_during_audit(url: str, sessions: list[Session], data: Path, n_requests: int, time_limit: float) -> dict:
    """One session uploads `data` and audits it; the others ask for token views meanwhile. Returns the figures."""
    from gradio_client import Client, handle_file

    auditor = Client(url, verbose=False)
    auditor.predict(api_name="/load")
    out = auditor.predict(handle_file(str(data)), api_name="/on_upload")  # the Upload button
    if out[6]:
        raise RuntimeError(f"upload failed: {out[6][:300]}")
    stop = threading.Event()
    result: dict = {}

    def audit():
        t0 = time.monotonic()
        try:
            res = auditor.predict(api_name="/on_audit")
            result["summary"] = res[0]
        except Exception as e:  # noqa: BLE001
            result["error"] = f"{type(e).__name__}: {e}"
        result["start"], result["end"] = t0, time.monotonic()
        stop.set()

    thread = threading.Thread(target=audit, daemon=True)
    thread.start()
    time.sleep(0.2)  # the audit is queued first
    stats, _ = run_sessions(sessions, n_requests, time_limit, stop)
    thread.join(time_limit + 60)
    if "end" not in result:
        raise RuntimeError("the audit did not finish in time")
    during = [lat for lat, at in zip(stats.latencies, stats.stamps) if at <= result["end"]]
    return {"audit_s": result["end"] - result["start"], "audit_error": result.get("error"),
            "audit_ok": "errbox" not in result.get("summary", "errbox"),
            "views_during": len(during), "p50_during": percentile(during, 50), "p95_during": percentile(during, 95),
            "max_during": max(during) if during else float("nan"), "errors": stats.errors}


# ------------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--requests", type=int, default=20, help="requests per session (half strategy switches)")
    p.add_argument("--audit-rows", type=int, default=20000, help="conversations the auditing session uploads")
    p.add_argument("--time-limit", type=float, default=300.0, help="seconds per phase, at most")
    ns = p.parse_args(argv)

    from core.masking.engine import STRATEGIES

    expected = Expected()
    expected.warm(list(STRATEGIES))
    with tempfile.TemporaryDirectory(prefix="masklens-load-") as tmp:
        tmp = Path(tmp)
        with Server(tmp / "app.log") as server:
            t0 = time.monotonic()
            sessions = [Session(server.url, k, expected, list(STRATEGIES)) for k in range(ns.sessions)]
            print(f"{ns.sessions} sessions opened in {time.monotonic() - t0:.1f} s")
            stats, wall = run_sessions(sessions, ns.requests, ns.time_limit)
            idle_p50, idle_p95 = percentile(stats.latencies, 50), percentile(stats.latencies, 95)
            print(f"phase 1: {stats.requests} requests ({ns.sessions} sessions x {ns.requests}) in {wall:.1f} s: "
                  f"{stats.requests / wall:.1f} req/s, p50 {idle_p50 * 1000:.0f} ms, p95 {idle_p95 * 1000:.0f} ms, "
                  f"max {max(stats.latencies) * 1000:.0f} ms, errors {len(stats.errors)}")
            for e in stats.errors[:10]:
                print("  ", e)
            data = audit_dataset(tmp / "audit.jsonl", ns.audit_rows)
            during = views_during_audit(server.url, sessions, data, ns.requests * 10, ns.time_limit)
            print(f"phase 2: audit of {ns.audit_rows} conversations took {during['audit_s']:.1f} s "
                  f"({'ok' if during['audit_ok'] else during['audit_error'] or 'error box'}); "
                  f"{during['views_during']} token views finished meanwhile: p50 {during['p50_during'] * 1000:.0f} ms, "
                  f"p95 {during['p95_during'] * 1000:.0f} ms, max {during['max_during'] * 1000:.0f} ms; "
                  f"errors {len(during['errors'])}")
            for e in during["errors"][:10]:
                print("  ", e)
    return 0 if not stats.errors and not during["errors"] and during["audit_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
