"""Train: a short TRL SFT run on exactly the labels the Inspect tab shows, live progress, runs compared, exported.

Start renders the session's examples under its masking settings and hands them to `core.runs` (a child process: the
page never blocks); a gr.Timer polls the run directories. Everything a run is lives in its directory under
`core.runs.runs_root_dir()`, so the runs list survives reloads and app restarts, and a killed run shows as failed.

Callbacks are module-level functions (tests call them directly) that read run directories, call core and format with
app.train_view; none raises: problems become the in-page error box.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import NamedTuple

import gradio as gr

from core.training import runs
from core.masking.engine import render_examples
from core.errors import MaskLensError
from core.models import is_embedded, load_tokenizer

from . import train_view as tv
from .session import Session
from .tab_audit import HEAVY

log = logging.getLogger(__name__)

PROMPTS_FILE = "prompts.json"  # the app's held-out prompts, beside the run's own files
POLL_S = 2.0
STOP_GRACE_S = 30.0
MAX_PROMPTS = 5
LOG_CHARS = 6000


# ------------------------------------------------------------------------------------------------------ run dirs
def _config_of(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / runs.CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return {}


def run_view(run_dir: str | Path) -> dict:
    """{"record", "config", "metrics"} of one run (the record reconciled: a dead process reads as failed)."""
    run_dir = Path(run_dir)
    return {"record": runs.read_run(run_dir), "config": _config_of(run_dir), "metrics": runs.read_metrics(run_dir)}


def run_views() -> list[dict]:
    """Every run under the runs root, oldest first."""
    return [{"record": r, "config": _config_of(Path(r["run_dir"])), "metrics": runs.read_metrics(r["run_dir"])}
            for r in runs.list_runs()]


def _run_dir(name: str) -> Path:
    """A run directory by name ("run", or "experiment/run" for an experiment's); only names listed under the runs
    root (nothing from the page reaches the disk: core.training.runs.find_run)."""
    path = runs.find_run(name) if isinstance(name, str) else None
    if path is None:
        raise MaskLensError(f"no run named {name!r} in {runs.runs_root_dir()}.", fix="pick a run from the list.")
    return path


def _reap(handle: runs.RunHandle) -> None:
    """Wait for the child in a thread so it never lingers as a zombie of the server."""
    if handle.process is not None:
        threading.Thread(target=handle.process.wait, daemon=True, name=f"reap-{handle.run_dir.name}").start()


def _err(e: Exception, title: str = "Error") -> str:
    if not isinstance(e, MaskLensError):
        log.exception("train tab callback failed")
        return tv.error_html(f"{type(e).__name__}: {e}", "Unexpected error")
    return tv.error_html(str(e), title)


# ------------------------------------------------------------------------------------------------------ refresh
class Refresh(NamedTuple):
    """What the timer (and every action) updates, in the order of the tab's refresh outputs."""

    progress: str
    plot: object  # matplotlib Figure (train_view.loss_figure)
    table: list
    choices: list
    compare: str
    log: str
    watched: str | None


def refresh(watched: str | None, selected: list[str] | None, views: list[dict] | None = None) -> Refresh:
    """Progress of the watched run, the loss curves of the selected runs (else the watched one), the runs table
    and the comparison of the selected runs."""
    views = run_views() if views is None else views
    by_name = {v["record"]["name"]: v for v in views}
    watched = tv.pick_watched(views, watched)
    selected = [s for s in (selected or []) if s in by_name]
    shown = selected or ([watched] if watched else [])  # the live run is in the selection once started here
    curves = {f"{n} ({tv.strategy_of(by_name[n]['config'])})": by_name[n]["metrics"] for n in shown}
    log_tail = runs.read_log(by_name[watched]["record"]["run_dir"], LOG_CHARS) if watched else ""
    return Refresh(tv.progress_html(by_name.get(watched), log_tail), tv.loss_figure(curves), tv.runs_rows(views),
                   tv.run_choices(views), tv.compare_html([by_name[n] for n in selected]), log_tail, watched)


def _signature(views: list[dict], watched: str | None, selected: list[str] | None) -> tuple:
    """What the page shows depends only on this: runs, statuses, logged steps, the watched run's log size."""
    watched = tv.pick_watched(views, watched)
    log_size = 0
    for v in views:
        if v["record"]["name"] == watched:
            try:
                log_size = (Path(v["record"]["run_dir"]) / runs.LOG_FILE).stat().st_size
            except OSError:
                pass
    return (watched, tuple(selected or ()), log_size,
            tuple((v["record"]["name"], v["record"].get("status"), len(v["metrics"])) for v in views))


def on_tick(watched, selected, last: dict | None):
    """gr.Timer: send only what changed, and nothing when nothing did (no redraw, no dropdown closed under the
    user's pointer); the figure and the HTML are built only then. Returns (*Refresh, the Start/Stop message: cleared
    once a run that was active has ended, tick state)."""
    last = last or {}
    try:
        views = run_views()
        sig = _signature(views, watched, selected)
        if last.get("sig") == sig:
            return (*(gr.skip() for _ in Refresh._fields), gr.skip(), last)
        r = refresh(watched, selected, views)
    except Exception:  # noqa: BLE001 - a half-written directory on one tick: try again on the next
        log.exception("refresh failed")
        return (*(gr.skip() for _ in Refresh._fields), gr.skip(), last)
    dropdown = gr.skip() if last.get("choices") == r.choices else gr.update(choices=r.choices)
    # Set `watched` only when this tick chose it (after a reload): a tick still running when Start returns must not
    # put back the run it was called with.
    chosen = gr.skip() if r.watched == watched else r.watched
    # A run that was active has ended: Start's or Stop's message ("Stopping …") is stale, the progress line says it.
    was_active = {name for name, status, _ in (last.get("sig") or (None, (), 0, ()))[3] if status in runs.ACTIVE}
    ended = any(name in was_active and status not in runs.ACTIVE for name, status, _ in sig[3])
    return (*r._replace(choices=dropdown, watched=chosen), "" if ended else gr.skip(),
            {"sig": sig, "choices": r.choices})


def _outputs(watched: str | None, selected: list[str]) -> tuple:
    """A refresh for an action's outputs: the dropdown gets the new choices and the selection."""
    try:
        r = refresh(watched, selected)
    except Exception:  # noqa: BLE001 - the action's own message is what matters; the next tick redraws
        log.exception("refresh failed")
        return (*(gr.skip() for _ in Refresh._fields), None)
    return (*r._replace(choices=gr.update(choices=r.choices, value=selected)), None)


# ------------------------------------------------------------------------------------------------------ start
def check_model_tokenizer(model: str, tokenizer, tokenizer_name: str):
    """The examples are token ids of the session's tokenizer: the model must use the same vocabulary, or its
    embeddings would read other tokens. Raises MaskLensError (bad path, unknown hub id, other vocabulary)."""
    model_tok = load_tokenizer(None if is_embedded(model) else model)
    if model_tok is tokenizer or model_tok.get_vocab() == tokenizer.get_vocab():
        return
    raise MaskLensError(
        f"the model {model!r} uses another tokenizer than the one the examples were tokenized with "
        f"({tokenizer_name!r}): its token ids would mean other tokens.", field="model",
        fix=f"set the Inspect tab's tokenizer to {model!r}, or train a model that uses {tokenizer_name!r}.")


def on_start(session: Session, selected: list[str] | None, model, lora, max_steps, learning_rate, batch_size,
             grad_accum, max_length, packing, packing_strategy, seed, lora_r, lora_alpha, gradient_checkpointing,
             n_held_out, name: str = ""):
    """Render the session's examples under its masking settings and start a run named `name` (default: strategy and
    time, train_view.run_name). Returns (message, *Refresh, tick state) with the new run watched and added to the
    selection."""
    selected = list(selected or [])
    try:
        if session.data is None or not session.data.examples:
            raise MaskLensError("no examples to train on.", fix="choose a sample, upload a file or paste an example "
                                                                "in the Inspect tab.")
        mask = session.config()
        tokenizer = session.tokenizer()
        train, held = tv.split_held_out(session.data.examples, n_held_out)
        config = tv.config_from_form(model, lora, max_steps, learning_rate, batch_size, grad_accum, max_length,
                                     packing, packing_strategy, seed, lora_r, lora_alpha, gradient_checkpointing,
                                     mask_config=tv.mask_config_dict(mask), data_path=session.data.name)
        check_model_tokenizer(config.model, tokenizer, session.tokenizer_name)
        session.check_rows(train)  # an edited template renders every row in the sandbox first (bounded)
        rendered = render_examples(train, tokenizer, mask, image_root=session.data.root)
        data = runs.training_rows(rendered)  # + loss_weights when the mask has fractional weights
        run_dir = runs.create_run(data, config, name=free_name(tv.run_name(name, mask.strategy), bool(name)))
        prompts = [p for p in (tv.prompt_of(e) for e in held) if p]
        if prompts:
            runs.atomic_write_json(run_dir / PROMPTS_FILE, prompts)
        handle = runs.launch(run_dir)
        _reap(handle)
    except Exception as e:  # noqa: BLE001 - shown in the page
        return (_err(e, "Could not start the run"), *_outputs(None, selected))
    name = run_dir.name
    selected = [s for s in selected if s != name] + [name]
    message = tv.started_html(name, len(data), len(held), sum(r.n_tokens for r in rendered),
                              sum(r.n_trained for r in rendered), tv.strategy_of(config.to_dict()))
    return (message, *_outputs(name, selected))


def free_name(name: str, typed: bool) -> str:
    """A default name made unique ("-2", "-3"...: two runs started within a second); a typed one that is taken is
    an error naming the box."""
    base = runs.runs_root_dir()
    if not (base / name).exists():
        return name
    if typed:
        raise MaskLensError(f"a run named {name!r} already exists.", field="run name",
                            fix="type another Run name, or leave it empty for strategy + time.")
    k = 2
    while (base / f"{name}-{k}").exists():
        k += 1
    return f"{name}-{k}"


def tokens_per_example(session: Session, max_length, n_held_out=0, limit: int = 200) -> float:
    """Mean tokens per example of the examples a run trains on (the session's data less the held-out ones, as Start
    splits them; the first `limit`) under the session's settings, cut at the form's max_length as training cuts them."""
    examples = tv.split_held_out(session.data.examples, n_held_out)[0][:limit] if session.data is not None else []
    if not examples:
        return 0.0
    rendered = render_examples(examples, session.tokenizer(), session.config(), errors="finding",
                               image_root=session.data.root)
    cap = int(max_length or 0) or None
    lengths = [min(r.n_tokens, cap) if cap else r.n_tokens for r in rendered if r.n_tokens]
    return sum(lengths) / len(lengths) if lengths else 0.0


def on_estimate(session: Session, model, lora, max_steps, batch_size, grad_accum, max_length, packing,
                n_held_out=0) -> str:
    """How long Start would take (train_view.estimate_html): tokens per step from the session's data, seconds per
    step from this model's last runs here, else the project's reference measurements of the embedded model."""
    import os  # noqa: PLC0415

    try:
        steps = int(max_steps or 0)
        batch = int(batch_size or 1) * int(grad_accum or 1)
        per_example = tokens_per_example(session, max_length, n_held_out)
        if steps < 1 or not per_example:
            return ""
        per_example = int(max_length) if packing and max_length else per_example  # packs are filled to max_length
        key = (model or "").strip() or tv.field_default("model")
        if not is_embedded(key) and Path(key).expanduser().is_dir():
            key = str(Path(key).expanduser().resolve())  # as core.runs records it
        key = "embedded" if is_embedded(key) else key
        measured = tv.steps_of(run_views(), key, bool(lora))
        reference = not measured
        if reference:
            measured = tv.REFERENCE_STEPS.get((key, bool(lora)), [])
        return tv.estimate_html(steps, batch, per_example, measured, reference,
                                (os.getloadavg()[0], os.cpu_count() or 1))
    except Exception:  # noqa: BLE001 - a bad form value: Start names it; the estimate just stays away
        log.debug("no estimate", exc_info=True)
        return ""


# ------------------------------------------------------------------------------------------------------ actions
def on_select(watched, selected):
    """The selection changed: redraw the curves and the comparison (not the dropdown itself)."""
    try:
        r = refresh(watched, selected)
    except Exception:  # noqa: BLE001 - the next tick tries again
        log.exception("refresh failed")
        return (*(gr.skip() for _ in Refresh._fields), None)
    return (*r._replace(choices=gr.skip()), None)


def _targets(watched: str | None, selected: list[str] | None, statuses: tuple[str, ...]) -> list[str]:
    """The selected runs in these statuses; if none is, the watched run when it is."""

    def is_in(name: str) -> bool:
        try:
            return runs.read_run(_run_dir(name))["status"] in statuses
        except (MaskLensError, OSError, ValueError):
            return False

    out = [n for n in (selected or []) if n and is_in(n)]
    return out or ([watched] if watched and is_in(watched) else [])


_stopping: dict[str, threading.Thread] = {}


def on_stop(watched: str | None, selected: list[str] | None, grace_s: float = STOP_GRACE_S) -> str:
    """Stop the selected running runs (else the watched one) in background threads: stop_run waits up to 2 x grace_s
    for a clean stop after the current step, and the page must not wait with it."""
    try:
        targets = _targets(watched, selected, runs.ACTIVE)
    except Exception as e:  # noqa: BLE001
        return _err(e)
    if not targets:
        return '<div class="hint">No running run selected: nothing to stop.</div>'
    for name in targets:
        if name in _stopping and _stopping[name].is_alive():
            continue
        t = threading.Thread(target=_stop_quietly, args=(_run_dir(name), grace_s), daemon=True, name=f"stop-{name}")
        _stopping[name] = t
        t.start()
    return (f'<div class="hint">Stopping {tv.esc(", ".join(targets))}: each stops after its current step and saves '
            "its weights (killed if it has not stopped within a minute).</div>")


def _stop_quietly(run_dir: Path, grace_s: float) -> None:
    try:
        runs.stop_run(run_dir, grace_s=grace_s)
    except Exception:  # noqa: BLE001 - a background thread: the status shows in the list
        log.exception("stopping %s failed", run_dir)


def held_out_prompts(session: Session | None, names: list[str]) -> list:
    """The prompts of the first of these runs that held examples out, else prompts from the session's last examples
    (not held out: they were trained on)."""
    for name in names:
        try:
            path = _run_dir(name) / PROMPTS_FILE
            if path.is_file():
                return json.loads(path.read_text())[:MAX_PROMPTS]
        except (MaskLensError, OSError, ValueError):
            continue
    if session is not None and session.data is not None:
        prompts = [p for p in (tv.prompt_of(e) for e in reversed(session.data.examples)) if p]
        return prompts[:3]
    return []


def on_generate(session: Session, watched: str | None, selected: list[str] | None, prompts_text: str,
                max_new_tokens) -> str:
    """Greedy completions of a few prompts by each selected run's final model, beside its base model's."""
    from core.training.train import sample_generations  # noqa: PLC0415 (torch: only when asked)

    names = list(selected or []) or ([watched] if watched else [])
    if not names:
        return tv.error_html("Select one or more runs in the list first.", "Nothing to compare")
    names = names[: tv.MAX_COMPARE]
    try:
        views = [run_view(_run_dir(n)) for n in names]
        prompts = tv.parse_prompts(prompts_text)[:MAX_PROMPTS] or held_out_prompts(session, names)
    except Exception as e:  # noqa: BLE001
        return _err(e)
    if not prompts:
        return tv.generations_html([], [])
    n_new = max(1, min(256, int(max_new_tokens or 48)))
    columns: list[tuple[str, list[str] | str]] = []
    for model in dict.fromkeys(v["config"].get("model") for v in views):
        try:
            columns.append((f"base: {tv.model_label(model)}", sample_generations(model, prompts, max_new_tokens=n_new)))
        except Exception as e:  # noqa: BLE001 - one column's failure is shown in that column
            columns.append((f"base: {tv.model_label(model)}", _short(e)))
    for name, v in zip(names, views):
        title = f"{name} ({tv.strategy_of(v['config'])})"
        final = v["record"].get("final_dir")
        if not final or not Path(final).is_dir():
            columns.append((title, f"no final model: the run is {v['record'].get('status')}."))
            continue
        try:
            columns.append((title, sample_generations(final, prompts, max_new_tokens=n_new)))
        except Exception as e:  # noqa: BLE001
            columns.append((title, _short(e)))
    return tv.generations_html(prompts, columns)


def _short(e: Exception) -> str:
    if not isinstance(e, MaskLensError):
        log.exception("generation failed")
    return str(e) if isinstance(e, MaskLensError) else f"{type(e).__name__}: {e}"


class Export(NamedTuple):
    script: str
    command: str
    file: str | None
    message: str


def on_export(watched: str | None, selected: list[str] | None, num_processes=2) -> Export:
    """The first selected run (else the watched one) as a standalone train.py + its data, zipped for download,
    and the `accelerate launch` command that runs it on several GPUs."""
    names = list(selected or []) or ([watched] if watched else [])
    if not names:
        return Export("", "", None, tv.error_html("Select a run in the list first.", "Nothing to export"))
    try:
        run_dir = _run_dir(names[0])
        script = runs.export_script(run_dir)
        command = runs.launch_command(max(1, int(num_processes or 1)))
        # gradio serves files from the temp directory; the runs root may be anywhere
        out = Path(tempfile.mkdtemp(prefix="masklens-export-")) / f"masklens-{run_dir.name}.zip"
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("train.py", script)
            z.write(run_dir / runs.DATA_FILE, "data.jsonl")
            z.write(run_dir / runs.CONFIG_FILE, "masklens_config.json")
    except Exception as e:  # noqa: BLE001
        return Export("", "", None, _err(e, "Could not export"))
    message = (f'<div class="hint">Run <b>{tv.esc(run_dir.name)}</b> as <code>train.py</code> + <code>data.jsonl</code>: '
               "<code>python train.py</code> on one device, or the command below on several GPUs.</div>")
    return Export(script, command, str(out), message)


# ------------------------------------------------------------------------------------------------------ layout
def build_train_tab(session: gr.State) -> dict:
    """The Train tab's components and events (call inside a gr.Tab). Returns a few handles for other tabs/tests."""
    h = tv.field_help
    d = tv.field_default
    watched = gr.State(None)
    tick_state = gr.State(None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=280, elem_classes="controls"):
            model = gr.Textbox(value=d("model"), label="Model", info=h("model"), elem_id="train-model",
                               placeholder="embedded | org/model | /path/to/checkpoint")
            lora = gr.Checkbox(value=d("lora"), label="LoRA (else full fine-tune)", info=h("lora"), elem_id="train-lora")
            with gr.Row():
                steps = gr.Number(value=d("max_steps"), label="Steps", info=h("max_steps"), precision=0, minimum=1,
                                  min_width=100, elem_id="train-steps")
                lr = gr.Number(value=d("learning_rate"), label="Learning rate", info=h("learning_rate"), minimum=0,
                               min_width=100, elem_id="train-lr")
            with gr.Row():
                batch = gr.Number(value=d("per_device_train_batch_size"), label="Batch size", precision=0, minimum=1,
                                  info=h("per_device_train_batch_size"), min_width=100)
                accum = gr.Number(value=d("gradient_accumulation_steps"), label="Grad accumulation", precision=0,
                                  minimum=1, info=h("gradient_accumulation_steps"), min_width=100)
            with gr.Row():
                max_len = gr.Number(value=d("max_length") or 0, label="max_length (0 = none)", precision=0, minimum=0,
                                    info=h("max_length"), min_width=100)
                held = gr.Number(value=2, label="Held-out examples", precision=0, minimum=0, min_width=100,
                                 info="The last N examples are not trained on: their prompts are the sample prompts "
                                      "for comparing generations.")
            packing = gr.Checkbox(value=d("packing"), label="Packing", info=h("packing"))
            with gr.Accordion("More options", open=False):
                packing_strategy = gr.Dropdown(choices=tv.field_choices("packing_strategy"),
                                               value=d("packing_strategy"), label="Packing strategy",
                                               info=h("packing_strategy"))
                seed = gr.Number(value=d("seed"), label="Seed", precision=0, info=h("seed"))
                with gr.Row():
                    lora_r = gr.Number(value=d("lora_r"), label="LoRA r", precision=0, minimum=1, info=h("lora_r"))
                    lora_alpha = gr.Number(value=d("lora_alpha"), label="LoRA alpha", precision=0, minimum=1,
                                           info=h("lora_alpha"))
                ckpt = gr.Checkbox(value=d("gradient_checkpointing"), label="Gradient checkpointing",
                                   info=h("gradient_checkpointing"))
            gr.HTML('<div class="hint">Trains on the Inspect tab\'s data, tokenizer and masking settings: exactly the '
                    "labels it shows.</div>")
            name = gr.Textbox(value="", label="Run name", elem_id="train-name", max_lines=1,
                              placeholder="empty: strategy + time, e.g. assistant_only-0107-093012")
            estimate = gr.HTML(elem_id="train-estimate")
            with gr.Row():
                start = gr.Button("Start", variant="primary", elem_id="train-start")
                stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
            message = gr.HTML(elem_id="train-message")
        with gr.Column(scale=3, min_width=420):
            progress = gr.HTML(tv.progress_html(None), elem_id="train-progress")
            plot = gr.Plot(tv.loss_figure({}), show_label=False, elem_id="train-plot")
            selected = gr.Dropdown(choices=[], value=[], multiselect=True, label="Selected runs",
                                   info="Overlay their curves, compare, sample, export or stop them.",
                                   elem_id="train-selected")
            compare = gr.HTML(elem_id="train-compare")
            table = gr.Dataframe(headers=tv.RUNS_HEADERS, value=[], interactive=False, label="Runs", max_height=260,
                                 elem_id="train-runs")
            with gr.Accordion("Log of the watched run", open=False):
                log_box = gr.Code(language=None, lines=10, max_lines=20, show_label=False, elem_id="train-log")
    with gr.Accordion("Sample generations: selected runs vs their base model", open=False):
        with gr.Row():
            prompts = gr.Textbox(label="Prompts (one per line)", lines=3, scale=4,
                                 placeholder="empty: the prompts of the examples the run held out")
            max_new = gr.Slider(8, 256, value=48, step=8, label="Max new tokens", scale=1)
            generate = gr.Button("Generate", scale=0, min_width=110, elem_id="train-generate")
        generations = gr.HTML(elem_id="train-generations")
    with gr.Accordion("Export a run as a standalone script", open=False):
        with gr.Row():
            gpus = gr.Number(value=2, label="GPUs", precision=0, minimum=1, scale=0, min_width=90)
            export = gr.Button("Export the first selected run", scale=0, min_width=220, elem_id="train-export")
            command = gr.Textbox(label="accelerate launch command", interactive=False, scale=3,
                                 buttons=["copy"], elem_id="train-command")
            download = gr.File(label="train.py + data.jsonl", interactive=False, scale=2, elem_id="train-download")
        export_msg = gr.HTML()
        script = gr.Code(language="python", label="train.py", lines=12, max_lines=30, elem_id="train-script")

    timer = gr.Timer(POLL_S)
    refresh_outputs = [progress, plot, table, selected, compare, log_box, watched, tick_state]
    form = [model, lora, steps, lr, batch, accum, max_len, packing, packing_strategy, seed, lora_r, lora_alpha, ckpt,
            held]
    start.click(on_start, [session, selected, *form, name], [message, *refresh_outputs], **HEAVY)
    stop.click(on_stop, [watched, selected], [message])
    timer.tick(on_tick, [watched, selected, tick_state], [progress, plot, table, selected, compare, log_box, watched,
                                                          message, tick_state], show_progress="hidden")
    estimate_args = dict(fn=on_estimate, inputs=[session, model, lora, steps, batch, accum, max_len, packing, held],
                         outputs=[estimate], show_progress="hidden")
    model.submit(**estimate_args)
    model.blur(**estimate_args)
    for c in (steps, batch, accum, max_len, lora, packing, held):
        c.change(**estimate_args)
    selected.input(on_select, [watched, selected], refresh_outputs, show_progress="hidden")
    lora.input(tv.learning_rate_for, [lora, lr], [lr])
    generate.click(on_generate, [session, watched, selected, prompts, max_new], [generations], **HEAVY)
    export.click(lambda w, s, n: tuple(on_export(w, s, n)), [watched, selected, gpus],
                 [script, command, download, export_msg])
    return {"start": start, "stop": stop, "timer": timer, "selected": selected, "progress": progress,
            "estimate": estimate_args}
