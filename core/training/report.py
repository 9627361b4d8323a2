"""An experiment's results you can trust: results.json (scripts read it), report.md and report.png (paste into a PR).

Per mask config: the mean over seeds of each held-out metric and its 95% t-interval, cut to the metric's range (a
rate's to [0, 1], a loss's to >= 0; with one seed: no interval, said so), a ranking by held-out loss, and one plain
sentence per pair of configs: is the difference larger than the seed-to-seed spread? The pair test is paired by
seed (every config ran with the same seeds, rows and model): the 95% t-interval of the per-seed differences; when it
excludes 0 the difference is larger than the seed-to-seed spread, otherwise it is within it.

results.json (the contract)::

    {"held_out_rows": [int], "eval_tokens": int,
     "base": {"eval": {"loss": float, "stop_rate": float, ...}},
     "runs": [{"name": str, "seed": int, "status": "completed" | ..., "eval": {"loss": float, "tokens": int, ...}}],
     "summary": [{"name": str, "n": int, "eval_loss": {"mean": float, "ci95": [low, high] | null, ...}, ...}],
     "ranking": [str], "pairs": [{"a": str, "b": str, "diff": float, "sentence": str, ...}]}

Every run's eval.tokens equals eval_tokens (the same held-out tokens for everyone); `check_results` asserts it.

Example: summarize([1.0, 1.2, 1.1]) -> {"mean": 1.1, "sd": 0.1, "n": 3, "ci95": [0.85, 1.35]}
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from . import runs
from .train import EVAL_CURVE_FILE, EVAL_FILE

__all__ = ["check_results", "collect_results", "compare_pair", "summarize", "t_quantile", "write_report",
           "write_results_and_report"]

RESULTS_FILE = "results.json"
REPORT_MD = "report.md"
REPORT_PNG = "report.png"
METRICS = ("eval_loss", "perplexity", "stop_rate", "role_leak_rate", "empty_rate", "length_ratio",
           "think_open_rate", "think_close_rate")
# the eval.json key of each summary metric
_SOURCE = {"eval_loss": "loss"}
LOWER_IS_BETTER = {"eval_loss": True, "perplexity": True, "stop_rate": False, "role_leak_rate": True,
                   "empty_rate": True}

# Two-sided 95% Student t quantiles t(0.975, df) for df = 1..30 (scipy is not a dependency); beyond 30, interpolated
# towards the normal 1.960 in 1/df (exact to 3 decimals at 40, 60, 120).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(df: int) -> float:
    """t(0.975, df). Example: t_quantile(2) -> 4.303"""
    if df < 1:
        raise ValueError("a t-interval needs at least 2 values (df >= 1)")
    if df <= 30:
        return _T975[df - 1]
    return 1.960 + (2.042 - 1.960) * 30 / df


# The range each metric lives in: a t-interval is cut to it (a rate's interval never leaves [0, 1]).
BOUNDS = {"eval_loss": (0.0, None), "perplexity": (1.0, None), "length_ratio": (0.0, None),
          "stop_rate": (0.0, 1.0), "role_leak_rate": (0.0, 1.0), "empty_rate": (0.0, 1.0),
          "think_open_rate": (0.0, 1.0), "think_close_rate": (0.0, 1.0)}


def summarize(values: list[float], bounds: tuple[float | None, float | None] = (None, None)) -> dict[str, Any]:
    """Mean, sample SD and 95% t-interval of the values (None values skipped), the interval cut to `bounds`. With
    one value: no interval."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return {"mean": None, "sd": None, "n": 0, "ci95": None, "note": "no value"}
    mean = sum(xs) / n
    if n == 1:
        return {"mean": mean, "sd": None, "n": 1, "ci95": None, "note": "no interval (1 seed)"}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    lo, hi = mean - half, mean + half
    if bounds[0] is not None:
        lo = max(lo, bounds[0])
    if bounds[1] is not None:
        hi = min(hi, bounds[1])
    return {"mean": mean, "sd": sd, "n": n, "ci95": [lo, hi], "min": min(xs), "max": max(xs)}


