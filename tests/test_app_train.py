"""The Train tab through its callbacks (no browser): real runs of a tiny random Llama in child processes.

The model is saved with the embedded SmolLM2 tokenizer (the session's tokenizer), so the tab's vocabulary check
passes and the children need nothing else. MASKLENS_RUNS points at a temporary directory.
"""

import math
import os
import shutil
import signal
import time
import zipfile
from pathlib import Path

import pytest

from app import tab_train
from app import train_view as tv
from app.session import Session, load_sample
from core.training import runs
from core.training.train import TrainConfig

from .conftest import tiny_llama

REPO = Path(__file__).resolve().parent.parent
TEST_CACHE = REPO / ".cache" / "test-cache"


@pytest.fixture(scope="module", autouse=True)
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MASKLENS_CACHE", str(TEST_CACHE))  # shared with test_train.py: converted once
        mp.setenv("MASKLENS_RUNS", str(root))
        yield root


@pytest.fixture(scope="module")
def tiny_model(env, tmp_path_factory):
    from core.models import load_tokenizer

    tok = load_tokenizer()
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(tok).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _session(strategy="assistant_only") -> Session:
    s = Session()
    s.data = load_sample("chat_multiturn.jsonl")  # 6 conversations: 4 trained, 2 held out
    s.settings.strategy = strategy
    return s


def _form(model, steps, **kw):
    """The form's values in on_start's order, as gradio hands them over (numbers as floats)."""
    v = dict(model=model, lora=False, max_steps=float(steps), learning_rate=1e-3, batch_size=4.0, grad_accum=1.0,
             max_length=512.0, packing=False, packing_strategy="bfd", seed=42.0, lora_r=16.0, lora_alpha=32.0,
             gradient_checkpointing=False, n_held_out=2.0)
    v.update(kw)
    return list(v.values())


def _start(model, steps, strategy="assistant_only", **kw):
    out = tab_train.on_start(_session(strategy), [], *_form(model, steps, **kw))
    message, watched = out[0], out[1 + tab_train.Refresh._fields.index("watched")]
    assert "errbox" not in message, message
    assert len(out) == 1 + len(tab_train.Refresh._fields) + 1
    return watched


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _status(name):
    return runs.read_run(Path(os.environ["MASKLENS_RUNS"]) / name)["status"]


def _listed(name):
    """The run's row in the runs table, as the page shows it."""
    rows = {row[0]: row for row in tab_train.refresh(None, []).table}
    return rows.get(name)


@pytest.fixture(scope="module")
def started(tiny_model):
    """Four runs started from the tab at once (their imports overlap): two to complete, one to kill, one to stop."""
    names = {
        "a": _start(tiny_model, 3),
        "b": _start(tiny_model, 3, strategy="full"),
        "kill": _start(tiny_model, 500),
        "stop": _start(tiny_model, 500),
    }
    yield names
    for name in names.values():  # never leave a child behind, whatever failed
        record = runs.read_run(Path(os.environ["MASKLENS_RUNS"]) / name)
        if record["status"] in runs.ACTIVE and runs.pid_alive(record.get("pid"), record.get("pid_start")):
            os.killpg(record["pid"], signal.SIGKILL)


# ------------------------------------------------------------------------------------------------------ pure views
def test_form_defaults_and_parsing():
    assert tv.field_default("max_steps") == TrainConfig().max_steps and tv.field_help("lora")
    cfg = tv.config_from_form("", True, 7.0, None, 2.0, 3.0, 0, False, "wrapped", 1.0, 8.0, 16.0, True,
                              mask_config={"strategy": "full"}, data_path="d.jsonl")
    assert (cfg.model, cfg.max_steps, cfg.learning_rate, cfg.max_length, cfg.lora_r) == ("embedded", 7, 2e-5, None, 8)
    with pytest.raises(Exception, match="field 'max_steps'"):
        tv.config_from_form("embedded", False, 2.5, 1e-5, 1, 1, 0, False, "bfd", 1, 8, 16, False)
    assert tv.learning_rate_for(True, 2e-5) == tv.LORA_LEARNING_RATE and tv.learning_rate_for(True, 5e-5) == 5e-5
    assert tv.learning_rate_for(False, tv.LORA_LEARNING_RATE) == 2e-5


