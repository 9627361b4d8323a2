"""core.training.train + core.runs: real TRL SFT runs of a tiny random Llama on exactly the engine's labels.

The tiny model uses the embedded SmolLM2 tokenizer (converted once into .cache/test-cache, shared with
test_models.py) and is saved with it, so child processes need nothing else.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from core import models
from core.training import runs
from core.errors import MaskLensError
from core.training.train import IGNORE_INDEX, TrainConfig, prepare_examples, run_training, sample_generations

REPO = Path(__file__).resolve().parent.parent
TEST_CACHE = REPO / ".cache" / "test-cache"
IGNORE = IGNORE_INDEX


@pytest.fixture(scope="module", autouse=True)
def test_cache():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MASKLENS_CACHE", str(TEST_CACHE))
        yield


@pytest.fixture(scope="module")
def tokenizer(test_cache):
    return models.load_tokenizer()


@pytest.fixture(scope="module")
def tiny_model(tokenizer, tmp_path_factory):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _example(tokenizer, i):
    """A chat rendered with SmolLM2's template; only the assistant's content + <|im_end|> train (by hand)."""
    messages = [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "Yes. " * (i + 1)}]
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=True, return_dict=True,
                                           add_generation_prompt=True)["input_ids"]
    assert ids[: len(prompt)] == prompt
    end = len(ids) - 1  # the final "\n" after <|im_end|> does not train
    return {"input_ids": ids, "labels": [IGNORE] * len(prompt) + ids[len(prompt):end] + [IGNORE]}


@pytest.fixture(scope="module")
def examples(tokenizer):
    exs = [_example(tokenizer, i) for i in range(8)]
    exs.append({"input_ids": exs[0]["input_ids"], "labels": [IGNORE] * len(exs[0]["input_ids"])})  # dropped
    return exs


def _cfg(model, **kw):
    base = dict(model=model, max_steps=4, learning_rate=1e-3, per_device_train_batch_size=4, max_length=256,
                mask_config={"strategy": "assistant_only"}, data_path="hand-made")
    return TrainConfig(**{**base, **kw})


# Examples and config: pure checks.


def test_prepare_examples_drops_truncates_and_keeps_labels_exactly():
    cfg = TrainConfig(max_length=3)
    kept, stats = prepare_examples(
        [
            {"input_ids": [5, 6, 7, 8], "labels": [IGNORE, 6, 7, 8], "row": 0},  # truncated to 3
            {"input_ids": [5, 6, 7, 8], "labels": [IGNORE, IGNORE, IGNORE, 8]},  # truncated, then fully masked
            {"input_ids": [9], "labels": [9]},
        ],
        cfg,
    )
    assert kept == [{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [9], "labels": [9]}]
    assert stats == {"n_examples": 2, "n_dropped": 1, "n_truncated": 2}
    kept, stats = prepare_examples([{"input_ids": [5, 6, 7, 8], "labels": [IGNORE, IGNORE, IGNORE, 8]}],
                                   TrainConfig(max_length=3, packing=True))  # packing truncates later, in TRL
    assert kept[0]["input_ids"] == [5, 6, 7, 8] and stats["n_truncated"] == 0
    rendered = SimpleNamespace(row=0, input_ids=[5, 6], labels=[IGNORE, 6], tokens=["a", "b"])  # engine objects too
    assert prepare_examples([rendered], cfg)[0] == [{"input_ids": [5, 6], "labels": [IGNORE, 6]}]


def test_unserialisable_mask_config_fails_before_creating_a_run(tmp_path):
    with pytest.raises(MaskLensError, match=r"field 'mask_config'"):
        runs.create_run([{"input_ids": [1], "labels": [1]}], TrainConfig(mask_config={"x": object()}), tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "example, match",
    [
        ({"input_ids": [1, 2, 3], "labels": [2, 3, IGNORE]}, r"row 0, field 'labels': label 2 at position 0 is neither"),
        ({"input_ids": [1, 2, 3], "labels": [1, 2]}, r"row 0, field 'labels': 2 labels for 3 input_ids"),
        ({"input_ids": [], "labels": []}, r"field 'input_ids': missing or empty"),
        ({"input_ids": [1, 2], "labels": [IGNORE, IGNORE]}, r"all 1 examples are fully masked"),
    ],
)
def test_bad_examples_name_row_and_fix(example, match):
    with pytest.raises(MaskLensError, match=match) as info:
        prepare_examples([example], TrainConfig())
    assert info.value.fix


def test_config_validation_and_help():
    with pytest.raises(MaskLensError, match=r"field 'max_steps'"):
        TrainConfig(max_steps=0)
    with pytest.raises(MaskLensError, match=r"field 'packing_strategy'.*Fix: use one of bfd, bfd_split, wrapped"):
        TrainConfig(packing_strategy="greedy")
    with pytest.raises(MaskLensError, match=r"unknown training option 'epochs'"):
        TrainConfig.from_dict({"epochs": 3})
    cfg = _cfg("x", lora=True)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    helps = TrainConfig.help()
    assert all(h.get("help") for h in helps.values()), [k for k, h in helps.items() if not h.get("help")]
    assert helps["model"]["default"] == "embedded" and helps["packing_strategy"]["choices"] == ["bfd", "bfd_split",
                                                                                                "wrapped"]


# In-process runs with the real SFTTrainer.


def test_run_training_uses_exactly_the_engine_labels(tiny_model, examples, tmp_path, tokenizer):
    kept, _ = prepare_examples(examples, _cfg(tiny_model))
    seen = {}

    def inspect(trainer):
        # 1. the prepared dataset (run_training already asserts it; checked here independently)
        assert trainer.train_dataset["labels"] == [e["labels"] for e in kept]
        # 2. the collator, on the first four rows: labels padded with -100, never re-masked
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        for i in range(4):
            n = len(kept[i]["labels"])
            assert batch["labels"][i, :n].tolist() == kept[i]["labels"]
            assert set(batch["labels"][i, n:].tolist()) <= {IGNORE}
            assert batch["attention_mask"][i].sum().item() == n  # pad == EOS, yet EOS tokens keep attention
        # 3. a real training batch, from the trainer's own dataloader
        batch = next(iter(trainer.get_train_dataloader()))
        by_ids = {tuple(e["input_ids"]): e["labels"] for e in kept}
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            n = int(mask.sum())
            assert labels[:n].tolist() == by_ids[tuple(ids[:n].tolist())]
        seen["ok"] = True

    result = run_training(examples, _cfg(tiny_model), tmp_path, on_trainer=inspect)
    assert seen["ok"]
    assert result.status == "completed" and result.global_step == 4
    assert (result.n_examples, result.n_dropped) == (8, 1)
    metrics = runs.read_metrics(tmp_path)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(math.isfinite(m["loss"]) and m["tokens_seen"] > 0 for m in metrics)
    assert set(metrics[0]) == {"step", "loss", "learning_rate", "grad_norm", "epoch", "elapsed_s", "tokens_seen",
                               "eta_s"}
    assert (tmp_path / "final" / "model.safetensors").is_file() and (tmp_path / "final" / "tokenizer.json").is_file()
    # trained vs base, side by side
    prompts = ["Question 3?", [{"role": "user", "content": "Question 5?"}]]
    trained = sample_generations(result.final_dir, prompts, max_new_tokens=4)
    base = sample_generations(tiny_model, prompts, tokenizer, max_new_tokens=4)
    assert len(trained) == len(base) == 2 and all(isinstance(t, str) for t in trained + base)


def test_lora_run_saves_an_adapter(tiny_model, examples, tmp_path):
    result = run_training(examples, _cfg(tiny_model, lora=True, lora_r=4, lora_alpha=8, max_steps=3), tmp_path)
    assert result.status == "completed" and result.global_step == 3
    assert (tmp_path / "final" / "adapter_config.json").is_file()
    assert not (tmp_path / "final" / "model.safetensors").exists()
    assert all(math.isfinite(m["loss"]) for m in runs.read_metrics(tmp_path))
    assert len(sample_generations(result.final_dir, ["Question 1?"], max_new_tokens=3)) == 1  # adapter loads


def test_packed_run_trains_the_same_tokens(tiny_model, examples, tmp_path):
    result = run_training(examples, _cfg(tiny_model, packing=True, max_length=128, max_steps=2), tmp_path)
    assert result.status == "completed" and len(runs.read_metrics(tmp_path)) == 2


def test_stop_file_ends_an_in_process_run_cleanly(tiny_model, examples, tmp_path):
    (tmp_path / "STOP").touch()
    result = run_training(examples, _cfg(tiny_model, max_steps=50), tmp_path)
    assert result.status == "stopped" and result.global_step == 1 and Path(result.final_dir).is_dir()


# Child processes: python -m core.train --run-dir DIR


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def launched(tiny_model, examples, tmp_path_factory):
    """Four runs started at once (imports overlap): one to finish, one to SIGKILL, one to stop, one to SIGTERM."""
    root = tmp_path_factory.mktemp("runs")
    handles = {
        "kill": runs.start_run(examples, _cfg(tiny_model, max_steps=500), root, name="kill"),
        "stop": runs.start_run(examples, _cfg(tiny_model, max_steps=500), root, name="stop"),
        "term": runs.start_run(examples, _cfg(tiny_model, max_steps=500), root, name="term"),
        "done": runs.start_run(examples, _cfg(tiny_model, max_steps=3), root, name="done"),
    }
    yield root, handles
    for handle in handles.values():  # never leave a child behind, whatever failed
        if handle.process.poll() is None:
            os.killpg(handle.process.pid, signal.SIGKILL)
            handle.process.wait()


def test_sigkilled_run_is_listed_as_failed(launched):
    root, handles = launched
    handle = handles["kill"]
    _wait_for(lambda: runs.read_metrics(handle.run_dir), 120, "the first metric line")
    assert runs.read_run(handle.run_dir)["status"] == "running"
    os.killpg(handle.process.pid, signal.SIGKILL)
    # Not reaped yet: the child is a zombie of this process, as it would be of the app. It must count as dead.
    _wait_for(lambda: runs._process_state(handle.process.pid) in ("Z", None), 10, "the kill")
    listed = {r["name"]: r for r in runs.list_runs(root)}
    assert listed["kill"]["status"] == "failed" and listed["kill"]["error"] == "process died (killed?)"
    on_disk = json.loads((handle.run_dir / "run.json").read_text())
    assert on_disk["status"] == "failed" and on_disk["ended_at"]  # written back
    handle.process.wait()
    assert runs.read_run(handle.run_dir)["status"] == "failed"


def test_stop_run_ends_a_running_run_as_stopped(launched):
    root, handles = launched
    handle = handles["stop"]
    _wait_for(lambda: runs.read_metrics(handle.run_dir), 120, "the first metric line")
    assert handle.stop(grace_s=60) == "stopped"
    handle.process.wait(10)
    record = runs.read_run(handle.run_dir)
    assert record["status"] == "stopped" and record["error"] is None
    assert Path(record["final_dir"], "model.safetensors").is_file()  # weights still saved
    assert 1 <= len(runs.read_metrics(handle.run_dir)) < 500
    assert runs.stop_run(handle.run_dir) == "stopped"  # stopping a finished run is a no-op


def test_sigterm_asks_the_child_for_a_clean_stop(launched):
    root, handles = launched
    handle = handles["term"]
    _wait_for(lambda: runs.read_metrics(handle.run_dir), 120, "the first metric line")
    handle.process.send_signal(signal.SIGTERM)
    assert handle.process.wait(60) == 0
    record = runs.read_run(handle.run_dir)
    assert record["status"] == "stopped" and record["result"]["global_step"] < 500
    assert "SIGTERM: stopping after the current step" in runs.read_log(handle.run_dir)


def test_subprocess_run_completes(launched):
    root, handles = launched
    handle = handles["done"]
    record = handle.wait(timeout=180)
    log = runs.read_log(handle.run_dir)
    assert record["status"] == "completed", log
    assert record["pid"] == handle.process.pid and record["started_at"] <= record["ended_at"]
    assert record["result"]["global_step"] == 3 and math.isfinite(record["result"]["train_loss"])
    metrics = runs.read_metrics(handle.run_dir)
    assert [m["step"] for m in metrics] == [1, 2, 3] and all(math.isfinite(m["loss"]) for m in metrics)
    assert "completed after 3 steps" in log
    config = json.loads((handle.run_dir / "config.json").read_text())
    assert config["mask_config"] == {"strategy": "assistant_only"} and config["max_steps"] == 3
    assert [r["name"] for r in runs.list_runs(root)] == ["kill", "stop", "term", "done"]  # by start time


def test_failed_child_records_the_error(tmp_path, examples):
    handle = runs.start_run(examples, _cfg(str(tmp_path / "no-model-here"), max_steps=1), tmp_path / "runs")
    record = handle.wait(timeout=120)
    assert record["status"] == "failed" and "no such directory" in record["error"]
    assert "Traceback" in runs.read_log(handle.run_dir)


# Records: reconciliation and partial files, without a child.


def _record(tmp_path, **fields):
    """A run directory as create_run writes it (config.json, data.jsonl, then run.json), with run.json's fields set:
    a sound directory, so only the record's own fields decide what read_run / list_runs report."""
    run_dir = tmp_path / "r1"
    run_dir.mkdir()
    runs.write_examples(run_dir / runs.DATA_FILE, [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}])
    runs.atomic_write_json(run_dir / runs.CONFIG_FILE, TrainConfig(max_steps=2).to_dict())
    runs.atomic_write_json(run_dir / runs.RUN_FILE, {"status": "running", "created_at": time.time(), **fields})
    assert runs.run_problems(run_dir) == []
    return run_dir


