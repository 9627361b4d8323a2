"""The child process of a training run: `python -m core.run_child --run-dir DIR` (started by `core.runs.launch`).

It reads the run directory that `core.runs.create_run` wrote (config.json + data.jsonl), trains with
`core.train.run_training`, and keeps run.json's status current: running, then completed / stopped / failed. It lives
apart from both so that neither core.runs nor core.train imports the other's caller (no import cycle).

A SIGTERM asks for a clean stop after the current step; a second SIGTERM gives up on it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from ..training import runs
from .train import TrainConfig, request_stop, run_training, stop_requested


def _on_sigterm(signum, frame):
    if request_stop():  # a second SIGTERM: give up on a clean stop
        raise KeyboardInterrupt("terminated again before the run could stop cleanly")
    print("SIGTERM: stopping after the current step", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the training recorded in --run-dir (config.json + data.jsonl), keeping run.json's status current."""
    parser = argparse.ArgumentParser(prog="python -m core.run_child", description=main.__doc__)
    parser.add_argument("--run-dir", required=True, type=Path)
    ns = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    return train_run_dir(ns.run_dir)


def train_run_dir(run_dir: Path) -> int:
    """Train a created run directory in this process (the child's body; an experiment's in-process mode for tests
    calls it directly). Returns the exit status: 0 completed or stopped cleanly, 1 failed."""
    run_dir = Path(run_dir).resolve()
    runs.update_run_record(run_dir, status="running", pid=os.getpid(), pid_start=runs.process_start_time(os.getpid()),
                           started_at=time.time())
    try:
        config = TrainConfig.from_dict(json.loads((run_dir / runs.CONFIG_FILE).read_text()))
        examples = runs.read_examples(run_dir / runs.DATA_FILE)
        print(f"MaskLens run {run_dir.name}: {len(examples)} examples, model {config.model}", flush=True)
        result = run_training(examples, config, run_dir)
    except BaseException as exc:  # KeyboardInterrupt / SystemExit too: the record must not stay "running"
        traceback.print_exc()
        sys.stdout.flush()
        stopped = isinstance(exc, KeyboardInterrupt) and stop_requested()
        runs.update_run_record(run_dir, status="stopped" if stopped else "failed",
                               error=f"{type(exc).__name__}: {exc}", ended_at=time.time())
        return 1
    runs.update_run_record(run_dir, status=result.status, ended_at=time.time(), final_dir=result.final_dir,
                           result=result.to_dict())
    print(f"MaskLens run {run_dir.name}: {result.status} after {result.global_step} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