def test_run_names_default_to_strategy_and_time_and_stay_unique(env):
    t = time.mktime((2025, 1, 7, 9, 30, 12, 0, 0, -1))
    assert tv.run_name("", "assistant_only", t) == "assistant_only-0107-093012"
    assert tv.run_name("", "rules:first@ab12", t) == "rules-first-ab12-0107-093012"
    assert tv.run_name("  lr 1e-4 / try 2 ", "full") == "lr-1e-4-try-2"
    (env / "full-0107-093012").mkdir()
    assert tab_train.free_name("full-0107-093012", typed=False) == "full-0107-093012-2"
    with pytest.raises(Exception, match="type another Run name"):
        tab_train.free_name("full-0107-093012", typed=True)


def test_the_time_estimate_says_what_it_rests_on():
    ref = tv.REFERENCE_STEPS[("embedded", False)]
    html = tv.estimate_html(20, 4, 131, ref, reference=True, load=(3.5, 2))
    # 20 steps of 4 x 131 tokens at the 4.6 (quiet) to 23 (busy) s/step measured here for such steps
    assert "Estimate: 20 steps ≈ 1m 32s – 7m 40s" in html and "4.6–23.0 s per step of ~524 tokens" in html
    assert "RESULTS_train.md" in html and "busy now (load 3.5 on 2 cores)" in html
    longer = tv.estimate_html(20, 8, 131, ref, reference=True)  # twice the tokens per step: twice the time
    assert "Estimate: 20 steps ≈ 3m 04s – 15m 20s" in longer
    shorter = tv.estimate_html(20, 4, 40, ref, reference=True)  # fewer tokens: not assumed faster
    assert "Estimate: 20 steps ≈ 1m 32s – 7m 40s" in shorter
    metrics = [{"step": k, "elapsed_s": 5.0 * k, "tokens_seen": 500 * k} for k in range(1, 6)]
    assert tv.measured_step(metrics) == tv.measured_step(metrics[:2]) == (5.0, 500.0)
    assert tv.measured_step(metrics[:1]) is None  # one step: its time is mostly warm-up
    views = [{"config": {"model": "embedded", "lora": False}, "metrics": metrics},
             {"config": {"model": "embedded", "lora": True}, "metrics": metrics[:1]}]
    assert tv.steps_of(views, "embedded", False) == [(5.0, 500.0)] and tv.steps_of(views, "embedded", True) == []
    measured = tv.estimate_html(20, 4, 125, [(5.0, 500.0)], reference=False)
    assert "Estimate: 20 steps ≈ 1m 40s</b>" in measured and "by the last 1 run of this model here" in measured
    assert "No time estimate" in tv.estimate_html(20, 4, 125, [], reference=True)
    s = _session()
    assert "Estimate: 20 steps" in tab_train.on_estimate(s, "embedded", False, 20, 4, 1, 1024, False)


def test_estimate_counts_the_tokens_of_the_examples_the_run_trains_on():
    """Start trains on the data less the held-out examples: the estimate's tokens per step come from those."""
    from core.masking.engine import render_examples

    s = _session()

    def mean(examples):
        rendered = render_examples(examples, s.tokenizer(), s.config())
        return sum(r.n_tokens for r in rendered) / len(rendered)

    train, held = tv.split_held_out(s.data.examples, 2)
    kept, everything = mean(train), mean(s.data.examples)
    assert held and round(kept) != round(everything)  # the sample's last two conversations are longer
    for n_held, m in ((2, kept), (0, everything)):
        html = tab_train.on_estimate(s, "embedded", False, 20, 4, 1, None, False, float(n_held))
        assert f"this run's steps hold ~{4 * m:.0f} tokens (4 examples × ~{m:.0f})" in html, html


def test_identical_curves_are_both_drawn_and_named():
    curve = [{"step": k, "loss": 2.0 / k} for k in range(1, 4)]
    fig = tv.loss_figure({"a": curve, "b": curve, "c": curve[:2]})
    styles = [line.get_linestyle() for line in fig.axes[0].get_lines()]
    assert len(set(styles)) == 3  # a curve drawn over another still shows
    assert "identical curves: b = a" in [t.get_text() for t in fig.axes[0].texts]


