"""Declarative masking rules (JSON or YAML, no code): which parts of which turns of which roles are trained.

Format (``--rules FILE``, or the app's Rules tab)::

    {"name": "first_turn",
     "train": [{"role": "assistant", "turns": "first", "parts": ["content", "eot"]}],
     "mask_tokens": ["</think>"]}

``train`` entries (several entries union):
    role   system | user | assistant | tool | developer           (default: assistant)
    turns  all | first | last | an index among that role's messages, 0-based; negative counts from the end
                                                                  (default: all)
    parts  any of header, reasoning, content, tool_calls, eot, scaffold (see core.masking.spans)
                                                                  (default: reasoning, content, tool_calls, eot)
    weight the loss weight of these parts, in (0, 1]               (default: 1; e.g. reasoning at 0.5)
Top level: ``name`` (default: the file's stem, else "custom"), ``description``, ``train`` (required),
``mask_tokens`` (token strings never trained wherever they occur, merged with MaskConfig.mask_tokens).

A part selected by several entries takes the first entry's weight, times the message's own data weight. A message
flagged off (``weight: 0`` / ``train: false``) is never trained, even when a rule selects it; turns are
counted over all of a role's messages, flagged or not. Options that only take tokens out still do: reasoning=mask,
empty_think=mask, eos=last_turn|none. Rules render with the tokenizer's own chat template and MaskLens's own span
finding (core.spans): they are not a TRL option, so the only faithful export of a rule is pre-tokenized data.

Example: register_rules(load_rules("first_turn.yaml")) -> "rules:first_turn" (a "parts" strategy in core.strategies).
"""

from __future__ import annotations

import hashlib
import json
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path

from .options import MaskConfig
from ..data.formats import ROLES, is_trained_flag_off, message_weight
from ..errors import MaskLensError, read_text_file
from .spans import PARTS
from .strategies import Decider, StrategyContext, register

DEFAULT_PARTS = ("reasoning", "content", "tool_calls", "eot")
TURN_WORDS = ("all", "first", "last")
TOP_KEYS = ("name", "description", "train", "mask_tokens")
ENTRY_KEYS = ("role", "turns", "parts", "weight")
MAX_RULES_CHARS = 100_000  # a rules text is a few hundred characters; anything this long is a mistake
MAX_ENTRIES = 100
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
PREFIX = "rules:"

EXAMPLE = {"name": "first_turn", "train": [{"role": "assistant", "turns": "first", "parts": ["content", "eot"]}],
           "mask_tokens": ["</think>"]}


@dataclass(frozen=True)
class TrainEntry:
    """One entry of ``train``: a role, which of its turns, and which parts of those turns are trained."""

    role: str = "assistant"
    turns: str | int = "all"
    parts: tuple[str, ...] = DEFAULT_PARTS
    weight: float = 1.0  # the loss weight of these parts

    def selects(self, k: int, n: int) -> bool:
        """Is the role's k-th message (of n) one of this entry's turns? Example: turns=-1, k=2, n=3 -> True."""
        if self.turns == "all":
            return True
        if self.turns == "first":
            return k == 0
        if self.turns == "last":
            return k == n - 1
        return k == (self.turns if self.turns >= 0 else n + self.turns)

    def turns_text(self) -> str:
        """Example: "all" -> "every turn", 0 -> "turn 0", "first" -> "first turn"."""
        return {"all": "every turn", "first": "first turn", "last": "last turn"}.get(self.turns, f"turn {self.turns}") \
            if isinstance(self.turns, str) else f"turn {self.turns}"

    def to_dict(self) -> dict:
        d = {"role": self.role, "turns": self.turns, "parts": list(self.parts)}
        return {**d, "weight": self.weight} if self.weight != 1.0 else d


