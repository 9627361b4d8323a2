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
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import MaskLensError
from ..findings import Finding
from .reader import iter_rows
from .schema import SchemaUnion, format_path, paths_that_matter

ROLES = ("system", "user", "assistant", "tool", "developer")
# ShareGPT's names, as axolotl and LLaMA-Factory map them (TRL keeps them verbatim; we say so in a finding).
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "tool": "tool", "function_call": "assistant",
                  "observation": "tool", "user": "user", "assistant": "assistant"}


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
    """Read raw rows from JSONL/JSON/Parquet/CSV or a hub dataset. Returns (rows, line numbers or None, source).

    The reading and every bad-file error live in core.reader (which streams; this collects)."""
    rows, lines = [], []
    for _, obj, line in iter_rows(path, split, limit):
        rows.append(obj)
        lines.append(line)
    return rows, lines, str(path)


# ---------------------------------------------------------------------------------------------------- normalising
def load_examples(path: str | os.PathLike, split: str = "train", limit: int | None = None) -> list[Example]:
    """Read a dataset file and normalise every row. Example: load_examples("chat.jsonl")[0].kind -> "messages"."""
    rows, lines, src = read_rows(path, split, limit)
    lines = lines or [None] * len(rows)
    examples = [normalize_row(r, i, source=src, line=ln) for i, (r, ln) in enumerate(zip(rows, lines))]
    note_schema_nulls(examples, rows, src)
    return examples


def load_examples_lenient(path: str | os.PathLike, split: str = "train",
                          limit: int | None = None) -> tuple[list[Example], list[MaskLensError]]:
    """Like load_examples, but a bad row (or malformed JSONL line) is collected instead of stopping the rest.

    File-level problems (missing, empty, unsupported) still raise. Example: (examples, errors) for a file with one
    malformed line -> all other rows, and one error naming that line.
    """
    errors: list[MaskLensError] = []
    indexed = list(iter_rows(path, split, limit, on_error=errors.append))  # (row, object, line)
    src = str(path)
    examples = []
    for i, r, ln in indexed:
        try:
            examples.append(normalize_row(r, i, source=src, line=ln))
        except MaskLensError as e:
            errors.append(e)
    errors.sort(key=lambda e: e.row if e.row is not None else -1)
    by_row = {i: r for i, r, _ in indexed}
    note_schema_nulls(examples, [by_row[e.row] for e in examples], src)
    return examples, errors


def note_schema_nulls(examples: list[Example], rows: list[dict], src: str | None) -> None:
    """Add a schema_nulls_injected finding to each example whose row `datasets` would change (as TRL's users load
    it: Dataset.from_list / load_dataset unify the Arrow schema, adding null keys that templates render), and a
    datasets_cannot_load finding to every example when `datasets` cannot load the rows at all. Rows as written are
    what MaskLens renders. Example: tool calls {"city": "Paris"} and {"city": "Oslo", "unit": "C"} in two rows -> the
    first gets "messages[1].tool_calls[0].function.arguments.unit"."""
    if len(rows) < 2:
        return
    union = schema_union(rows)
    if union is None:
        return
    for ex, r in zip(examples, rows):
        ex.notes.extend(schema_findings(union, r, ex.row))


def schema_union(rows) -> SchemaUnion | None:
    """Pass 1 of the schema prediction: the Arrow schema `Dataset.from_list` would infer for these raw rows (any
    iterable: a file is streamed, only the schema is kept). None when it cannot be predicted (a row is not a dict)."""
    union = SchemaUnion("from_list")
    try:
        for r in rows:
            if not isinstance(r, dict):
                return None
            union.add(r)
        union.conflicts  # noqa: B018  (finalises the union; a failure here is a failure to predict)
    except Exception:  # noqa: BLE001  (a prediction only: never stop loading over it)
        return None
    return union if union.rows >= 2 else None