def test_reused_pid_is_not_our_run(tmp_path):
    run_dir = _record(tmp_path, pid=os.getpid(), pid_start=runs.process_start_time(os.getpid()) + 1)
    assert runs.read_run(run_dir)["status"] == "failed"
    assert [r["status"] for r in runs.list_runs(tmp_path)] == ["failed"]


def test_live_pid_stays_running(tmp_path):
    run_dir = _record(tmp_path, pid=os.getpid(), pid_start=runs.process_start_time(os.getpid()))
    assert runs.read_run(run_dir)["status"] == "running"
    assert [r["status"] for r in runs.list_runs(tmp_path)] == ["running"]  # listed as running, not corrupted


def test_queued_run_that_never_started(tmp_path):
    run_dir = _record(tmp_path, status="queued", pid=None, created_at=time.time() - 3600)
    record = runs.read_run(run_dir)
    assert record["status"] == "failed" and record["error"] == "process never started"
    assert [r["status"] for r in runs.list_runs(tmp_path)] == ["failed"]


def test_list_runs_skips_half_created_dirs(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "data.jsonl").write_text("")
    assert runs.list_runs(tmp_path) == [] and runs.list_runs(tmp_path / "missing") == []


def test_read_metrics_tolerates_a_partial_last_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "lo')
    assert runs.read_metrics(tmp_path) == [{"step": 1, "loss": 2.5}]
    assert runs.read_metrics(tmp_path / "nothing") == []


