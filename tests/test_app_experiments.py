"""The Experiments tab through its callbacks (no browser). An experiment of a tiny random Llama is run in-process
into MASKLENS_RUNS (quick); the detached driver and its child processes are driven by the browser test."""

import json
from pathlib import Path

import pytest

from app import tab_experiments as te
from app import tab_train
from core.training import runs
from core.training.experiment import parse_experiment_config, run_experiment

from .conftest import tiny_llama

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MASKLENS_RUNS", str(base))
        yield base


@pytest.fixture(scope="module")
def tiny(root, tmp_path_factory, smol_tok):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(smol_tok).save_pretrained(path)
    smol_tok.save_pretrained(path)
    return str(path)


def _yaml(tiny, seeds="[1]"):
    return (f"data: assets/samples/chat_multiturn.jsonl\nmodel: {tiny}\nheld_out: 2\nseeds: {seeds}\n"
            "train: {max_steps: 2, learning_rate: 1.0e-3, per_device_train_batch_size: 2}\n"
            "eval: {max_new_tokens: 3}\n"
            "configs:\n  - {name: a, strategy: assistant_only}\n  - {name: b, strategy: full}\n")


@pytest.fixture(scope="module")
def done(root, tiny):
    cfg = parse_experiment_config(_yaml(tiny), base_dir=REPO, default_name="done")
    run_experiment(root / "done", cfg, progress=None, in_process=True)
    return "done"


def test_the_default_and_demo_configs_are_valid():
    for text in (te.default_config(None), te.demo_config()):
        cfg = parse_experiment_config(text, base_dir=REPO)
        assert Path(cfg.data).is_file() and len(cfg.configs) >= 3
    demo = parse_experiment_config(te.demo_config(), base_dir=REPO)
    assert [c.name for c in demo.configs] == ["assistant_only", "full", "plw_0.1", "eos_none"]


def test_session_data_path_follows_inspect():
    from app.session import Session, load_sample

    s = Session()
    s.data = load_sample("reasoning.jsonl")
    assert te.session_data_path(s) == "assets/samples/reasoning.jsonl"
    assert '"assets/samples/reasoning.jsonl"' in te.default_config(s)


def test_start_with_a_bad_config_names_the_key(root):
    message, pick, watched = te.on_start(None, "bad1", "data: assets/samples/chat_multiturn.jsonl\nheld_out: 2\n"
                                                       "configs: [{name: a, prompt_loss_weight: 3}]\n")
    assert "errbox" in message and "configs[0].prompt_loss_weight" in message and "Fix:" in message
    assert not (root / "bad1").exists()
    message, _, _ = te.on_start(None, "../x", "data: x")
    assert "not a usable experiment name" in message


def test_views_of_a_finished_experiment(done, root):
    assert te.list_experiments()[0] == "done"
    v = te.view(done)
    assert 'data-status="completed"' in v.status and "2 of 2 runs completed" in v.status
    assert [r[1] for r in v.summary] == ["base", "a", "b"] or [r[1] for r in v.summary] == ["base", "b", "a"]
    assert all(r[2] == 1 for r in v.summary[1:]) and v.summary[1][4] == "no interval (1 seed)"
    assert [r[0] for r in v.runs_table] == ["a-s1", "b-s1"] and all(r[2] == "completed" for r in v.runs_table)
    assert v.runs_table[0][3] == "2/2"
    assert "one seed" in v.pairs and "cannot be told from seed noise" in v.pairs
    assert {Path(f).name for f in v.files} == {"results.json", "report.md", "report.png"}
    assert v.plot is not None
    same = te.view(done, v.signature)  # nothing changed: the heavy outputs are skipped
    assert same.summary.__class__.__name__ != "list" and same.runs_table == v.runs_table
    # the Train tab lists and opens its runs
    assert tab_train._run_dir("done/a-s1") == root / "done" / "runs" / "a-s1"
    assert "done/b-s1" in [r["name"] for r in runs.list_runs()]
    results = json.loads((root / "done" / "results.json").read_text())
    assert all(r["eval"]["tokens"] == results["eval_tokens"] for r in results["runs"])


def test_stop_and_resume_say_why_not(done):
    assert "not running: nothing to stop" in te.on_stop(done)
    assert "has completed: nothing to resume" in te.on_resume(done)
    assert "errbox" in te.on_stop("nope") and "no experiment named &#x27;nope&#x27;" in te.on_resume("nope")


def test_app_builds_with_the_tab():
    from app.main import build_app

    demo = build_app()
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"tab-experiments", "exp-config", "exp-start", "exp-stop", "exp-resume", "exp-summary"} <= ids


def test_export_zips_accelerate_scripts(tiny):
    import zipfile

    path, message = te.on_export(_yaml(tiny, seeds="[1, 2]"), 2)
    assert path and "run_all.sh" in message
    names = zipfile.ZipFile(path).namelist()
    assert {"experiment/run_all.sh", "experiment/train_a.py", "experiment/data_b.jsonl",
            "experiment/eval_set.json"} <= set(names)
    run_all = zipfile.ZipFile(path).read("experiment/run_all.sh").decode()
    assert run_all.count("accelerate launch --num_processes 2 ") == 4
    path, message = te.on_export("held_out: 2\n", 1)
    assert path is None and "field &#x27;data&#x27;: is missing" in message
