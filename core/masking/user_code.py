"""Your own masking code: a Python file of strategies (``--strategy-file``) or your team's collator (``--collator``).

SECURITY: both import and run the file in the MaskLens process, with its permissions. They are for the person who
starts MaskLens (CLI flags, the app's start-up flags), never for something a web user can upload or type: the app
has no control that reaches these functions. Declarative rules (core.rules) are data and safe to edit in the app.

- load_strategy_file(path): the file registers strategies with ``@register("name", help=...)`` from core.strategies
  (a "parts" strategy returns a Decider; see core.strategies). Returns the names it registered.
- load_collator_file(path): the file defines ``make_collator(tokenizer)`` returning a callable that takes a list of
  ``{"input_ids": [...]}`` and returns a dict with ``"labels"`` (one list or tensor per example), e.g. an instance
  of a ``DataCollatorForCompletionOnlyLM`` subclass. Registered as a "collator_fn" strategy: MaskLens tokenizes as TRL
  does and the collator decides every label (core.engine calls it one example at a time, so no padding is added).

Errors (a syntax error, an exception while importing, a file that registers nothing) raise MaskLensError naming
the file and the line.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import traceback
from pathlib import Path

from ..errors import MaskLensError
from .strategies import get_strategy, register, strategy_names, unregister

_LOADED: dict[str, object] = {}  # module name -> module, so that code defined in the file stays importable


def load_strategy_file(path: str | Path) -> list[str]:
    """Import a Python file that registers strategies; return the names it registered (in registry order).

    Runs the file's code: a CLI / start-up flag only, never reachable from a web upload.
    Example: load_strategy_file("my_strategies.py") -> ["no_tool_calls"].
    """
    p = _check_file(path)
    before = {n: get_strategy(n) for n in strategy_names()}
    try:
        _import(p)
    except MaskLensError:
        _restore(before)
        raise
    added = [n for n in strategy_names() if get_strategy(n) is not before.get(n)]
    builtins = [n for n in added if before.get(n) is not None and before[n].builtin]
    if builtins:
        _restore(before)
        raise MaskLensError(f"registers {', '.join(map(repr, builtins))}, the name of a built-in strategy", file=str(p),
                            fix="give your strategy another name, e.g. register('my_" + builtins[0] + "')")
    if not added:
        raise MaskLensError("registers no strategy", file=str(p),
                            fix="decorate a function with @register('name', help='...') from core.strategies "
                                "(see core/strategies.py for an example)")
    for n in added:
        spec = get_strategy(n)
        if not isinstance(n, str) or not n.strip() or spec.fn is None or not callable(spec.fn):
            _restore(before)
            raise MaskLensError(f"registers {n!r} without a usable name or function", file=str(p),
                                fix="use @register('a_name') on a function taking the strategy's argument")
    return added


def load_collator_file(path: str | Path, name: str | None = None) -> str:
    """Import a file defining make_collator(tokenizer) and register it as a "collator_fn" strategy; return its name
    (default ``collator:<file stem>``).

    Runs the file's code: a CLI / start-up flag only, never reachable from a web upload.
    Example: load_collator_file("team_collator.py") -> "collator:team_collator".
    """
    p = _check_file(path)
    name = name or f"collator:{p.stem}"
    existing = get_strategy(name)
    if existing is not None and existing.builtin:
        raise MaskLensError(f"{name!r} is the name of a built-in strategy", file=str(p), fix="pass another name")
    module = _import(p)
    make = getattr(module, "make_collator", None)
    if make is None:
        raise MaskLensError("defines no make_collator", file=str(p),
                            fix="define make_collator(tokenizer) returning a callable that takes "
                                "[{'input_ids': [...]}, ...] and returns {'labels': [...]}")
    if not callable(make):
        raise MaskLensError(f"make_collator is a {type(make).__name__}, not a function", file=str(p),
                            fix="define make_collator as def make_collator(tokenizer): ...")
    line = _def_line(make)
    try:
        inspect.signature(make).bind(object())
    except TypeError:
        raise MaskLensError(f"line {line}: make_collator cannot be called with one argument (the tokenizer)",
                            file=str(p), fix="define it as def make_collator(tokenizer): ...") from None
    except ValueError:  # builtins without a signature: let the call decide
        pass
    register(name, help=f"the collator of {p.name} (make_collator, line {line})", kind="collator_fn")(
        _guarded_factory(make, p, line))
    return name


# ------------------------------------------------------------------------------------------------------ internals
def _check_file(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise MaskLensError("no such file", file=str(path), fix="give the path of a .py file")
    if not p.is_file():
        raise MaskLensError("is not a file", file=str(path), fix="give the path of a .py file")
    if p.suffix != ".py":
        raise MaskLensError("is not a Python file (.py)", file=str(path),
                            fix="give a .py file; for declarative rules (.json/.yaml) use --rules")
    return p.resolve()


def _import(p: Path):
    """Import the file under a unique module name; errors name the file and the line in it."""
    digest = hashlib.sha256(str(p).encode()).hexdigest()[:10]
    mod_name = f"masklens_user_{''.join(c if c.isalnum() else '_' for c in p.stem)}_{digest}"
    spec = importlib.util.spec_from_file_location(mod_name, p)
    if spec is None or spec.loader is None:
        raise MaskLensError("cannot be imported as a Python module", file=str(p), fix="give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # dataclasses and pickling look the module up here while it runs
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        sys.modules.pop(mod_name, None)
        where = f"line {e.lineno}" + (f", column {e.offset}" if e.offset else "")
        raise MaskLensError(f"{where}: syntax error: {e.msg}", file=str(p), fix="fix the Python syntax") from None
    except BaseException as e:  # noqa: BLE001 - user code: anything it raises (even SystemExit) is reported
        sys.modules.pop(mod_name, None)
        if isinstance(e, KeyboardInterrupt):
            raise
        raise MaskLensError(f"line {_line_in(e, p)}: {type(e).__name__} while importing: {e}", file=str(p),
                            fix="fix the error; the file must import cleanly (python " + p.name + ")") from None
    _LOADED[mod_name] = module
    return module


def _line_in(e: BaseException, p: Path) -> int | str:
    """The last line of the file `p` in the exception's traceback (the line the file was running)."""
    line: int | str = "?"
    for fr in traceback.extract_tb(e.__traceback__):
        if Path(fr.filename).resolve() == p:
            line = fr.lineno
    return line


