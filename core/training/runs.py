"""Training runs as directories: start one in a child process, list, stop, read metrics, export a script.

A run directory (under `runs_root_dir()`: env MASKLENS_RUNS, else `<repo>/runs`) holds:
    config.json    the TrainConfig (with the mask configuration it was trained on)
    data.jsonl     the engine's pre-tokenized examples, one {"input_ids", "labels"} per line
    run.json       status (queued | running | completed | failed | stopped), error, pid, times, final_dir
    metrics.jsonl  one JSON object per logged step (written by the child)
    log.txt        the child's stdout + stderr
    final/         the trained weights (or LoRA adapter) + tokenizer
    STOP           created by `stop_run`; the child stops cleanly after the current step

Every JSON record is written atomically (temp file + fsync + os.replace), so a killed process never leaves half a
record; the one file two processes update, run.json, is read-modify-written under a file lock. A run whose record
says "running" but whose process is gone is reported (and recorded) as failed: see `read_run`. The child runs in
its own session, so a killed app leaves it training; the next app finds it running, or finished.

A run directory damaged from outside (a run.json cut short, config.json or data.jsonl gone, a line of metrics.jsonl
that is not JSON) is listed with status "corrupted" and the problem in "error": never fatal to the list.

Example: h = start_run(examples, TrainConfig(max_steps=10)); h.wait(); read_metrics(h.run_dir)[-1]["loss"] -> 2.31
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pprint
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import MaskLensError
from ..models import embedded_checkpoint_dir, is_embedded
from .records import atomic_write_json, atomic_write_text  # noqa: F401  (re-exported: runs.atomic_write_json)
from .train import (
    METRICS_FILE,
    STOP_FILE,
    WEIGHTS,
    TrainConfig,
    ids_and_labels,
    lora_config,
    prepare_examples,
    sft_config_kwargs,
    training_rows,  # noqa: F401  (re-exported: the app builds a run's rows with runs.training_rows)
    weights_of,
)

__all__ = [
    "CORRUPTED",
    "STATUSES",
    "RunHandle",
    "create_run",
    "export_script",
    "find_run",
    "launch_command",
    "list_runs",
    "read_log",
    "read_metrics",
    "read_run",
    "run_problems",
    "runs_root_dir",
    "start_run",
    "stop_run",
]

STATUSES = ("queued", "running", "completed", "failed", "stopped")  # what run.json records
CORRUPTED = "corrupted"  # what read_run reports for a damaged run directory (never written)
ACTIVE = ("queued", "running")
CONFIG_FILE = "config.json"
DATA_FILE = "data.jsonl"
RUN_FILE = "run.json"
LOG_FILE = "log.txt"
_LOCK_FILE = ".run.lock"
_REPO_ROOT = Path(__file__).resolve().parents[2]
DIED = "process died (killed?)"
# A queued run gets its pid right after Popen; one still without a pid after this long never started.
_QUEUED_TIMEOUT_S = 120.0


def runs_root_dir(root: str | os.PathLike | None = None) -> Path:
    """The directory that holds run directories: `root` if given, else env MASKLENS_RUNS, else `<repo>/runs`."""
    if root is not None:
        return Path(root).expanduser().resolve()
    env = os.environ.get("MASKLENS_RUNS")
    return Path(env).expanduser().resolve() if env else _REPO_ROOT / "runs"


# Records: atomic writes, locked updates.


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    with open(run_dir / _LOCK_FILE, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_record(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / RUN_FILE).read_text())


def update_run_record(run_dir: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into run.json under the run's lock (parent and child both update it) and return the result."""
    run_dir = Path(run_dir)
    if "status" in fields and fields["status"] not in STATUSES:
        raise ValueError(f"unknown status {fields['status']!r}; expected one of {STATUSES}")
    with _locked(run_dir):
        record = _read_record(run_dir) if (run_dir / RUN_FILE).exists() else {}
        record.update(fields)
        atomic_write_json(run_dir / RUN_FILE, record)
    return record


