"""An experiment as scripts: one `accelerate launch` per run, for a GPU box, several GPUs or several nodes.

MaskLens schedules runs itself only on this machine (one per visible GPU); beyond it, accelerate does the launching
(`accelerate config` for multi-node), not a scheduler of ours. `export_experiment(config, DEST)` writes:
    DEST/run_all.sh           one `accelerate launch train_<config>.py --seed S --output-dir out/<config>-s<S>` per run
    DEST/train_<config>.py    a standalone TRL script per mask config (core.training.runs.script_for), with the
                              weighted trainer embedded when that config's rows carry loss_weights
    DEST/data_<config>.jsonl  that config's pre-tokenized training rows (the held-out rows left out)
    DEST/eval_set.json        the held-out rows, rendered once: `python -m core evaluate --model out/X --eval-set
                              eval_set.json` scores each result on the same tokens
Example: export_experiment(load_experiment_config("assets/experiments/demo.yaml"), "out")
         -> Path("out/run_all.sh")
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from ..errors import MaskLensError
from .runs import atomic_write_text, script_for, write_examples
from .train import WEIGHTS, training_rows

__all__ = ["export_experiment"]


def export_experiment(config, dest: str | os.PathLike, num_processes: int | None = None) -> Path:
    """Write DEST (see the module docstring) and return DEST/run_all.sh."""
    from ..data.formats import load_examples  # noqa: PLC0415
    from ..masking.engine import render_examples  # noqa: PLC0415
    from ..models import load_tokenizer  # noqa: PLC0415
    from .evaluate import EVAL_SET_FILE, build_eval_set, select_rows  # noqa: PLC0415
    from .train import TrainConfig  # noqa: PLC0415

    dest = Path(dest).resolve()
    if dest.exists() and any(dest.iterdir()):
        raise MaskLensError("exists and is not empty", file=str(dest), fix="choose a new folder to export into")
    dest.mkdir(parents=True, exist_ok=True)
    examples = load_examples(config.data, split=config.split)
    held = set(select_rows(len(examples), config.held_out))
    train = [e for i, e in enumerate(examples) if i not in held]
    tokenizer = load_tokenizer(config.tokenizer or config.model, trust_remote_code=config.trust_remote_code)
    max_length = config.train.get("max_length", TrainConfig().max_length)
    eval_set = build_eval_set([examples[i] for i in sorted(held)], tokenizer, template_source=config.template_source,
                              chat_template=config.template_text(), max_length=max_length,
                              tokenizer_name=config.tokenizer or config.model, generate=config.max_new_tokens > 0)
    eval_set.save(dest / EVAL_SET_FILE)
    procs = f"--num_processes {int(num_processes)} " if num_processes else ""
    lines = ["#!/usr/bin/env bash",
             f"# MaskLens experiment {config.name}: {len(config.configs)} mask configs x {len(config.seeds)} seeds.",
             "# One GPU or several per run: `accelerate config` once (multi-GPU, multi-node), then run this file.",
             "# Every result is then scored on the same held-out tokens:",
             "#   python -m core evaluate --model out/<run> --eval-set eval_set.json",
             "set -euo pipefail", 'cd "$(dirname "$0")"', ""]
    for entry in config.configs:
        rows = training_rows(render_examples(train, tokenizer, config.mask_config(entry)))
        data = dest / f"data_{entry.name}.jsonl"
        write_examples(data, rows)
        tc = config.train_config(entry, config.seeds[0], "")
        script = dest / f"train_{entry.name}.py"
        atomic_write_text(script, script_for(tc, f"{config.name}/{entry.name}", str(data),
                                             any(WEIGHTS in r for r in rows)))
        for seed in config.seeds:
            out = f"out/{entry.name}-s{seed}"
            lines.append(f"accelerate launch {procs}{shlex.quote(script.name)} --data {shlex.quote(data.name)} "
                         f"--seed {seed} --output-dir {shlex.quote(out)}")
    run_all = dest / "run_all.sh"
    atomic_write_text(run_all, "\n".join(lines) + "\n")
    run_all.chmod(0o755)
    return run_all