def schema_findings(union, row: dict, index: int | None) -> list[Finding]:
    """Pass 2 for one raw row: [datasets_cannot_load] when the rows cannot be loaded at all, [schema_nulls_injected]
    naming the null keys `datasets` adds to this row, or []."""
    conflicts = union.conflicts
    if conflicts:
        msg = "; ".join(conflicts[:3]) + (f" (and {len(conflicts) - 3} more)" if len(conflicts) > 3 else "")
        return [Finding("datasets_cannot_load", msg)]
    try:
        paths = paths_that_matter(union.null_paths(row))
    except Exception:  # noqa: BLE001
        return []
    if not paths:
        return []
    shown = ", ".join(paths[:6]) + (f" (and {len(paths) - 6} more)" if len(paths) > 6 else "")
    return [Finding("schema_nulls_injected", f"row {index}: `datasets` adds {len(paths)} key(s) with null here: {shown}",
                    location={"paths": paths})]


def normalize_row(row: dict, index: int = 0, source: str | None = None, line: int | None = None) -> Example:
    """Check one raw row and turn it into an Example; raises MaskLensError naming the row, field path and fix.

    Example: normalize_row({"messages": [{"role": "user", "content": "Hi"}]}).kind -> "messages";
    a bad tool call raises "... field 'messages[1].tool_calls[0].function.arguments': ...".
    """

    def err(msg, fld=None, fix=None):
        where = f"line {line}: " if line else ""
        return MaskLensError(where + msg, file=source, row=index, field=fld, fix=fix)

    if not isinstance(row, dict):
        raise err(f"a row must be an object, got {type(row).__name__}", None,
                  'make each row an object such as {"messages": [...]}')
    _check_json_values(row, err)  # lone surrogates, non-string keys, depth: before anything else reads the row
    row = dict(row)
    notes: list[Finding] = []
    tools = _check_tools(row.get("tools"), err)
    ctk = _check_template_kwargs(row.get("chat_template_kwargs"), err)
    common = dict(row=index, raw=row, source=source, line=line, tools=tools or None, chat_template_kwargs=ctk)

    if "input_ids" in row and row["input_ids"] is not None:
        ids = row["input_ids"]
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise err("must be a list of integer token ids", "input_ids", "give the token ids as a list of integers")
        if not ids:
            raise err("is empty", "input_ids", "drop the row or give at least one token")
        labels = row.get("labels")
        if labels is not None:
            if not isinstance(labels, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in labels):
                raise err("must be a list of integers (-100 for ignored tokens)", "labels",
                          "give one integer label per token, -100 where ignored")
            if len(labels) != len(ids):
                raise err(f"has {len(labels)} entries but input_ids has {len(ids)}", "labels",
                          "give one label per token")
        return Example(kind=KIND_TOKENS, input_ids=ids, labels=labels, notes=notes, **common)

    msgs_field = "messages"
    if "conversations" in row and "messages" not in row:
        msgs_field = "conversations"
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
                if isinstance(role, str) and role in SHAREGPT_ROLES and SHAREGPT_ROLES[role] != role:
                    mapped = True
                m["role"] = SHAREGPT_ROLES.get(role, role) if isinstance(role, str) else role
                msgs.append(m)
            if mapped:
                notes.append(Finding("roles_mapped", "ShareGPT roles human/gpt were mapped to user/assistant."))
            row["messages"] = msgs
        else:
            row["messages"] = conv

    if "messages" in row:
        msgs = _check_messages(row["messages"], msgs_field, err)
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
            raise err(f"must be a string, got {type(t).__name__}", "text", "give the text as a string")
        return Example(kind=KIND_TEXT, text=t, notes=notes, **common)

    raise err(f"no known field (found: {', '.join(sorted(row)) or 'none'})", None,
              "rows need 'messages', 'conversations', 'prompt'+'completion', 'text' or 'input_ids'")


