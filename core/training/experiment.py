"""Experiments: which mask trains the better model on this data? Mask configs x seeds, one fair held-out evaluation.

Within an experiment only the mask configuration and the seed vary: the same training rows, the same held-out rows,
the same model and hyperparameters. Each (config, seed) is an ordinary run directory (core.training.runs) under
`DIR/runs/`, so the app's Train tab lists it (as "<experiment>/<run>") when DIR lies in the runs root.

Config (YAML or JSON; relative paths are relative to the config file's folder)::

    name: demo                       # default: the output directory's name
    data: demo_data.jsonl            # a data file MaskLens reads (JSONL, JSON, Parquet, CSV)
    model: embedded                  # 'embedded', a checkpoint directory or a hub id
    tokenizer: null                  # default: the model's own
    template_source: trl             # how the held-out rows are rendered for scoring (assistant_only)
    held_out: 16                     # the last 16 rows, or a list of row indices
    seeds: [1, 2]
    train: {max_steps: 12, learning_rate: 2.0e-4, lora: true}          # TrainConfig fields
    eval: {max_new_tokens: 48, every_steps: 4}
    configs:
      - {name: assistant_only, strategy: assistant_only}
      - {name: plw_0.1, strategy: assistant_only, prompt_loss_weight: 0.1}
      - {name: mine, rules: my_rules.yaml}                               # any MaskConfig option, or a rules file

Directory: experiment.json (the normalised config, status, driver pid), eval_set.json (the held-out rows rendered
once), base_eval.json, runs/<config>-s<seed>/ (+ eval.json, eval_curve.jsonl), results.json, report.md, report.png,
log.txt (when started from the app), STOP (asks the driver to stop everything).

One run at a time on a CPU; with N visible GPUs, N runs at once, each with its own CUDA_VISIBLE_DEVICES. An
interrupted experiment resumes: completed runs (status completed and eval.json present) are kept, the others start
again from scratch.

Example: run_experiment("out", load_experiment_config("assets/experiments/demo.yaml")) -> writes out/results.json
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import MaskLensError, read_text_file
from . import runs
from .evaluate import EVAL_SET_FILE, build_eval_set, evaluate_model, load_eval_set, select_rows
from .train import EVAL_FILE, TrainConfig, training_rows

__all__ = ["ExperimentConfig", "ExperimentError", "experiment_state", "launch_experiment",
           "load_experiment_config", "parse_experiment_config", "run_experiment", "stop_experiment"]

EXPERIMENT_FILE = runs.EXPERIMENT_MARKER  # "experiment.json"
BASE_EVAL_FILE = "base_eval.json"
RESULTS_FILE = "results.json"
RUNS_DIR = "runs"
STOP_FILE = "STOP"
LOG_FILE = "log.txt"
CONFIG_COPY = "experiment_config.json"  # the config a launched driver reads (launch_experiment)
_LAUNCH_FILES = (LOG_FILE, CONFIG_COPY, ".run.lock")
TOP_KEYS = ("name", "description", "data", "split", "model", "tokenizer", "trust_remote_code", "template_source",
            "chat_template", "held_out", "seeds", "train", "eval", "configs")
EVAL_KEYS = ("max_new_tokens", "every_steps")
# TrainConfig fields an experiment sets itself (one value for every run, or per run)
_FIXED_TRAIN = {"model": "model", "trust_remote_code": "trust_remote_code", "seed": "seeds",
                "mask_config": "configs", "data_path": "data", "eval_set": "(set by the experiment)",
                "eval_every_steps": "eval.every_steps", "eval_max_new_tokens": "eval.max_new_tokens"}
NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,48}$")
ACTIVE = runs.ACTIVE
POLL_S = 1.0


def ExperimentError(message: str, key: str | None, file: str | None, fix: str) -> MaskLensError:  # noqa: N802
    """An error in an experiment config, naming the file, the key path (e.g. configs[2].prompt_loss_weight) and the
    fix, as rules files' errors do."""
    return MaskLensError(message, file=file, field=key, fix=fix)


