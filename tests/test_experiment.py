"""Experiments (core.training.experiment / evaluate / report / export): config errors, the results.json contract,
one fair evaluation (same tokens for every run), determinism, resume, stop, the CLI and the accelerate export.

A tiny random Llama on the SmolLM2 vocabulary, the 6-conversation chat sample (4 trained, 2 held out), 2 steps per
run. Most runs train in-process (`in_process=True`: the same run directories, without a child's start-up); one test
drives real child processes through the detached driver, stops it and resumes it.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.cli import main
from core.errors import MaskLensError
from core.training import runs
from core.training.evaluate import load_eval_set, select_rows
from core.training.experiment import (experiment_state, launch_experiment, parse_experiment_config, run_experiment,
                                      stop_experiment)
from core.training.report import check_results, compare_pair, summarize, t_quantile

from .conftest import tiny_llama

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "assets" / "samples" / "chat_multiturn.jsonl"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smol_tok):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(smol_tok).save_pretrained(path)
    smol_tok.save_pretrained(path)
    return str(path)


def _config(tiny, **kw):
    base = {"data": str(SAMPLE), "model": tiny, "held_out": 2, "seeds": [1, 2],
            "train": {"max_steps": 2, "learning_rate": 1e-3, "per_device_train_batch_size": 2, "max_length": 512},
            "eval": {"max_new_tokens": 4, "every_steps": 1},
            "configs": [{"name": "assistant_only", "strategy": "assistant_only"},
                        {"name": "plw_0.5", "strategy": "assistant_only", "prompt_loss_weight": 0.5}]}
    base.update(kw)
    return base


@pytest.fixture(scope="module")
def experiment(tiny, tmp_path_factory):
    """An experiment directory inside a runs root, run to the end in-process."""
    root = tmp_path_factory.mktemp("runs-root")
    out = root / "exp"
    results = run_experiment(out, parse_experiment_config(_config(tiny), default_name="exp"), progress=None,
                             in_process=True)
    return root, out, results


# ------------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("change, match", [
    ({"held_out": None}, r"field 'held_out': is missing Fix: add held_out: N"),
    ({"seeds": 3}, r"field 'seeds': is a number, not a list Fix: write a list: \[3\]"),
    ({"seeds": [1, 1]}, r"field 'seeds': lists a seed twice"),
    ({"train": {"seed": 3}}, r"field 'train.seed': is set by the experiment.*Fix: set it with seeds instead"),
    ({"train": {"max_step": 3}}, r"field 'train.max_step': unknown training option.*did you mean 'max_steps'"),
    ({"train": {"max_steps": 0}}, r"field 'train.max_steps': must be a whole number"),
    ({"train": {"loss_type": "kl"}}, r"field 'train.loss_type': unknown loss type 'kl'"),
    ({"eval": {"max_new_token": 3}}, r"field 'eval.max_new_token': unknown key.*did you mean 'max_new_tokens'"),
    ({"epochs": 2}, r"field 'epochs': unknown key 'epochs'"),
    ({"data": "nope.jsonl"}, r"field 'data': no such data file.*relative to the config file's folder"),
    ({"configs": []}, r"field 'configs': is empty"),
    ({"configs": [{"name": "a"}, {"name": "a"}]}, r"field 'configs\[1\].name': the name 'a' is used twice"),
    ({"configs": [{"name": "a", "prompt_loss_weight": 2}]},
     r"field 'configs\[0\].prompt_loss_weight': prompt_loss_weight must lie in \[0, 1\]"),
    ({"configs": [{"name": "a", "strategy": "nope"}]}, r"field 'configs\[0\].strategy': unknown strategy 'nope'"),
    ({"configs": [{"name": "a", "eoss": "none"}]}, r"field 'configs\[0\].eoss': unknown option.*did you mean 'eos'"),
    ({"configs": [{"strategy": "full"}]}, r"field 'configs\[0\].name': has no name"),
])
def test_config_errors_name_the_key_path_and_the_fix(tiny, change, match):
    cfg = _config(tiny)
    cfg.update(change)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    with pytest.raises(MaskLensError, match=match) as info:
        parse_experiment_config(cfg, source="exp.yaml")
    assert info.value.fix and info.value.file == "exp.yaml"


def test_rules_file_config_and_relative_paths(tiny, tmp_path):
    (tmp_path / "answers.yaml").write_text("name: answers\ntrain:\n  - {role: assistant, parts: [content]}\n")
    shutil.copy(SAMPLE, tmp_path / "data.jsonl")
    text = (f"data: data.jsonl\nmodel: {tiny}\nheld_out: [0, -1]\nseeds: [7]\n"
            "configs:\n  - {name: mine, rules: answers.yaml, prompt_loss_weight: 0.1}\n")
    (tmp_path / "exp.yaml").write_text(text)
    from core.training.experiment import load_experiment_config

    cfg = load_experiment_config(tmp_path / "exp.yaml")
    assert cfg.name == "exp" and cfg.data == str((tmp_path / "data.jsonl").resolve())
    mc = cfg.mask_config(cfg.configs[0])
    assert mc.strategy == "rules:answers" and mc.prompt_loss_weight == 0.1
    assert select_rows(6, cfg.held_out) == [0, 5]
    (tmp_path / "bad.yaml").write_text(text.replace("answers.yaml", "missing.yaml"))
    with pytest.raises(MaskLensError, match=r"field 'configs\[0\].rules': no such rules file"):
        load_experiment_config(tmp_path / "bad.yaml")
    assert parse_experiment_config(cfg.to_dict()).to_dict() == cfg.to_dict()  # what resume compares


def test_select_rows():
    assert select_rows(10, 2) == [8, 9] and select_rows(10, [3, -1]) == [3, 9]
    with pytest.raises(MaskLensError, match=r"field 'held_out': 10 rows held out of 10"):
        select_rows(10, 10)
    with pytest.raises(MaskLensError, match=r"field 'held_out\[1\]': 12 is not a row index"):
        select_rows(10, [1, 12])


# ------------------------------------------------------------------------------------------------------ stats
def test_t_interval_and_pair_sentences():
    s = summarize([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["sd"] == 1.0 and t_quantile(2) == 4.303
    assert s["ci95"] == pytest.approx([2 - 4.303 / math.sqrt(3), 2 + 4.303 / math.sqrt(3)])
    assert summarize([1.5]) == {"mean": 1.5, "sd": None, "n": 1, "ci95": None, "note": "no interval (1 seed)"}
    assert summarize([0.9, 1.0], (0.0, 1.0))["ci95"][1] == 1.0 and summarize([0.1, 0.9], (0.0, 1.0))["ci95"][0] == 0
    assert t_quantile(1000) == pytest.approx(1.962, abs=0.001) and t_quantile(60) == pytest.approx(2.000, abs=0.002)
    larger = compare_pair("a", "b", {1: 1.0, 2: 1.1, 3: 1.2}, {1: 1.5, 2: 1.62, 3: 1.69})
    assert larger["verdict"] == "larger" and "larger than the seed-to-seed spread" in larger["sentence"]
    assert larger["sentence"].startswith("b's held-out loss is 0.5033 nats higher than a's")
    within = compare_pair("a", "b", {1: 1.0, 2: 1.3}, {1: 1.1, 2: 1.2})
    assert within["verdict"] == "within" and "within the seed-to-seed spread" in within["sentence"]
    one = compare_pair("a", "b", {1: 1.0}, {1: 0.9})
    assert one["verdict"] == "unknown" and "one seed" in one["sentence"] and "lower" in one["sentence"]


# ------------------------------------------------------------------------------------------------------ results
def test_results_json_contract(experiment):
    root, out, results = experiment
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["status"] == "completed" and experiment_state(out)["status"] == "completed"
    assert on_disk["held_out_rows"] == [4, 5] and isinstance(on_disk["eval_tokens"], int)
    assert on_disk["eval_tokens"] == load_eval_set(out / "eval_set.json").tokens > 50
    base = on_disk["base"]["eval"]
    assert base["tokens"] == on_disk["eval_tokens"] and {"loss", "stop_rate", "role_leak_rate", "empty_rate",
                                                         "perplexity", "parts", "length_ratio"} <= set(base)
    assert [(r["name"], r["seed"]) for r in on_disk["runs"]] == [("assistant_only", 1), ("plw_0.5", 1),
                                                                 ("assistant_only", 2), ("plw_0.5", 2)]
    for r in on_disk["runs"]:
        assert r["status"] == "completed" and r["eval"]["tokens"] == on_disk["eval_tokens"]  # the same tokens
        assert isinstance(r["eval"]["loss"], float) and 0 <= r["eval"]["stop_rate"] <= 1
        assert [p[0] for p in r["curve"]] == [1, 2]  # every_steps 1, the last from the final evaluation
        assert r["curve"][-1][1] == r["eval"]["loss"]
    check_results(on_disk)
    assert {s["name"] for s in on_disk["summary"]} == {"assistant_only", "plw_0.5"}
    for s in on_disk["summary"]:
        assert s["n"] == 2 and len(s["eval_loss"]["ci95"]) == 2 and s["eval_loss"]["ci95"][0] <= s["eval_loss"][
            "mean"] <= s["eval_loss"]["ci95"][1]
        assert set(s["parts"]) == {"content", "eot"}
    assert sorted(on_disk["ranking"]) == ["assistant_only", "plw_0.5"]
    assert len(on_disk["pairs"]) == 1 and on_disk["pairs"][0]["verdict"] in ("larger", "within")
    md = (out / "report.md").read_text()
    assert "| – | base | 1 |" in md and "plw_0.5" in md and "## Differences" in md and "report.png" in md
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_only_the_mask_and_the_seed_vary(experiment):
    root, out, results = experiment
    run_dirs = {r["run"]: Path(r["run_dir"]) for r in results["runs"]}
    configs = {n: json.loads((d / "config.json").read_text()) for n, d in run_dirs.items()}
    fixed = {k: v for k, v in configs["assistant_only-s1"].items() if k not in ("seed", "mask_config")}
    assert all({k: v for k, v in c.items() if k not in ("seed", "mask_config")} == fixed for c in configs.values())
    data = {n: runs.read_examples(d / "data.jsonl") for n, d in run_dirs.items()}
    assert [r["input_ids"] for r in data["assistant_only-s1"]] == [r["input_ids"] for r in data["plw_0.5-s2"]]
    assert "loss_weights" in data["plw_0.5-s1"][0] and "loss_weights" not in data["assistant_only-s1"][0]
    assert len(data["assistant_only-s1"]) == 4  # the held-out rows never train
    assert configs["plw_0.5-s2"]["mask_config"]["prompt_loss_weight"] == 0.5 and configs["plw_0.5-s2"]["seed"] == 2


def test_experiment_runs_are_ordinary_runs_the_train_tab_lists(experiment):
    root, out, results = experiment
    listed = {r["name"]: r for r in runs.list_runs(root)}
    assert set(listed) == {"exp/assistant_only-s1", "exp/plw_0.5-s1", "exp/assistant_only-s2", "exp/plw_0.5-s2"}
    assert all(r["status"] == "completed" for r in listed.values())
    assert runs.find_run("exp/plw_0.5-s1", root) == out / "runs" / "plw_0.5-s1"
    for bad in ("exp/../exp/runs/plw_0.5-s1", "../x", "exp/runs", "exp", "", "a/b/c"):
        assert runs.find_run(bad, root) is None


def test_same_config_and_seed_give_the_same_eval_loss(experiment, tiny, tmp_path, monkeypatch):
    root, out, results = experiment
    from core.training import report

    seen = []  # the experiment's state each time the report is written: the final report comes before "completed"
    write = report.write_results_and_report
    monkeypatch.setattr(report, "write_results_and_report",
                        lambda d, *a, **k: seen.append((experiment_state(d).get("status"), k)) or write(d, *a, **k))
    again = run_experiment(tmp_path / "again", parse_experiment_config(_config(
        tiny, seeds=[1], configs=[{"name": "plw_0.5", "prompt_loss_weight": 0.5}])), progress=None, in_process=True)
    assert seen[-1] == ("running", {"status": "completed"}) and again["status"] == "completed"
    assert (tmp_path / "again" / report.REPORT_PNG).is_file()
    first = next(r for r in results["runs"] if r["run"] == "plw_0.5-s1")
    assert again["runs"][0]["eval"]["loss"] == first["eval"]["loss"]
    assert again["base"]["eval"]["loss"] == results["base"]["eval"]["loss"]


def test_resume_keeps_completed_runs_and_reruns_the_rest(experiment, tiny, tmp_path):
    root, out, results = experiment
    copy = tmp_path / "exp"
    shutil.copytree(out, copy)
    (copy / "runs" / "plw_0.5-s2" / "eval.json").unlink()  # killed during its final evaluation
    state = json.loads((copy / "experiment.json").read_text())
    state.update(status="running", pid=2 ** 22 + 12345, pid_start=1)  # its driver died
    runs.atomic_write_json(copy / "experiment.json", state)
    assert experiment_state(copy)["status"] == "interrupted"
    kept = {n: json.loads((copy / "runs" / n / "run.json").read_text())["started_at"]
            for n in ("assistant_only-s1", "plw_0.5-s1", "assistant_only-s2")}
    with pytest.raises(MaskLensError, match="already holds an experiment.*--resume"):
        run_experiment(copy, parse_experiment_config(_config(tiny)), progress=None, in_process=True)
    with pytest.raises(MaskLensError, match=r"was run with another config \(differs in: seeds\)"):
        run_experiment(copy, parse_experiment_config(_config(tiny, seeds=[1]), default_name="exp"), resume=True,
                       progress=None)
    resumed = run_experiment(copy, None, progress=None, in_process=True)  # no config: the stored one
    assert resumed["status"] == "completed"
    for n, started in kept.items():
        assert json.loads((copy / "runs" / n / "run.json").read_text())["started_at"] == started
    redone = json.loads((copy / "runs" / "plw_0.5-s2" / "run.json").read_text())
    assert redone["started_at"] > kept["assistant_only-s2"] and (copy / "runs" / "plw_0.5-s2" / "eval.json").is_file()
    # deterministic: the re-run scores exactly as the first time
    before = next(r for r in results["runs"] if r["run"] == "plw_0.5-s2")["eval"]["loss"]
    assert next(r for r in resumed["runs"] if r["run"] == "plw_0.5-s2")["eval"]["loss"] == before


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_evaluate_scores_the_same_tokens_as_the_experiment(experiment, tiny, capsys, tmp_path):
    root, out, results = experiment
    assert main(["evaluate", "--model", tiny, "--data", str(SAMPLE), "--held-out", "2", "--max-new-tokens", "4",
                 "--format", "json", "--output", str(tmp_path / "ev.json")]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["tokens"] == results["eval_tokens"] and got["rows"] == [4, 5]
    assert got["loss"] == pytest.approx(results["base"]["eval"]["loss"], abs=1e-9)
    final = Path(results["runs"][0]["run_dir"]) / "final"
    assert main(["evaluate", "--model", str(final), "--eval-set", str(out / "eval_set.json"),
                 "--max-new-tokens", "0"]) == 0
    text = capsys.readouterr().out
    assert f"held-out loss {results['runs'][0]['eval']['loss']:.4f} nats" in text and "content" in text
    assert main(["evaluate", "--model", tiny, "--data", str(SAMPLE), "--held-out", "7"]) == 2
    assert "field '--held-out': 7 rows held out of 6 Fix: score 1 to 6 rows" in capsys.readouterr().err


def test_cli_experiment_errors_exit_2(tmp_path, capsys, tiny):
    assert main(["experiment", "--output-dir", str(tmp_path / "x")]) == 2
    assert "--config is required" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"data: {SAMPLE}\nmodel: {tiny}\nheld_out: 2\nconfigs: [{{name: a, eos: never}}]\n")
    assert main(["experiment", "--config", str(bad), "--output-dir", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert f"file {bad}, field 'configs[0].eos': unknown eos 'never'" in err and "Fix:" in err


def test_export_writes_accelerate_launch_scripts_that_run(tiny, tmp_path):
    from core.training.export import export_experiment

    cfg = parse_experiment_config(_config(tiny, train={"max_steps": 1, "per_device_train_batch_size": 2,
                                                       "report_to": "none"}), default_name="exp")
    run_all = export_experiment(cfg, tmp_path / "export", num_processes=2)
    lines = [line for line in run_all.read_text().splitlines() if line.startswith("accelerate launch")]
    assert len(lines) == 4 and lines[2] == ("accelerate launch --num_processes 2 train_plw_0.5.py --data "
                                            "data_plw_0.5.jsonl --seed 1 --output-dir out/plw_0.5-s1")
    weighted = (tmp_path / "export" / "train_plw_0.5.py").read_text()
    plain = (tmp_path / "export" / "train_assistant_only.py").read_text()
    assert "class WeightedSFTTrainer(SFTTrainer)" in weighted and "WeightedSFTTrainer" not in plain
    assert "'report_to': 'none'" in weighted and "do not read that column" in weighted
    compile(plain, "train.py", "exec")
    proc = subprocess.run([sys.executable, "train_plw_0.5.py", "--data", "data_plw_0.5.jsonl", "--seed", "1",
                           "--output-dir", "out/w"], cwd=tmp_path / "export", capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "export" / "out" / "w" / "model.safetensors").is_file()
    assert load_eval_set(tmp_path / "export" / "eval_set.json").tokens > 50


# ------------------------------------------------------------------------------------------------------ children
def _wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_detached_driver_runs_children_stops_all_and_resumes(tiny, tmp_path):
    out = tmp_path / "exp"
    cfg = parse_experiment_config(_config(tiny, seeds=[3], train={"max_steps": 400, "learning_rate": 1e-3,
                                                                  "per_device_train_batch_size": 2},
                                          configs=[{"name": "a"}, {"name": "b", "eos": "none"}]), default_name="exp")
    proc = launch_experiment(out, cfg)
    try:
        first = out / "runs" / "a-s3"
        _wait(lambda: runs.read_metrics(first), 240, "the first run's first step")
        assert experiment_state(out)["status"] == "running" and experiment_state(out)["pid"] == proc.pid
        assert stop_experiment(out, grace_s=30) == "stopped"
        assert proc.wait(30) == 0
        assert runs.read_run(first)["status"] == "stopped" and not (out / "runs" / "b-s3").exists()
        assert "a-s3: started" in (out / "log.txt").read_text()
        results = json.loads((out / "results.json").read_text())
        assert results["status"] == "stopped" and results["runs"][0]["status"] == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
    # resume with fewer steps is another config: refused; the same config carries on (in-process here, to be quick)
    state = json.loads((out / "experiment.json").read_text())
    state["config"]["train"]["max_steps"] = 2
    runs.atomic_write_json(out / "experiment.json", state)  # (shorten the rest of the test)
    resumed = run_experiment(out, None, progress=None, in_process=True)
    assert resumed["status"] == "completed" and [r["status"] for r in resumed["runs"]] == ["completed"] * 2


def test_one_run_per_visible_gpu_each_with_its_own_device(tiny, tmp_path, monkeypatch):
    """With CUDA_VISIBLE_DEVICES=3,5 two runs go at once, one on each GPU (the children are faked here: this machine
    has no GPU; each 'run' completes after a moment with an eval.json)."""
    import threading

    from core.training import experiment

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    launched, lock = [], threading.Lock()

    def fake_launch(run_dir, env=None):
        with lock:
            active = [d.name for d, _ in launched if runs.read_run(d)["status"] == "running"]
            launched.append((Path(run_dir), dict(env or {})))
        runs.update_run_record(run_dir, status="running", pid=os.getpid(),
                               pid_start=runs.process_start_time(os.getpid()))
        (Path(run_dir) / "active_at_launch.json").write_text(json.dumps(active))

        def finish():
            time.sleep(1.0)
            runs.atomic_write_json(Path(run_dir) / "eval.json", {"loss": 1.0, "tokens": 0})
            runs.update_run_record(run_dir, status="completed")

        threading.Thread(target=finish, daemon=True).start()
        return runs.RunHandle(Path(run_dir))

    monkeypatch.setattr(experiment.runs, "launch", fake_launch)
    cfg = parse_experiment_config(_config(tiny, seeds=[1, 2], eval={"max_new_tokens": 0}), default_name="gpus")
    run_experiment(tmp_path / "gpus", cfg, progress=None, poll_s=0.1)
    assert len(launched) == 4
    assert [e["CUDA_VISIBLE_DEVICES"] for _, e in launched[:2]] == ["3", "5"]  # the first two at once
    assert json.loads((launched[1][0] / "active_at_launch.json").read_text()) == [launched[0][0].name]
    assert {e["CUDA_VISIBLE_DEVICES"] for _, e in launched} == {"3", "5"}
