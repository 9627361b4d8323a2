"""Checking a row's shape before anything is rendered: messages, typed content parts, tool calls, tool schemas,
chat_template_kwargs, images, and the JSON values themselves. Every problem raises through ``err(message, field, fix)``
(normalize_row's: a MaskLensError naming file, row, field path and the fix).

Example: check_messages([{"role": "user", "content": 3}], "messages", err)
-> err("content must be a string or a list of parts, got int", "messages[0].content", ...)
"""

from __future__ import annotations

import json
import math
import re

from .content import IMAGE, IMAGE_PAYLOAD_KEYS, IMAGE_URL, PART_TYPES, TEXT
from .example import ROLES
from .schema import format_path


def check_messages(msgs, fld: str, err, offset: int = 0) -> list[dict]:
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
        if type(m) is dict and len(m) == 2 and type(m.get("content")) is str and type(m.get("role")) is str \
                and m["role"] in _ROLE_SET:  # the common shape, which every check below passes
            out.append(dict(m))
            continue
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
            check_tool_calls(calls, where + ".tool_calls", err)
        content = m.get("content")
        if content is None and not calls:
            raise err("has no 'content' (null or missing)", where + ".content",
                      "add the message text as a string"
                      + (" (or give the message tool_calls)" if role == "assistant" else ""))
        if isinstance(content, list):
            check_parts(content, where + ".content", err)
        elif content is not None and not isinstance(content, str):
            raise err(f"content must be a string or a list of parts, got {type(content).__name__}", where + ".content",
                      "give the message text as a string, or as parts such as [{\"type\": \"text\", \"text\": \"...\"}]"
                      + (" (serialize a tool's result with json.dumps)" if role == "tool" else ""))
        if not _REASONING_KEYS.isdisjoint(m):
            check_reasoning(m, where, err)
        for key in ("name", "tool_call_id") if role == "tool" else ("name",):
            v = m.get(key)
            if v is not None and not isinstance(v, str):
                raise err(f"{key} must be a string, got {type(v).__name__} {_short(v)}", f"{where}.{key}",
                          f"give the {key} as a string")
        w = m.get("weight")
        if w is not None and not _is_weight(w):
            raise err(f"weight must be a number from 0 to 1, got {_short(w)}", where + ".weight",
                      "use 0 (not trained), 1 (trained) or a fraction in between (trained with that loss weight)")
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


def _is_weight(w) -> bool:
    """A message weight: 0/1 (OpenAI), true/false, or a fraction in [0, 1] (LLaMA-Factory's loss_weight)."""
    return isinstance(w, (int, float)) and not (isinstance(w, float) and math.isnan(w)) and 0 <= w <= 1


_PART_EXAMPLE = '[{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]'


def check_parts(parts: list, where: str, err) -> None:
    """A message's content given as a list of typed parts: text parts {"type": "text", "text": str}, image parts
    {"type": "image"} (a placeholder TRL fills from the row's images, or carrying its own "image"/"url"/"path") and
    OpenAI's {"type": "image_url", "image_url": {"url": ...}}. Kept as written: TRL passes the list to the template."""
    for k, part in enumerate(parts):
        w = f"{where}[{k}]"
        if not isinstance(part, dict):
            raise err(f"content must be a string or a list of typed parts; a content part must be an object, got "
                      f"{type(part).__name__} {_short(part)}", w,
                      "give the message text as one string" + (" (join the strings)" if isinstance(part, str) else "")
                      + f", or typed parts such as {_PART_EXAMPLE}")
        kind = part.get("type")
        if kind is None:
            raise err("a content part has no 'type'", w + ".type",
                      f"name each part's type: 'text' or 'image', e.g. {_PART_EXAMPLE}")
        if kind not in PART_TYPES:
            media = kind in ("video", "audio", "video_url", "audio_url", "input_audio")
            raise err(f"unknown content part type {_short(kind)}" + (
                      " (MaskLens renders text and image parts; it has no video or audio processing)" if media else ""),
                      w + ".type",
                      "use 'text' parts ({\"type\": \"text\", \"text\": ...}) and 'image' parts ({\"type\": \"image\"}"
                      " with the image in the row's `images`)" + ("; drop the video/audio parts to inspect the text"
                                                                  if media else ""))
        if kind == TEXT:
            if "text" not in part:
                hint = " (LLaMA-Factory's typed parts use 'value': MaskLens converts a row whose parts all use it)" \
                    if "value" in part else ""
                raise err(f"a text part has no 'text'{hint}", w + ".text", 'write text parts as {"type": "text", "text": "..."}')
            if not isinstance(part["text"], str):
                raise err(f"text must be a string, got {type(part['text']).__name__} {_short(part['text'])}",
                          w + ".text", "give the part's text as a string")
        elif kind == IMAGE_URL:
            v = part.get("image_url")
            url = v.get("url") if isinstance(v, dict) else v
            if not isinstance(url, str) or not url:
                raise err("an image_url part needs image_url.url (a path, a data: URL)", w + ".image_url",
                          'write {"type": "image_url", "image_url": {"url": "images/cat.png"}}, or use {"type": "image"} '
                          "with the image in the row's `images`")
        elif kind == IMAGE:
            for key in IMAGE_PAYLOAD_KEYS:
                if key in part and part[key] is None:
                    raise err(f"{key} is null", f"{w}.{key}",
                              f"remove {key!r} (the image then comes from the row's `images`) or give the image")