@dataclass
class ConfigEntry:
    """One mask configuration of an experiment: a name and MaskConfig options (and optionally a rules file)."""

    name: str
    options: dict[str, Any]  # MaskConfig keyword arguments (strategy included)
    rules: str | None = None  # a rules file (absolute path)

    def mask_config(self, chat_template: str | None = None):
        """The MaskConfig (rules registered on the way); `chat_template`: the experiment's template text."""
        from ..masking.options import MaskConfig  # noqa: PLC0415
        from ..masking.rules import load_rules, rules_config  # noqa: PLC0415

        extra = {"chat_template": chat_template} if chat_template is not None else {}
        if self.rules:
            opts = {k: v for k, v in self.options.items() if k != "strategy"}
            return rules_config(load_rules(self.rules), **opts, **extra)
        return MaskConfig(**self.options, **extra)

    def to_dict(self) -> dict:
        return {"name": self.name, **self.options, **({"rules": self.rules} if self.rules else {})}


@dataclass
class ExperimentConfig:
    name: str
    data: str
    configs: list[ConfigEntry]
    seeds: list[int]
    held_out: int | list[int]
    model: str = "embedded"
    tokenizer: str | None = None
    trust_remote_code: bool = False
    template_source: str = "trl"
    chat_template: str | None = None  # a jinja file (absolute path)
    split: str = "train"
    description: str = ""
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    eval: dict[str, Any] = field(default_factory=dict)
    source: str | None = field(default=None, compare=False)  # the file it was read from

    @property
    def max_new_tokens(self) -> int:
        return int(self.eval.get("max_new_tokens", 64))

    def every_steps(self, max_steps: int) -> int:
        """Held-out eval loss every this many steps: eval.every_steps, else about 4 points per run."""
        every = self.eval.get("every_steps")
        return int(every) if every is not None else max(1, max_steps // 4)

    def template_text(self) -> str | None:
        return Path(self.chat_template).read_text(encoding="utf-8") if self.chat_template else None

    def mask_config(self, entry: ConfigEntry):
        return entry.mask_config(self.template_text())

    def train_config(self, entry: ConfigEntry, seed: int, eval_set_path: str) -> TrainConfig:
        base = TrainConfig(**self.train)
        return dataclasses.replace(
            base, model=self.model, trust_remote_code=self.trust_remote_code, seed=seed,
            mask_config={"name": entry.name, **_jsonable(dataclasses.asdict(self.mask_config(entry))),
                         **({"rules_file": entry.rules} if entry.rules else {})},
            data_path=self.data, eval_set=eval_set_path, eval_every_steps=self.every_steps(base.max_steps),
            eval_max_new_tokens=self.max_new_tokens)

    def run_names(self) -> list[tuple[ConfigEntry, int, str]]:
        """(config, seed, run directory name) of every run, in the order they run: seed by seed, so that a
        stopped experiment has every config at its first seeds."""
        return [(c, s, f"{c.name}-s{s}") for s in self.seeds for c in self.configs]

    def to_dict(self) -> dict:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("configs", "source")}
        d["configs"] = [c.to_dict() for c in self.configs]
        return d


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# ------------------------------------------------------------------------------------------------------ parsing
def load_experiment_config(path: str | os.PathLike) -> ExperimentConfig:
    """Read an experiment config (.yaml, .yml or .json). Relative paths in it are relative to its folder."""
    p = Path(path)
    text = read_text_file(path, "experiment config",
                          "give the path of a .yaml or .json experiment config (see assets/experiments/)")
    return parse_experiment_config(text, base_dir=p.parent, source=str(path),
                                   default_name=re.sub(r"[^A-Za-z0-9_.+-]+", "_", p.stem)[:48] or "experiment")