def test_held_out_prompts_and_views():
    data = load_sample("chat_multiturn.jsonl").examples
    train, held = tv.split_held_out(data, 2)
    assert (len(train), len(held)) == (4, 2) and tv.split_held_out(data[:2], 1) == (data[:2], [])
    prompt = tv.prompt_of(held[0])
    assert prompt[-1]["role"] == "user" and all(m["role"] != "assistant" or i < len(prompt) for i, m in
                                                enumerate(prompt))
    assert prompt == [{"role": m["role"], "content": m["content"]} for m in held[0].messages[: len(prompt)]]
    view = {"record": {"name": "r", "status": "failed", "error": "boom", "started_at": 1.0, "ended_at": 2.0},
            "config": {"max_steps": 4, "mask_config": {"strategy": "full"}}, "metrics": []}
    page = tv.progress_html(view, "line 1\nTraceback: boom\n")
    assert "errbox" in page and "boom" in page and "Traceback" in page
    frame = tv.loss_frame({"x": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": None}], "y": [{"step": 1, "loss": 1.5}]})
    assert frame.to_dict("records") == [{"step": 1, "loss": 2.0, "run": "x"}, {"step": 1, "loss": 1.5, "run": "y"}]
    assert tv.figure_series(tv.loss_figure({"x": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}]})) == {
        "x": [(1.0, 2.0), (2.0, 1.0)]}
    assert tv.figure_series(tv.loss_figure({})) == {}
    assert tv.fmt_duration(75) == "1m 15s" and tv.model_label("/a/b/c/d") == "c/d"


def test_corrupted_runs_and_damaged_metrics_are_shown_not_fatal(tmp_path):
    """A damaged run directory reads as corrupted (core.runs), and metrics lines without elapsed_s/step/loss (hand
    edits, a damaged file) never break the progress line, the table or the curves."""
    root = tmp_path / "runs"
    run_dir = runs.create_run([{"input_ids": [1, 2], "labels": [-100, 2]}], TrainConfig(max_steps=4), root, name="bad")
    runs.update_run_record(run_dir, status="completed", started_at=1.0, ended_at=9.0)
    (run_dir / runs.CONFIG_FILE).unlink()
    metrics = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "elapsed_s": 1.0}, {"loss": 1.0}]
    listed = runs.list_runs(root)[0]  # status corrupted, recorded_status completed, error naming config.json
    for record in (listed, runs.read_run(run_dir)):  # as the list gives it, and read on its own (problems only)
        view = {"record": record, "config": {}, "metrics": metrics}
        page = tv.progress_html(view)
        assert 'data-status="corrupted"' in page and "errbox" in page, page
        assert "config.json is missing" in page and "Fix:" in page and "run.json last said: completed" in page
        assert tv.runs_rows([view])[0][1] == "corrupted" and "corrupted" in tv.run_choices([view])[0][0]
        assert "<td>corrupted</td>" in tv.compare_html([view])
    p = tv.run_progress({"status": "running"}, {"max_steps": 4}, metrics)
    assert p["step"] == 0 and p["per_step"] is None and p["eta"] is None  # the last line lacks step and elapsed_s
    p = tv.run_progress({"status": "running"}, {"max_steps": 4}, metrics[:2])
    assert p["step"] == 2 and p["per_step"] == 0.5 and p["eta"] == 1.0  # elapsed_s 1.0 over 2 steps
    assert tv.loss_frame({"x": metrics}).to_dict("records") == [{"step": 1, "loss": 2.0, "run": "x"},
                                                               {"step": 2, "loss": 1.5, "run": "x"}]


def test_the_tab_builds():
    import gradio as gr

    with gr.Blocks():
        handles = tab_train.build_train_tab(gr.State(Session()))
    assert {"start", "stop", "timer"} <= set(handles)


# ------------------------------------------------------------------------------------------------------ errors
def test_bad_model_path_is_shown_in_the_page(tiny_model, tmp_path):
    before = set(Path(os.environ["MASKLENS_RUNS"]).iterdir())
    out = tab_train.on_start(_session(), [], *_form(str(tmp_path / "no-such-model"), 2))
    assert "errbox" in out[0] and "no-such-model" in out[0]
    assert set(Path(os.environ["MASKLENS_RUNS"]).iterdir()) == before  # checked before a run directory is made


def test_a_model_with_another_vocabulary_is_refused(spm_tok_dir):
    out = tab_train.on_start(_session(), [], *_form(str(spm_tok_dir), 2))
    assert "errbox" in out[0] and "another tokenizer" in out[0]


def test_no_data_is_an_error_not_a_crash():
    out = tab_train.on_start(Session(), [], *_form("embedded", 2))
    assert "no examples to train on" in out[0]


# ------------------------------------------------------------------------------------------------------ runs
def test_killed_run_is_listed_as_failed(started):
    name = started["kill"]
    run_dir = Path(os.environ["MASKLENS_RUNS"]) / name
    _wait_for(lambda: runs.read_metrics(run_dir), 120, "the first metric line")
    os.killpg(runs.read_run(run_dir)["pid"], signal.SIGKILL)
    _wait_for(lambda: _status(name) == "failed", 20, "the kill to be noticed")
    row = _listed(name)
    assert row[1] == "failed"
    page = tab_train.refresh(name, []).progress
    assert "process died" in page and 'data-status="failed"' in page