def _check_messages(msgs, fld: str, err, offset: int = 0) -> list[dict]:
    """Check a list of messages; return them as written, minus None values (as apply_chat_template drops them).

    ``fld`` names the list in errors ("messages", "prompt", "completion"); ``offset`` is unused (kept for callers).
    Extra keys are kept: templates may read them.
    """
    if not isinstance(msgs, list):
        raise err(f"must be a list of messages, got {type(msgs).__name__}", fld,
                  'give a list such as [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]')
    if not msgs:
        raise err("is an empty list (an empty conversation)", fld, "give at least one message")
    out = []
    for j, m in enumerate(msgs):
        where = f"{fld}[{j}]"
        if not isinstance(m, dict):
            raise err(f"must be an object with 'role' and 'content', got {type(m).__name__}", where,
                      'write each message as {"role": "user", "content": "..."}')
        role = m.get("role")
        if role is None:
            raise err("has no 'role'", where, f"add one of {', '.join(ROLES)}")
        if not isinstance(role, str):
            raise err(f"role must be a string, got {type(role).__name__} {_short(role)}", where + ".role",
                      f"use one of {', '.join(ROLES)}")
        if role not in ROLES:
            raise err(f"has unknown role {role!r}", where + ".role", f"use one of {', '.join(ROLES)}")
        calls = m.get("tool_calls")
        if calls is not None:
            if role != "assistant":
                raise err(f"only assistant messages carry tool_calls (role is {role!r})", where + ".tool_calls",
                          "move the calls to an assistant message; a tool's result goes in a 'tool' message's content")
            _check_tool_calls(calls, where + ".tool_calls", err)
        content = m.get("content")
        if content is None and not calls:
            raise err("has no 'content' (null or missing)", where + ".content",
                      "add the message text as a string"
                      + (" (or give the message tool_calls)" if role == "assistant" else ""))
        if isinstance(content, list):
            raise err("content is a list of parts (multimodal content), which MaskLens does not support",
                      where + ".content", "give the message text as a string (content must be a string)")
        if content is not None and not isinstance(content, str):
            raise err(f"content must be a string, got {type(content).__name__}", where + ".content",
                      "give the message text as a string"
                      + (" (serialize a tool's result with json.dumps)" if role == "tool" else ""))
        if not _REASONING_KEYS.isdisjoint(m):
            _check_reasoning(m, where, err)
        for key in ("name", "tool_call_id") if role == "tool" else ("name",):
            v = m.get(key)
            if v is not None and not isinstance(v, str):
                raise err(f"{key} must be a string, got {type(v).__name__} {_short(v)}", f"{where}.{key}",
                          f"give the {key} as a string")
        w = m.get("weight")
        if w is not None and w not in (0, 1):
            raise err(f"weight must be 0 or 1, got {w!r}", where + ".weight", "use 0 (not trained) or 1 (trained)")
        t = m.get("train")
        if t is not None and not isinstance(t, bool):
            raise err(f"train must be true or false, got {t!r}", where + ".train",
                      "use true (trained) or false (not trained)")
        if (w is not None or t is not None) and role != "assistant":
            raise err(f"only assistant messages take a weight/train flag (role is {role!r})", where,
                      "remove the flag; non-assistant messages are never trained by assistant strategies")
        # Drop None values as transformers' apply_chat_template does (templates print "None" otherwise).
        out.append({k: v for k, v in m.items() if v is not None})
    return out


# ------------------------------------------------------------------------------ row validation: reasoning, tools
# The reasoning fields of a message. transformers 5.23 (chat_template_utils._alias_reasoning_fields) copies the first
# one present into `reasoning_content` and `thinking` before rendering, so templates read it under either name.
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_REASONING_KEYS = frozenset(REASONING_FIELDS)

# Keys a row's chat_template_kwargs must not use: rendering takes them itself, so a row could swap the template, the
# conversation or the tokenizer's special tokens, or break the render. From transformers 5.23's
# PreTrainedTokenizerBase.apply_chat_template and chat_template_utils.render_jinja_template (tests/
# test_data_validation.py checks this set against their signatures), and TRL 1.16's SFTTrainer, which passes
# `**chat_template_kwargs` AFTER its own `chat_template` and `tools` (so a row's key would win).
RESERVED_TEMPLATE_KWARGS = frozenset({
    # apply_chat_template's parameters (a duplicate is a TypeError; most change what is rendered or returned)
    "self", "conversation", "tools", "documents", "chat_template", "add_generation_prompt", "continue_final_message",
    "tokenize", "sanitize_control_tokens", "padding", "truncation", "max_length", "return_tensors", "return_dict",
    "return_assistant_tokens_mask", "tokenizer_kwargs",
    # render_jinja_template(conversations=...), _render_with_assistant_indices(compiled_template, messages, ...) and
    # the variables the template itself is rendered with
    "conversations", "compiled_template", "messages",
    # the tokenizer's special_tokens_map (SPECIAL_TOKENS_ATTRIBUTES), merged under the kwargs, so a kwarg replaces a
    # special token; model-specific ones (image_token, boi_token...) are caught by the `*_token` rule below
    "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
    # the jinja environment's globals, which a template variable of the same name shadows
    "range", "dict", "namespace", "lipsum", "cycler", "joiner", "raise_exception", "strftime_now",
    # TRL 1.16 sft_trainer._tokenize(processing_class, input, **kwargs)
    "processing_class", "input",
    # MaskLens's own core.templates.render(tokenizer, messages, template, ..., return_generation, special_map)
    "tokenizer", "template", "return_generation", "special_map",
})
MAX_DEPTH = 100  # nesting levels a row may have (JSON allows more; templates and tojson recurse on them)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _short(value, n: int = 40) -> str:
    s = repr(value)
    return s if len(s) <= n else s[: n - 3] + "..."


