"""Pure helpers of the Train tab: form values -> TrainConfig, run records -> rows, curves, progress and HTML.

No gradio, no torch, no file access here (the tab reads the run directories and passes the records in): every
function is testable without a browser or a model.
Example: loss_frame({"a": [{"step": 1, "loss": 2.5}]}) -> DataFrame [{"step": 1, "loss": 2.5, "run": "a"}]
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any

from core.training.runs import CORRUPTED
from core.training.train import TrainConfig

from .render import error_html, esc  # noqa: F401  (one error box for every tab)

# TrainConfig fields the form shows, in order (the rest keep their defaults).
FORM_FIELDS = ("model", "lora", "max_steps", "learning_rate", "per_device_train_batch_size",
               "gradient_accumulation_steps", "max_length", "packing", "packing_strategy", "seed", "lora_r",
               "lora_alpha", "gradient_checkpointing")
LORA_LEARNING_RATE = 2e-4  # what the form switches to when LoRA is ticked and the rate is still the default
RUNS_HEADERS = ["run", "status", "strategy", "model", "steps", "last loss", "s/step", "started"]
MAX_COMPARE = 4
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v")
LOSS_NOTE = ("Each run's loss is averaged over the tokens its own mask trains: a run that also trains prompt and "
             "template tokens (full) averages over many easy, predictable tokens, so its number is not comparable "
             "with an assistant-only run's. Compare the shapes of the curves, or the generations below.")


# ------------------------------------------------------------------------------------------------------ the form
def field_default(name: str) -> Any:
    return TrainConfig.help()[name]["default"]


def field_help(name: str) -> str:
    return TrainConfig.help()[name].get("help", "")


def field_choices(name: str) -> list:
    return list(TrainConfig.help()[name].get("choices", []))


def _whole(value: Any, name: str) -> int:
    """A gr.Number value (a float, or None when the box is empty) as an int; TrainConfig validates the range."""
    if value is None or value == "":
        return field_default(name)
    try:
        f = float(value)
    except (TypeError, ValueError):
        return value  # TrainConfig names the field and the fix
    return int(f) if f.is_integer() else value


def config_from_form(model: str, lora: bool, max_steps, learning_rate, batch_size, grad_accum, max_length,
                     packing: bool, packing_strategy: str, seed, lora_r, lora_alpha, gradient_checkpointing: bool,
                     *, mask_config: dict | None = None, data_path: str = "") -> TrainConfig:
    """The form's values as a TrainConfig (raises MaskLensError naming the field). max_length 0 or empty = None.
    Example: config_from_form("embedded", False, 20.0, 2e-5, 4, 1, 0, False, "bfd", 42, 16, 32, False).max_length
             -> None"""
    ml = None if max_length in (None, "", 0, 0.0) else _whole(max_length, "max_length")
    lr = field_default("learning_rate") if learning_rate in (None, "") else learning_rate
    return TrainConfig(
        model=(model or "").strip() or field_default("model"), lora=bool(lora), max_steps=_whole(max_steps, "max_steps"),
        learning_rate=float(lr) if isinstance(lr, (int, float)) else lr,
        per_device_train_batch_size=_whole(batch_size, "per_device_train_batch_size"),
        gradient_accumulation_steps=_whole(grad_accum, "gradient_accumulation_steps"), max_length=ml,
        packing=bool(packing), packing_strategy=packing_strategy or field_default("packing_strategy"),
        seed=_whole(seed, "seed"), lora_r=_whole(lora_r, "lora_r"), lora_alpha=_whole(lora_alpha, "lora_alpha"),
        gradient_checkpointing=bool(gradient_checkpointing), mask_config=dict(mask_config or {}), data_path=data_path)


def learning_rate_for(lora: bool, current: float | None) -> float | None:
    """Ticking LoRA moves a still-default rate to LoRA's usual one (and back); a rate the user typed is kept."""
    full = field_default("learning_rate")
    if lora and current in (None, full):
        return LORA_LEARNING_RATE
    if not lora and current == LORA_LEARNING_RATE:
        return full
    return current