def test_stop_callback_ends_a_run(started):
    name = started["stop"]
    run_dir = Path(os.environ["MASKLENS_RUNS"]) / name
    _wait_for(lambda: runs.read_metrics(run_dir), 120, "the first metric line")
    message = tab_train.on_stop(None, [name], grace_s=30)
    assert "Stopping" in message and name in message
    _wait_for(lambda: _status(name) not in runs.ACTIVE, 60, "the stop")
    assert _status(name) == "stopped" and _listed(name)[1] == "stopped"
    assert "nothing to stop" in tab_train.on_stop(None, [name])


def test_started_run_completes_and_is_listed(started):
    name = started["a"]
    _wait_for(lambda: _status(name) not in runs.ACTIVE, 120, "run a to finish")
    r = tab_train.refresh(name, [])
    assert _status(name) == "completed", r.log
    metrics = runs.read_metrics(Path(os.environ["MASKLENS_RUNS"]) / name)
    assert [m["step"] for m in metrics] == [1, 2, 3] and all(math.isfinite(m["loss"]) for m in metrics)
    assert _listed(name)[1:3] == ["completed", "assistant_only"] and _listed(name)[4] == "3/3"
    assert 'data-status="completed"' in r.progress and "step 3/3" in r.progress
    series = tv.figure_series(r.plot)
    key = f"{name} (assistant_only)"
    assert list(series) == [key] and [x for x, _ in series[key]] == [1, 2, 3]
    assert (Path(os.environ["MASKLENS_RUNS"]) / name / tab_train.PROMPTS_FILE).is_file()  # 2 held out


def test_compare_overlays_two_runs_and_samples_them(started):
    a, b = started["a"], started["b"]
    _wait_for(lambda: _status(a) not in runs.ACTIVE and _status(b) not in runs.ACTIVE, 120, "runs a and b")
    assert _status(b) == "completed"
    out = tab_train.on_select(None, [a, b])
    fields = tab_train.Refresh._fields
    plot, compare = out[fields.index("plot")], out[fields.index("compare")]
    series = tv.figure_series(plot)  # the two curves overlaid, three steps each
    assert set(series) == {f"{a} (assistant_only)", f"{b} (full)"} and all(len(v) == 3 for v in series.values())
    assert a in compare and b in compare and "not comparable" in compare
    page = tab_train.on_generate(_session(), None, [a, b], "", 4)
    assert "errbox" not in page and page.count("<tr>") == 1 + 2  # header + the two held-out prompts
    assert "base: " in page and f"{a} (assistant_only)" in page and f"{b} (full)" in page


def test_export_gives_a_script_and_the_launch_command(started):
    name = started["a"]
    export = tab_train.on_export(None, [name], 4)
    assert "SFTTrainer" in export.script and "errbox" not in export.message
    assert export.command == "accelerate launch --num_processes 4 train.py"
    with zipfile.ZipFile(export.file) as z:
        assert set(z.namelist()) == {"train.py", "data.jsonl", "masklens_config.json"}
        assert z.read("train.py").decode() == export.script
    shutil.rmtree(Path(export.file).parent)  # a fresh temporary directory per export
    assert "errbox" in tab_train.on_export(None, ["../etc"], 2).message


def test_timer_sends_the_page_once_then_only_changes(started):
    import gradio as gr

    _wait_for(lambda: all(_status(n) not in runs.ACTIVE for n in started.values()), 120, "every run to end")
    a = started["a"]
    first = tab_train.on_tick(a, [a], None)
    assert "step 3/3" in first[0] and first[-1]["sig"]
    nothing = tuple(gr.skip() for _ in range(len(tab_train.Refresh._fields) + 1))  # the refresh and the message
    assert tab_train.on_tick(a, [a], first[-1])[:-1] == nothing
    assert tab_train.on_tick(a, [a, started["b"]], first[-1])[4] != gr.skip()  # the selection changed: redrawn
    # a run the last tick saw running has ended: Start's / Stop's message ("Stopping …") is cleared
    message = len(tab_train.Refresh._fields)
    assert first[message] == gr.skip()
    sig = first[-1]["sig"]
    running = {**first[-1], "sig": (*sig[:3], tuple((n, "running" if n == a else st, k) for n, st, k in sig[3]))}
    assert tab_train.on_tick(a, [a], running)[message] == ""
    # the watched run is only set by a tick that chose it (a reloaded page), never echoed back over Start's choice
    watched = tab_train.Refresh._fields.index("watched")
    assert first[watched] == gr.skip() and tab_train.on_tick(None, [], None)[watched] in started.values()