def compare_pair(a: str, b: str, by_seed_a: dict[int, float], by_seed_b: dict[int, float],
                 metric: str = "held-out loss", unit: str = "nats") -> dict[str, Any]:
    """One plain sentence: is b - a larger than the seed-to-seed spread? Paired by seed (the seeds both have)."""
    seeds = sorted(set(by_seed_a) & set(by_seed_b))
    diffs = [by_seed_b[s] - by_seed_a[s] for s in seeds]
    out: dict[str, Any] = {"a": a, "b": b, "metric": metric, "seeds": seeds}
    if not diffs:
        out.update(diff=None, ci95=None, verdict="no data",
                   sentence=f"{b} vs {a}: no seed with a result for both, nothing to compare.")
        return out
    s = summarize(diffs)
    d = s["mean"]
    out.update(diff=d, ci95=s["ci95"], sd=s["sd"])
    word = "higher" if d > 0 else "lower"
    head = f"{b}'s {metric} is {abs(d):.4f} {unit} {word} than {a}'s"
    if len(diffs) == 1:
        out["verdict"] = "unknown"
        out["sentence"] = (f"{head} on the one seed both ran: with one seed there is no seed-to-seed spread to "
                           "compare it with, so it cannot be told from seed noise.")
    else:
        lo, hi = s["ci95"]
        larger = lo > 0 or hi < 0
        out["verdict"] = "larger" if larger else "within"
        spread = (f"the 95% interval of the per-seed difference over {len(diffs)} seeds is [{lo:+.4f}, {hi:+.4f}]")
        out["sentence"] = (f"{head}; {spread}: " + ("it excludes 0, so the difference is larger than the "
                                                     "seed-to-seed spread." if larger else
                                                     "it includes 0, so the difference is within the seed-to-seed "
                                                     "spread (not shown to be real)."))
    return out


# ------------------------------------------------------------------------------------------------------ results
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _curve(run_dir: Path) -> list[list[float]]:
    """[[step, held-out loss], ...] of a run: its periodic evaluations and the final one."""
    pts = []
    try:
        lines = (run_dir / EVAL_CURVE_FILE).read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if d.get("loss") is not None:
            pts.append([int(d["step"]), float(d["loss"])])
    return sorted({p[0]: p for p in pts}.values())