# Is the recorded process still ours and alive?


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux /proc), to tell a reused pid from ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])


def _process_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[0]


def pid_alive(pid: int | None, start_time: int | None = None) -> bool:
    """True if `pid` runs and is the process that was recorded: not gone, not a zombie, not a reused pid."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, belongs to someone else: the start time below tells whether it is ours
    if _process_state(pid) in ("Z", "X"):  # exited, not yet reaped by its parent
        return False
    if start_time is not None:
        now = process_start_time(pid)
        if now is not None and now != start_time:
            return False
    return True


def read_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """run.json of one run, reconciled: an active record whose process is gone becomes (and is saved as) failed.
    Never raises for a damaged directory: an unreadable run.json reads as status "corrupted" (the reason in
    "error"); other damage (see `run_problems`) is listed in "problems" beside the recorded status, and
    `list_runs` lists such a run as corrupted.

    Adds "name", "run_dir" and "problems" to the returned dict (not stored).
    """
    run_dir = Path(run_dir)
    try:
        record = _read_record(run_dir)
        if not isinstance(record, dict):
            raise ValueError(f"a JSON {type(record).__name__}, not an object")
    except (OSError, ValueError) as exc:
        return _corrupted(run_dir, {}, [f"{RUN_FILE} is unreadable ({_reason(exc)})"])
    if record.get("status") in ACTIVE and not _active_process(record):
        with _locked(run_dir):
            # Re-read under the lock: the child may have written its final status just before exiting.
            record = _read_record(run_dir)
            if record.get("status") in ACTIVE and not _active_process(record):
                never = record.get("pid") is None
                record.update(status="failed", error="process never started" if never else DIED,
                              ended_at=record.get("ended_at") or time.time())
                atomic_write_json(run_dir / RUN_FILE, record)
    return {**record, "name": run_dir.name, "run_dir": str(run_dir), "problems": run_problems(run_dir)}


def _reason(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
    return f"{type(exc).__name__}: {exc}"


def _corrupted(run_dir: Path, record: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    created = record.get("created_at")
    if created is None:
        try:
            created = run_dir.stat().st_mtime
        except OSError:
            created = 0
    fix = "inspect the files; delete the directory if the run is not needed"
    return {**record, "status": CORRUPTED, "recorded_status": record.get("status"), "created_at": created,
            "error": f"corrupted run directory: {'; '.join(problems)}. Fix: {fix}.",
            "name": run_dir.name, "run_dir": str(run_dir), "problems": problems}


def run_problems(run_dir: str | os.PathLike) -> list[str]:
    """What is damaged in a run directory whose run.json reads: config.json or data.jsonl missing, config.json not
    a JSON object, a complete line of metrics.jsonl that is not JSON. [] for a sound run. A last metrics line
    without its newline is a write in progress (or cut by a kill), not damage."""
    run_dir = Path(run_dir)
    problems = []
    try:
        config = json.loads((run_dir / CONFIG_FILE).read_text())
        if not isinstance(config, dict):
            problems.append(f"{CONFIG_FILE} is a JSON {type(config).__name__}, not an object")
    except FileNotFoundError:
        problems.append(f"{CONFIG_FILE} is missing")
    except (OSError, ValueError) as exc:
        problems.append(f"{CONFIG_FILE} is unreadable ({_reason(exc)})")
    if not (run_dir / DATA_FILE).is_file():
        problems.append(f"{DATA_FILE} is missing")
    try:
        text = (run_dir / METRICS_FILE).read_text(errors="replace")
    except FileNotFoundError:
        text = ""
    lines = text.split("\n")[:-1]  # complete lines only
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError:
            problems.append(f"{METRICS_FILE} line {n} is not JSON ({line[:40]!r})")
            break
    return problems


def _active_process(record: dict[str, Any]) -> bool:
    pid = record.get("pid")
    if pid is None:  # queued, Popen not returned yet
        return record.get("status") == "queued" and time.time() - record.get("created_at", 0) < _QUEUED_TIMEOUT_S
    return pid_alive(pid, record.get("pid_start"))


def list_runs(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """All runs under the runs root, oldest first, each as `read_run` gives it; a damaged one with status
    "corrupted", its recorded status in "recorded_status" and what is wrong in "error". Directories without
    run.json (a run being created, or a create_run killed half-way) are not runs yet."""
    base = runs_root_dir(root)
    if not base.is_dir():
        return []
    out = []
    for run_dir, name in _run_dirs(base):
        try:
            record = read_run(run_dir)
        except OSError as exc:  # e.g. the lock file cannot be created (read-only directory)
            record = _corrupted(run_dir, {}, [f"unreadable ({type(exc).__name__}: {exc})"])
        if record["problems"] and record["status"] != CORRUPTED:
            record = _corrupted(run_dir, record, record["problems"])
        record["name"] = name
        out.append(record)
    return sorted(out, key=lambda r: (r.get("created_at") or 0, r["name"]))


EXPERIMENT_MARKER = "experiment.json"  # an experiment directory (core.training.experiment) holds its runs in runs/


def _run_dirs(base: Path) -> Iterator[tuple[Path, str]]:
    """(run directory, listed name) of the runs under `base`: its run directories, and the runs of the experiments
    it holds, named "<experiment>/<run>"."""
    for child in base.iterdir():
        if (child / RUN_FILE).is_file():
            yield child, child.name
        elif (child / EXPERIMENT_MARKER).is_file() and (child / "runs").is_dir():
            for run_dir in (child / "runs").iterdir():
                if (run_dir / RUN_FILE).is_file():
                    yield run_dir, f"{child.name}/{run_dir.name}"


def find_run(name: str, root: str | os.PathLike | None = None) -> Path | None:
    """The directory of a run by the name `list_runs` gives it ("run" or "experiment/run"); None when no such run
    is listed. Names never reach the disk unchecked: only those two shapes, without "..", are looked up."""
    base = runs_root_dir(root)
    parts = name.split("/") if isinstance(name, str) else []
    if not parts or len(parts) > 2 or any(p in ("", ".", "..") for p in parts):
        return None
    path = base / parts[0] if len(parts) == 1 else base / parts[0] / "runs" / parts[1]
    if len(parts) == 2 and not (base / parts[0] / EXPERIMENT_MARKER).is_file():
        return None
    return path if (path / RUN_FILE).is_file() else None


# Data and metrics.


def write_examples(path: Path, examples: list[dict]) -> None:
    """One {"input_ids", "labels"[, "loss_weights"]} per line."""

    def record(e) -> dict:
        ids, labels = ids_and_labels(e)
        w = weights_of(e)
        return {"input_ids": list(ids), "labels": list(labels), **({WEIGHTS: list(w)} if w is not None else {})}

    lines = (json.dumps(record(e), separators=(",", ":")) for e in examples)
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def read_examples(path: str | os.PathLike) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The logged steps so far. A last line still being written (no newline yet, or cut by a kill) is skipped."""
    path = Path(run_dir) / METRICS_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def read_log(run_dir: str | os.PathLike, max_chars: int = 20_000) -> str:
    """The last `max_chars` characters of the run's log.txt ("" if none yet)."""
    path = Path(run_dir) / LOG_FILE
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_chars * 4))
            return f.read().decode("utf-8", errors="replace")[-max_chars:]
    except FileNotFoundError:
        return ""


