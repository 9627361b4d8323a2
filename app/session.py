"""Per-user state and the small glue between UI values and the engine: datasets read row by row, tokenizers by name,
masking settings as the UI holds them. No gradio here: every function is callable (and tested) without a browser.

A session lives in a ``gr.State`` (one per browser tab); the only module-level cache is core.models' tokenizer cache
(tokenizers are immutable once loaded and shared by all users).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, fields, make_dataclass, replace
from pathlib import Path

from core.data.formats import Example, load_examples_lenient, normalize_row
from core.masking.engine import MaskConfig, RenderedExample, render_examples
from core.masking.options import Option, options
from core.errors import MaskLensError
from core.models import load_tokenizer
from core.masking.rules import Rules

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "samples"
DEFAULT_SAMPLE = "chat_multiturn.jsonl"
EMBEDDED = "embedded"

# file -> what it shows off (the sample dropdown's labels)
SAMPLES = {
    "chat_multiturn.jsonl": "multi-turn chats with system prompts",
    "agent_traces.jsonl": "tool-calling agent traces: tool schemas, parallel calls, tool results, final answers",
    "reasoning.jsonl": "reasoning traces (reasoning_content on several turns, one inline <think>)",
    "tools.jsonl": "tool calls and tool results",
    "weighted.jsonl": "assistant turns flagged weight 0/1, train true/false",
    "prompt_completion.jsonl": "prompt/completion strings",
    "prompt_completion_chat.jsonl": "prompt/completion message lists",
    "text.jsonl": "plain text (language modelling)",
    "sharegpt.jsonl": "ShareGPT conversations (from/value)",
    "alpaca.jsonl": "LLaMA-Factory alpaca rows (instruction/input/output, system, history), converted",
    "toolcall_sharegpt.jsonl": "LLaMA-Factory ShareGPT tool calls (function_call/observation, tools string), converted",
    "typed_parts.jsonl": "LLaMA-Factory typed parts (text/reasoning/tool_call, loss_weight), converted",
    "broken.jsonl": "deliberately broken rows",
}
# What the Upload button takes: one data file, or a .zip of a dataset folder (a data file with its images, a folder
# of shards, a save_to_disk folder), unpacked into the cache (core.data.sources.unpack_zip). Typed server paths are not
# taken from the page (tests/test_security.py): a folder on the server is opened with `python -m app --data PATH`.
UPLOAD_TYPES = [".jsonl", ".json", ".parquet", ".csv", ".zip"]
MAX_UNPACKED_UPLOADS = 16  # unpacked zips kept in the cache (the oldest go first)


def sample_choices() -> list[tuple[str, str]]:
    """(label, file name) pairs for the bundled samples present on disk, the default first (SAMPLES describes them)."""
    present = {p.name for p in SAMPLES_DIR.glob("*.jsonl")}
    names = [n for n in SAMPLES if n in present] + sorted(present - set(SAMPLES))
    return [(f"{n} — {SAMPLES[n]}" if n in SAMPLES else n, n) for n in names]


# ------------------------------------------------------------------------------------------------------ datasets
@dataclass
class RowError:
    """A row that could not be read: where it is and why (the MaskLensError text, which names the fix)."""

    row: int | None
    line: int | None
    message: str


@dataclass
class Dataset:
    """The valid examples of one file plus the rows that failed. ``examples[k].row`` is the row in the file."""

    name: str
    examples: list[Example]
    errors: list[RowError] = field(default_factory=list)
    n_rows: int = 0  # rows in the file, valid or not
    root: str | None = None  # images must lie inside this folder: the dataset's own (an upload's, an unpacked zip's)

    def __len__(self) -> int:
        return len(self.examples)


def load_dataset(path: str | Path, name: str | None = None) -> Dataset:
    """Read a dataset tolerantly (core.data.load_examples_lenient): every valid row is kept and every bad row listed
    with its error, so one malformed line does not hide the rest. Errors name the file by `name` (an upload's
    temporary path means nothing to the user). Raises MaskLensError only when the file as a whole cannot be read.
    Example: load_dataset("assets/samples/broken.jsonl") -> 2 examples, 5 errors.
    """
    p = Path(path)
    name = name or p.name
    # Images must lie inside the dataset's own folder (an upload's folder is its own: Gradio gives each upload one),
    # so a row cannot point the server at other files: core.masking.vision.open_image(root=Dataset.root).
    root = p.resolve() if p.is_dir() else p.resolve().parent
    shown = p  # the path whose text errors show as `name`
    if p.suffix.lower() == ".zip" and p.is_file():
        p, root = unpack_upload(p, name)
        shown = Path(root)
    try:
        examples, errors = load_examples_lenient(p)
    except MaskLensError as e:
        raise _renamed(e, name, shown) from None
    except UnicodeDecodeError as e:
        raise MaskLensError(f"is not UTF-8 text ({e.reason})", file=name, fix="save the file as UTF-8") from None
    for ex in examples:
        ex.source = _shown_name(ex.source, name, shown)
    errs = [RowError(e.row, _line_of(e), str(_renamed(e, name, shown))) for e in errors]
    errs.sort(key=lambda e: (e.row is None, e.row or 0))
    return Dataset(name, examples, errs, len(examples) + len(errors), root=str(root))


def _shown_name(source: str | None, name: str, shown: Path) -> str:
    """A row's file as the user knows it: `name` for the file itself, `name/shard` for a shard of a folder or zip."""
    if not source or source == str(shown):
        return name
    try:
        return f"{name}/{Path(source).relative_to(shown).as_posix()}"
    except ValueError:
        return name


