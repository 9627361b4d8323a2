"""Faults: the app killed during training, and run directories damaged from outside.

- The app server (`python -m app`, a child of this test on 127.0.0.1) starts two runs of a tiny random Llama through
  its API, then is SIGKILLed. One run's training child keeps going and finishes; the other's is killed too. A new
  server shows the first completed, with all its files, and the second failed ("process died"), not "running".
- Run directories with a run.json cut short, a metrics.jsonl line that is not JSON, or config.json missing are
  listed as corrupted, naming the file; the sound run beside them is listed as usual, in core and in the Train tab.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from core.training import runs
from core.training.train import TrainConfig

from .conftest import tiny_llama

REPO = Path(__file__).resolve().parent.parent
TEST_CACHE = REPO / ".cache" / "test-cache"  # shared with test_train.py / test_app_train.py: converted once


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# ------------------------------------------------------------------------------------------------------ damaged dirs
def _metric(step: int, loss: float) -> str:
    """One line as the training callback writes it."""
    return json.dumps({"step": step, "loss": loss, "learning_rate": 1e-3, "grad_norm": 1.0, "epoch": step / 2,
                       "elapsed_s": 0.5 * step, "tokens_seen": 6 * step, "eta_s": 0.5 * (2 - step)}) + "\n"


def _examples():
    return [{"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]}, {"input_ids": [5, 6], "labels": [-100, 6]}]


@pytest.fixture
def damaged_root(tmp_path):
    """Four runs (no child started): one sound and completed, three damaged in different ways."""
    root = tmp_path / "runs"
    for name in ("ok", "cut", "garbage", "noconfig"):
        run_dir = runs.create_run(_examples(), TrainConfig(max_steps=2), root, name=name)
        runs.update_run_record(run_dir, status="completed", ended_at=time.time())
        (run_dir / "metrics.jsonl").write_text(_metric(1, 2.0) + _metric(2, 1.5))
    text = (root / "cut" / "run.json").read_text()
    (root / "cut" / "run.json").write_text(text[: len(text) // 2])
    (root / "garbage" / "metrics.jsonl").write_text(_metric(1, 2.0) + "\x00\x00garbage\n" + _metric(2, 1.5))
    (root / "noconfig" / "config.json").unlink()
    (root / "half").mkdir()  # a create_run killed before run.json: not a run yet, not listed
    (root / "half" / "data.jsonl").write_text("")
    return root


def test_damaged_runs_are_listed_as_corrupted_beside_the_sound_one(damaged_root):
    listed = {r["name"]: r for r in runs.list_runs(damaged_root)}
    assert sorted(listed) == ["cut", "garbage", "noconfig", "ok"]
    assert listed["ok"]["status"] == "completed" and listed["ok"]["problems"] == []
    for name, what in (("cut", "run.json is unreadable (not valid JSON"), ("garbage", "metrics.jsonl line 2 is not JSON"),
                       ("noconfig", "config.json is missing")):
        assert listed[name]["status"] == runs.CORRUPTED, listed[name]
        assert what in listed[name]["error"] and "Fix:" in listed[name]["error"], listed[name]["error"]
    assert listed["garbage"]["recorded_status"] == "completed"  # what run.json said is kept
    # The readable lines of a damaged metrics file still plot.
    assert [m["step"] for m in runs.read_metrics(damaged_root / "garbage")] == [1, 2]
    # read_run never raises on damage; stop and wait on a corrupted run return at once.
    assert runs.read_run(damaged_root / "cut")["status"] == runs.CORRUPTED
    assert runs.stop_run(damaged_root / "cut", grace_s=0.1) == runs.CORRUPTED
    assert runs.RunHandle(damaged_root / "cut").wait(timeout=1)["status"] == runs.CORRUPTED


def test_a_partial_last_metrics_line_is_not_damage(tmp_path):
    run_dir = runs.create_run(_examples(), TrainConfig(max_steps=2), tmp_path, name="r")
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')  # a write in progress
    assert runs.run_problems(run_dir) == []


def test_train_tab_shows_the_damaged_runs(damaged_root, monkeypatch):
    from app import tab_train

    monkeypatch.setenv("MASKLENS_RUNS", str(damaged_root))
    r = tab_train.refresh("cut", ["ok", "cut", "garbage", "noconfig"])
    statuses = {row[0]: row[1] for row in r.table}
    assert statuses == {"ok": "completed", "cut": "corrupted", "garbage": "corrupted", "noconfig": "corrupted"}
    assert "cut" in r.progress


# ------------------------------------------------------------------------------------------------------ app killed
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """`python -m app` on 127.0.0.1 in a child process; `kill()` is SIGKILL to the server alone."""

    def __init__(self, env: dict, log: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "app", "--port", str(self.port)], cwd=REPO, env=env,
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        _wait_for(self._ready, 180, f"the app on {self.url} (log: {log})")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the app exited with {self.proc.returncode}")
        try:
            return httpx.get(self.url + "/config", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.log.close()


@pytest.fixture(scope="module")
def app_env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MASKLENS_CACHE", str(TEST_CACHE))
        yield _app_env(tmp_path_factory)


def _app_env(tmp_path_factory):
    from core.models import load_tokenizer

    tok = load_tokenizer()  # the session's tokenizer (embedded SmolLM2): the tiny model shares its vocabulary
    model = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(tok).save_pretrained(model)
    tok.save_pretrained(model)
    root = tmp_path_factory.mktemp("runs")
    env = {**os.environ, "MASKLENS_RUNS": str(root), "MASKLENS_CACHE": str(TEST_CACHE), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False"}
    return env, root, str(model)


def _form(model: str, steps: int) -> list:
    """The Train form after the run selection, in the order of app.tab_train's `form`."""
    return [model, False, float(steps), 1e-3, 2.0, 1.0, 256.0, False, "bfd", 42.0, 16.0, 32.0, False, 2.0]