# Starting and stopping.


@dataclass
class RunHandle:
    """A started run: its directory, and the Popen when this process started it."""

    run_dir: Path
    process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else read_run(self.run_dir).get("pid")

    def status(self) -> str:
        if self.process is not None:
            self.process.poll()  # reap the child if it exited, so it is not left a zombie
        return read_run(self.run_dir)["status"]

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the child to exit (raises subprocess.TimeoutExpired) and return the reconciled record."""
        if self.process is not None:
            self.process.wait(timeout)
        else:
            deadline = None if timeout is None else time.monotonic() + timeout
            while read_run(self.run_dir)["status"] in ACTIVE:
                if deadline is not None and time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(f"run {self.run_dir}", timeout)
                time.sleep(0.2)
        return read_run(self.run_dir)

    def stop(self, grace_s: float = 30.0) -> str:
        status = stop_run(self.run_dir, grace_s=grace_s)
        if self.process is not None:
            self.process.poll()
        return status


def create_run(
    examples: list[dict], config: TrainConfig, runs_root: str | os.PathLike | None = None, *, name: str | None = None
) -> Path:
    """Write a fresh run directory (data.jsonl, config.json, run.json queued) without starting it."""
    prepare_examples(examples, config)  # fail here, with the row named, rather than in the child
    config_dict = config.to_dict()
    try:
        json.dumps(config_dict)
    except (TypeError, ValueError) as exc:
        raise MaskLensError(f"the training configuration is not JSON-serialisable ({exc}).", field="mask_config",
                            fix="pass mask_config as plain JSON values (str, numbers, bools, lists, dicts).") from None
    model_path = Path(config.model).expanduser() if not is_embedded(config.model) else None
    if model_path is not None and model_path.is_dir():  # the child may run from another working directory
        config_dict["model"] = str(model_path.resolve())
    base = runs_root_dir(runs_root)
    base.mkdir(parents=True, exist_ok=True)
    name = name or f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    run_dir = base / name
    try:
        run_dir.mkdir()
    except FileExistsError:
        raise MaskLensError(f"a run named {name!r} already exists in {base}.", fix="pick another name.") from None
    write_examples(run_dir / DATA_FILE, examples)
    atomic_write_json(run_dir / CONFIG_FILE, config_dict)
    atomic_write_json(run_dir / RUN_FILE, {  # last: a directory with run.json is a complete run
        "status": "queued", "error": None, "pid": None, "pid_start": None, "created_at": time.time(),
        "started_at": None, "ended_at": None, "final_dir": None, "model": config_dict["model"],
        "n_examples": len(examples),
    })
    return run_dir


def launch(run_dir: str | os.PathLike, env: dict[str, str] | None = None) -> RunHandle:
    """Start `python -m core.run_child --run-dir DIR` for a created run: its own session (process group), output to
    log.txt, an argument list (never a shell). `env`: variables set for the child on top of this process's
    (e.g. CUDA_VISIBLE_DEVICES, so that runs share out the GPUs)."""
    run_dir = Path(run_dir).resolve()
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"  # log.txt follows the run as it happens
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    with open(run_dir / LOG_FILE, "ab") as log:
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "core.training.run_child", "--run-dir", str(run_dir)],
                cwd=str(_REPO_ROOT), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            update_run_record(run_dir, status="failed", error=f"could not start: {exc}", ended_at=time.time())
            raise
    # The child writes its own pid when it starts; write it here too, so a child killed before it gets that far
    # is still recognised as dead rather than waiting out the queued timeout.
    start = process_start_time(process.pid)
    update_run_record(run_dir, pid=process.pid, **({"pid_start": start} if start is not None else {}))
    return RunHandle(run_dir, process)


def start_run(
    examples: list[dict], config: TrainConfig, runs_root: str | os.PathLike | None = None, *, name: str | None = None
) -> RunHandle:
    """Create a run directory for these pre-tokenized examples and train in a child process. Returns at once."""
    return launch(create_run(examples, config, runs_root, name=name))


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # start_new_session: the child leads its own group
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_inactive(run_dir: Path, seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    record = read_run(run_dir)
    while record["status"] in ACTIVE and time.monotonic() < deadline:
        time.sleep(0.2)
        record = read_run(run_dir)
    return record


def stop_run(run_dir: str | os.PathLike, grace_s: float = 30.0) -> str:
    """Stop a run cleanly and return its final status.

    Creates the STOP file (the child stops after the current step and saves its weights); if it is still running
    after `grace_s`, SIGTERMs its process group (the child's handler also asks for a clean stop); after another
    `grace_s`, SIGKILLs it and records it as stopped without final weights.
    """
    run_dir = Path(run_dir)
    record = read_run(run_dir)
    if record["status"] not in ACTIVE:
        return record["status"]
    (run_dir / STOP_FILE).touch()
    record = _wait_inactive(run_dir, grace_s)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if record["status"] not in ACTIVE:
            return record["status"]
        pid, start = record.get("pid"), record.get("pid_start")
        if pid_alive(pid, start):  # never signal a pid that now belongs to another process
            _signal_group(pid, sig)
        record = _wait_inactive(run_dir, grace_s if sig == signal.SIGTERM else 5.0)
    if record["status"] == "failed" and record.get("error") == DIED:  # we killed it: say so
        record = update_run_record(run_dir, status="stopped",
                                   error=f"killed: did not stop within {2 * grace_s:.0f} s of STOP and SIGTERM")
    return record["status"]


# Export: the same run as a standalone script.


def launch_command(num_processes: int = 2, script: str = "train.py") -> str:
    """The command line that runs an exported script on several GPUs."""
    return f"accelerate launch --num_processes {int(num_processes)} {script}"


_SCRIPT = """\
\"\"\"Reproduce MaskLens run {name}: TRL SFT on exactly the pre-tokenized examples of data.jsonl.

The labels are used as they are (unshifted, -100 = not trained): TRL keeps a `labels` column untouched.{weights_note}

    python train.py                                           # one process: CPU or one GPU
    {launch}             # several GPUs (N processes), or several nodes (accelerate config)

With N processes the effective batch is per_device_train_batch_size x gradient_accumulation_steps x N: divide
gradient_accumulation_steps by N to keep the run's batch size. report_to (SFT_ARGS) sends the logs to tensorboard,
trackio or wandb, as TRL does.
Made with transformers=={transformers} trl=={trl} datasets=={datasets} peft=={peft}.
\"\"\"

import argparse
import json
from pathlib import Path

from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import is_torch_bf16_gpu_available, is_torch_cuda_available
from trl import SFTConfig, SFTTrainer

{model_note}MODEL = {model!r}
# data.jsonl beside this script, else the run's own copy
DATA = Path(__file__).resolve().with_name("data.jsonl")
if not DATA.exists():
    DATA = Path({data!r})
SFT_ARGS = {sft_args}
LORA = {lora}  # None: full fine-tune
# The mask configuration the labels were built with (a record; training reads only data.jsonl).
MASK_CONFIG = {mask_config}
{trainer_code}

def read_examples(path):
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    # As MaskLens does (and TRL after truncation): an example without any trained token is dropped.
    weighted = any("loss_weights" in r for r in rows)
    keys = ("input_ids", "labels", "loss_weights") if weighted else ("input_ids", "labels")
    return [{{k: r[k] for k in keys}} for r in rows if any(y != -100 for y in r["labels"])]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--output-dir", default="masklens-sft-output")
    parser.add_argument("--max-steps", type=int, default=SFT_ARGS["max_steps"])
    parser.add_argument("--seed", type=int, default=SFT_ARGS["seed"])
    args = parser.parse_args()

    examples = read_examples(args.data)
    dataset = Dataset.from_dict({{k: [e[k] for e in examples] for k in examples[0]}})
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    config = SFTConfig(
        **{{**SFT_ARGS, "output_dir": args.output_dir, "max_steps": args.max_steps, "seed": args.seed,
            "data_seed": args.seed}},
        use_cpu=not is_torch_cuda_available(),
        bf16=is_torch_bf16_gpu_available(),
    )
    trainer = {trainer_class}(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(**LORA) if LORA else None,
    )
    trainer.train()
    trainer.save_model(args.output_dir)  # weights, or the LoRA adapter
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(args.output_dir)


if __name__ == "__main__":
    main()
"""

_WEIGHTS_NOTE = """
Rows carry loss_weights (prompt_loss_weight, rules' part weights or per-message weights): TRL, axolotl and
LLaMA-Factory do not read that column, so this script trains with WeightedSFTTrainer below (MaskLens'
core/training/weighted.py, copied): the loss is sum(w * nll) / sum(w) over each optimizer step's tokens."""


def weighted_trainer_source() -> str:
    """core/training/weighted.py without its docstring: the trainer snippet that reads `loss_weights` (exported
    scripts embed it; it imports only torch, transformers and trl)."""
    import inspect  # noqa: PLC0415

    from . import weighted  # noqa: PLC0415

    src = inspect.getsource(weighted)
    doc = weighted.__doc__ or ""
    body = src.split('"""' + doc + '"""', 1)[-1] if doc else src
    return "\n# ---- MaskLens WeightedSFTTrainer (core/training/weighted.py) ----\n" + body.strip() + "\n"


def script_for(config: TrainConfig, name: str, data: str, weighted: bool) -> str:
    """A standalone train.py for this TrainConfig and data file (see export_script)."""
    import datasets
    import peft
    import transformers
    import trl

    if is_embedded(config.model):
        model = str(embedded_checkpoint_dir())
        note = ("# MaskLens' embedded SmolLM2-135M-Instruct (its Q4_1 GGUF, de-quantized). Elsewhere: copy this\n"
                "# directory, or use 'HuggingFaceTB/SmolLM2-135M-Instruct' (same tokenizer, not the same weights).\n")
    else:
        model, note = config.model, ""
    kwargs = sft_config_kwargs(config, "masklens-sft-output")
    lora = None
    if config.lora:
        lc = lora_config(config)
        target = lc.target_modules if isinstance(lc.target_modules, str) else sorted(lc.target_modules)
        lora = dict(r=lc.r, lora_alpha=lc.lora_alpha, lora_dropout=lc.lora_dropout, target_modules=target,
                    task_type="CAUSAL_LM")
    return _SCRIPT.format(
        name=name,
        launch="accelerate launch --num_processes N train.py",
        transformers=transformers.__version__, trl=trl.__version__, datasets=datasets.__version__,
        peft=peft.__version__,
        model=model, model_note=note, data=data,
        sft_args=_literal(kwargs),
        lora=_literal(lora),
        mask_config=_literal(config.mask_config),
        weights_note=_WEIGHTS_NOTE if weighted else "",
        trainer_code=weighted_trainer_source() if weighted else "",
        trainer_class="WeightedSFTTrainer" if weighted else "SFTTrainer",
    )


def export_script(run_dir: str | os.PathLike) -> str:
    """A standalone, reproducible train.py for a run (imports only transformers, trl, datasets, peft; plus torch
    when the rows carry loss_weights, with the weighted trainer embedded), with the same SFTConfig values; it reads
    the run's data.jsonl (or one beside it). Its docstring carries the `accelerate launch --num_processes N train.py`
    line for several GPUs (see `launch_command`)."""
    run_dir = Path(run_dir).resolve()
    try:
        config = TrainConfig.from_dict(json.loads((run_dir / CONFIG_FILE).read_text()))
    except FileNotFoundError:
        raise MaskLensError("not a run directory (no config.json).", file=str(run_dir),
                            fix="pick a directory listed by `list_runs`.") from None
    weighted = False
    with contextlib.suppress(OSError):
        with open(run_dir / DATA_FILE) as f:
            weighted = any(f'"{WEIGHTS}"' in line for line in f)
    return script_for(config, run_dir.name, str(run_dir / DATA_FILE), weighted)


def _literal(value: Any) -> str:
    """A Python literal, one key per line for a dict: {'a': 1} -> "{\\n    'a': 1,\\n}"."""
    if isinstance(value, dict) and value:
        return "{\n" + "".join(f"    {k!r}: {pprint.pformat(v, width=100)},\n" for k, v in value.items()) + "}"
    return pprint.pformat(value, width=100)