def mask_config_dict(cfg: Any) -> dict:
    """A MaskConfig as JSON values (tuples become lists), to record with the run."""
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# ------------------------------------------------------------------------------------------------------ data
def split_held_out(examples: list, n_held_out: int) -> tuple[list, list]:
    """(train, held out): the last n examples are kept out of training for sample prompts; none when that would
    leave fewer than 2 to train on. Example: split_held_out([a, b, c, d], 1) -> ([a, b, c], [d])"""
    n = max(0, int(n_held_out or 0))
    if n == 0 or len(examples) - n < 2:
        return list(examples), []
    return list(examples[:-n]), list(examples[-n:])


def prompt_of(example: Any) -> list[dict] | str | None:
    """The prompt a model should complete for an example: a chat up to (without) its last assistant message, a
    prompt/completion pair's prompt, the first third of a plain text; None for pre-tokenized rows.
    Example: messages [user "Hi", assistant "Hello"] -> [{"role": "user", "content": "Hi"}]"""
    kind = getattr(example, "kind", None)
    if kind == "messages" and example.messages:
        last = max((i for i, m in enumerate(example.messages) if m.get("role") == "assistant"), default=None)
        prompt = example.messages[:last] if last is not None else example.messages
        prompt = [{"role": m["role"], "content": m.get("content") or ""} for m in prompt]
        return prompt if any(m["role"] != "system" for m in prompt) else None
    if kind in ("prompt_completion_messages", "prompt_completion_text"):
        return example.prompt or None
    if kind == "text" and example.text:
        words = example.text.split(" ")
        return " ".join(words[: max(3, len(words) // 3)])
    return None


def parse_prompts(text: str | None) -> list[str]:
    """One prompt per non-empty line of a text box."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def prompt_text(prompt: list[dict] | str) -> str:
    """A prompt as one readable string: the last user message of a chat (with how many came before)."""
    if isinstance(prompt, str):
        return prompt
    if not prompt:
        return ""
    idx = max((i for i, m in enumerate(prompt) if m.get("role") == "user"), default=len(prompt) - 1)
    last = str(prompt[idx].get("content") or "")
    before = sum(1 for m in prompt[:idx] if m.get("role") != "system")
    return last if before == 0 else f"{last}  (after {before} earlier message{'s' if before > 1 else ''})"


# ------------------------------------------------------------------------------------------------------ runs
def fmt_duration(seconds: float | None) -> str:
    """Example: 75 -> '1m 15s'; None -> '–'."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def fmt_loss(loss: float | None) -> str:
    return "–" if loss is None else f"{loss:.4f}"


def run_progress(record: dict, config: dict, metrics: list[dict], now: float | None = None) -> dict[str, Any]:
    """Step, max steps, last loss, seconds per step and ETA of a run from its record, config and metrics.
    s/step leaves out the first step (model warm-up) when there are at least two."""
    max_steps = (record.get("result") or {}).get("max_steps") or config.get("max_steps") or 0
    last = metrics[-1] if metrics else {}
    step = _number(last.get("step")) or 0
    per_step = None
    first = metrics[0] if metrics else {}
    steps = (_number(first.get("step")), step)
    times = (_number(first.get("elapsed_s")), _number(last.get("elapsed_s")))  # a damaged line may lack them
    if len(metrics) >= 2 and None not in steps and None not in times and steps[1] > steps[0]:
        per_step = (times[1] - times[0]) / (steps[1] - steps[0])
    elif step and times[1] is not None:
        per_step = times[1] / step
    eta = None
    if record.get("status") == "running" and per_step is not None and max_steps:
        eta = per_step * (max_steps - step)
    return {"step": step, "max_steps": max_steps, "loss": last.get("loss"), "per_step": per_step, "eta": eta,
            "tokens": last.get("tokens_seen"), "fraction": min(1.0, step / max_steps) if max_steps else 0.0}


def _number(x) -> float | None:
    """A metrics value that is a finite number, else None (damaged or hand-edited metrics.jsonl lines)."""
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def status_of(record: dict) -> str:
    """The status to show: "corrupted" for a damaged run directory (core.runs lists it so; a record read on its own
    carries its damage in "problems"), else the recorded one."""
    return CORRUPTED if record.get("status") == CORRUPTED or record.get("problems") else record.get("status", "?")


def strategy_of(config: dict) -> str:
    mc = config.get("mask_config") or {}
    s = mc.get("strategy", "?")
    if s in ("assistant_only", "last_assistant") and mc.get("eos") not in (None, "every_turn"):
        s += f" eos={mc['eos']}"
    return s


def model_label(model: str | None) -> str:
    """Short model name for tables: the last two path parts of a directory. Example: '/a/b/c' -> 'b/c'."""
    m = str(model or "?")
    parts = [p for p in m.replace("\\", "/").split("/") if p]
    return "/".join(parts[-2:]) if m.startswith("/") and len(parts) > 2 else m


def runs_rows(views: list[dict]) -> list[list]:
    """Rows of the runs table, newest first. Each view: {"record", "config", "metrics"} of one run."""
    rows = []
    for v in reversed(views):
        r, p = v["record"], run_progress(v["record"], v["config"], v["metrics"])
        started = r.get("started_at") or r.get("created_at")
        model = model_label(v["config"].get("model")) + (" (LoRA)" if v["config"].get("lora") else "")
        rows.append([r["name"], status_of(r), strategy_of(v["config"]), model,
                     f"{p['step']}/{p['max_steps']}", fmt_loss(p["loss"]),
                     "–" if p["per_step"] is None else f"{p['per_step']:.2f}",
                     time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "–"])
    return rows


def run_choices(views: list[dict]) -> list[tuple[str, str]]:
    """(label, run name) for the selection dropdown, newest first. Example label: '20240101-1200-ab12 · full · completed'."""
    return [(f"{v['record']['name']} · {strategy_of(v['config'])} · {status_of(v['record'])}",
             v["record"]["name"]) for v in reversed(views)]


def pick_watched(views: list[dict], watched: str | None) -> str | None:
    """The run whose progress the page shows: the one started from this page if it still exists, else the newest
    active run, else the newest run (so a reloaded page finds the run it was following)."""
    names = [v["record"]["name"] for v in views]
    if watched in names:
        return watched
    active = [v["record"]["name"] for v in views if v["record"].get("status") in ("queued", "running")]
    return (active or names or [None])[-1]


def progress_html(view: dict | None, log_tail: str = "") -> str:
    """Status line + progress bar of one run; for a failed run, its error and the last lines of its log."""
    if view is None:
        return '<div class="tr-progress tr-empty">No runs yet: set the options and press Start.</div>'
    r, c = view["record"], view["config"]
    p = run_progress(r, c, view["metrics"])
    status = status_of(r)
    colour = {"running": "#059669", "queued": "#64748b", "completed": "#0f766e", "stopped": "#b45309",
              "failed": "#b91c1c", CORRUPTED: "#7c3aed"}.get(status, "#64748b")
    bits = [f"<b>{esc(r['name'])}</b>", f'<span style="color:{colour};font-weight:600">{esc(status)}</span>',
            f"step {p['step']}/{p['max_steps']}", f"loss {fmt_loss(p['loss'])}"]
    if p["per_step"] is not None:
        bits.append(f"{p['per_step']:.2f} s/step")
    if status == "running":
        bits.append(f"ETA {fmt_duration(p['eta'])}" if p["eta"] is not None else "loading the model…")
    elif r.get("ended_at") and r.get("started_at"):
        bits.append(f"took {fmt_duration(r['ended_at'] - r['started_at'])}")
    bits.append(f"{esc(strategy_of(c))} · {esc(model_label(c.get('model')))}" + (" · LoRA" if c.get("lora") else ""))
    pct = 100 * (p["fraction"] if status != "completed" else 1.0)
    bar = (f'<div class="tr-bar" style="height:6px;background:#e5e7eb;border-radius:3px;margin:4px 0">'
           f'<div style="width:{pct:.1f}%;height:6px;background:{colour};border-radius:3px"></div></div>')
    out = f'<div class="tr-progress" data-status="{esc(status)}">{" · ".join(bits)}{bar}'
    if status == CORRUPTED:
        recorded = r.get("recorded_status") or (r.get("status") if r.get("status") != CORRUPTED else None)
        error = r.get("error") if r.get("status") == CORRUPTED else None
        error = error or (f"corrupted run directory: {'; '.join(r.get('problems') or [])}. Fix: inspect the files; "
                          "delete the directory if the run is not needed.")
        return out + error_html(error + (f" (run.json last said: {recorded})" if recorded else ""),
                                f"Run {r['name']} is corrupted") + "</div>"
    if status == "failed" or (status == "stopped" and r.get("error")):
        out += error_html(r.get("error") or "the run failed", f"Run {r['name']} {status}")
        if status == "failed" and log_tail.strip():
            tail = "\n".join(log_tail.rstrip().splitlines()[-15:])
            out += f'<details open><summary>last lines of log.txt</summary><pre class="tr-log">{esc(tail)}</pre></details>'
    return out + "</div>"


def loss_frame(curves: dict[str, list[dict]]):
    """Loss curves as one long DataFrame (step, loss, run); steps whose loss is null (NaN/inf in training) or whose
    line lacks step or loss (a damaged metrics.jsonl) are left out."""
    import pandas as pd

    rows = [{"step": m["step"], "loss": m["loss"], "run": name} for name, metrics in curves.items() for m in metrics
            if _number(m.get("loss")) is not None and _number(m.get("step")) is not None]
    return pd.DataFrame(rows, columns=["step", "loss", "run"]).astype({"step": "int64", "loss": "float64", "run": "str"})


def loss_figure(curves: dict[str, list[dict]], title: str = "Training loss"):
    """The curves overlaid, as a matplotlib Figure for gr.Plot.

    Not gr.LinePlot: in Gradio 6.31 its colour scale keeps the series of the first value it drew, so a run added
    later is never drawn. A bare Figure (no pyplot) is thread-safe and is not kept in pyplot's registry.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    frame = loss_frame(curves)
    drawn: dict[tuple, str] = {}
    same = []
    for k, (name, part) in enumerate(frame.groupby("run", sort=False)):
        # each run its own line style and marker, so that a curve drawn over another still shows
        ax.plot(part["step"], part["loss"], linestyle=LINE_STYLES[k % len(LINE_STYLES)],
                marker=MARKERS[k % len(MARKERS)] if len(part) <= 30 else None, markersize=4 + 2 * (k % 2),
                markerfacecolor="none" if k % 2 else None, linewidth=1.5, label=name)
        key = (tuple(part["step"]), tuple(part["loss"]))
        if key in drawn:
            same.append(f"{name} = {drawn[key]}")
        drawn.setdefault(key, name)
    if same:
        ax.text(0.01, 0.02, "identical curves: " + "; ".join(same), transform=ax.transAxes, fontsize=7,
                color="#92400e", va="bottom")
    if frame.empty:
        ax.text(0.5, 0.5, "No loss logged yet: start a run, or select runs below.", ha="center", va="center",
                transform=ax.transAxes, color="#64748b")
    else:
        ax.legend(fontsize=8, loc="upper right", frameon=False)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=9)
    ax.set_ylabel("loss (each run's trained tokens)", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    return fig


def figure_series(fig) -> dict[str, list[tuple[float, float]]]:
    """{label: [(step, loss), ...]} of a loss_figure: what it draws, for tests and change detection."""
    return {line.get_label(): list(zip(map(float, line.get_xdata()), map(float, line.get_ydata())))
            for ax in fig.axes for line in ax.get_lines()}


def compare_html(views: list[dict]) -> str:
    """The selected runs side by side: mask, model, steps, first/last/min loss, speed; with LOSS_NOTE."""
    if not views:
        return '<div class="hint">Select runs in the list to overlay their loss curves and compare them.</div>'
    head = "".join(f"<th>{h}</th>" for h in ("run", "strategy", "model", "status", "steps", "first loss",
                                              "last loss", "min loss", "s/step", "tokens seen"))
    rows = []
    for v in views:
        p = run_progress(v["record"], v["config"], v["metrics"])
        losses = [m["loss"] for m in v["metrics"] if _number(m.get("loss")) is not None]
        c = v["config"]
        rows.append("<tr>" + "".join(f"<td>{esc(x)}</td>" for x in (
            v["record"]["name"], strategy_of(c), model_label(c.get("model")) + (" (LoRA)" if c.get("lora") else ""),
            status_of(v["record"]), f"{p['step']}/{p['max_steps']}", fmt_loss(losses[0] if losses else None),
            fmt_loss(losses[-1] if losses else None), fmt_loss(min(losses) if losses else None),
            "–" if p["per_step"] is None else f"{p['per_step']:.2f}", p["tokens"] if p["tokens"] else "–")) + "</tr>")
    strategies = {strategy_of(v["config"]) for v in views}
    note = f'<div class="hint">{esc(LOSS_NOTE)}</div>' if len(strategies) > 1 else ""
    return (f'<table class="tr-table" style="font-size:12.5px;border-collapse:collapse"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>{note}")


def generations_html(prompts: list, columns: list[tuple[str, list[str] | str]]) -> str:
    """Prompts down, models across. columns: (title, one output per prompt, or an error message for the column)."""
    if not prompts:
        return error_html("No prompts: type one per line, or hold out examples when starting a run.", "Nothing to do")
    head = "<th>prompt</th>" + "".join(f"<th>{esc(t)}</th>" for t, _ in columns)
    rows = []
    for i, prompt in enumerate(prompts):
        cells = [f'<td class="tr-prompt">{esc(prompt_text(prompt))}</td>']
        for _, outs in columns:
            if isinstance(outs, str):
                cells.append(f'<td class="tr-gen-err">{esc(outs)}</td>' if i == 0 else "<td></td>")
            else:
                cells.append(f'<td><pre style="white-space:pre-wrap;margin:0">{esc(outs[i])}</pre></td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="tr-gens" style="font-size:12.5px;border-collapse:collapse;width:100%">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


# ------------------------------------------------------------------------------------------------------ names
def run_name(typed: str | None, strategy: str, now: float | None = None) -> str:
    """A run directory's name: what the user typed (spaces and other characters made '-'), else the strategy and
    the time. Example: run_name("", "assistant_only", t) -> "assistant_only-0733-12"; run_name("lr 1e-4", ...) ->
    "lr-1e-4"."""
    typed = re.sub(r"[^A-Za-z0-9._-]+", "-", (typed or "").strip()).strip("-.")[:80]
    if typed:
        return typed
    stamp = time.strftime("%m%d-%H%M%S", time.localtime(now))
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '-', strategy).strip('-')}-{stamp}"


# ------------------------------------------------------------------------------------------------------ estimate
# Until a run of a model has been measured here, the estimate for the embedded model (full fine-tune, CPU) uses this
# project's measurements (benchmarks/RESULTS_train.md, shared notes): steps of 4 examples x ~131 tokens took 4.6 s on
# 2 quiet cores and 23 s while other jobs ran; loading and saving the model took ~10 s.
REFERENCE_STEPS = {("embedded", False): [(4.6, 524), (23.0, 524)]}  # (seconds per step, tokens per step)
REFERENCE_WHERE = "on this project's 2-core CPU machine, quiet and busy (benchmarks/RESULTS_train.md)"
LOAD_NOTE = "plus loading and saving the model (≈10 s for the embedded one)"


def measured_step(metrics: list[dict]) -> tuple[float, float] | None:
    """(seconds per step, tokens per step) of a run, between its first and last logged step (the first step's
    warm-up left out). Example: steps 1..5 at 5 s and 500 tokens each -> (5.0, 500.0)."""
    pts = [(m["step"], m["elapsed_s"], m["tokens_seen"]) for m in metrics
           if all(_number(m.get(k)) is not None for k in ("step", "elapsed_s", "tokens_seen"))]
    if len(pts) < 2 or pts[-1][0] <= pts[0][0] or pts[-1][1] <= pts[0][1] or pts[-1][2] <= pts[0][2]:
        return None
    steps = pts[-1][0] - pts[0][0]
    return (pts[-1][1] - pts[0][1]) / steps, (pts[-1][2] - pts[0][2]) / steps


def steps_of(views: list[dict], model: str, lora: bool, last: int = 5) -> list[tuple[float, float]]:
    """measured_step of the last runs of this model (LoRA or not) under the runs folder."""
    found = [measured_step(v["metrics"]) for v in views
             if v["config"].get("model") == model and bool(v["config"].get("lora")) == bool(lora)]
    return [m for m in found if m][-last:]


def estimate_html(steps: int, batch: int, per_example: float, measured: list[tuple[float, float]], reference: bool,
                  load: tuple[float, int] | None = None) -> str:
    """The time a run will take, before it starts, from steps measured (seconds and tokens per step): a step of more
    tokens takes proportionally longer, a step of fewer is not assumed faster (the optimizer update costs the same
    per step). A range over the measurements, with what it rests on. load: (1-minute load average, cores) now.
    Example: estimate_html(20, 4, 131, [(4.6, 524), (23.0, 524)], True) -> "... 20 steps ≈ 1m 32s – 7m 40s ..."."""
    if not measured:
        return ('<div class="hint estimate">No time estimate for this model yet: its first run here measures it '
                "(s/step and ETA show after the first steps).</div>")
    tokens = batch * per_example
    per_step = sorted(s * max(1.0, tokens / t) for s, t in measured)
    fast, slow = steps * per_step[0], steps * per_step[-1]
    span = fmt_duration(fast) if slow < fast * 1.25 else f"{fmt_duration(fast)} – {fmt_duration(slow)}"
    seen = sorted(s for s, _ in measured)
    rate = f"{seen[0]:.1f}" if seen[-1] < seen[0] * 1.25 else f"{seen[0]:.1f}–{seen[-1]:.1f}"
    ref_tokens = sum(t for _, t in measured) / len(measured)
    where = REFERENCE_WHERE if reference else \
        f"by the last {len(measured)} run{'s' if len(measured) > 1 else ''} of this model here"
    busy = ""
    if load is not None and load[0] > load[1]:
        busy = f" The machine is busy now (load {load[0]:.1f} on {load[1]} cores): expect the slow end or beyond."
    return (f'<div class="hint estimate" data-seconds="{fast:.0f}-{slow:.0f}"><b>Estimate: {steps} steps ≈ {span}</b> '
            f"{LOAD_NOTE}: {rate} s per step of ~{ref_tokens:.0f} tokens, measured {where}; this run's steps hold "
            f"~{tokens:.0f} tokens ({batch} examples × ~{per_example:.0f}). Steps with more tokens take "
            f"proportionally longer; fewer do not make a step much faster (the optimizer update is the same).{busy}"
            "</div>")


def started_html(name: str, n_train: int, n_held: int, n_tokens: int, n_trained: int, strategy: str) -> str:
    held = f", {n_held} held out for sample prompts" if n_held else ""
    pct = f" ({100 * n_trained / n_tokens:.1f}%)" if n_tokens else ""
    return (f'<div class="hint">Started <b>{esc(name)}</b>: {n_train} examples{held}; {n_tokens} tokens, '
            f"{n_trained} trained{pct} under <b>{esc(strategy)}</b>.</div>")