@dataclass(frozen=True)
class Rules:
    """Parsed, validated rules. ``source``: the file they came from (None for a text box), for messages."""

    name: str
    train: tuple[TrainEntry, ...]
    mask_tokens: tuple[str, ...] = ()
    description: str = ""
    source: str | None = field(default=None, compare=False)

    @property
    def strategy_name(self) -> str:
        return PREFIX + self.name

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(e.role for e in self.train))

    def to_dict(self) -> dict:
        """The rules as plain data (parse_rules(r.to_dict()) == r): what a child process or an export carries."""
        d = {"name": self.name, "train": [e.to_dict() for e in self.train]}
        if self.mask_tokens:
            d["mask_tokens"] = list(self.mask_tokens)
        if self.description:
            d["description"] = self.description
        return d

    def digest(self) -> str:
        """8 hex digits identifying what the rules do (not where they came from)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]

    def summary(self) -> str:
        """One line per entry. Example: "train[0]: assistant, first turn: content, eot"."""
        lines = [f"train[{j}]: {e.role}, {e.turns_text()}: {', '.join(e.parts)}"
                 + (f" (weight {e.weight:g})" if e.weight != 1.0 else "") for j, e in enumerate(self.train)]
        if self.mask_tokens:
            lines.append(f"mask_tokens: {', '.join(self.mask_tokens)}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ parsing
def load_rules(path: str | Path) -> Rules:
    """Read rules from a .json, .yaml or .yml file. Errors name the file, the key path and the fix."""
    p = Path(path)
    text = read_text_file(path, "rules file",
                          "give the path of a .json or .yaml rules file (see the README's rules format)")
    syntax = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}.get(p.suffix.lower())
    return parse_rules(text, source=str(path), default_name=p.stem, syntax=syntax)


def parse_rules(obj_or_text, source: str | None = None, default_name: str = "custom",
                syntax: str | None = None) -> Rules:
    """Validate rules given as a dict or as JSON/YAML text (syntax None: JSON when it parses as JSON, else YAML).

    Example: parse_rules('{"train": [{"turns": "last"}]}').train[0] == TrainEntry("assistant", "last", DEFAULT_PARTS)
    """
    where = source
    obj = _parse_text(obj_or_text, where, syntax) if isinstance(obj_or_text, str) else obj_or_text
    if not isinstance(obj, dict):
        raise _err(where, None, f"the rules are a {_type(obj)}, not a mapping",
                   'write one object: {"name": "...", "train": [{"role": "assistant", "turns": "all"}]}')
    for key in obj:
        if key not in TOP_KEYS:
            raise _err(where, str(key), f"unknown key {_r(key)}",
                       f"use only {', '.join(TOP_KEYS)}{_did_you_mean(key, TOP_KEYS)}")

    name = obj.get("name", _safe_name(default_name))
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise _err(where, "name", f"{_r(name)} is not a usable name",
                   "use 1-64 letters, digits, '_', '-' or '.' (it becomes the strategy rules:<name>)")
    description = obj.get("description", "")
    if not isinstance(description, str):
        raise _err(where, "description", f"is a {_type(description)}, not a string", "write the description as text")

    if "train" not in obj:
        raise _err(where, "train", "is missing", 'add "train": [{"role": "assistant", "turns": "all"}]')
    train = obj["train"]
    if isinstance(train, dict):
        raise _err(where, "train", "is a mapping, not a list", "wrap the entry in a list: [ {...} ]")
    if not isinstance(train, list):
        raise _err(where, "train", f"is a {_type(train)}, not a list of entries",
                   'write e.g. "train": [{"role": "assistant", "turns": "all"}]')
    if not train:
        raise _err(where, "train", "is empty, so nothing would be trained",
                   'add an entry, e.g. {"role": "assistant", "turns": "all"}')
    if len(train) > MAX_ENTRIES:
        raise _err(where, "train", f"has {len(train)} entries (at most {MAX_ENTRIES})", "merge entries")
    entries = tuple(_entry(e, f"train[{j}]", where) for j, e in enumerate(train))

    mask_tokens = obj.get("mask_tokens", [])
    if isinstance(mask_tokens, str):
        raise _err(where, "mask_tokens", "is a string, not a list", f"write a list: [{json.dumps(mask_tokens)}]")
    if not isinstance(mask_tokens, list):
        raise _err(where, "mask_tokens", f"is a {_type(mask_tokens)}, not a list of token strings",
                   'write e.g. "mask_tokens": ["</think>"]')
    for j, t in enumerate(mask_tokens):
        if not isinstance(t, str) or not t:
            raise _err(where, f"mask_tokens[{j}]", f"{_r(t)} is not a non-empty string",
                       'write each token as text, e.g. "</think>"')
    return Rules(name, entries, tuple(dict.fromkeys(mask_tokens)), description, source)


def _entry(e, path: str, where: str | None) -> TrainEntry:
    if not isinstance(e, dict):
        raise _err(where, path, f"is a {_type(e)}, not a mapping",
                   'write {"role": "assistant", "turns": "all", "parts": ["content", "eot"]}')
    for key in e:
        if key not in ENTRY_KEYS:
            raise _err(where, f"{path}.{key}", f"unknown key {_r(key)}",
                       f"use only {', '.join(ENTRY_KEYS)}{_did_you_mean(key, ENTRY_KEYS)}")
    role = e.get("role", "assistant")
    if not isinstance(role, str) or role not in ROLES:
        raise _err(where, f"{path}.role", f"unknown role {_r(role)}", f"use one of {', '.join(ROLES)}")
    turns = e.get("turns", "all")
    if isinstance(turns, bool) or not isinstance(turns, (str, int)):
        fix = "write one entry per turn" if isinstance(turns, list) else "write all, first, last or an index such as 2"
        raise _err(where, f"{path}.turns", f"{_r(turns)} is not a turn selector", fix)
    if isinstance(turns, str) and turns not in TURN_WORDS:
        if re.fullmatch(r"-?\d+", turns.strip()):
            raise _err(where, f"{path}.turns", f"{_r(turns)} is a string", f"write the index as a number: {int(turns)}")
        raise _err(where, f"{path}.turns", f"unknown value {_r(turns)}",
                   f"use all, first, last, or a 0-based index among the {role} messages (-1 = the last)")
    parts = e.get("parts", list(DEFAULT_PARTS))
    if isinstance(parts, str):
        raise _err(where, f"{path}.parts", "is a string, not a list", f"write a list: [{json.dumps(parts)}]")
    if not isinstance(parts, list):
        raise _err(where, f"{path}.parts", f"is a {_type(parts)}, not a list", 'write e.g. ["content", "eot"]')
    if not parts:
        raise _err(where, f"{path}.parts", "is empty, so the entry trains nothing",
                   f"list some of {', '.join(PARTS)}, or delete the entry")
    for k, part in enumerate(parts):
        if not isinstance(part, str) or part not in PARTS:
            raise _err(where, f"{path}.parts[{k}]", f"unknown part {_r(part)}",
                       f"use any of {', '.join(PARTS)}{_did_you_mean(part, PARTS)}")
    return TrainEntry(role, turns, tuple(dict.fromkeys(parts)), _weight(e.get("weight", 1.0), f"{path}.weight", where))


def _weight(w, path: str, where: str | None) -> float:
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 1:
        raise _err(where, path, f"{_r(w)} is not a weight in (0, 1]",
                   "write a number above 0 and at most 1, e.g. 0.5 (leave a part out to not train it)")
    return float(w)


def _parse_text(text: str, where: str | None, syntax: str | None):
    if len(text) > MAX_RULES_CHARS:
        raise MaskLensError(f"the rules are {len(text):,} characters long (at most {MAX_RULES_CHARS:,})",
                            file=where, fix="rules are a few lines; check that this is the right file")
    if not text.strip():
        raise MaskLensError("the rules are empty", file=where,
                            fix='write e.g. {"name": "all_turns", "train": [{"role": "assistant", "turns": "all"}]}')
    json_error = None
    if syntax in (None, "json"):
        try:
            return json.loads(text, object_pairs_hook=lambda pairs: _unique(pairs, where))
        except json.JSONDecodeError as e:
            json_error = MaskLensError(f"line {e.lineno}, column {e.colno}: not valid JSON ({e.msg})", file=where,
                                       fix="fix the JSON (double quotes, no trailing commas), or write YAML")
            if syntax == "json":
                raise json_error from None
    import yaml  # noqa: PLC0415

    class _Loader(yaml.SafeLoader):  # a key written twice is an error, not "the last one wins"
        def construct_mapping(self, node, deep=False):
            self.flatten_mapping(node)
            pairs = [(self.construct_object(k, deep=deep), k) for k, _ in node.value]
            seen = set()
            for key, k in pairs:
                if isinstance(key, str) and key in seen:
                    raise MaskLensError(f"line {k.start_mark.line + 1}: the key {key!r} is written twice in one "
                                        "mapping (YAML would keep only the last)", file=where, field=key,
                                        fix="keep one of them")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    try:
        obj = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        if json_error is not None and text.lstrip().startswith(("{", "[")):
            raise json_error from None
        mark = getattr(e, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise MaskLensError(f"{at}not valid YAML ({getattr(e, 'problem', None) or e})", file=where,
                            fix="fix the YAML (indent list items under their key, quote values containing ':')") \
            from None
    return obj


def _unique(pairs: list, where: str | None) -> dict:
    """A JSON object whose keys are all different (json keeps only the last of a repeated key, silently)."""
    out = {}
    for k, v in pairs:
        if k in out:
            raise MaskLensError(f"the key {k!r} is written twice in one object (JSON would keep only the last)",
                                file=where, field=k, fix="keep one of them")
        out[k] = v
    return out


def _err(where: str | None, key: str | None, message: str, fix: str) -> MaskLensError:
    return MaskLensError(message, file=where, field=key, fix=fix)


def _r(v) -> str:
    """A value shown in a message, cut short (a YAML alias bomb is a shared-reference tree: never repr it whole)."""
    return _REPR.repr(v)


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 60, 60, 2, 4, 4


def _type(v) -> str:
    return {dict: "mapping", list: "list", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(v), type(v).__name__)


def _did_you_mean(word, choices) -> str:
    import difflib  # noqa: PLC0415

    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _safe_name(stem: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:64]
    return s or "custom"


# ------------------------------------------------------------------------------------------------------ deciding
def rules_decider(rules: Rules, ctx: StrategyContext) -> Decider:
    """decide(message_index, part) -> (trained, rule text) for one conversation under the rules."""
    msgs, cfg = ctx.messages, ctx.cfg
    position: dict[int, tuple[int, int]] = {}  # message index -> (k-th message of its role, n of that role)
    by_role: dict[str, list[int]] = {}
    for i, m in enumerate(msgs):
        by_role.setdefault(m.get("role"), []).append(i)
    for idxs in by_role.values():
        for k, i in enumerate(idxs):
            position[i] = (k, len(idxs))
    selected: dict[int, list[int]] = {}  # message index -> entries selecting it
    for i, m in enumerate(msgs):
        k, n = position[i]
        js = [j for j, e in enumerate(rules.train) if e.role == m.get("role") and e.selects(k, n)]
        if js:
            selected[i] = js
    trainable = {i for i in selected if not is_trained_flag_off(msgs[i])}
    last = max(trainable) if trainable else None

    def decide(idx, part):
        if idx is None:
            return False, "not trained: template text outside any message"
        m = msgs[idx]
        role = m.get("role")
        js = selected.get(idx)
        if not js:
            k, n = position[idx]
            return False, f"not trained: no rule selects {role} turn {k} (message {idx})"
        if idx not in trainable:
            flag = "weight 0" if "weight" in m else "train false"
            return False, f"not trained: message {idx} is flagged off ({flag})"
        j = next((j for j in js if part in rules.train[j].parts), None)
        if j is None:
            e = rules.train[js[0]]
            return False, (f"not trained: rule train[{js[0]}] ({role}, {e.turns_text()}) trains "
                           f"{', '.join(e.parts)}, not {part}")
        if part == "reasoning" and cfg.reasoning == "mask":
            return False, "not trained: reasoning (reasoning=mask)"
        if part == "scaffold" and cfg.empty_think == "mask":
            return False, "not trained: text the template inserts into the turn (empty_think=mask)"
        if part == "eot" and (cfg.eos == "none" or (cfg.eos == "last_turn" and idx != last)):
            return False, f"not trained: end-of-turn (eos={cfg.eos})"
        rule = f"trained: rule train[{j}] ({role}, {rules.train[j].turns_text()}, {part})"
        w = rules.train[j].weight * message_weight(m)
        return (True, f"{rule} (weight {w:g})", w) if w < 1 else (True, rule)

    return Decider(decide, trainable)


def register_rules(rules: Rules, unique: bool = False) -> str:
    """Register the rules as a "parts" strategy and return its name: ``rules:<name>``, or with unique=True
    ``rules:<name>@<digest>`` (the app: users editing rules of the same name never replace each other's)."""
    name = rules.strategy_name + (f"@{rules.digest()}" if unique else "")
    help_ = rules.description or f"rules {rules.name}: " + "; ".join(rules.summary().splitlines())
    register(name, help=help_, kind="parts")(lambda ctx: rules_decider(rules, ctx))
    return name


def rules_config(rules: Rules, unique: bool = False, **mask_config_kwargs) -> MaskConfig:
    """A MaskConfig using the rules (registered on the way): MaskConfig.with_rules joins their mask_tokens and roles.

    Example: rules_config(load_rules("r.yaml"), max_length=2048).strategy == "rules:first_turn".
    """
    if "strategy" in mask_config_kwargs:
        raise TypeError("rules_config sets the strategy itself; do not pass strategy=")
    name = register_rules(rules, unique=unique)
    return MaskConfig(strategy=name, **mask_config_kwargs).with_rules(
        rules, name, roles_given="train_roles" in mask_config_kwargs)