def _check_json_values(row: dict, err) -> None:
    """Raise on a string with a lone surrogate, a non-string key, or nesting deeper than MAX_DEPTH, naming the path.

    json.loads accepts "\\ud800" (an unpaired UTF-16 surrogate), but no tokenizer can encode it. Token-id columns are
    skipped (they are checked as integer lists).
    """
    values = {k: v for k, v in row.items() if k not in ("input_ids", "labels") or not isinstance(v, list)}
    if _values_ok(values):
        return
    bad = _first_bad_value(values, 0)  # the slow walk that names the path
    if bad is not None:
        _raise_bad_value(*bad, err)


_SCALARS = (int, float, bool, type(None))


def _values_ok(value) -> bool:
    """Fast check (no paths, no recursion) that _first_bad_value would find nothing. ~2x faster than it."""
    search = _SURROGATE.search
    stack = [(value, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        v, depth = pop()
        if depth > MAX_DEPTH:
            return False
        if type(v) is dict:
            for k, x in v.items():
                if type(k) is not str or (not k.isascii() and search(k)):
                    return False
                if type(x) is str:
                    if not x.isascii() and search(x):
                        return False
                elif type(x) not in _SCALARS:
                    push((x, depth + 1))
        elif type(v) is list or type(v) is tuple:
            for x in v:
                if type(x) is str:
                    if not x.isascii() and search(x):
                        return False
                elif type(x) not in _SCALARS:
                    push((x, depth + 1))
        elif isinstance(v, (str, dict, list, tuple)):  # subclasses: let the slow walk judge
            return False
    return True


def _raise_bad_value(parts: list, problem: str, text, err, origin: str = ""):
    fld = format_path(parts) if parts and isinstance(parts[0], str) else None
    if problem == "depth":
        raise err(f"is nested more than {MAX_DEPTH} levels deep{origin}", fld,
                  "flatten the data (store deeply nested values as JSON strings)")
    if problem == "key_type":
        raise err(f"has a key that is not a string ({type(text).__name__} {_short(text)}){origin}", fld,
                  "use string keys (JSON objects only have string keys)")
    m = _SURROGATE.search(text)
    what = "the key" if problem == "key" else "the string"
    raise err(f"{what} holds a lone UTF-16 surrogate ({m.group()!r} at character {m.start()}){origin}, which no "
              "tokenizer can encode", fld, "repair the text where it was produced (an emoji cut in half, text decoded "
              "with errors='surrogatepass'...): remove or replace that character")


def _has_surrogate(s: str) -> bool:
    return not s.isascii() and _SURROGATE.search(s) is not None


def _first_bad_value(value, depth: int):
    """(path parts, problem, offending key or string) of the first bad value inside value, or None.

    Problems: "depth" (nesting over MAX_DEPTH), "key" / "string" (a lone surrogate), "key_type" (a non-string key).
    The recursion is bounded by MAX_DEPTH, so a hostile row cannot exhaust the stack.
    """
    if isinstance(value, str):
        return ([], "string", value) if _has_surrogate(value) else None
    if isinstance(value, dict):
        if depth > MAX_DEPTH:
            return [], "depth", None
        for k, v in value.items():
            if not isinstance(k, str):
                return [], "key_type", k
            if _has_surrogate(k):
                return [k], "key", k
            if v is not None and not isinstance(v, (int, float)):
                bad = _first_bad_value(v, depth + 1)
                if bad is not None:
                    return [k, *bad[0]], bad[1], bad[2]
    elif isinstance(value, (list, tuple)):
        if depth > MAX_DEPTH:
            return [], "depth", None
        for i, v in enumerate(value):
            if v is not None and not isinstance(v, (int, float)):
                bad = _first_bad_value(v, depth + 1)
                if bad is not None:
                    return [i, *bad[0]], bad[1], bad[2]
    return None


def _check_reasoning(m: dict, where: str, err) -> None:
    """Reasoning fields are strings; two of them on one message must agree (templates read different names)."""
    given = {}
    for f in REASONING_FIELDS:
        v = m.get(f)
        if v is None:
            continue
        if not isinstance(v, str):
            raise err(f"{f} must be a string, got {type(v).__name__}", f"{where}.{f}",
                      "give the reasoning (chain of thought) as one string")
        given[f] = v
    if len(set(given.values())) > 1:
        a, b = list(given)[:2]
        raise err(f"carries two different reasoning texts ({a} and {b}); templates read one name or the other "
                  "(transformers copies the first of reasoning_content/thinking/reasoning into the others)",
                  f"{where}.{b}",
                  f"keep the reasoning in one field ({a})")


def _check_tool_calls(calls, where: str, err) -> None:
    """OpenAI tool calls ({"type": "function", "id"?, "function": {"name", "arguments"}}), or flat ones
    ({"name", "arguments"}). Arguments: an object, or a string holding a JSON object (kept as written)."""
    example = '[{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]'
    if not isinstance(calls, list):
        raise err(f"must be a list of tool calls, got {type(calls).__name__}", where, f"give a list such as {example}")
    for k, call in enumerate(calls):
        w = f"{where}[{k}]"
        if not isinstance(call, dict):
            raise err(f"a tool call must be an object, got {type(call).__name__} {_short(call)}", w,
                      f"give each call as an object, e.g. {example[1:-1]}")
        if call.get("id") is not None and not isinstance(call["id"], str):
            raise err(f"id must be a string, got {type(call['id']).__name__}", w + ".id",
                      "give the call id as a string")
        if call.get("function") is not None:  # OpenAI form
            kind = call.get("type")
            if kind is not None and kind != "function":
                raise err(f"type must be 'function', got {kind!r}", w + ".type",
                          "only function calls are rendered by chat templates; use type 'function'")
            fn, fw = call["function"], w + ".function"
            if not isinstance(fn, dict):
                raise err(f"must be an object with 'name' and 'arguments', got {type(fn).__name__}", fw,
                          f"e.g. {example[1:-1]}")
        else:  # flat form
            fn, fw = call, w
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            got = "missing" if name is None else f"{type(name).__name__} {_short(name)}"
            raise err(f"the function name must be a non-empty string, got {got}", fw + ".name",
                      "name the function the call invokes")
        if fn.get("arguments") is None:
            raise err(f"call to {name!r} has no arguments (missing or null)", fw + ".arguments",
                      'give the arguments as an object ({} for a call without arguments) or as a JSON string')
        args = fn["arguments"]
        if isinstance(args, str):
            try:
                parsed = json.loads(args)
            except json.JSONDecodeError as e:
                raise err(f"is a string that is not valid JSON ({e.msg} at column {e.colno})", fw + ".arguments",
                          "give the arguments as an object, or as a string holding a JSON object") from None
            except RecursionError:
                raise err("is a JSON string nested too deeply to parse", fw + ".arguments",
                          "flatten the arguments") from None
            if not isinstance(parsed, dict):
                raise err(f"is a JSON string holding a {type(parsed).__name__}, not an object", fw + ".arguments",
                          'arguments are an object of named parameters, e.g. {"city": "Paris"}')
        elif not isinstance(args, dict):
            raise err(f"must be an object or a JSON string, got {type(args).__name__} {_short(args)}",
                      fw + ".arguments", 'give the arguments as an object of named parameters, e.g. {"city": "Paris"}')


def _check_tools(tools, err) -> list | None:
    """A row's tools: a list of JSON schemas (OpenAI {"type": "function", "function": {...}} or flat), or a JSON string
    holding one (TRL json.loads it). Returns the list (parsed), or None."""
    origin = ""
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            raise err(f"is a string that is not valid JSON ({e.msg} at column {e.colno})", "tools",
                      "give tools as a list of JSON schemas, or a string holding one") from None
        except RecursionError:
            raise err("is a JSON string nested too deeply to parse", "tools", "flatten the tool schemas") from None
        origin = " (in the JSON string)"
        bad = _first_bad_value(tools, 1)
        if bad is not None:
            _raise_bad_value(["tools", *bad[0]], bad[1], bad[2], err, origin)
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise err(f"must be a list of tool schemas{origin}, got {type(tools).__name__}", "tools",
                  'give [{"type": "function", "function": {"name": ..., "description": ..., "parameters": {...}}}]')
    for i, tool in enumerate(tools):
        w = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise err(f"a tool schema must be an object{origin}, got {type(tool).__name__} {_short(tool)}", w,
                      "give each tool as a JSON schema object"
                      + (" (parse the strings with json.loads)" if isinstance(tool, str) else ""))
        if tool.get("function") is not None:
            kind = tool.get("type")
            if kind is not None and kind != "function":
                raise err(f"type must be 'function'{origin}, got {kind!r}", w + ".type", "use type 'function'")
            fn, fw = tool["function"], w + ".function"
            if not isinstance(fn, dict):
                raise err(f"must be an object{origin}, got {type(fn).__name__}", fw,
                          'give {"name": ..., "description": ..., "parameters": {...}}')
        else:
            fn, fw = tool, w
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            got = "missing" if name is None else f"{type(name).__name__} {_short(name)}"
            raise err(f"the tool name must be a non-empty string{origin}, got {got}", fw + ".name", "name the function")
        desc = fn.get("description")
        if desc is not None and not isinstance(desc, str):
            raise err(f"description must be a string{origin}, got {type(desc).__name__}", fw + ".description",
                      "describe the tool in one string")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise err(f"parameters must be an object (a JSON schema){origin}, got {type(params).__name__}",
                      fw + ".parameters", 'e.g. {"type": "object", "properties": {"city": {"type": "string"}}}')
    return tools


def _check_template_kwargs(ctk, err) -> dict:
    """A row's chat_template_kwargs: an object of JSON values, none of whose keys rendering takes itself."""
    if ctk is None:
        return {}
    if not isinstance(ctk, dict):
        raise err(f"must be an object, got {type(ctk).__name__}", "chat_template_kwargs",
                  'give an object of template variables, e.g. {"enable_thinking": false}')
    for key, value in ctk.items():
        fld = format_path(["chat_template_kwargs", key])
        if key in RESERVED_TEMPLATE_KWARGS or key.endswith("_token"):
            why = ("a special token of the tokenizer" if key.endswith("_token") else
                   "an argument of rendering itself (apply_chat_template / the template's own variables)")
            raise err(f"key {key!r} is {why}: a row must not be able to change the template, the conversation or the "
                      "tokenizer's special tokens", fld,
                      f"remove {key!r} from chat_template_kwargs (give messages, tools and the template the usual "
                      "way); keep only variables the template reads, e.g. enable_thinking")
        bad = _non_json_value(value)
        if bad is not None:
            raise err(f"holds a {type(bad[1]).__name__}, which is not a JSON value",
                      format_path(["chat_template_kwargs", key, *bad[0]]),
                      "give template variables as JSON values (string, number, boolean, null, list, object)")
    return ctk


def _non_json_value(value, depth: int = 0):
    """(path, value) of the first value that is not JSON data (str/int/float/bool/None/list/dict), or None."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return None
    if isinstance(value, list) and depth <= MAX_DEPTH:
        for i, v in enumerate(value):
            bad = _non_json_value(v, depth + 1)
            if bad is not None:
                return [i, *bad[0]], bad[1]
        return None
    if isinstance(value, dict) and depth <= MAX_DEPTH:
        for k, v in value.items():
            bad = _non_json_value(v, depth + 1)
            if bad is not None:
                return [k, *bad[0]], bad[1]
        return None
    return [], value
