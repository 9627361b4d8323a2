"""Reading datasets in TRL's formats and checking them, row by row, before anything is rendered.

Formats (as TRL 1.16's SFTTrainer accepts them):
- language modelling: ``{"text": "..."}``
- conversational: ``{"messages": [{"role": ..., "content": ...}, ...]}`` (optional ``tools``,
  ``chat_template_kwargs``); ShareGPT ``{"conversations": [{"from": ..., "value": ...}]}`` is converted as TRL does.
- prompt/completion: strings, or lists of messages.
- pre-tokenized: ``{"input_ids": [...], "labels": [...]?}``.

Per-message training flags on assistant messages: ``weight`` 0/1 (OpenAI fine-tuning format) and ``train``
true/false (axolotl). A flagged-off message is never trained by an assistant strategy.

Every problem raises :class:`MaskLensError` naming the file, the line or row, the field and the fix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MaskLensError
from .findings import Finding

ROLES = ("system", "user", "assistant", "tool", "developer")
# ShareGPT's names, as axolotl and LLaMA-Factory map them (TRL keeps them verbatim; we say so in a finding).
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "tool": "tool", "function_call": "assistant",
                  "observation": "tool", "user": "user", "assistant": "assistant"}
JSON_FIELDS = ("messages", "conversations", "prompt", "completion", "tools", "input_ids", "labels", "chat_template_kwargs")


@dataclass
class Example:
    """One dataset row, normalised. ``kind`` is one of KINDS; ``row`` is its 0-based index in the dataset."""

    row: int
    kind: str
    messages: list[dict] | None = None  # conversational, and prompt+completion of a conversational pair
    prompt: Any = None  # str or list of messages
    completion: Any = None
    text: str | None = None
    input_ids: list[int] | None = None
    labels: list[int] | None = None
    tools: list | None = None
    chat_template_kwargs: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)
    source: str | None = None
    line: int | None = None  # 1-based line in a JSONL file
    notes: list[Finding] = field(default_factory=list)
    turn: int | None = None  # split_turns: the assistant message this example trains (its history is the prompt)

    @property
    def n_prompt_messages(self) -> int:
        return len(self.prompt) if self.kind == KIND_PC_CONV else 0


KIND_TEXT = "text"
KIND_MESSAGES = "messages"
KIND_PC_TEXT = "prompt_completion_text"
KIND_PC_CONV = "prompt_completion_messages"
KIND_TOKENS = "tokens"
KINDS = (KIND_TEXT, KIND_MESSAGES, KIND_PC_TEXT, KIND_PC_CONV, KIND_TOKENS)


def is_trained_flag_off(message: dict) -> bool:
    """True when a message carries weight 0 (OpenAI) or train false (axolotl). Example: {"weight": 0} -> True."""
    return message.get("weight", 1) in (0, 0.0, False) or message.get("train", True) is False


# --------------------------------------------------------------------------------------------------- reading files
def read_rows(path: str | os.PathLike, split: str = "train", limit: int | None = None) -> tuple[list[dict], list[int | None], str]:
    """Read raw rows from JSONL/JSON/Parquet/CSV or a hub dataset. Returns (rows, line numbers or None, source)."""
    p = Path(path)
    src = str(path)
    if not p.exists():
        if _looks_like_hub_id(src):
            return _read_hub(src, split, limit), [None] * 0, src
        raise MaskLensError("no such file", file=src, fix="give a path to a .jsonl/.json/.parquet/.csv file or a hub dataset id")
    if p.is_dir():
        raise MaskLensError("is a directory, not a data file", file=src, fix="point --data at a .jsonl/.json/.parquet/.csv file")
    suffix = "".join(s for s in p.suffixes[-1:]).lower()
    if p.stat().st_size == 0:
        raise MaskLensError("the file is empty", file=src, fix="add at least one example")
    if suffix == ".jsonl":
        rows, lines = _read_jsonl(p, limit)
    elif suffix == ".json":
        rows, lines = _read_json(p, limit)
    elif suffix in (".parquet", ".csv"):
        rows, lines = _read_with_datasets(p, suffix, limit)
    else:
        raise MaskLensError(f"unsupported file type {suffix or '(none)'!r}", file=src,
                            fix="use .jsonl, .json, .parquet or .csv")
    if not rows:
        raise MaskLensError("the file has no examples", file=src, fix="add at least one example")
    return rows, lines, src


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/")) and "." not in parts[1][-8:]


def _read_jsonl(p: Path, limit: int | None):
    rows, lines = [], []
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise MaskLensError(f"line {lineno} is not valid JSON ({e.msg} at column {e.colno})", file=str(p),
                                    row=len(rows), fix="make each line one JSON object") from None
            if not isinstance(obj, dict):
                raise MaskLensError(f"line {lineno} is a JSON {type(obj).__name__}, not an object", file=str(p),
                                    row=len(rows), fix='make each line an object such as {"messages": [...]}')
            rows.append(obj)
            lines.append(lineno)
            if limit and len(rows) >= limit:
                break
    return rows, lines


def _read_json(p: Path, limit: int | None):
    try:
        with open(p, encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise MaskLensError(f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})", file=str(p),
                            fix="a .json file holds one array of example objects (use .jsonl for one object a line)") from None
    if isinstance(obj, dict):
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(lists) == 1:
            obj = lists[0]
        else:
            obj = [obj]
    if not isinstance(obj, list):
        raise MaskLensError("expected an array of example objects", file=str(p), fix="wrap the examples in [ ... ]")
    for i, r in enumerate(obj):
        if not isinstance(r, dict):
            raise MaskLensError(f"element is a JSON {type(r).__name__}, not an object", file=str(p), row=i,
                                fix='make each element an object such as {"messages": [...]}')
    obj = obj[:limit] if limit else obj
    return obj, [None] * len(obj)


def _read_with_datasets(p: Path, suffix: str, limit: int | None):
    import datasets  # noqa: PLC0415  (heavy: only when needed)

    try:
        if suffix == ".parquet":
            ds = datasets.Dataset.from_parquet(str(p))
        else:
            ds = datasets.Dataset.from_csv(str(p))
    except Exception as e:  # datasets raises many types; the user needs the message and the file
        raise MaskLensError(f"could not be read as {suffix[1:]}: {e}", file=str(p), fix=f"check it is a valid {suffix[1:]} file") from None
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    rows = ds.to_list()
    for i, r in enumerate(rows):  # CSV cells hold JSON text for nested fields
        for k in JSON_FIELDS:
            v = r.get(k)
            if isinstance(v, str) and v[:1] in "[{":
                try:
                    r[k] = json.loads(v)
                except json.JSONDecodeError as e:
                    raise MaskLensError(f"holds text that is not valid JSON ({e.msg})", file=str(p), row=i, field=k,
                                        fix="store nested fields as JSON") from None
    return rows, [None] * len(rows)


def _read_hub(name: str, split: str, limit: int | None):
    try:
        import datasets  # noqa: PLC0415

        ds = datasets.load_dataset(name, split=split)
    except Exception as e:
        raise MaskLensError(f"not a local file, and loading it as a hub dataset failed: {e}", file=name,
                            fix="check the path, or the dataset id, split and your network / HF_TOKEN") from None
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    return ds.to_list()


# ---------------------------------------------------------------------------------------------------- normalising
def load_examples(path: str | os.PathLike, split: str = "train", limit: int | None = None) -> list[Example]:
    """Read a dataset file and normalise every row. Example: load_examples("chat.jsonl")[0].kind -> "messages"."""
    rows, lines, src = read_rows(path, split, limit)
    lines = lines or [None] * len(rows)
    return [normalize_row(r, i, source=src, line=ln) for i, (r, ln) in enumerate(zip(rows, lines))]


def load_examples_lenient(path: str | os.PathLike, split: str = "train",
                          limit: int | None = None) -> tuple[list[Example], list[MaskLensError]]:
    """Like load_examples, but a bad row (or malformed JSONL line) is collected instead of stopping the rest.

    File-level problems (missing, empty, unsupported) still raise. Example: (examples, errors) for a file with one
    malformed line -> all other rows, and one error naming that line.
    """
    p = Path(path)
    errors: list[MaskLensError] = []
    indexed: list[tuple[int, dict, int | None]] = []  # (row, object, line): a bad line still takes its row number
    if p.exists() and p.suffix.lower() == ".jsonl" and p.stat().st_size:
        src = str(p)
        with open(p, encoding="utf-8") as f:
            n = 0
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    indexed.append((n, json.loads(line), lineno))
                except json.JSONDecodeError as e:
                    errors.append(MaskLensError(f"line {lineno} is not valid JSON ({e.msg} at column {e.colno})",
                                                file=src, row=n, fix="make each line one JSON object"))
                n += 1
                if limit and n >= limit:
                    break
    else:
        rows, lines, src = read_rows(path, split, limit)
        lines = lines or [None] * len(rows)
        indexed = [(i, r, ln) for i, (r, ln) in enumerate(zip(rows, lines))]
    examples = []
    for i, r, ln in indexed:
        try:
            examples.append(normalize_row(r, i, source=src, line=ln))
        except MaskLensError as e:
            errors.append(e)
    errors.sort(key=lambda e: e.row if e.row is not None else -1)
    return examples, errors


def normalize_row(row: dict, index: int = 0, source: str | None = None, line: int | None = None) -> Example:
    """Check one raw row and turn it into an Example; raises MaskLensError naming the row and field."""

    def err(msg, fld=None, fix=None):
        where = f"line {line}: " if line else ""
        return MaskLensError(where + msg, file=source, row=index, field=fld, fix=fix)

    if not isinstance(row, dict):
        raise err(f"a row must be an object, got {type(row).__name__}")
    row = dict(row)
    notes: list[Finding] = []
    tools = row.get("tools")
    if isinstance(tools, str):  # TRL accepts tools as a JSON string
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            raise err(f"is a string that is not valid JSON ({e.msg})", "tools", "give tools as a list of JSON schemas") from None
    if tools is not None and not isinstance(tools, list):
        raise err(f"must be a list of tool schemas, got {type(tools).__name__}", "tools")
    ctk = row.get("chat_template_kwargs") or {}
    if not isinstance(ctk, dict):
        raise err("must be an object", "chat_template_kwargs")
    common = dict(row=index, raw=row, source=source, line=line, tools=tools or None, chat_template_kwargs=ctk)

    if "input_ids" in row and row["input_ids"] is not None:
        ids = row["input_ids"]
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise err("must be a list of integer token ids", "input_ids")
        if not ids:
            raise err("is empty", "input_ids", "drop the row or give at least one token")
        labels = row.get("labels")
        if labels is not None:
            if not isinstance(labels, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in labels):
                raise err("must be a list of integers (-100 for ignored tokens)", "labels")
            if len(labels) != len(ids):
                raise err(f"has {len(labels)} entries but input_ids has {len(ids)}", "labels", "give one label per token")
        return Example(kind=KIND_TOKENS, input_ids=ids, labels=labels, notes=notes, **common)

    if "conversations" in row and "messages" not in row:
        conv = row["conversations"]
        if isinstance(conv, list) and conv and isinstance(conv[0], dict) and "from" in conv[0]:
            msgs, mapped = [], False
            for j, m in enumerate(conv):
                if not isinstance(m, dict) or "from" not in m or "value" not in m:
                    raise err(f"message {j} must have 'from' and 'value'", f"conversations[{j}]",
                              'ShareGPT messages look like {"from": "human", "value": "..."}')
                m = dict(m)
                role = m.pop("from")
                m["content"] = m.pop("value")
                if role in SHAREGPT_ROLES and SHAREGPT_ROLES[role] != role:
                    mapped = True
                m["role"] = SHAREGPT_ROLES.get(role, role)
                msgs.append(m)
            if mapped:
                notes.append(Finding("roles_mapped", "ShareGPT roles human/gpt were mapped to user/assistant."))
            row["messages"] = msgs
        else:
            row["messages"] = conv

    if "messages" in row:
        msgs = _check_messages(row["messages"], "messages", err)
        return Example(kind=KIND_MESSAGES, messages=msgs, notes=notes, **common)

    if "prompt" in row or "completion" in row:
        for k in ("prompt", "completion"):
            if k not in row or row[k] is None:
                raise err("is missing", k, "prompt/completion rows need both 'prompt' and 'completion'")
        p, c = row["prompt"], row["completion"]
        if isinstance(p, str) and isinstance(c, str):
            return Example(kind=KIND_PC_TEXT, prompt=p, completion=c, notes=notes, **common)
        if isinstance(p, list) and isinstance(c, list):
            pm = _check_messages(p, "prompt", err)
            cm = _check_messages(c, "completion", err, offset=len(pm))
            return Example(kind=KIND_PC_CONV, prompt=pm, completion=cm, messages=pm + cm, notes=notes, **common)
        raise err(f"prompt is {type(p).__name__} and completion is {type(c).__name__}", "prompt",
                  "give both as strings, or both as lists of messages")

    if "text" in row:
        t = row["text"]
        if not isinstance(t, str):
            raise err(f"must be a string, got {type(t).__name__}", "text")
        return Example(kind=KIND_TEXT, text=t, notes=notes, **common)

    raise err(f"no known field (found: {', '.join(sorted(row)) or 'none'})", None,
              "rows need 'messages', 'conversations', 'prompt'+'completion', 'text' or 'input_ids'")


def _check_messages(msgs, fld: str, err, offset: int = 0) -> list[dict]:
    if not isinstance(msgs, list):
        raise err(f"must be a list of messages, got {type(msgs).__name__}", fld)
    if not msgs:
        raise err("is an empty list", fld, "give at least one message")
    out = []
    for j, m in enumerate(msgs):
        where = f"{fld}[{j}]"
        if not isinstance(m, dict):
            raise err(f"must be an object with 'role' and 'content', got {type(m).__name__}", where)
        if "role" not in m:
            raise err("has no 'role'", where, f"add one of {', '.join(ROLES)}")
        role = m["role"]
        if role not in ROLES:
            raise err(f"has unknown role {role!r}", where + ".role", f"use one of {', '.join(ROLES)}")
        content = m.get("content")
        if content is None and not (role == "assistant" and m.get("tool_calls")):
            raise err("has no 'content'", where + ".content", "add the message text as a string")
        if content is not None and not isinstance(content, str):
            raise err(f"content must be a string, got {type(content).__name__}", where + ".content",
                      "give the message text as a string (multimodal content parts are not supported)")
        w = m.get("weight")
        if w is not None and w not in (0, 1):
            raise err(f"weight must be 0 or 1, got {w!r}", where + ".weight", "use 0 (not trained) or 1 (trained)")
        t = m.get("train")
        if t is not None and not isinstance(t, bool):
            raise err(f"train must be true or false, got {t!r}", where + ".train")
        if (w is not None or t is not None) and role != "assistant":
            raise err(f"only assistant messages take a weight/train flag (role is {role!r})", where,
                      "remove the flag; non-assistant messages are never trained by assistant strategies")
        # Drop None values as transformers' apply_chat_template does (templates print "None" otherwise).
        out.append({k: v for k, v in m.items() if v is not None})
    return out