def _metric(ev: dict | None, name: str) -> float | None:
    if not ev:
        return None
    v = ev.get(_SOURCE.get(name, name))
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def collect_results(out_dir: str | os.PathLike) -> dict[str, Any]:
    """results.json's content from an experiment directory (partial while it runs)."""
    from .evaluate import EVAL_SET_FILE  # noqa: PLC0415

    out = Path(out_dir)
    state = _read_json(out / runs.EXPERIMENT_MARKER) or {}
    config = state.get("config") or {}
    eval_set = _read_json(out / EVAL_SET_FILE) or {}
    base = _read_json(out / "base_eval.json")
    run_list = []
    names = [c["name"] for c in config.get("configs", [])]
    options = {c["name"]: {k: v for k, v in c.items() if k != "name"} for c in config.get("configs", [])}
    for seed in config.get("seeds", []):
        for name in names:
            run_dir = out / "runs" / f"{name}-s{seed}"
            record = runs.read_run(run_dir) if (run_dir / runs.RUN_FILE).is_file() else {"status": "pending"}
            ev = _read_json(run_dir / EVAL_FILE)
            result = record.get("result") or {}
            run_list.append({
                "name": name, "seed": seed, "run": f"{name}-s{seed}", "run_dir": str(run_dir),
                "status": record.get("status"), "error": record.get("error"), "config": options.get(name, {}),
                "train": {"global_step": result.get("global_step"), "train_loss": result.get("train_loss"),
                          "seconds": result.get("seconds")} if result else None,
                "eval": ev, "curve": _curve(run_dir),
            })
    summary = []
    for name in names:
        done = [r for r in run_list if r["name"] == name and r["status"] == "completed" and r["eval"]]
        entry: dict[str, Any] = {"name": name, "n": len(done), "config": options.get(name, {})}
        for metric in METRICS:
            values = [_metric(r["eval"], metric) for r in done]
            if any(v is not None for v in values):
                entry[metric] = summarize(values, BOUNDS.get(metric, (None, None)))
        parts = sorted({p for r in done for p in (r["eval"].get("parts") or {})})
        entry["parts"] = {p: summarize([(r["eval"]["parts"].get(p) or {}).get("loss") for r in done], (0.0, None))
                          for p in parts}
        summary.append(entry)
    ranked = sorted((s for s in summary if s.get("eval_loss", {}).get("mean") is not None),
                    key=lambda s: s["eval_loss"]["mean"])
    for k, s in enumerate(ranked, 1):
        s["rank"] = k
    pairs = []
    by_seed = {name: {r["seed"]: _metric(r["eval"], "eval_loss") for r in run_list
                      if r["name"] == name and r["status"] == "completed" and r["eval"]} for name in names}
    for i, a in enumerate(ranked):
        for b in ranked[i + 1:]:
            pairs.append(compare_pair(a["name"], b["name"], by_seed[a["name"]], by_seed[b["name"]]))
    seeds = config.get("seeds", [])
    notes = []
    if len(seeds) < 2:
        notes.append("One seed: no interval and no seed-to-seed spread; differences cannot be told from noise.")
    tokens = eval_set.get("tokens")
    if tokens is not None and tokens < 500:
        notes.append(f"Only {tokens} held-out tokens are scored: small differences in loss are noisy.")
    return {
        "experiment": config.get("name"), "status": state.get("status"), "data": config.get("data"),
        "model": config.get("model"), "template_source": config.get("template_source"), "seeds": seeds,
        "train": config.get("train"), "eval_config": config.get("eval"),
        "held_out_rows": [r["row"] for r in eval_set.get("rows", [])], "eval_tokens": tokens,
        "base": {"name": "base", "model": config.get("model"), "eval": base},
        "runs": run_list, "summary": summary, "ranking": [s["name"] for s in ranked], "pairs": pairs,
        "notes": notes,
    }


def check_results(results: dict[str, Any]) -> None:
    """The contract scripts rely on: every scored run (and the base) saw exactly eval_tokens tokens."""
    n = results["eval_tokens"]
    for r in results["runs"]:
        if r.get("eval"):
            assert r["eval"]["tokens"] == n, f"{r['run']} was scored on {r['eval']['tokens']} tokens, not {n}"
    if results["base"]["eval"]:
        assert results["base"]["eval"]["tokens"] == n, "the base model was scored on other tokens"


# ------------------------------------------------------------------------------------------------------ report
def _fmt(s: dict | None, digits: int = 3, pct: bool = False) -> str:
    if not s or s.get("mean") is None:
        return "–"
    f = (lambda v: f"{100 * v:.0f}%") if pct else (lambda v: f"{v:.{digits}f}")
    if s.get("ci95"):
        return f"{f(s['mean'])} [{f(s['ci95'][0])}, {f(s['ci95'][1])}]"
    return f(s["mean"])


def _value(ev: dict | None, key: str, pct: bool = False) -> str:
    v = _metric(ev, key)
    if v is None:
        return "–"
    return f"{100 * v:.0f}%" if pct else f"{v:.3f}"