def _renamed(e: MaskLensError, name: str, shown: Path | None = None) -> MaskLensError:
    """The error with the file named as the user knows it: the temporary path also goes from message and fix (an
    `iconv ... PATH` fix shows the name instead); a shard of a folder or zip is `name/shard`."""
    file = _shown_name(e.file, name, shown) if e.file and shown is not None else name

    def swap(s):
        if not s:
            return s
        if e.file:
            s = s.replace(str(e.file), file)
        return s.replace(str(shown), name) if shown is not None else s

    return MaskLensError(swap(e.message), file=file if e.file else None, row=e.row, field=e.field, fix=swap(e.fix))


def unpack_upload(path: Path, name: str) -> tuple[Path, Path]:
    """An uploaded .zip unpacked into the cache (cache_dir()/uploads/<sha256>, reused when the same zip comes again;
    the MAX_UNPACKED_UPLOADS newest kept): (the folder to read, the folder its images must lie in). The only place
    upload bytes (images included) are written. Raises MaskLensError naming the zip by `name`."""
    import shutil  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from core.data.sources import unpack_zip  # noqa: PLC0415
    from core.models import cache_dir  # noqa: PLC0415

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            h.update(chunk)
    base = cache_dir() / "uploads"
    base.mkdir(parents=True, exist_ok=True)
    dest = base / h.hexdigest()[:32]
    if not dest.is_dir():
        tmp = Path(tempfile.mkdtemp(dir=base, prefix=".unpack-"))
        try:
            unpack_zip(path, tmp / "x")
            os.replace(tmp / "x", dest)
        except MaskLensError as e:
            raise MaskLensError(e.message.replace(str(path), name), file=name, fix=e.fix) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    os.utime(dest)
    _prune_uploads(base)
    entries = [e for e in dest.iterdir() if not e.name.startswith((".", "__MACOSX"))]
    folder = entries[0] if len(entries) == 1 and entries[0].is_dir() else dest
    return folder, dest


