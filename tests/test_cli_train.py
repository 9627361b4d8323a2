"""`python -m core train`: the run happens in the child process the app uses, with its log in DIR/log.txt and a
progress line per step on stderr; failures exit non-zero with the error (and the end of the log)."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import tiny_llama

REPO = Path(__file__).resolve().parent.parent
TEST_CACHE = REPO / ".cache" / "test-cache"
CHATS = [
    {"messages": [{"role": "user", "content": f"What is {i} + {i}?"}, {"role": "assistant", "content": f"{2 * i}."},
                  {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "Yes."}]}
    for i in range(6)
]


@pytest.fixture(scope="module")
def env():
    return {**os.environ, "MASKLENS_CACHE": str(TEST_CACHE), "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in CHATS))
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MASKLENS_CACHE", str(TEST_CACHE))
        from core.models import load_tokenizer

        tok = load_tokenizer()
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _train(env, data, model, out, steps=3):
    return subprocess.run(
        [sys.executable, "-m", "core", "train", "--data", str(data), "--strategy", "assistant_only", "--model",
         str(model), "--max-steps", str(steps), "--output-dir", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


def test_train_writes_metrics_record_and_log(env, data, tiny_model, tmp_path):
    out = tmp_path / "run"
    proc = _train(env, data, tiny_model, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3] and all(math.isfinite(m["loss"]) for m in metrics)
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "completed" and record["result"]["global_step"] == 3
    assert "completed after 3 steps" in (out / "log.txt").read_text()  # the child's output, not the terminal's
    progress = [line for line in proc.stderr.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in progress] == ["1/3", "2/3", "3/3"] and "ETA" in progress[-1]
    assert "run completed after 3 steps" in proc.stderr
    assert json.loads((out / "config.json").read_text())["mask_config"]["strategy"] == "assistant_only"


def test_bad_model_path_exits_with_a_clear_message(env, data, tmp_path):
    proc = _train(env, data, tmp_path / "no-such-model", tmp_path / "run")
    assert proc.returncode != 0
    assert "no-such-model" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_failed_run_prints_the_error_and_the_end_of_its_log(env, data, tiny_model, tmp_path):
    # a tokenizer without weights: the data renders, the child fails loading the model
    model = tmp_path / "tokenizer-only"
    shutil.copytree(tiny_model, model, ignore=shutil.ignore_patterns("*.safetensors", "config.json",
                                                                     "generation_config.json"))
    proc = _train(env, data, model, tmp_path / "run", steps=2)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "error: the run failed:" in proc.stderr and "last lines of" in proc.stderr
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"