def markdown(results: dict[str, Any], figure: str | None = REPORT_PNG) -> str:
    """The report as Markdown: setup, results table (base first), pair sentences, notes."""
    seeds = results.get("seeds") or []
    train = results.get("train") or {}
    lines = [f"# Experiment {results.get('experiment')}: which mask trains the better model?", ""]
    lines.append(f"Model `{results.get('model')}`, data `{Path(str(results.get('data'))).name}`, "
                 f"{len(results.get('held_out_rows') or [])} held-out rows ({results.get('eval_tokens')} scored "
                 f"tokens: what `assistant_only` trains, template source `{results.get('template_source')}`), "
                 f"seeds {seeds}, {train.get('max_steps', 20)} steps"
                 + (", LoRA" if train.get("lora") else "") + ". Status: " + str(results.get("status")) + ".")
    lines += ["", "Every model, the base included, is scored on the same held-out tokens. Held-out loss: mean NLL "
              "(nats, lower is better), mean over seeds with its 95% t-interval in brackets.", ""]
    head = "| rank | config | n | held-out loss | perplexity | stop rate | role leak | empty | length ratio |"
    lines += [head, "|---:|---|---:|---|---|---|---|---|---|"]
    base = (results.get("base") or {}).get("eval")
    if base:
        lines.append(f"| – | base | 1 | {_value(base, 'eval_loss')} | {_value(base, 'perplexity')} | "
                     f"{_value(base, 'stop_rate', True)} | {_value(base, 'role_leak_rate', True)} | "
                     f"{_value(base, 'empty_rate', True)} | {_value(base, 'length_ratio')} |")
    order = {n: k for k, n in enumerate(results.get("ranking") or [])}
    for s in sorted(results.get("summary") or [], key=lambda s: order.get(s["name"], 1e9)):
        lines.append(f"| {s.get('rank', '–')} | {s['name']} | {s['n']} | {_fmt(s.get('eval_loss'))} | "
                     f"{_fmt(s.get('perplexity'), 2)} | {_fmt(s.get('stop_rate'), pct=True)} | "
                     f"{_fmt(s.get('role_leak_rate'), pct=True)} | {_fmt(s.get('empty_rate'), pct=True)} | "
                     f"{_fmt(s.get('length_ratio'), 2)} |")
    if len(seeds) == 1:
        lines += ["", "One seed: no interval (1 seed)."]
    pairs = results.get("pairs") or []
    if pairs:
        lines += ["", "## Differences", ""] + [f"- {p['sentence']}" for p in pairs]
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    lines += ["", "Stop rate: the greedy reply ends with the template's end of turn before the token limit. Role "
              "leak: the reply runs into another turn's header. Length ratio: reply tokens / reference reply tokens."]
    if figure:
        lines += ["", f"![held-out loss curves, metrics and prompt_loss_weight]({figure})"]
    return "\n".join(lines) + "\n"


