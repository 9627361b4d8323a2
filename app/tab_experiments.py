"""Experiments: which mask trains the better model on this data? Define, start, watch, stop, resume, read results.

An experiment is a YAML config (mask configs x seeds, one held-out set; see core.training.experiment) run by a
detached driver process in `<runs root>/<name>/`: it survives page reloads and app restarts, its runs are ordinary
run directories (the Train tab lists them as "<name>/<run>"), and a gr.Timer polls its files. Every run and the base
model are scored on the same held-out tokens, so the table compares like with like.

Callbacks are module-level functions (tests call them directly); none raises: problems become the in-page error box.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr

from core.errors import MaskLensError
from core.training import runs
from core.training.experiment import (EXPERIMENT_FILE, NAME_RE, RESULTS_FILE, experiment_state, launch_experiment,
                                      parse_experiment_config, stop_experiment)
from core.training.report import REPORT_MD, REPORT_PNG, collect_results

from .render import error_html, esc
from .session import Session
from .tab_audit import HEAVY

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "assets" / "experiments" / "demo.yaml"
POLL_S = 2.0
SUMMARY_HEADERS = ["rank", "config", "n", "held-out loss", "95% interval", "stop rate", "role leak", "empty",
                   "length ratio"]
RUN_HEADERS = ["run", "seed", "status", "step", "train loss", "held-out loss", "stop rate"]

DEFAULT_YAML = """\
# Only the mask config and the seed vary: same training rows, held-out rows, model and settings.
# Relative paths are relative to the app's folder. Every run and the base model are scored on the
# held-out rows' assistant tokens (rendered once with assistant_only), so their losses compare.
data: {data}
model: {model}
held_out: 2            # the last 2 rows (or a list of row indices): never trained on
seeds: [1, 2]          # 3+ seeds give 95% intervals worth reading
train: {{max_steps: 10, learning_rate: 2.0e-4, lora: true, per_device_train_batch_size: 4}}
eval: {{max_new_tokens: 48}}
configs:
  - {{name: assistant_only, strategy: assistant_only}}
  - {{name: full, strategy: full}}
  - {{name: plw_0.1, strategy: assistant_only, prompt_loss_weight: 0.1}}
"""


# ------------------------------------------------------------------------------------------------------ experiments
def root() -> Path:
    return runs.runs_root_dir()


def list_experiments() -> list[str]:
    """Experiment directories under the runs root, newest first."""
    base = root()
    if not base.is_dir():
        return []
    found = [(experiment_state(d).get("created_at") or 0, d.name) for d in base.iterdir()
             if (d / EXPERIMENT_FILE).is_file() or (d / "experiment_config.json").is_file()]
    return [name for _, name in sorted(found, reverse=True)]


def _exp_dir(name: str | None) -> Path:
    """An experiment directory by name: only names listed under the runs root (nothing else reaches the disk)."""
    if not name or not NAME_RE.match(name) or name not in list_experiments():
        raise MaskLensError(f"no experiment named {name!r} in {root()}.", fix="pick an experiment from the list.")
    return root() / name


def session_data_path(session: Session | None) -> str:
    """Inspect's data file when it is a bundled sample (relative to the app's folder), else the chat sample: an
    upload lives in a temporary file the experiment's driver cannot rely on (write its path in the config)."""
    from .session import SAMPLES_DIR, sample_choices  # noqa: PLC0415

    name = session.data.name if session is not None and session.data is not None else None
    if name in {n for _, n in sample_choices()}:
        return str((SAMPLES_DIR / name).resolve().relative_to(REPO))
    return "assets/samples/chat_multiturn.jsonl"


def default_config(session: Session | None) -> str:
    model = session.tokenizer_name if session is not None and session.tokenizer_name else "embedded"
    return DEFAULT_YAML.format(data=json.dumps(session_data_path(session)), model=json.dumps(model))


def demo_config() -> str:
    """The bundled demo (assets/experiments/demo.yaml) with its data path made relative to the app's folder."""
    text = DEMO.read_text(encoding="utf-8")
    return re.sub(r"^data: *(\S+)", lambda m: f"data: {(DEMO.parent / m.group(1)).relative_to(REPO)}", text,
                  count=1, flags=re.M)