def parse_experiment_config(obj_or_text: Any, base_dir: str | os.PathLike = ".", source: str | None = None,
                            default_name: str = "experiment", check_paths: bool = False) -> ExperimentConfig:
    """Validate an experiment config given as a dict or YAML/JSON text. Every error names the key path and the fix.
    `check_paths`: also apply the process's path policy (core.paths: a shared app allows only some folders) to the
    data, model, tokenizer, template and rules paths."""
    from ..masking.rules import _parse_text  # noqa: PLC0415  (JSON or YAML, duplicate keys refused)

    f = source
    obj = _parse_text(obj_or_text, f, None) if isinstance(obj_or_text, str) else obj_or_text
    if not isinstance(obj, dict):
        raise ExperimentError(f"the config is a {_type(obj)}, not a mapping", None, f,
                              "write one mapping with data, model, held_out, seeds, train, configs")
    for key in obj:
        if key not in TOP_KEYS:
            raise ExperimentError(f"unknown key {key!r}", str(key), f, f"use only {', '.join(TOP_KEYS)}"
                                  + _did_you_mean(key, TOP_KEYS))
    base = Path(base_dir)

    def path_of(key: str, value: Any, must_exist: bool = True, kind: str = "file") -> str:
        if not isinstance(value, str) or not value.strip():
            raise ExperimentError(f"is a {_type(value)}, not a path", key, f, f"write the {kind} path as text")
        p = Path(value).expanduser()
        p = p if p.is_absolute() else base / p
        if must_exist and not p.exists():
            raise ExperimentError(f"no such {kind}: {p}", key, f,
                                  "check the path (relative paths are relative to the config file's folder)")
        return str(p.resolve())

    def model_ref(key: str, value: Any) -> str:
        from ..models import is_embedded  # noqa: PLC0415
        from ..paths import looks_like_path  # noqa: PLC0415

        if not isinstance(value, str) or not value.strip():
            raise ExperimentError(f"is a {_type(value)}, not a name", key, f,
                                  "write 'embedded', a checkpoint directory or a hub id")
        if is_embedded(value):
            return "embedded"
        local = Path(value).expanduser() if Path(value).is_absolute() else base / value
        if local.is_dir():
            return str(local.resolve())
        if looks_like_path(value):
            raise ExperimentError(f"no such directory: {local}", key, f,
                                  "check the path (relative to the config file's folder), or give a hub id")
        return value.strip()

    if "data" not in obj:
        raise ExperimentError("is missing", "data", f, "add data: FILE (a JSONL/JSON/Parquet/CSV file)")
    data = obj["data"]
    if isinstance(data, str) and not (base / data).exists() and not Path(data).expanduser().exists() \
            and re.fullmatch(r"[\w.-]+/[\w.-]+", data):
        data_path = data  # a hub dataset id
    else:
        data_path = path_of("data", data, kind="data file")
    model = model_ref("model", obj.get("model", "embedded"))
    tokenizer = model_ref("tokenizer", obj["tokenizer"]) if obj.get("tokenizer") is not None else None
    trust = obj.get("trust_remote_code", False)
    if not isinstance(trust, bool):
        raise ExperimentError(f"is a {_type(trust)}, not true/false", "trust_remote_code", f, "write true or false")
    from ..masking.options import TEMPLATE_SOURCES, MaskConfig  # noqa: PLC0415

    template_source = obj.get("template_source", "trl")
    if template_source not in TEMPLATE_SOURCES:
        raise ExperimentError(f"unknown value {template_source!r}", "template_source", f,
                              f"use one of {', '.join(TEMPLATE_SOURCES)}")
    chat_template = path_of("chat_template", obj["chat_template"], kind="template file") \
        if obj.get("chat_template") is not None else None
    template_text = None
    if chat_template is not None:
        try:
            template_text = Path(chat_template).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ExperimentError(f"cannot be read ({e})", "chat_template", f, "give a UTF-8 jinja file") from None
    split = obj.get("split", "train")
    if not isinstance(split, str):
        raise ExperimentError(f"is a {_type(split)}, not a name", "split", f, "write e.g. train")
    name = obj.get("name", default_name)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ExperimentError(f"{name!r} is not a usable name", "name", f,
                              "use 1-48 letters, digits, '_', '-', '+' or '.'")
    description = obj.get("description", "")
    if not isinstance(description, str):
        raise ExperimentError(f"is a {_type(description)}, not text", "description", f, "write it as text")

    held_out = obj.get("held_out")
    if held_out is None:
        raise ExperimentError("is missing", "held_out", f,
                              "add held_out: N (the last N rows are kept out of training and scored) or a list of "
                              "row indices")
    if isinstance(held_out, bool) or not isinstance(held_out, (int, list)):
        raise ExperimentError(f"is a {_type(held_out)}", "held_out", f,
                              "give a count of rows (the last ones) or a list of row indices")
    if isinstance(held_out, int) and held_out < 1:
        raise ExperimentError(f"holds out {held_out} rows", "held_out", f, "hold out at least 1 row")
    if isinstance(held_out, list):
        for k, i in enumerate(held_out):
            if isinstance(i, bool) or not isinstance(i, int):
                raise ExperimentError(f"{i!r} is not a row index", f"held_out[{k}]", f, "use whole numbers")

    seeds = obj.get("seeds", [42])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        raise ExperimentError("is a number, not a list", "seeds", f, f"write a list: [{seeds}]")
    if not isinstance(seeds, list) or not seeds:
        raise ExperimentError(f"is a {_type(seeds)}" if not isinstance(seeds, list) else "is empty", "seeds", f,
                              "write a list of seeds, e.g. [1, 2, 3] (3 or more give a 95% interval worth reading)")
    for k, s in enumerate(seeds):
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ExperimentError(f"{s!r} is not a seed", f"seeds[{k}]", f, "use whole numbers >= 0")
    if len(set(seeds)) != len(seeds):
        raise ExperimentError("lists a seed twice", "seeds", f, "list each seed once")

    train = obj.get("train", {}) or {}
    if not isinstance(train, dict):
        raise ExperimentError(f"is a {_type(train)}, not a mapping", "train", f,
                              "write e.g. train: {max_steps: 20, learning_rate: 2.0e-5}")
    known = [x.name for x in dataclasses.fields(TrainConfig)]
    for key in train:
        if key in _FIXED_TRAIN:
            raise ExperimentError("is set by the experiment, not per training option", f"train.{key}", f,
                                  f"set it with {_FIXED_TRAIN[key]} instead")
        if key not in known:
            raise ExperimentError(f"unknown training option {key!r}", f"train.{key}", f,
                                  "use TrainConfig's fields: " + ", ".join(k for k in known if k not in _FIXED_TRAIN)
                                  + _did_you_mean(key, known))
    try:
        TrainConfig(**train)
    except MaskLensError as e:
        raise ExperimentError(e.message, f"train.{e.field}" if e.field else "train", f, e.fix or "") from None
    except TypeError as e:
        raise ExperimentError(str(e), "train", f, "check the training options' values") from None

    ev = obj.get("eval", {}) or {}
    if not isinstance(ev, dict):
        raise ExperimentError(f"is a {_type(ev)}, not a mapping", "eval", f,
                              "write e.g. eval: {max_new_tokens: 64, every_steps: 5}")
    for key, value in ev.items():
        if key not in EVAL_KEYS:
            raise ExperimentError(f"unknown key {key!r}", f"eval.{key}", f,
                                  f"use {', '.join(EVAL_KEYS)}" + _did_you_mean(key, EVAL_KEYS))
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ExperimentError(f"{value!r} is not a whole number >= 0", f"eval.{key}", f,
                                  "max_new_tokens: 0 turns generation off; every_steps: 0 scores only the end")

    configs = obj.get("configs")
    if not isinstance(configs, list) or not configs:
        raise ExperimentError("is missing" if configs is None else f"is a {_type(configs)}"
                              if not isinstance(configs, list) else "is empty", "configs", f,
                              "list the mask configs to compare, e.g. [{name: assistant_only, strategy: "
                              "assistant_only}, {name: full, strategy: full}]")
    mask_keys = [x.name for x in dataclasses.fields(MaskConfig)]
    entries, names = [], set()
    for j, c in enumerate(configs):
        where = f"configs[{j}]"
        if not isinstance(c, dict):
            raise ExperimentError(f"is a {_type(c)}, not a mapping", where, f,
                                  "write {name: ..., strategy: ..., <MaskConfig options>}")
        cname = c.get("name")
        if not isinstance(cname, str) or not NAME_RE.match(cname):
            raise ExperimentError(f"{cname!r} is not a usable name" if cname is not None else "has no name",
                                  f"{where}.name", f, "name each config: 1-48 letters, digits, '_', '-', '+' or '.'")
        if cname in names:
            raise ExperimentError(f"the name {cname!r} is used twice", f"{where}.name", f,
                                  "give each config its own name")
        names.add(cname)
        options, rules = {}, None
        for key, value in c.items():
            if key == "name":
                continue
            if key == "rules":
                rules = path_of(f"{where}.rules", value, kind="rules file")
                continue
            if key == "chat_template":
                raise ExperimentError("is set once for the whole experiment", f"{where}.chat_template", f,
                                      "set chat_template at the top level: every run uses the same template")
            if key not in mask_keys:
                raise ExperimentError(f"unknown option {key!r}", f"{where}.{key}", f,
                                      "use name, rules, or MaskConfig's options: " + ", ".join(mask_keys)
                                      + _did_you_mean(key, mask_keys + ["rules"]))
            options[key] = list(value) if isinstance(value, tuple) else value
        if rules and "strategy" in options:
            raise ExperimentError("has both strategy and rules", where, f,
                                  "keep one: a rules file is its own strategy (rules:<name>)")
        if not rules:
            options.setdefault("strategy", "assistant_only")
        entry = ConfigEntry(cname, options, rules)
        try:
            entry.mask_config(template_text)
        except MaskLensError as e:
            key = f"{where}.{e.field}" if e.field else (f"{where}.rules" if rules else where)
            raise ExperimentError(e.message, key, f if not rules or e.file is None else e.file, e.fix or "") \
                from None
        except TypeError as e:
            raise ExperimentError(str(e), where, f, "check the option values") from None
        entries.append(entry)
    if check_paths:
        from ..paths import check_source  # noqa: PLC0415

        for key, value in (("data", data_path), ("model", model), ("tokenizer", tokenizer),
                           ("chat_template", chat_template), *((f"configs[{j}].rules", e.rules)
                                                               for j, e in enumerate(entries))):
            if value and value != "embedded":
                try:
                    check_source(value, key)
                except MaskLensError as e:
                    raise ExperimentError(e.message, key, f, e.fix or "") from None
    return ExperimentConfig(name=name, data=data_path, configs=entries, seeds=list(seeds), held_out=held_out,
                            model=model, tokenizer=tokenizer, trust_remote_code=trust,
                            template_source=template_source, chat_template=chat_template, split=split,
                            description=description, train=dict(train), eval=dict(ev), source=source)