def figure(results: dict[str, Any], path: str | os.PathLike | None = None):
    """report.png: held-out loss curves with seed bands, metric bars with 95% intervals, stop rate, loss against
    prompt_loss_weight. Returns the Figure (a bare matplotlib Figure: no pyplot state, safe in a server thread);
    saves it when `path` is given."""
    from matplotlib import colormaps  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    class plt:  # noqa: N801 - the one pyplot name used below, without pyplot
        get_cmap = staticmethod(lambda name: colormaps[name])

    summary = results.get("summary") or []
    names = [s["name"] for s in summary]
    colors = {n: plt.get_cmap("tab10")(k % 10) for k, n in enumerate(names)}
    base = (results.get("base") or {}).get("eval") or {}
    fig = Figure(figsize=(12, 8.5))
    axes = fig.subplots(2, 2)
    ax = axes[0][0]
    for name in names:
        curves = [r["curve"] for r in results["runs"] if r["name"] == name and r.get("curve")]
        if not curves:
            continue
        steps = sorted({p[0] for c in curves for p in c})
        if base.get("loss") is not None:
            steps = [0] + [s for s in steps if s != 0]
        vals = []
        for st in steps:
            pts = [base["loss"]] if st == 0 and base.get("loss") is not None else []
            pts += [v for c in curves for s, v in c if s == st]
            vals.append(pts)
        mean = [sum(v) / len(v) for v in vals]
        ax.plot(steps, mean, marker="o", ms=3, color=colors[name], label=f"{name} ({len(curves)} seeds)")
        if len(curves) > 1:
            ax.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals], color=colors[name], alpha=0.18)
    ax.set_title("held-out loss during training (band: min-max over seeds)")
    ax.set_xlabel("step")
    ax.set_ylabel("mean NLL on the held-out assistant tokens")
    if ax.get_lines():
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    def bars(ax, metric, title, pct=False):
        xs, ys, lo, hi, cs = [], [], [], [], []
        for s in summary:
            m = s.get(metric)
            if not m or m.get("mean") is None:
                continue
            xs.append(s["name"])
            ys.append(m["mean"])
            ci = m.get("ci95") or [m["mean"], m["mean"]]
            lo.append(m["mean"] - ci[0])
            hi.append(ci[1] - m["mean"])
            cs.append(colors[s["name"]])
        ax.bar(xs, ys, yerr=[lo, hi], color=cs, capsize=4, alpha=0.85)
        b = _metric(base, metric)
        if b is not None:
            ax.axhline(b, color="k", ls="--", lw=1, label=f"base {100 * b:.0f}%" if pct else f"base {b:.3f}")
            ax.legend(fontsize=8)
        if ys and not pct:
            top = max(y + h for y, h in zip(ys, hi))
            bottom = min(y - low for y, low in zip(ys, lo))
            if b is not None:
                top, bottom = max(top, b), min(bottom, b)
            pad = (top - bottom) * 0.15 or 0.05
            ax.set_ylim(max(0, bottom - pad), top + pad)
        if pct:
            ax.set_ylim(0, 1.05)
        ax.set_title(title)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.grid(axis="y", alpha=0.3)

    bars(axes[0][1], "eval_loss", "held-out loss (mean over seeds, 95% interval)")
    bars(axes[1][0], "stop_rate", "stop rate: reply ends with the end of turn", pct=True)
    ax = axes[1][1]
    groups: dict[str, list] = {}
    for s in summary:
        m = s.get("eval_loss")
        if not m or m.get("mean") is None:
            continue
        cfg = dict(s.get("config") or {})
        strategy = cfg.get("strategy", "rules")
        w = float(cfg.get("prompt_loss_weight", 0.0))
        if strategy == "full":  # full trains every token with weight 1: assistant_only at prompt_loss_weight 1
            strategy, w = "assistant_only", 1.0
        key = strategy + "".join(f", {k}={v}" for k, v in sorted(cfg.items())
                                 if k not in ("strategy", "prompt_loss_weight"))
        groups.setdefault(key, []).append((w, m, s["name"]))
    plotted = False
    for k, (key, pts) in enumerate(sorted(groups.items())):
        pts.sort(key=lambda p: p[0])
        xs = [p[0] for p in pts]
        ys = [p[1]["mean"] for p in pts]
        err = [[p[1]["mean"] - (p[1].get("ci95") or [p[1]["mean"]] * 2)[0] for p in pts],
               [(p[1].get("ci95") or [p[1]["mean"]] * 2)[1] - p[1]["mean"] for p in pts]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=4, label=key, color=plt.get_cmap("Dark2")(k % 8))
        for x, y, p in zip(xs, ys, pts):
            ax.annotate(p[2], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=7)
        plotted = True
    if base.get("loss") is not None:
        ax.axhline(base["loss"], color="k", ls="--", lw=1, label="base")
    ax.set_title("held-out loss against prompt_loss_weight")
    ax.set_xlabel("prompt_loss_weight (0: masked; 1: trained like full)")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(-0.002, 1.2)
    if plotted:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.suptitle(f"{results.get('experiment')}: {results.get('eval_tokens')} held-out tokens, seeds "
                 f"{results.get('seeds')}", fontsize=11)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def write_report(out_dir: str | os.PathLike, results: dict[str, Any] | None = None, figure_too: bool = True) -> None:
    out = Path(out_dir)
    results = results if results is not None else collect_results(out)
    if figure_too:
        figure(results, out / REPORT_PNG)
    runs.atomic_write_text(out / REPORT_MD, markdown(results, REPORT_PNG if (out / REPORT_PNG).exists() else None))


def write_results_and_report(out_dir: str | os.PathLike, figure: bool = True,
                             status: str | None = None) -> dict[str, Any]:
    """Collect, write results.json (atomically) and the report; returns the results. `status`: the experiment's
    final status, written into the results before the state says so (a reader that sees it finished finds both)."""
    from .train import _finite  # noqa: PLC0415

    out = Path(out_dir)
    results = _finite(collect_results(out))
    if status is not None:
        results["status"] = status
    runs.atomic_write_json(out / RESULTS_FILE, results)
    write_report(out, results, figure_too=figure)
    return results