IMAGE_EXAMPLE = '"images": ["photos/cat.png"]'


def check_images(images, fld: str, err) -> list:
    """A row's images: a list (``images``) or one image (``image``) of local paths (relative to the data file),
    data: URLs, {"bytes": ..., "path": ...} dicts as `datasets` stores images, raw bytes or PIL images. Opened only
    when rendered (core.masking.vision). Returns the list."""
    if not isinstance(images, list):
        images = [images] if fld == "image" else images
    if not isinstance(images, list):
        raise err(f"must be a list of images, got {type(images).__name__}", fld, f"give a list, e.g. {IMAGE_EXAMPLE}")
    for k, im in enumerate(images):
        w = f"{fld}[{k}]" if fld == "images" else fld
        if im is None:
            raise err("is null", w, "give every image (a path relative to the data file, or image bytes)")
        if isinstance(im, str):
            if not im.strip():
                raise err("is an empty path", w, "give the image's path relative to the data file")
        elif isinstance(im, dict):
            b, path = im.get("bytes"), im.get("path")
            if b is None and not (isinstance(path, str) and path):
                raise err("has neither 'bytes' nor 'path'", w,
                          'give {"bytes": <image bytes>} (as `datasets` stores images) or {"path": "cat.png"}')
            if b is not None and not isinstance(b, (bytes, bytearray, str)):
                raise err(f"bytes must be bytes (or base64 text), got {type(b).__name__}", w + ".bytes",
                          "store the encoded image file's bytes")
        elif not isinstance(im, (bytes, bytearray)) and not hasattr(im, "convert"):  # PIL images have .convert
            raise err(f"is a {type(im).__name__}, not an image", w,
                      f"give a path relative to the data file or the image's bytes, e.g. {IMAGE_EXAMPLE}")
    return images


# ------------------------------------------------------------------------------ row validation: reasoning, tools
# The reasoning fields of a message. transformers 5.23 (chat_template_utils._alias_reasoning_fields) copies the first
# one present into `reasoning_content` and `thinking` before rendering, so templates read it under either name.
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_REASONING_KEYS = frozenset(REASONING_FIELDS)
_ROLE_SET = frozenset(ROLES)

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


def check_json_values(row: dict, err) -> None:
    """Raise on a string with a lone surrogate, a non-string key, or nesting deeper than MAX_DEPTH, naming the path.

    json.loads accepts "\\ud800" (an unpaired UTF-16 surrogate), but no tokenizer can encode it. Token-id columns are
    skipped (they are checked as integer lists).
    """
    values = {k: v for k, v in row.items() if k not in ("input_ids", "labels") or not isinstance(v, list)}
    if _values_ok(values):
        return
    bad = first_bad_value(values, 0)  # the slow walk that names the path
    if bad is not None:
        raise_bad_value(*bad, err)


_SCALARS = (int, float, bool, type(None))


def _values_ok(value) -> bool:
    """Fast check (no paths, no recursion) that first_bad_value would find nothing. ~2x faster than it."""
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


def raise_bad_value(parts: list, problem: str, text, err, origin: str = ""):
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


def first_bad_value(value, depth: int):
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
                bad = first_bad_value(v, depth + 1)
                if bad is not None:
                    return [k, *bad[0]], bad[1], bad[2]
    elif isinstance(value, (list, tuple)):
        if depth > MAX_DEPTH:
            return [], "depth", None
        for i, v in enumerate(value):
            if v is not None and not isinstance(v, (int, float)):
                bad = first_bad_value(v, depth + 1)
                if bad is not None:
                    return [i, *bad[0]], bad[1], bad[2]
    return None


def check_reasoning(m: dict, where: str, err) -> None:
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


def check_tool_calls(calls, where: str, err) -> None:
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


def check_tools(tools, err) -> list | None:
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
        bad = first_bad_value(tools, 1)
        if bad is not None:
            raise_bad_value(["tools", *bad[0]], bad[1], bad[2], err, origin)
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


def check_template_kwargs(ctk, err) -> dict:
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