def _start_run(client, root: Path, model: str, steps: int) -> str:
    """Press Start through the app's API; returns the new run's name."""
    before = {p.name for p in root.iterdir()}
    message = client.predict([], *_form(model, steps), api_name="/on_start")[0]
    assert "errbox" not in message, message
    new = {p.name for p in root.iterdir()} - before
    assert len(new) == 1, new
    return new.pop()


def _snapshot(run_dir: Path) -> dict:
    return {f: (run_dir / f).read_bytes() for f in (runs.DATA_FILE, runs.CONFIG_FILE)}


def test_killed_app_restarts_to_the_runs_true_state(app_env, tmp_path):
    from gradio_client import Client

    env, root, model = app_env
    first = AppServer(env, tmp_path / "app1.log")
    try:
        client = Client(first.url, verbose=False)
        client.predict(api_name="/load")  # the page's load event: the session gets the default sample
        finishing = _start_run(client, root, model, steps=4)
        killed = _start_run(client, root, model, steps=500)
        files = {n: _snapshot(root / n) for n in (finishing, killed)}
        assert runs.read_run(root / finishing)["status"] in runs.ACTIVE
        first.kill()  # the server dies; the training children (their own sessions) do not
        died_at = time.time()
        rec = _wait_for(lambda: (r := runs.read_run(root / killed))["status"] == "running" and r, 120,
                        "the second run's child to start training")
        os.killpg(rec["pid"], signal.SIGKILL)  # and this one dies with it (as on a reboot or an OOM kill)

        second = AppServer(env, tmp_path / "app2.log")
        try:
            done = _wait_for(lambda: (r := runs.read_run(root / finishing))["status"] not in runs.ACTIVE and r, 180,
                             "the first run to finish without its app")
            assert done["status"] == "completed", (done, runs.read_log(root / finishing))
            assert done["ended_at"] > died_at  # it finished after the app that started it was gone
            assert [m["step"] for m in runs.read_metrics(root / finishing)] == [1, 2, 3, 4]
            assert (root / finishing / "final" / "model.safetensors").is_file()
            gone = runs.read_run(root / killed)
            assert gone["status"] == "failed" and gone["error"] == runs.DIED
            for name in (finishing, killed):  # the files the app wrote before it died are intact
                assert _snapshot(root / name) == files[name] and runs.run_problems(root / name) == []
            # The restarted app's Train tab lists both with their true states.
            table = Client(second.url, verbose=False).predict([], api_name="/on_tick")[2]
            statuses = {row[0]: row[1] for row in table["data"]}
            assert statuses[finishing] == "completed" and statuses[killed] == "failed"
        finally:
            second.kill()
    finally:
        first.kill()
        for name in list(p.name for p in root.iterdir()):
            pid = runs.read_run(root / name).get("pid")
            if pid and runs.pid_alive(pid):
                os.killpg(pid, signal.SIGKILL)