def _prune_uploads(base: Path) -> None:
    import shutil  # noqa: PLC0415

    dirs = sorted((d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: d.stat().st_mtime, reverse=True)
    for d in dirs[MAX_UNPACKED_UPLOADS:]:
        shutil.rmtree(d, ignore_errors=True)


def _line_of(e: MaskLensError) -> int | None:
    m = re.match(r"line (\d+)", e.message)
    return int(m.group(1)) if m else None


def load_sample(file_name: str) -> Dataset:
    """A bundled sample by file name (only names listed in assets/samples: no path from the UI reaches the disk)."""
    allowed = {n for _, n in sample_choices()}
    if file_name not in allowed:
        raise MaskLensError(f"unknown sample {file_name!r}", fix=f"choose one of {', '.join(sorted(allowed))}")
    return load_dataset(SAMPLES_DIR / file_name, file_name)


def parse_example_json(text: str, row: int = 0) -> Example:
    """One example pasted or edited as JSON. Example: '{"text": "hi"}' -> Example(kind="text")."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise MaskLensError(f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})", field="example JSON",
                            fix="edit the JSON so that it parses (one object)") from None
    if not isinstance(obj, dict):
        raise MaskLensError(f"a JSON {type(obj).__name__}, not an object", field="example JSON",
                            fix='give one object such as {"messages": [...]}')
    return normalize_row(obj, row, source="edited example")


# ------------------------------------------------------------------------------------------------------ tokenizers
def get_tokenizer(name: str | None):
    """The tokenizer for a UI name ("embedded", a hub id or a local directory); cached and shared (do not mutate)."""
    name = (name or "").strip() or EMBEDDED
    return load_tokenizer(None if name == EMBEDDED else name)


# ------------------------------------------------------------------------------------------------------ settings
_IDS_RE = re.compile(r"^\s*\[?\s*-?\d+(\s*[, ]\s*-?\d+)*\s*\]?\s*$")


def unescape(s: str) -> str:
    r"""Read \n, \t and \\ typed in a one-line text box as the characters. Example: "a\\nb" -> "a\nb"."""
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s) and s[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[s[i + 1]])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def escape(s: str) -> str:
    r"""The inverse of unescape, to show a template with newlines in a one-line box. Example: "a\nb" -> "a\\nb"."""
    return s.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def parse_ids(s: str, field_name: str) -> list[int]:
    """'27, 1234 5' or '[27, 1234]' -> [27, 1234, 5]; anything else is an error naming the field."""
    if not _IDS_RE.match(s or ""):
        raise MaskLensError(f"{s!r} is not a list of token ids", field=field_name,
                            fix="give comma-separated integers such as 1, 31, 22, or untick 'token ids'")
    return [int(x) for x in re.findall(r"-?\d+", s)]


# strategy name -> the rules a --rules file registered at start (their mask_tokens and roles join the configuration)
STARTUP_RULES: dict[str, Rules] = {}
# What the UI holds beside the options: whether the Response / Instruction template boxes hold token ids.
TEMPLATES_AS_IDS = "templates_as_ids"
# Where a box starts other than empty: the ChatML generation prompt (the page fills in its template's own on load).
UI_DEFAULTS = {"response_template": r"<|im_start|>assistant\n"}


def setting_options() -> list[Option]:
    """The options the UI holds as settings: every MaskConfig option but the chat template (the session's own:
    Session.chat_template, set by the Chat template picker)."""
    return [o for o in options() if o.kind != "template_file"]


def ui_value(o: Option, value):
    """An option's engine value as its control holds it: "" for no text, 0 for no number, tokens and ids as typed.
    Example: ui_value(option("mask_tokens"), ("</think>", "\n")) -> "</think>, \\n"."""
    if value is None:
        return 0 if o.kind == "int" else ""
    if o.kind == "tokens":
        return ", ".join(escape(t) for t in value)
    if o.kind == "text_or_ids" and isinstance(value, list):
        return ", ".join(map(str, value))
    return value


def config_value(o: Option, value, as_ids: bool = False):
    """A control's value as the engine takes it (the inverse of ui_value); MaskConfig then checks it. Raises
    MaskLensError naming the option for a value that is not of its kind. Example: config_value(max_length, 0) -> None.
    """
    if o.kind == "bool":
        return bool(value)
    if o.kind in ("int", "float"):
        try:
            v = (int if o.kind == "int" else float)(value or 0)
        except (TypeError, ValueError):
            raise MaskLensError(f"{value!r} is not a number", field=o.name) from None
        return None if o.kind == "int" and v == 0 and o.default is None else v  # 0 = no limit
    if o.kind == "roles":
        return tuple(value or ()) or o.default
    if o.kind == "tokens":
        return _token_list(value)
    if o.kind in ("text", "text_or_ids"):
        text = (value or "").strip("\r")
        if not text.strip():
            return None
        if o.kind == "text":
            return text.strip()
        return parse_ids(text, o.name) if as_ids else unescape(text)
    return value  # a choice


class _SettingsMethods:
    def to_config(self, chat_template: str | None = None) -> MaskConfig:
        """The engine's MaskConfig; raises MaskLensError (naming the field) for a bad value. A --rules strategy joins
        its rules (MaskConfig.with_rules: their mask_tokens after the box's, their roles)."""
        as_ids = bool(getattr(self, TEMPLATES_AS_IDS))
        cfg = MaskConfig(chat_template=chat_template or None,
                         **{o.name: config_value(o, getattr(self, o.name), as_ids) for o in setting_options()})
        rules = STARTUP_RULES.get(self.strategy)
        return cfg.with_rules(rules, self.strategy) if rules is not None else cfg


def _setting_fields() -> list[tuple]:
    out = [(o.name, object, field(default=UI_DEFAULTS.get(o.name, ui_value(o, o.default))))
           for o in setting_options()]
    return out + [(TEMPLATES_AS_IDS, bool, field(default=False))]


# The masking settings as the controls hold them (strings from text boxes, 0 for 'no max_length'): one field per
# MaskConfig option (core.masking.options: each is defined there once), in its order, then TEMPLATES_AS_IDS.
# Example: Settings(strategy="full", max_length=0).to_config() == MaskConfig("full", response_template=...).
Settings = make_dataclass("Settings", _setting_fields(), bases=(_SettingsMethods,))
SETTING_FIELDS = [f.name for f in fields(Settings)]


def coherent(settings) -> object:
    """The settings as the controls show them: split_turns only with assistant_only (the box goes unticked)."""
    return replace(settings, split_turns=bool(settings.split_turns) and settings.strategy == "assistant_only")


def _token_list(value: str | tuple[str, ...]) -> tuple[str, ...]:
    r"""Token strings from a comma-separated box (\n read as a newline). Example: "</think>, <|im_end|>" -> 2 tokens."""
    if not isinstance(value, str):
        return tuple(value or ())
    return tuple(unescape(t.strip()) for t in value.split(",") if t.strip())


@dataclass
class Session:
    """Everything one user has chosen. Lives in gr.State (deep-copied per browser tab)."""

    tokenizer_name: str = EMBEDDED
    data: Dataset | None = None
    index: int = 0
    settings: Settings = field(default_factory=Settings)
    chat_template: str | None = None  # an edited template replacing the tokenizer's; None = the tokenizer's
    turn: int | None = None  # split_turns: the assistant message whose example is shown (None: the row's first)
    display: dict = field(default_factory=dict)  # token view display options (app.tab_inspect.DISPLAY_DEFAULTS)
    uploaded: Dataset | None = None  # the last uploaded file, or the one the app opened with (the Data picker lists it)
    # (chat template the app picked itself for the data, the one it replaced): app.tab_inspect.fit_template
    auto_template: tuple[str, str | None] | None = None

    @property
    def example(self) -> Example | None:
        if self.data is None or not self.data.examples:
            return None
        return self.data.examples[max(0, min(self.index, len(self.data.examples) - 1))]

    def config(self, **overrides) -> MaskConfig:
        """The engine's configuration. An edited chat template is probed in the sandbox first (check_template):
        raises MaskLensError when it loops, floods or eats memory on tiny conversations."""
        self.check_template()
        return replace(self.settings, **overrides).to_config(self.chat_template) if overrides else \
            self.settings.to_config(self.chat_template)

    def check_template(self) -> None:
        """Probe the edited chat template (if any) in the bounded sandbox; raises MaskLensError past a bound."""
        if self.chat_template:
            check_template(self.chat_template, self.tokenizer())

    def check_rows(self, examples: list[Example] | None = None) -> None:
        """Render these examples (default: the whole dataset) with the edited chat template in the bounded sandbox,
        before the engine renders them in this process: a template hostile to one row only is stopped too."""
        if self.chat_template:
            rows = examples if examples is not None else (self.data.examples if self.data else [])
            check_rows_render(self.chat_template, self.tokenizer(), rows)

    def tokenizer(self):
        return get_tokenizer(self.tokenizer_name)

    def render_row(self, cfg: MaskConfig | None = None) -> list[RenderedExample]:
        """The current row rendered: one example, or one per trained assistant turn with split_turns."""
        ex = self.example
        if ex is None:
            raise MaskLensError("no example to render",
                                fix="choose a sample dataset, upload a file or paste an example")
        cfg = cfg or self.config()
        self.check_rows([ex])
        return render_examples([ex], self.tokenizer(), cfg, image_root=self.data.root)

    def render_current(self, cfg: MaskConfig | None = None) -> RenderedExample:
        """The example shown: with split_turns, the one for `turn` (else the row's first)."""
        rs = self.render_row(cfg)
        return next((r for r in rs if r.turn is not None and r.turn == self.turn), rs[0])

    def tokenizer_template(self) -> str:
        """The tokenizer's own chat template (its 'default' when it ships several), or ''."""
        t = getattr(self.tokenizer(), "chat_template", None)
        if isinstance(t, dict):
            t = t.get("default")
        return t or ""

    def template(self) -> str | None:
        """The template in use: the edited one (probed: check_template), else the tokenizer's."""
        self.check_template()
        return self.chat_template or self.tokenizer_template() or None


# ------------------------------------------------------------------------------------------------------ templates
# A chat template pasted or picked in the page is code from a web user: before MaskLens renders with it in the server
# process, it runs in core.sandbox's worker (OS limits on time, memory and output). Results are cached per template
# text and tokenizer, so a view costs a dictionary lookup after the first probe (~0.4 ms, plus starting the workers).
PROBE_TIMEOUT_S = 3.0
ROW_TIMEOUT_S = 5.0  # one row, or a batch of rows, rendered in the sandbox before the engine renders them
MAX_PROBED = 256
_probed: OrderedDict[tuple[str, int], MaskLensError | None] = OrderedDict()
_probed_lock = threading.Lock()
TEMPLATE_NAME = "the edited chat template"


def check_template(template: str, tokenizer) -> None:
    """Probe a template with core.sandbox.probe_template (three tiny conversations, PROBE_TIMEOUT_S). Raises the
    sandbox's MaskLensError (what bound it hit, the fix) when it runs past a bound; a template that merely fails to
    render is left to the engine, whose error names the row. Example: "{% for i in range(10**5) %}{% for j in
    range(10**5) %}x{% endfor %}{% endfor %}" -> MaskLensError("the edited chat template ran past 3 s ...")."""
    from core.masking.sandbox import probe_template  # noqa: PLC0415

    key = (hashlib.sha256(template.encode("utf-8", "surrogatepass")).hexdigest(), id(tokenizer))
    with _probed_lock:
        if key in _probed:
            _probed.move_to_end(key)
            err = _probed[key]
            if err is not None:
                raise err
            return
    try:
        probe_template(template, dict(tokenizer.special_tokens_map), template_name=TEMPLATE_NAME,
                       timeout_s=PROBE_TIMEOUT_S)
        err = None
    except MaskLensError as e:
        if getattr(e, "bound", None) not in ("time", "memory", "output", "crash"):
            err = None  # it raises on the probes (a syntax error, a raise_exception): the engine reports it per row
            if not hasattr(e, "bound"):  # the sandbox itself could not start: do not cache, say so
                raise
        else:
            err = e
    with _probed_lock:
        _probed[key] = err
        while len(_probed) > MAX_PROBED:
            _probed.popitem(last=False)
    if err is not None:
        raise err


def check_rows_render(template: str, tokenizer, examples: list[Example]) -> None:
    """Render the conversational examples with the template in the sandbox (core.sandbox.render_batch); raises the
    first bound error, naming the row. Ordinary template errors are left to the engine (it reports them per row)."""
    from core.masking.sandbox import render_batch  # noqa: PLC0415

    rows = [ex for ex in examples if ex.messages]
    if not rows:
        return
    base = dict(tokenizer.special_tokens_map)
    jobs = [{"messages": [{k: v for k, v in m.items() if not k.startswith("_")} for m in ex.messages],
             "tools": ex.tools, "kwargs": {**base, **(ex.chat_template_kwargs or {})}} for ex in rows]
    for ex, res in zip(rows, render_batch(template, jobs, template_name=TEMPLATE_NAME, timeout_s=ROW_TIMEOUT_S)):
        if isinstance(res, MaskLensError) and getattr(res, "bound", None) in ("time", "memory", "output", "crash",
                                                                              "skipped"):
            raise MaskLensError(res.message, row=ex.row, fix=res.fix)


# ------------------------------------------------------------------------------------------------------ start-up


def register_startup_strategies(rules_files=(), strategy_files=(), collator_files=()) -> list[str]:
    """Register what the operator names when starting the app (``python -m app --rules FILE --strategy-file FILE
    --collator FILE``, each repeatable): every session lists these strategies beside the built-ins.

    Strategy and collator files are Python code, imported and run here (core.user_code): start-up flags only, never
    reachable from the page. Rules files are data (core.rules), registered as ``rules:<name>``.
    All or nothing: on the first bad file, what this call registered is undone and its MaskLensError (file, line or
    key, fix) raised. A name registered twice is an error, not a silent replacement.
    Example: register_startup_strategies(["first_turn.yaml"], ["mine.py"]) -> ["rules:first_turn", "no_tool_calls"]
    """
    from core.masking.rules import load_rules, register_rules  # noqa: PLC0415
    from core.masking.strategies import get_strategy, strategy_names, unregister  # noqa: PLC0415
    from core.masking.user_code import load_collator_file, load_strategy_file  # noqa: PLC0415

    before = set(strategy_names())
    added: list[str] = []
    rules_added: dict[str, Rules] = {}

    def fresh(name: str, path) -> None:
        if get_strategy(name) is not None:
            raise MaskLensError(f"registers {name!r}, a strategy already registered" +
                                (" by an earlier file" if name in added else ""), file=str(path),
                                fix="give each rules set, strategy and collator its own name")

    try:
        for path in rules_files or ():
            rules = load_rules(path)
            fresh(rules.strategy_name, path)
            added.append(register_rules(rules))
            rules_added[rules.strategy_name] = rules
        for path in strategy_files or ():
            known = set(strategy_names())
            names = load_strategy_file(path)
            clash = [n for n in names if n in known]
            if clash:
                raise MaskLensError(f"registers {clash[0]!r}, a strategy already registered"
                                    + (" by an earlier file" if clash[0] in added else ""), file=str(path),
                                    fix="give each strategy its own name")
            added += names
        for path in collator_files or ():
            fresh(f"collator:{Path(path).stem}", path)
            added.append(load_collator_file(path))
    except BaseException:
        for n in set(strategy_names()) - before:
            unregister(n)
        raise
    STARTUP_RULES.update(rules_added)
    return added
