"""The command line: `python -m core render | audit | train | checks`. Scripts and CI pipelines depend on it.

Bad input prints one line naming the file, row, field and fix, and exits with status 2 (no traceback).
Template arguments are taken literally: a newline in the argument is a newline, and "\\n" stays two characters.
`render` and `audit` stream the data: rows are read (core.reader), rendered and written or folded into the report
chunk by chunk (core.parallel), so memory does not grow with the file; `--num-proc N` renders in N processes
(default auto: forked workers, one per core, for a big local JSONL file on Linux; core.parallel.auto_procs).
Every MaskConfig option is a flag (defaults: TRL's behaviour); --rules / --strategy-file / --collator register
strategies before --strategy is checked against the registry.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import MaskLensError

EXIT_BAD_INPUT = 2


def _ids(s: str) -> list[int]:
    try:
        return [int(x) for x in s.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token ids such as 1,2,3, got {s!r}") from None


def _help(text: str) -> str:
    """argparse %-formats help strings: a literal % (e.g. {% generation %}) must be doubled."""
    return text.replace("%", "%%")


def _tokens(s: str) -> list[str]:
    """--mask-tokens value: one token string, or several separated by commas. Example: "</think>,<think>"."""
    parts = [t.strip() for t in s.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected token strings such as '</think>' (comma-separated or the flag "
                                         f"repeated), got {s!r}")
    return parts


def _procs(s: str) -> int | None:
    """--num-proc: a number of processes, or auto (None)."""
    if s == "auto":
        return None
    try:
        n = int(s)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a number of processes (1, 2, ...) or auto, got {s!r}")
    return n


def _add_num_proc(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-proc", type=_procs, default=None, metavar="N",
                   help="render in N worker processes; output in input order, identical to --num-proc 1 (this "
                        "process, two chunks at once in threads). Default auto: the machine's cores (at most 8) in "
                        "workers forked with the loaded tokenizer, for a local JSONL file of 4 MB or more on Linux; "
                        "else 1")


# ------------------------------------------------------------------------------------------ MaskConfig as flags
# One flag per MaskConfig option, generated from its metadata (core.masking.options): help, choices and default are
# defined there once. `kind` says how a value is typed on the command line.
def _add_option(p: argparse.ArgumentParser, o) -> None:
    h = _help(o.help)
    if o.name == "strategy":  # checked against the registry after --rules/--strategy-file/--collator load
        p.add_argument(o.flag, default=None, metavar="NAME", help=h + "; or one registered by --rules / "
                       "--strategy-file / --collator (default: the one strategy those files register)")
    elif o.kind == "choice":
        p.add_argument(o.flag, default=o.default, choices=o.choices, help=f"{h} (default: {o.default})")
    elif o.kind == "bool" and o.default:
        p.add_argument("--no-" + o.flag[2:].removeprefix("use-"), dest=o.name, action="store_false",
                       help=f"turn off: {h}")
    elif o.kind == "bool":
        p.add_argument(o.flag, action="store_true", help=h)
    elif o.kind in ("int", "float"):
        p.add_argument(o.flag, type=int if o.kind == "int" else float, default=o.default, metavar="N" if
                       o.kind == "int" else "W", help=h + (f" (default: {o.default})" if o.default is not None else ""))
    elif o.kind == "text":
        p.add_argument(o.flag, default=None, metavar="TOKEN", help=h)
    elif o.kind == "tokens":
        p.add_argument(o.flag, action="append", default=[], type=_tokens, metavar="TOKEN",
                       help=h + "; repeat the flag or separate with commas")
    elif o.kind == "roles":
        p.add_argument(o.flag, default=None, metavar="ROLES", help=h + "; comma-separated (default: assistant; with "
                       "--rules: the roles the rules train)")
    elif o.kind == "template_file":
        p.add_argument(o.flag, type=Path, default=None, metavar="FILE", help=h + " (a jinja file)")
    elif o.kind == "text_or_ids":
        g = p.add_mutually_exclusive_group()
        g.add_argument(o.flag, default=None, metavar="TEXT", help=h + " (literal text)")
        g.add_argument(o.flag + "-ids", dest=o.name + "_ids", type=_ids, default=None, metavar="1,2,3",
                       help="the same as token ids")
    else:  # a new kind must say how it is typed
        raise AssertionError(f"MaskConfig option {o.name}: no flag for kind {o.kind!r}")


def _option_value(ns, o):
    """The MaskConfig value a flag gave (None: not given, the default applies)."""
    v = getattr(ns, o.name)
    if o.kind == "tokens":
        return tuple(dict.fromkeys(t for group in v for t in group))
    if o.kind == "roles":
        return None if v is None else tuple(r.strip() for r in v.split(",") if r.strip())
    if o.kind == "text_or_ids":
        return getattr(ns, o.name + "_ids") or v
    if o.kind == "template_file" and v is not None:
        return _read_template(v)
    return v


def _read_template(path: Path) -> str:
    try:
        tpl = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise MaskLensError(f"cannot be read ({getattr(e, 'strerror', None) or e})", file=str(path),
                            fix="give a readable UTF-8 jinja template file") from None
    if not tpl.strip():
        raise MaskLensError("is empty", file=str(path), fix="give a jinja chat template")
    return tpl


def _add_render_options(p: argparse.ArgumentParser) -> None:
    from .masking.options import options

    p.add_argument("--data", required=True, help="JSONL/JSON/Parquet/CSV file, or a hub dataset id")
    p.add_argument("--split", default="train", help="split, for hub datasets")
    p.add_argument("--tokenizer", default=None, help="hub id or local directory (default: the embedded SmolLM2; for "
                                                     "train: --model's own tokenizer)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the tokenizer's own code (off by default)")
    p.add_argument("--rules", action="append", default=[], type=Path, metavar="FILE",
                   help="declarative masking rules (.json/.yaml), registered as strategy rules:<name> (repeatable)")
    p.add_argument("--strategy-file", action="append", default=[], type=Path, metavar="FILE.py",
                   help="a Python file registering strategies with @register (runs its code; repeatable)")
    p.add_argument("--collator", action="append", default=[], type=Path, metavar="FILE.py",
                   help="a Python file defining make_collator(tokenizer): its labels, as strategy collator:<stem> "
                        "(runs its code; repeatable)")
    for o in options():
        _add_option(p, o)
    p.add_argument("--limit", type=int, default=None, help="only the first N rows")


def _spec(ns):
    from .parallel import WorkerSpec

    return WorkerSpec(tokenizer=ns.tokenizer, trust_remote_code=ns.trust_remote_code,
                      rules_files=tuple(map(str, ns.rules)), strategy_files=tuple(map(str, ns.strategy_file)),
                      collator_files=tuple(map(str, ns.collator)))


def _config(ns, registered: dict | None = None):
    """The MaskConfig the flags describe. `registered`: {name: Rules | file} from WorkerSpec.register() (the user
    files are loaded there, before the strategy name is checked against the registry)."""
    from .masking.options import MaskConfig, options
    from .masking.rules import Rules
    from .masking.strategies import strategy_names

    registered = registered if registered is not None else _spec(ns).register()
    strategy = ns.strategy
    if strategy is None:
        if len(registered) != 1:
            raise MaskLensError("--strategy is required" + (f" ({len(registered)} strategies were registered)"
                                                           if registered else ""),
                                fix=f"choose one: --strategy NAME, with NAME one of {', '.join(strategy_names())}")
        strategy = next(iter(registered))
    if strategy not in strategy_names():
        raise MaskLensError(f"--strategy {strategy!r} is not a registered strategy",
                            fix=f"use one of {', '.join(strategy_names())} (or register yours with --rules FILE, "
                                "--strategy-file FILE.py or --collator FILE.py)")
    given = {o.name: v for o in options() if o.name != "strategy" and (v := _option_value(ns, o)) is not None}
    rules = registered.get(strategy)
    try:
        cfg = MaskConfig(strategy=strategy, **given)
        return cfg.with_rules(rules, strategy, roles_given="train_roles" in given) if isinstance(rules, Rules) else cfg
    except MaskLensError as e:  # name the flag, not the dataclass field
        if e.field is None:
            raise
        raise MaskLensError(f"--{e.field.replace('_', '-')}: {e.message}", fix=e.fix) from None


def _load(ns):
    from .data.formats import load_examples
    from .pipeline import Job, Source, check_options

    spec = _spec(ns)
    cfg = _config(ns, spec.register())
    examples = load_examples(ns.data, split=ns.split, limit=ns.limit)
    tok = spec.load_tokenizer()
    check_options(Job(Source(ns.data), cfg, spec), tok)
    return cfg, examples, tok


def _job(ns):
    from .pipeline import Job, Source

    spec = _spec(ns)
    return Job(Source(str(ns.data), ns.split, ns.limit), _config(ns, spec.register()), spec, ns.num_proc)


def _progress(done: int) -> None:
    if sys.stderr.isatty():
        print(f"\r{done} rows", end="", file=sys.stderr, flush=True)


def cmd_render(ns) -> int:
    from .pipeline import render_to_file

    n = render_to_file(_job(ns), ns.output)
    print(f"wrote {n} examples to {ns.output}", file=sys.stderr)
    return 0


def cmd_audit(ns) -> int:
    from .pipeline import audit

    report = audit(_job(ns), on_rows=_progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(json.dumps(report.to_json(), indent=2) if ns.format == "json" else report.to_text())
    return 0


def cmd_train(ns) -> int:
    """Train in the child process the app uses (`core.runs.launch`): its output goes to DIR/log.txt, and a line per
    logged step (step, loss, ETA) to stderr. A failed run prints its error and the end of its log, exit 1."""
    import time

    from .training import runs
    from .masking.engine import render_examples
    from .training.train import TrainConfig

    if ns.model and ns.tokenizer is None:
        ns.tokenizer = ns.model  # the labels are token ids: they must be the model's own tokenizer's
    cfg, examples, tok = _load(ns)
    from .training.train import training_rows

    rendered = render_examples(examples, tok, cfg)
    data = training_rows(rendered)  # + loss_weights when weights are fractional (prompt_loss_weight...)
    given = {"learning_rate": ns.learning_rate, "per_device_train_batch_size": ns.batch_size,
             "gradient_accumulation_steps": ns.grad_accum, "seed": ns.seed, "loss_type": ns.loss_type,
             "report_to": ns.report_to}
    tc = TrainConfig(model=ns.model or "embedded", lora=ns.lora, max_steps=ns.max_steps, max_length=ns.max_length,
                     packing=ns.packing, mask_config=_mask_dict(cfg), data_path=str(ns.data),
                     **{k: v for k, v in given.items() if v is not None})
    out = ns.output_dir.resolve()
    if out.exists() and any(out.iterdir()):
        raise MaskLensError("already exists and is not empty", file=str(out), fix="choose a new --output-dir")
    if out.exists():
        out.rmdir()
    run_dir = runs.create_run(data, tc, out.parent, name=out.name)
    log = run_dir / runs.LOG_FILE
    n_trained = sum(r.n_trained for r in rendered)
    print(f"training {tc.model} on {len(data)} examples ({n_trained} trained tokens, {cfg.strategy}) for "
          f"{tc.max_steps} steps; log: {log}", file=sys.stderr)
    handle = runs.launch(run_dir)
    seen = 0
    try:
        while True:
            exited = handle.process.poll() is not None
            metrics = runs.read_metrics(run_dir)
            for m in metrics[seen:]:
                loss = "nan" if m.get("loss") is None else f"{m['loss']:.4f}"
                eta = m.get("eta_s")
                print(f"step {m['step']}/{tc.max_steps}  loss {loss}  elapsed {m.get('elapsed_s', 0):.0f}s  ETA "
                      + ("-" if eta is None else f"{eta:.0f}s"), file=sys.stderr, flush=True)
            seen = len(metrics)
            if exited:
                break
            time.sleep(0.5)
    except KeyboardInterrupt:  # the child leads its own session: Ctrl-C does not reach it, so stop it here
        print("interrupted: stopping the run after its current step...", file=sys.stderr, flush=True)
        status = runs.stop_run(run_dir, grace_s=30)
        handle.process.wait()
        print(f"run {status}: {run_dir}", file=sys.stderr)
        return 130
    rec = runs.read_run(run_dir)
    if handle.process.returncode != 0 or rec.get("status") not in ("completed", "stopped"):
        print(f"error: the run failed: {rec.get('error') or f'exit status {handle.process.returncode}'}",
              file=sys.stderr)
        tail = runs.read_log(run_dir, 6000).rstrip().splitlines()[-20:]
        print(f"last lines of {log}:\n" + "\n".join(f"  {line}" for line in tail), file=sys.stderr)
        return 1
    loss = (rec.get("result") or {}).get("train_loss")
    print(f"run {rec['status']} after {(rec.get('result') or {}).get('global_step')} steps"
          + (f", mean loss {loss:.4f}" if loss is not None else "") + f": {run_dir}", file=sys.stderr)
    return 0


def _mask_dict(cfg) -> dict:
    return cfg.to_dict()


def cmd_checks(ns) -> int:
    from .masking.checks import derive_templates, template_checks
    from .models import load_tokenizer

    tok = load_tokenizer(ns.tokenizer, trust_remote_code=ns.trust_remote_code)
    tpl = ns.chat_template.read_text(encoding="utf-8") if ns.chat_template else None
    checks = template_checks(tok, tpl)
    derived = derive_templates(tok, tpl)
    if ns.format == "json":
        print(json.dumps({"checks": [c.__dict__ for c in checks], "derived": [d.__dict__ for d in derived]}, indent=2))
    else:
        for c in checks:
            mark = "PASS" if c.passed else ("n/a " if c.passed is None else "FAIL")
            print(f"{mark}  {c.name}: {c.detail}")
        for d in derived:
            print(f"{d.name} template: {d.text!r} ids alone {d.ids_alone}, in context {d.ids_in_context} ({d.note})")
    return 0 if all(c.passed is not False for c in checks) or not ns.strict else 1


def _add_train_field(p: argparse.ArgumentParser, name: str, **kw) -> None:
    """A TrainConfig field as a flag, its help and choices read from the field (defined once there)."""
    from .training.train import TrainConfig

    meta = TrainConfig.help()[name]
    p.add_argument("--" + name.replace("_", "-"), default=None, choices=meta.get("choices"),
                   help=_help(f"{meta['help']} (default: {meta['default']})"), **kw)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core", description="MaskLens: see what SFT trains on.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="write input_ids + labels + findings, one JSON object per input row")
    _add_render_options(r)
    r.add_argument("--output", required=True, type=Path, help="FILE.jsonl")
    _add_num_proc(r)
    r.set_defaults(func=cmd_render)
    a = sub.add_parser("audit", help="summarise a dataset under one configuration")
    _add_render_options(a)
    a.add_argument("--format", choices=("json", "text"), default="text", help="report format (default: text)")
    _add_num_proc(a)
    a.set_defaults(func=cmd_audit)
    t = sub.add_parser("train", help="a short TRL SFT run on exactly these labels")
    _add_render_options(t)
    t.add_argument("--model", default=None, help="hub id or local directory (default: the embedded SmolLM2)")
    t.add_argument("--lora", action="store_true", help="train a LoRA adapter instead of the full model")
    t.add_argument("--max-steps", type=int, required=True, help="optimizer steps")
    t.add_argument("--learning-rate", type=float, default=None, help="default: TrainConfig's")
    t.add_argument("--batch-size", type=int, default=None, help="per-device batch size")
    t.add_argument("--grad-accum", type=int, default=None, help="gradient accumulation steps")
    t.add_argument("--packing", action="store_true", help="pack examples into full-length sequences")
    t.add_argument("--seed", type=int, default=None, help="random seed")
    _add_train_field(t, "loss_type")
    _add_train_field(t, "report_to", metavar="NAME")
    t.add_argument("--output-dir", required=True, type=Path, help="a new directory for the run")
    t.set_defaults(func=cmd_train)
    c = sub.add_parser("checks", help="check a chat template against the known pitfalls")
    c.add_argument("--tokenizer", default=None, help="hub id or local directory (default: the embedded SmolLM2)")
    c.add_argument("--trust-remote-code", action="store_true", help="allow the tokenizer's own code (off by default)")
    c.add_argument("--chat-template", type=Path, default=None,
                   help="a jinja chat template file replacing the tokenizer's")
    c.add_argument("--format", choices=("json", "text"), default="text", help="output format (default: text)")
    c.add_argument("--strict", action="store_true", help="exit 1 when a check fails")
    c.set_defaults(func=cmd_checks)
    from .training.commands import add_evaluate_parser, add_experiment_parser  # noqa: PLC0415

    add_experiment_parser(sub)
    add_evaluate_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        return ns.func(ns)
    except MaskLensError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