def _type(v) -> str:
    return {dict: "mapping", list: "list", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(v), type(v).__name__)


def _did_you_mean(word, choices) -> str:
    import difflib  # noqa: PLC0415

    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ------------------------------------------------------------------------------------------------------ state
def experiment_state(out_dir: str | os.PathLike) -> dict[str, Any]:
    """experiment.json, reconciled like a run's: an experiment recorded running whose driver is gone reads as
    "interrupted" (it can be resumed). {} when DIR is not an experiment."""
    out = Path(out_dir)
    try:
        state = json.loads((out / EXPERIMENT_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if state.get("status") == "running" and not runs.pid_alive(state.get("pid"), state.get("pid_start")):
        state["status"] = "interrupted"
    return state


def _update_state(out: Path, **fields: Any) -> dict[str, Any]:
    with runs._locked(out):
        try:
            state = json.loads((out / EXPERIMENT_FILE).read_text())
        except (OSError, ValueError):
            state = {}
        state.update(fields)
        runs.atomic_write_json(out / EXPERIMENT_FILE, state)
    return state


def run_done(run_dir: Path) -> bool:
    """A run an experiment keeps on resume: completed, with its final held-out evaluation."""
    if not (run_dir / runs.RUN_FILE).is_file():
        return False
    return runs.read_run(run_dir).get("status") == "completed" and (run_dir / EVAL_FILE).is_file()


def visible_gpus() -> list[str]:
    """The GPUs runs are shared out on: CUDA_VISIBLE_DEVICES' entries, else torch's count; [] on a CPU machine."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch  # noqa: PLC0415

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:  # noqa: BLE001 - no torch, no GPU
        return []


# ------------------------------------------------------------------------------------------------------ running
class _Stop:
    def __init__(self, out: Path):
        self.out = out
        self.event = threading.Event()

    def requested(self) -> bool:
        return self.event.is_set() or (self.out / STOP_FILE).exists()


def _say(progress: Callable[[str], None] | None, text: str) -> None:
    if progress is not None:
        progress(text)


def run_experiment(out_dir: str | os.PathLike, config: ExperimentConfig | None = None, *, resume: bool = False,
                   progress: Callable[[str], None] | None = print, poll_s: float = POLL_S,
                   in_process: bool = False) -> dict[str, Any]:
    """Run (or resume) an experiment in DIR and return results.json's content. Blocks until every run has finished
    or a stop is asked for (DIR/STOP, SIGTERM, Ctrl-C: every active run is stopped). Raises MaskLensError for a bad
    config, a DIR that holds another experiment, or held-out rows that cannot be scored.
    `in_process`: train each run in this process, one after the other, instead of in child processes (the run
    directories are the same; tests use it to skip a child's start-up)."""
    from .report import write_results_and_report  # noqa: PLC0415

    out = Path(out_dir).resolve()
    state = experiment_state(out)
    if config is None:
        if not state:
            raise MaskLensError("is not an experiment directory (no experiment.json)", file=str(out),
                                fix="start it with --config FILE")
        config = parse_experiment_config(state["config"], source=str(out / EXPERIMENT_FILE))
        resume = True
    if state:
        if not resume:
            raise MaskLensError("already holds an experiment", file=str(out),
                                fix="add --resume to carry on with it, or choose a new --output-dir")
        if state.get("status") == "running":
            raise MaskLensError(f"its experiment is running (driver pid {state.get('pid')})", file=str(out),
                                fix="wait for it, or stop it with --stop")
        if state.get("config") != config.to_dict():
            diff = sorted(k for k in set(state.get("config", {})) | set(config.to_dict())
                          if state.get("config", {}).get(k) != config.to_dict().get(k))
            raise MaskLensError(f"was run with another config (differs in: {', '.join(diff)})", file=str(out),
                                fix="resume with the same config (or none: --resume alone reuses it), or choose a "
                                    "new --output-dir")
    elif out.exists() and any(p.name not in _LAUNCH_FILES for p in out.iterdir()):
        raise MaskLensError("exists and is not empty", file=str(out), fix="choose a new --output-dir")
    out.mkdir(parents=True, exist_ok=True)
    (out / STOP_FILE).unlink(missing_ok=True)
    me = os.getpid()
    _update_state(out, config=config.to_dict(), status="running", error=None, pid=me,
                  pid_start=runs.process_start_time(me), started_at=time.time(), ended_at=None,
                  created_at=state.get("created_at") or time.time())
    stop = _Stop(out)
    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if previous is not None:
        signal.signal(signal.SIGTERM, lambda *_: stop.event.set())
    try:
        status, error = _drive(out, config, stop, progress, poll_s, in_process)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        ended = "stopped" if interrupted else "failed"
        with contextlib.suppress(Exception):
            write_results_and_report(out, status=ended)
        _update_state(out, status=ended, error=None if interrupted else f"{type(exc).__name__}: {exc}",
                      ended_at=time.time(), pid=None)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    results = write_results_and_report(out, status=status)  # before the state says it ended: readers find the report
    _update_state(out, status=status, error=error, ended_at=time.time(), pid=None)
    _say(progress, f"experiment {status}: {out / RESULTS_FILE}")
    return results


def _drive(out: Path, config: ExperimentConfig, stop: _Stop, progress, poll_s: float,
           in_process: bool = False) -> tuple[str, str | None]:
    from ..data.formats import load_examples  # noqa: PLC0415
    from ..masking.engine import render_examples  # noqa: PLC0415
    from ..models import load_tokenizer  # noqa: PLC0415
    from .report import write_results_and_report  # noqa: PLC0415

    examples = load_examples(config.data, split=config.split)
    held = select_rows(len(examples), config.held_out)
    held_set = set(held)
    train_examples = [e for i, e in enumerate(examples) if i not in held_set]
    tokenizer = load_tokenizer(config.tokenizer or config.model, trust_remote_code=config.trust_remote_code)
    eval_path = out / EVAL_SET_FILE
    if eval_path.is_file():
        eval_set = load_eval_set(eval_path)
        if [r.row for r in eval_set.rows] != [examples[i].row for i in held]:
            raise MaskLensError("holds other held-out rows than the config names", file=str(eval_path),
                                fix="resume with the config the experiment was started with")
    else:
        _say(progress, f"held-out rows {held[:10]}{'...' if len(held) > 10 else ''}: rendering them once "
                       f"(assistant_only, template_source={config.template_source})")
        tpl = config.template_text()
        max_length = config.train.get("max_length", TrainConfig().max_length)
        eval_set = build_eval_set([examples[i] for i in held], tokenizer, template_source=config.template_source,
                                  chat_template=tpl, max_length=max_length, tokenizer_name=config.tokenizer or
                                  config.model, generate=config.max_new_tokens > 0)
        eval_set.save(eval_path)
    _say(progress, f"{len(train_examples)} training rows, {len(held)} held-out rows, {eval_set.tokens} scored "
                   f"tokens; {len(config.configs)} configs x {len(config.seeds)} seeds")

    if not (out / BASE_EVAL_FILE).is_file() and not stop.requested():
        _say(progress, f"evaluating the base model {config.model}")
        result = _evaluate_base(config, eval_set, tokenizer)
        runs.atomic_write_json(out / BASE_EVAL_FILE, _finite(result))
        _say(progress, f"base: held-out loss {result['loss']:.4f}" + (
            f", stop rate {result['stop_rate']:.2f}" if result.get("stop_rate") is not None else ""))

    rows_cache: dict[str, list[dict]] = {}

    def rows_for(entry: ConfigEntry) -> list[dict]:
        if entry.name not in rows_cache:
            rows_cache[entry.name] = training_rows(render_examples(train_examples, tokenizer,
                                                                   config.mask_config(entry)))
        return rows_cache[entry.name]

    runs_root = out / RUNS_DIR
    runs_root.mkdir(exist_ok=True)
    gpus = visible_gpus()
    slots: list[str | None] = list(gpus) if gpus else [None]
    _say(progress, f"{len(slots)} run(s) at a time" + (f" on GPUs {','.join(gpus)}" if gpus else " (CPU)"))
    pending = []
    active: dict[str, tuple[Path, str | None, Any]] = {}  # run name -> (dir, gpu, handle)
    for entry, seed, name in config.run_names():
        run_dir = runs_root / name
        if run_done(run_dir):
            _say(progress, f"{name}: completed earlier, kept")
            continue
        if (run_dir / runs.RUN_FILE).is_file() and runs.read_run(run_dir)["status"] in ACTIVE:
            runs.stop_run(run_dir, grace_s=10)  # a child of a driver that died: its result cannot be trusted
        if run_dir.exists():
            shutil.rmtree(run_dir)
        pending.append((entry, seed, name))
    failed: list[str] = []
    while pending or active:
        if stop.requested():
            _stop_all([d for d, _, _ in active.values()], progress)
            return "stopped", None
        for name, (run_dir, gpu, _handle) in list(active.items()):
            record = runs.read_run(run_dir)
            if record["status"] in ACTIVE:
                continue
            del active[name]
            slots.append(gpu)
            if record["status"] == "completed" and (run_dir / EVAL_FILE).is_file():
                ev = json.loads((run_dir / EVAL_FILE).read_text())
                _say(progress, f"{name}: completed, held-out loss {ev.get('loss'):.4f}")
            else:
                failed.append(name)
                _say(progress, f"{name}: {record['status']}" + (f" ({record.get('error')})" if record.get("error")
                                                                   else ""))
            with contextlib.suppress(Exception):
                write_results_and_report(out, figure=False)
        while pending and slots and not stop.requested():
            entry, seed, name = pending.pop(0)
            gpu = slots.pop(0)
            tc = config.train_config(entry, seed, str(out / EVAL_SET_FILE))
            run_dir = runs.create_run(rows_for(entry), tc, runs_root, name=name)
            _say(progress, f"{name}: started ({entry.to_dict()}, seed {seed})" + (f" on GPU {gpu}" if gpu else ""))
            if in_process:
                from .run_child import train_run_dir  # noqa: PLC0415

                train_run_dir(run_dir)
                handle = runs.RunHandle(run_dir)
            else:
                handle = runs.launch(run_dir, env={"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else None)
                # the child records its status just before it exits: reap it whenever it does (no zombie)
                if handle.process is not None:
                    threading.Thread(target=handle.process.wait, daemon=True, name=f"reap-{name}").start()
            active[name] = (run_dir, gpu, handle)
            if in_process:
                break  # one at a time: record it before the next
        if active and not in_process:
            time.sleep(poll_s)
    if failed:
        return "failed", f"{len(failed)} run(s) did not complete: {', '.join(failed)} (see their log.txt)"
    return "completed", None


def _evaluate_base(config: ExperimentConfig, eval_set, tokenizer) -> dict[str, Any]:
    import gc  # noqa: PLC0415

    import torch  # noqa: PLC0415

    from ..models import load_model  # noqa: PLC0415

    model = load_model(config.model, trust_remote_code=config.trust_remote_code)
    if torch.cuda.is_available():
        model = model.to("cuda")
    try:
        return evaluate_model(model, eval_set, tokenizer, max_new_tokens=config.max_new_tokens)
    finally:
        del model
        gc.collect()


def _finite(obj: Any) -> Any:
    from .train import _finite as finite  # noqa: PLC0415

    return finite(obj)


def _stop_all(run_dirs: list[Path], progress, grace_s: float = 30.0) -> None:
    """Stop runs in parallel (each stops after its current step and saves; killed after 2 x grace_s)."""
    threads = [threading.Thread(target=runs.stop_run, args=(d, grace_s), daemon=True) for d in run_dirs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if run_dirs:
        _say(progress, f"stopped {len(run_dirs)} active run(s)")


def stop_experiment(out_dir: str | os.PathLike, grace_s: float = 30.0) -> str:
    """Stop an experiment: its driver stops every active run and records "stopped". When the driver is gone (or does
    not answer within grace_s), the runs are stopped from here. Returns the experiment's status."""
    out = Path(out_dir).resolve()
    state = experiment_state(out)
    if not state:
        raise MaskLensError("is not an experiment directory (no experiment.json)", file=str(out),
                            fix="give the --output-dir the experiment was started with")
    (out / STOP_FILE).touch()
    deadline = time.monotonic() + 2 * grace_s + 10
    while experiment_state(out).get("status") == "running" and time.monotonic() < deadline:
        time.sleep(0.3)
    if experiment_state(out).get("status") in ("running", "interrupted"):
        pid = state.get("pid")
        if runs.pid_alive(pid, state.get("pid_start")):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        active = [Path(r["run_dir"]) for r in _run_records(out) if r["status"] in ACTIVE]
        _stop_all(active, None, grace_s)
        _update_state(out, status="stopped", ended_at=time.time(), pid=None)
    return experiment_state(out).get("status", "stopped")


def _run_records(out: Path) -> list[dict]:
    root = out / RUNS_DIR
    if not root.is_dir():
        return []
    return [runs.read_run(d) for d in sorted(root.iterdir()) if (d / runs.RUN_FILE).is_file()]


def launch_experiment(out_dir: str | os.PathLike, config: ExperimentConfig | None = None) -> subprocess.Popen:
    """Start the driver in its own process and session (the app uses this: an app restart leaves it running):
    `python -m core experiment --output-dir DIR (--config DIR/experiment_config.json | --resume)`, output to
    DIR/log.txt. With a config, DIR must be new (or empty); without, the experiment in DIR resumes."""
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "core", "experiment", "--output-dir", str(out)]
    if config is not None:
        cfg_file = out / CONFIG_COPY
        runs.atomic_write_json(cfg_file, config.to_dict())
        args += ["--config", str(cfg_file)]
    else:
        args.append("--resume")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    repo = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), env.get("PYTHONPATH")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    with open(out / LOG_FILE, "ab") as log:
        return subprocess.Popen(args, cwd=str(repo), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