# ------------------------------------------------------------------------------------------------------ formatting
def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def _num(v, digits=3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def summary_rows(results: dict) -> list[list]:
    """The results table: the base model first, then each config by rank (mean over seeds)."""
    rows = []
    base = (results.get("base") or {}).get("eval")
    if base:
        rows.append(["–", "base", 1, _num(base.get("loss"), 4), "", _pct(base.get("stop_rate")),
                     _pct(base.get("role_leak_rate")), _pct(base.get("empty_rate")), _num(base.get("length_ratio"), 2)])
    order = {n: k for k, n in enumerate(results.get("ranking") or [])}
    for s in sorted(results.get("summary") or [], key=lambda s: order.get(s["name"], 1e9)):
        loss = s.get("eval_loss") or {}
        ci = loss.get("ci95")
        interval = f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else (loss.get("note") or "")

        def mean(m, pct=False, s=s):
            v = (s.get(m) or {}).get("mean")
            return _pct(v) if pct else _num(v, 2)

        rows.append([s.get("rank", "–"), s["name"], s["n"], _num(loss.get("mean"), 4), interval,
                     mean("stop_rate", True), mean("role_leak_rate", True), mean("empty_rate", True),
                     mean("length_ratio")])
    return rows


def run_rows(results: dict, exp_dir: Path) -> list[list]:
    out = []
    for r in results.get("runs") or []:
        metrics = runs.read_metrics(r["run_dir"]) if Path(r["run_dir"]).is_dir() else []
        cfg = json.loads((Path(r["run_dir"]) / runs.CONFIG_FILE).read_text()) \
            if (Path(r["run_dir"]) / runs.CONFIG_FILE).is_file() else {}
        step = f"{metrics[-1]['step']}/{cfg.get('max_steps', '?')}" if metrics else "–"
        loss = metrics[-1].get("loss") if metrics else None
        ev = r.get("eval") or {}
        out.append([r["run"], r["seed"], r["status"] or "pending", step, _num(loss), _num(ev.get("loss"), 4),
                    _pct(ev.get("stop_rate"))])
    return out


def status_html(name: str | None, state: dict, results: dict) -> str:
    if not name:
        return '<div class="hint">No experiment yet: write a config and press Start.</div>'
    status = state.get("status", "starting")
    done = sum(1 for r in results.get("runs") or [] if r["status"] == "completed")
    total = len(results.get("runs") or [])
    active = [r["run"] for r in results.get("runs") or [] if r["status"] in runs.ACTIVE]
    text = (f'<div class="exp-status" data-status="{esc(status)}"><b>{esc(name)}</b>: {esc(status)}; '
            f'{done} of {total} runs completed')
    if active:
        text += f"; running {esc(', '.join(active))}"
    if state.get("error"):
        text += f'<div class="errbox">{esc(state["error"])}</div>'
    base = (results.get("base") or {}).get("eval")
    if base:
        text += (f"<br>base model: held-out loss {base['loss']:.4f} on {results.get('eval_tokens')} tokens of "
                 f"{len(results.get('held_out_rows') or [])} held-out rows")
    return text + "</div>"


def pairs_markdown(results: dict) -> str:
    lines = [f"- {p['sentence']}" for p in results.get("pairs") or []]
    notes = [f"- {n}" for n in results.get("notes") or []]
    out = ""
    if lines:
        out += "**Is the difference larger than the seed-to-seed spread?**\n\n" + "\n".join(lines) + "\n\n"
    if notes:
        out += "**Notes**\n\n" + "\n".join(notes) + "\n"
    return out or "_Results appear here as runs complete._"


# ------------------------------------------------------------------------------------------------------ callbacks
class View(NamedTuple):
    status: str
    runs_table: list
    summary: list
    plot: Any
    pairs: str
    files: list | None
    log: str
    signature: Any


def view(name: str | None, last_signature: Any = None) -> View:
    """Everything the tab shows for one experiment; plot/summary/pairs/files are gr.skip() when nothing changed."""
    if not name:
        return View(status_html(None, {}, {}), [], [], None, pairs_markdown({}), None, "", None)
    out = _exp_dir(name)
    state = experiment_state(out)
    results = collect_results(out) if state else {}
    rrows = run_rows(results, out) if state else []
    signature = (state.get("status"), json.dumps(rrows), bool((results.get("base") or {}).get("eval")))
    log_tail = ""
    with contextlib.suppress(OSError):
        log_tail = (out / "log.txt").read_text(errors="replace")[-6000:]
    if signature == last_signature:
        return View(status_html(name, state, results), rrows, gr.skip(), gr.skip(), gr.skip(), gr.skip(), log_tail,
                    signature)
    fig = None
    if results.get("runs") or (results.get("base") or {}).get("eval"):
        from core.training.report import figure  # noqa: PLC0415

        fig = figure(results)
    files = [str(out / f) for f in (RESULTS_FILE, REPORT_MD, REPORT_PNG) if (out / f).is_file()] or None
    return View(status_html(name, state, results), rrows, summary_rows(results), fig, pairs_markdown(results), files,
                log_tail, signature)


def _reap(proc) -> None:
    threading.Thread(target=proc.wait, daemon=True, name="reap-experiment").start()


def on_start(session: Session, name: str, config_text: str):
    """Validate the config (paths under the app's path policy) and start the driver. Returns (message, picker,
    watched)."""
    try:
        name = (name or "").strip() or time.strftime("exp-%Y%m%d-%H%M%S")
        if not NAME_RE.match(name):
            raise MaskLensError(f"{name!r} is not a usable experiment name",
                                fix="use 1-48 letters, digits, '_', '-', '+' or '.'")
        out = root() / name
        if out.exists():
            raise MaskLensError(f"an experiment or run named {name!r} already exists in {root()}",
                                fix="pick another name, or select it in the list to resume it")
        config = parse_experiment_config(config_text or "", base_dir=REPO, source="the config box",
                                         default_name=name, check_paths=True)
        config.name = name
        root().mkdir(parents=True, exist_ok=True)
        _reap(launch_experiment(out, config))
    except Exception as e:  # noqa: BLE001 - shown in the page
        return _err(e, "Could not start the experiment"), gr.skip(), gr.skip()
    n = len(config.configs) * len(config.seeds)
    msg = (f'<div class="hint">Started <b>{esc(name)}</b>: {len(config.configs)} configs x {len(config.seeds)} '
           f"seeds = {n} runs, one at a time (one per GPU when there are several). The base model is scored "
           "first.</div>")
    return msg, gr.update(choices=list_experiments(), value=name), name


def on_stop(name: str | None) -> str:
    try:
        out = _exp_dir(name)
    except Exception as e:  # noqa: BLE001
        return _err(e)
    if experiment_state(out).get("status") != "running":
        return f'<div class="hint">{esc(name)} is not running: nothing to stop.</div>'
    threading.Thread(target=_stop_quietly, args=(out,), daemon=True, name=f"stop-{name}").start()
    return (f'<div class="hint">Stopping {esc(name)}: every active run stops after its current step; completed runs '
            "are kept (Resume carries on).</div>")


def _stop_quietly(out: Path) -> None:
    try:
        stop_experiment(out)
    except Exception:  # noqa: BLE001 - a background thread: the status shows in the page
        log.exception("stopping %s failed", out)


def on_resume(name: str | None) -> str:
    try:
        out = _exp_dir(name)
        status = experiment_state(out).get("status")
        if status == "running":
            return f'<div class="hint">{esc(name)} is running already.</div>'
        if status == "completed":
            return f'<div class="hint">{esc(name)} has completed: nothing to resume.</div>'
        if not (out / EXPERIMENT_FILE).is_file():
            raise MaskLensError(f"{name} never started (see its log)", fix="start a new experiment")
        _reap(launch_experiment(out))
    except Exception as e:  # noqa: BLE001
        return _err(e, "Could not resume")
    return (f'<div class="hint">Resuming {esc(name)}: completed runs are kept, the others start again.</div>')


def on_export(config_text: str, num_processes=None):
    """The config box as scripts for a GPU machine (core.training.export): run_all.sh with one `accelerate launch`
    per run, each config's train_<config>.py and pre-tokenized data, eval_set.json; zipped for download."""
    import tempfile  # noqa: PLC0415
    import zipfile  # noqa: PLC0415

    from core.training.export import export_experiment  # noqa: PLC0415

    try:
        config = parse_experiment_config(config_text or "", base_dir=REPO, source="the config box",
                                         default_name="experiment", check_paths=True)
        work = Path(tempfile.mkdtemp(prefix="masklens-experiment-"))  # gradio serves files from the temp folder
        n = int(num_processes) if num_processes and int(num_processes) > 1 else None
        run_all = export_experiment(config, work / config.name, num_processes=n)
        out = work / f"{config.name}-accelerate.zip"
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(run_all.parent.iterdir()):
                z.write(f, f"{config.name}/{f.name}")
    except Exception as e:  # noqa: BLE001
        return None, _err(e, "Could not export")
    runs_n = len(config.configs) * len(config.seeds)
    return str(out), (f'<div class="hint">{runs_n} runs as <code>run_all.sh</code> (one <code>accelerate launch</code> '
                      "each: several GPUs or nodes through <code>accelerate config</code>), each config's "
                      "<code>train_&lt;config&gt;.py</code> and data, and <code>eval_set.json</code> to score every "
                      "result on the same tokens with <code>python -m core evaluate --eval-set</code>.</div>")


def on_tick(name: str | None, signature: Any):
    try:
        return tuple(view(name, signature))
    except Exception:  # noqa: BLE001 - the next tick tries again
        log.exception("experiment refresh failed")
        return tuple(gr.skip() for _ in View._fields)


def on_pick(name: str | None):
    try:
        return tuple(view(name, None))
    except Exception as e:  # noqa: BLE001
        return (_err(e), [], [], None, "", None, "", None)


def _err(e: Exception, title: str = "Error") -> str:
    if not isinstance(e, MaskLensError):
        log.exception("experiments tab callback failed")
        return error_html(f"{type(e).__name__}: {e}", "Unexpected error")
    return error_html(str(e), title)


# ------------------------------------------------------------------------------------------------------ layout
def build_experiments_tab(session: gr.State) -> dict:
    """The Experiments tab's components and events (call inside a gr.Tab)."""
    watched = gr.State(None)
    signature = gr.State(None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=360, elem_classes="controls"):
            name = gr.Textbox(label="Experiment name", placeholder="empty: exp-<date>-<time>", elem_id="exp-name",
                              info=f"A new folder under {root()}.")
            config = gr.Code(value=default_config(None), language="yaml", label="Config (YAML or JSON)", lines=16,
                             max_lines=40, elem_id="exp-config")
            with gr.Row():
                fill = gr.Button("Use Inspect's data", size="sm", elem_id="exp-fill")
                demo = gr.Button("Load the demo", size="sm", elem_id="exp-demo")
            with gr.Row():
                start = gr.Button("Start", variant="primary", elem_id="exp-start")
                stop = gr.Button("Stop", variant="stop", elem_id="exp-stop")
                resume = gr.Button("Resume", elem_id="exp-resume")
            message = gr.HTML(elem_id="exp-message")
            with gr.Accordion("Export as accelerate scripts (GPU machines, several GPUs or nodes)", open=False):
                with gr.Row():
                    gpus = gr.Number(value=1, label="processes per run", precision=0, minimum=1, min_width=100)
                    export = gr.Button("Export", elem_id="exp-export")
                export_file = gr.File(label="run_all.sh + scripts + data", interactive=False, elem_id="exp-export-file")
        with gr.Column(scale=3, min_width=480):
            pick = gr.Dropdown(choices=list_experiments(), value=None, label="Experiment", elem_id="exp-pick",
                               info="Experiments in the runs folder; their runs are in the Train tab too.")
            status = gr.HTML(status_html(None, {}, {}), elem_id="exp-status")
            summary = gr.Dataframe(headers=SUMMARY_HEADERS, value=[], interactive=False, elem_id="exp-summary",
                                   label="Results: mean over seeds (held-out loss in nats, lower is better)")
            pairs = gr.Markdown(pairs_markdown({}), elem_id="exp-pairs")
            plot = gr.Plot(show_label=False, elem_id="exp-plot")
            table = gr.Dataframe(headers=RUN_HEADERS, value=[], interactive=False, label="Runs", max_height=260,
                                 elem_id="exp-runs")
            files = gr.File(label="results.json, report.md, report.png", interactive=False, file_count="multiple",
                            elem_id="exp-files")
            with gr.Accordion("Driver log", open=False):
                log_box = gr.Code(language=None, lines=10, max_lines=20, show_label=False, elem_id="exp-log")
    timer = gr.Timer(POLL_S)
    outputs = [status, table, summary, plot, pairs, files, log_box, signature]
    fill.click(default_config, [session], [config])
    demo.click(demo_config, [], [config])
    start.click(on_start, [session, name, config], [message, pick, watched], **HEAVY).then(
        on_pick, [watched], outputs)
    stop.click(on_stop, [watched], [message])
    export.click(on_export, [config, gpus], [export_file, message], **HEAVY)
    resume.click(on_resume, [watched], [message])
    pick.input(lambda n: n, [pick], [watched]).then(on_pick, [watched], outputs)
    timer.tick(on_tick, [watched, signature], outputs, show_progress="hidden")
    refresh = {"fn": lambda: gr.update(choices=list_experiments()), "inputs": [], "outputs": [pick]}
    return {"start": start, "stop": stop, "pick": pick, "config": config, "timer": timer, "refresh": refresh}