def _def_line(fn) -> int | str:
    code = getattr(fn, "__code__", None) or getattr(getattr(fn, "__call__", None), "__code__", None)
    return code.co_firstlineno if code is not None else "?"


def _restore(before: dict) -> None:
    """Undo what a failed file registered: its new names go, names it replaced come back."""
    for n in strategy_names():
        old = before.get(n)
        if old is None:
            unregister(n)
        elif get_strategy(n) is not old:
            register(old.name, old.help, old.kind, old.trl_generation, old.builtin)(old.fn)


def _guarded_factory(make, p: Path, line):
    """make_collator wrapped: its failures and its answers' shapes become messages naming the file."""

    def factory(tokenizer):
        try:
            collate = make(tokenizer)
        except Exception as e:  # noqa: BLE001 - user code
            raise MaskLensError(f"line {_line_in(e, p)}: make_collator(tokenizer) raised {type(e).__name__}: {e}",
                                file=str(p), fix="fix make_collator; it runs once per tokenizer") from None
        if not callable(collate):
            raise MaskLensError(f"line {line}: make_collator returned a {type(collate).__name__}, not a callable",
                                file=str(p), fix="return the collator (an object with __call__, or a function)")
        return _checked(collate, p)

    return factory


def _checked(collate, p: Path):
    """The collator, with its answer checked: a dict with one labels row per example, each as long as its input_ids
    (longer only by -100 padding on the right). Raises plain exceptions: the engine adds the row."""

    def call(batch):
        out = collate(batch)
        if not hasattr(out, "__getitem__") or isinstance(out, (list, tuple, str)):
            raise TypeError(f"{p.name}: the collator returned a {type(out).__name__}, not a dict with 'labels'")
        try:
            labels = out["labels"]
        except (KeyError, TypeError, IndexError):
            raise KeyError(f"{p.name}: the collator's answer has no 'labels' (keys: "
                           f"{', '.join(map(str, getattr(out, 'keys', lambda: [])()))})") from None
        rows = labels.tolist() if hasattr(labels, "tolist") else list(labels)
        if len(rows) != len(batch):
            raise ValueError(f"{p.name}: the collator returned {len(rows)} labels rows for {len(batch)} examples")
        for k, (ex, row) in enumerate(zip(batch, rows)):
            row = row.tolist() if hasattr(row, "tolist") else row
            if not isinstance(row, (list, tuple)):
                raise TypeError(f"{p.name}: labels[{k}] is a {type(row).__name__}, not a list of token labels")
            n = len(ex["input_ids"])
            if len(row) < n:
                raise ValueError(f"{p.name}: the collator returned {len(row)} labels for {n} tokens")
            if any(int(x) != -100 for x in row[n:]):
                raise ValueError(f"{p.name}: the collator returned {len(row)} labels for {n} tokens and the extra "
                                 "ones are not -100 padding on the right (left padding, or labels shifted?)")
        return out

    return call