def test_runs_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MASKLENS_RUNS", str(tmp_path))
    assert runs.runs_root_dir() == tmp_path.resolve()
    monkeypatch.delenv("MASKLENS_RUNS")
    assert runs.runs_root_dir() == REPO / "runs"


# Export: the same run as a standalone script.


def test_exported_script_compiles_for_every_variant(tmp_path, examples):
    for i, kw in enumerate([{}, {"lora": True}, {"packing": True, "packing_strategy": "wrapped"}]):
        run_dir = runs.create_run(examples, _cfg("embedded", **kw), tmp_path, name=f"r{i}")
        script = runs.export_script(run_dir)
        compile(script, "train.py", "exec")
        assert "accelerate launch --num_processes N train.py" in script
        imports = {line.split()[1] for line in script.splitlines() if line.startswith(("import ", "from "))}
        assert imports <= {"argparse", "json", "pathlib", "datasets", "peft", "transformers", "transformers.utils",
                           "trl"}
    assert "'target_modules': 'all-linear'" in runs.export_script(tmp_path / "r1")
    assert runs.launch_command(4) == "accelerate launch --num_processes 4 train.py"


def test_exported_script_runs(tiny_model, examples, tmp_path):
    run_dir = runs.create_run(examples, _cfg(tiny_model, max_steps=2), tmp_path / "runs", name="export")
    script = run_dir / "train.py"
    script.write_text(runs.export_script(run_dir))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(script), "--output-dir", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert "'train_loss'" in proc.stdout + proc.stderr
