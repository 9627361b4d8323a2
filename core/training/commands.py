"""`python -m core experiment` and `python -m core evaluate`: their parsers and commands (core/cli.py registers them).

    python -m core experiment --config FILE --output-dir DIR        # run it (foreground; Ctrl-C stops every run)
    python -m core experiment --output-dir DIR --resume             # carry on: completed runs are kept
    python -m core experiment --output-dir DIR --stop               # stop a running experiment (from elsewhere)
    python -m core experiment --config FILE --export DEST           # accelerate-launch scripts, no training here
    python -m core evaluate --model DIR --data FILE [--held-out N | --rows 3,7]   # any checkpoint, same metrics
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import MaskLensError


def _rows(s: str) -> list[int]:
    try:
        return [int(x) for x in s.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated row indices such as 0,5,9, got {s!r}") from None


def add_experiment_parser(sub) -> None:
    e = sub.add_parser("experiment", help="train every mask config x seed and score them on the same held-out tokens",
                       description="Compare masking strategies by experiment: each (config, seed) is a short TRL run; "
                                   "every run and the base model are scored on the same held-out rows. Writes "
                                   "DIR/results.json, DIR/report.md and DIR/report.png.")
    e.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="the experiment config (.yaml or .json; see assets/experiments/demo.yaml)")
    e.add_argument("--output-dir", type=Path, default=None, metavar="DIR",
                   help="the experiment directory (new, or the one to --resume / --stop)")
    e.add_argument("--resume", action="store_true",
                   help="carry on with the experiment in DIR: completed runs are kept, the others start again")
    e.add_argument("--stop", action="store_true", help="stop the experiment running in DIR and every active run")
    e.add_argument("--export", type=Path, default=None, metavar="DEST",
                   help="write DEST/run_all.sh (one `accelerate launch` per run) + train.py + each config's data; "
                        "trains nothing here")
    e.add_argument("--report", action="store_true", help="rewrite DIR/results.json and the report from what is there")
    e.set_defaults(func=cmd_experiment)


def add_evaluate_parser(sub) -> None:
    from ..masking.options import TEMPLATE_SOURCES  # noqa: PLC0415

    v = sub.add_parser("evaluate", help="score a checkpoint on held-out rows: loss on assistant tokens, generations",
                       description="The held-out evaluation experiments use, for any checkpoint: mean NLL over the "
                                   "tokens assistant_only trains (per part, perplexity) and greedy-generation "
                                   "behaviour (stop, role-leak, empty rates, length against the reference).")
    v.add_argument("--model", default=None, help="checkpoint directory (full weights or a LoRA adapter), hub id or "
                                                 "'embedded' (default)")
    v.add_argument("--data", default=None, help="the data file whose rows are scored")
    v.add_argument("--tokenizer", default=None, help="default: the model's own")
    v.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (off by default)")
    which = v.add_mutually_exclusive_group()
    which.add_argument("--held-out", type=int, default=None, metavar="N", help="score the last N rows (default: all)")
    which.add_argument("--rows", type=_rows, default=None, metavar="I,J", help="score these row indices")
    v.add_argument("--eval-set", type=Path, default=None, metavar="FILE",
                   help="score an experiment's eval_set.json instead of rendering --data (the very same tokens)")
    v.add_argument("--template-source", choices=TEMPLATE_SOURCES, default="trl",
                   help="how the rows are rendered for scoring (assistant_only; default: trl)")
    v.add_argument("--chat-template", type=Path, default=None, help="a jinja chat template file replacing the "
                                                                    "tokenizer's")
    v.add_argument("--max-length", type=int, default=None, help="truncate scored rows to this many tokens")
    v.add_argument("--max-new-tokens", type=int, default=64, help="greedy reply length (0: no generation)")
    v.add_argument("--output", type=Path, default=None, metavar="FILE.json", help="also write the result as JSON")
    v.add_argument("--format", choices=("json", "text"), default="text", help="what to print (default: text)")
    v.set_defaults(func=cmd_evaluate)


def cmd_experiment(ns) -> int:
    from .experiment import load_experiment_config, run_experiment, stop_experiment  # noqa: PLC0415

    if ns.export is not None:
        if ns.config is None:
            raise MaskLensError("--export needs --config FILE", fix="give the experiment config to export")
        from .export import export_experiment  # noqa: PLC0415

        path = export_experiment(load_experiment_config(ns.config), ns.export)
        print(f"wrote {path} (and one train.py + data per config beside it)", file=sys.stderr)
        return 0
    if ns.output_dir is None:
        raise MaskLensError("--output-dir is required", fix="give the experiment directory: --output-dir DIR")
    if ns.stop:
        status = stop_experiment(ns.output_dir)
        print(f"experiment {status}: {ns.output_dir}", file=sys.stderr)
        return 0
    if ns.report:
        from .report import write_results_and_report  # noqa: PLC0415

        write_results_and_report(ns.output_dir)
        print(f"wrote {ns.output_dir / 'results.json'} and report.md / report.png", file=sys.stderr)
        return 0
    if ns.config is None and not ns.resume:
        raise MaskLensError("--config is required", fix="give --config FILE, or --resume to carry on in --output-dir")
    config = load_experiment_config(ns.config) if ns.config is not None else None

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        results = run_experiment(ns.output_dir, config, resume=ns.resume, progress=progress)
    except KeyboardInterrupt:
        print("interrupted: the active runs were stopped; --resume carries on", file=sys.stderr)
        return 130
    from .report import markdown  # noqa: PLC0415

    print(markdown(results, figure=None))
    return 0 if results.get("status") in ("completed", "stopped") else 1  # failed: a run did not complete


def cmd_evaluate(ns) -> int:
    from ..data.formats import load_examples  # noqa: PLC0415
    from ..models import load_tokenizer  # noqa: PLC0415
    from .evaluate import build_eval_set, evaluate_model, load_eval_set, select_rows  # noqa: PLC0415

    tokenizer = load_tokenizer(ns.tokenizer or ns.model, trust_remote_code=ns.trust_remote_code)
    if ns.eval_set is not None:
        eval_set = load_eval_set(ns.eval_set)
    else:
        if ns.data is None:
            raise MaskLensError("--data is required (or --eval-set)", fix="give the data file whose rows are scored")
        examples = load_examples(ns.data)
        held = select_rows(len(examples), ns.rows if ns.rows is not None else ns.held_out,
                           "--rows" if ns.rows is not None else "--held-out", leave_some=False)
        tpl = None
        if ns.chat_template is not None:
            tpl = ns.chat_template.read_text(encoding="utf-8")
        eval_set = build_eval_set([examples[i] for i in held], tokenizer, template_source=ns.template_source,
                                  chat_template=tpl, max_length=ns.max_length, tokenizer_name=ns.tokenizer or
                                  str(ns.model or "embedded"), generate=ns.max_new_tokens > 0)
    result = evaluate_model(ns.model or "embedded", eval_set, tokenizer, max_new_tokens=ns.max_new_tokens,
                            trust_remote_code=ns.trust_remote_code)
    result["rows"] = [r.row for r in eval_set.rows]
    from .train import _finite  # noqa: PLC0415

    result = _finite(result)
    if ns.output is not None:
        from .runs import atomic_write_json  # noqa: PLC0415

        ns.output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(ns.output, result)
    if ns.format == "json":
        print(json.dumps(result, indent=2))
    else:
        print(text_summary(result))
    return 0


def text_summary(result: dict) -> str:
    """Example: "held-out loss 2.3105 nats (perplexity 10.08) on 412 tokens of 8 rows\\n  content 2.41 ..." """
    lines = [f"held-out loss {result['loss']:.4f} nats (perplexity {result['perplexity']:.2f}) on "
             f"{result['tokens']} tokens of {len(result.get('rows', []))} rows"]
    for part, v in (result.get("parts") or {}).items():
        lines.append(f"  {part:<10} {v['loss']:.4f} on {v['tokens']} tokens")
    if result.get("generated"):
        lines.append(f"generation ({result['generated']} prompts, greedy, {result['max_new_tokens']} new tokens at "
                     f"most): stop rate {result['stop_rate']:.0%}, role leak {result['role_leak_rate']:.0%}, empty "
                     f"{result['empty_rate']:.0%}, mean {result['mean_new_tokens']:.1f} tokens"
                     + (f", length ratio {result['length_ratio']:.2f}" if result.get("length_ratio") else ""))
        if result.get("think_open_rate") is not None:
            lines.append(f"think block opened {result['think_open_rate']:.0%}, closed "
                         f"{result['think_close_rate']:.0%}")
    return "\n".join(lines)
