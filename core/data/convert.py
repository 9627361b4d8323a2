"""LLaMA-Factory's dataset formats, converted into TRL's ``messages`` rows (its data/README.md and its converters,
``src/llamafactory/data/converter.py`` and ``src/llamafactory/v1/plugins/data_plugins/converter.py`` +
``v1/core/rendering/format.py``):

- alpaca: ``instruction``, ``input``, ``output``, optional ``system`` and ``history`` (``[[query, response], ...]``)
  -> [system] + history turns + user (``instruction``, then "\\n" and ``input`` when input is not empty) + assistant
  (``output``). LLaMA-Factory trains the history responses too; so does ``assistant_only``.
- ShareGPT (``conversations`` of ``from``/``value``): human/gpt/observation/function_call/system -> user/assistant/
  tool/assistant/system; a ``function_call`` turn's value (a JSON call ``{"name", "arguments"}`` or a list of them)
  becomes the assistant message's ``tool_calls``; a ``system`` column becomes the first message; a ``tools`` JSON
  string is parsed and flat schemas are wrapped as OpenAI's ``{"type": "function", "function": {...}}``.
- typed parts (LLaMA-Factory v1, e.g. ``v1_sft_demo.jsonl``): ``{"type": "text" | "reasoning" | "tool_call" |
  "image_url", "value": ...}`` -> text parts joined into ``content`` (with nothing between them, as LLaMA-Factory
  joins them), reasoning into ``reasoning_content``, each tool_call into ``tool_calls``, image_url into an image part
  and the row's ``images``; an assistant message's ``loss_weight`` becomes its ``weight`` (other roles are never
  trained; LLaMA-Factory supervises assistant turns only).
- ``<image>`` tags in string content with an ``images`` column (``mllm_demo.json``, LLaVA-style data): each tag becomes
  an image part where it stands, as LLaMA-Factory reads it. (TRL given the row as is puts every image before the text
  of the first user message and keeps the literal "<image>" text.)

Each conversion is described in words (the ``format_converted`` finding); the converted rows export as TRL data
(core.export.export_converted_rows). Errors go through ``err(message, field, fix)`` and name the row's own fields.

Example: convert_row({"instruction": "Add", "input": "2+2", "output": "4"}, err)
-> ({"messages": [{"role": "user", "content": "Add\\n2+2"}, {"role": "assistant", "content": "4"}]}, ["..."])
"""

from __future__ import annotations

import json
import re

from .example import SHAREGPT_ROLES

# TRL's own columns: a row holding one of these is TRL data, never converted as alpaca.
TRL_FIELDS = ("messages", "conversations", "prompt", "completion", "text", "input_ids")
ALPACA_FIELDS = ("instruction", "input", "output", "system", "history")
IMAGE_TAG = "<image>"
_IMAGE_TAG_RE = re.compile(re.escape(IMAGE_TAG))
_CALL_EXAMPLE = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


def _short(value, n: int = 40) -> str:
    s = repr(value)
    return s if len(s) <= n else s[: n - 3] + "..."


def convert_row(row: dict, err) -> tuple[dict, list[str]]:
    """Convert a LLaMA-Factory row into TRL's format. Returns (the row, converted; what was converted, in words).
    A row already in TRL's format comes back as it is, with []. ``row`` is not modified."""
    done: list[str] = []
    if is_alpaca(row):
        row = _alpaca(row, err, done)
    elif isinstance(row.get("conversations"), list) and "messages" not in row:
        row = _sharegpt(row, err, done)
    if is_typed_lf(row.get("messages")):
        row = _typed(row, err, done)
    row = _image_tags(row, err, done)
    return row, done


def is_alpaca(row: dict) -> bool:
    """LLaMA-Factory's alpaca format: instruction/output (input, system, history) and none of TRL's fields."""
    return not any(k in row for k in TRL_FIELDS) and ("instruction" in row or "output" in row)


# --------------------------------------------------------------------------------------------------------- alpaca
def _alpaca(row: dict, err, done: list[str]) -> dict:
    def text(key, required=False):
        v = row.get(key)
        if v is None:
            if required:
                pref = " (this looks like preference data: chosen/rejected are for DPO / reward modelling, not SFT)" \
                    if "chosen" in row or "rejected" in row else ""
                raise err(f"is missing: an alpaca row needs the response in 'output'{pref}", key,
                          'give {"instruction": "...", "input": "", "output": "..."}')
            return ""
        if not isinstance(v, str):
            raise err(f"must be a string, got {type(v).__name__} {_short(v)}", key,
                      f"give the alpaca field {key!r} as a string")
        return v

    instruction, query, output, system = text("instruction"), text("input"), text("output", True), text("system")
    history = row.get("history")
    msgs: list[dict] = []
    if system:
        msgs.append({"role": "system", "content": system})
    n_hist = 0
    if history is not None:
        if not isinstance(history, list):
            raise err(f"must be a list of [query, response] pairs, got {type(history).__name__}", "history",
                      'give "history": [["earlier question", "earlier answer"], ...]')
        for k, pair in enumerate(history):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                raise err(f"must be a [query, response] pair of strings, got {_short(pair)}", f"history[{k}]",
                          'give each history turn as ["question", "answer"]')
            msgs += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
            n_hist += 1
    # LLaMA-Factory (data/converter.py, AlpacaDatasetConverter): "\n".join of the non-empty instruction and input.
    msgs.append({"role": "user", "content": "\n".join(t for t in (instruction, query) if t)})
    msgs.append({"role": "assistant", "content": output})
    out = {k: v for k, v in row.items() if k not in ALPACA_FIELDS}
    out["messages"] = msgs
    what = ["system message from 'system'"] if system else []
    if n_hist:
        what.append(f"{n_hist} earlier turn(s) from 'history' (their responses are trained too, as in LLaMA-Factory)")
    what.append("user = instruction" + (' + "\\n" + input' if instruction and query else " (input is empty)"
                                        if instruction else " = input (instruction is empty)" if query else ""))
    what.append("assistant = output")
    done.append("LLaMA-Factory alpaca row -> messages: " + "; ".join(what))
    return out


# ------------------------------------------------------------------------------------------------------- ShareGPT
def _sharegpt(row: dict, err, done: list[str]) -> dict:
    conv = row["conversations"]
    if not (conv and isinstance(conv[0], dict) and "from" in conv[0]):
        return {**{k: v for k, v in row.items() if k != "conversations"}, "messages": conv}
    msgs: list[dict] = []
    n_calls = n_obs = 0
    for j, m in enumerate(conv):
        if not isinstance(m, dict) or "from" not in m or "value" not in m:
            raise err(f"message {j} must have 'from' and 'value'", f"conversations[{j}]",
                      'ShareGPT messages look like {"from": "human", "value": "..."}')
        m = dict(m)
        frm = m.pop("from")
        value = m.pop("value")
        if frm == "function_call":
            calls = parse_calls(value, f"conversations[{j}].value", err)
            # content "" as LLaMA-Factory v1 gives a call-only turn (format.py: text = ""): templates that read
            # message['content'] unguarded (SmolLM2's, most ChatML ones) render it instead of failing
            m.update(role="assistant", content="", tool_calls=calls)
            n_calls += len(calls)
        else:
            if frm == "observation":
                n_obs += 1
            m["content"] = value
            m["role"] = SHAREGPT_ROLES.get(frm, frm) if isinstance(frm, str) else frm
        msgs.append(m)
    out = {k: v for k, v in row.items() if k not in ("conversations", "system")}
    what = []
    system = row.get("system")
    if system is not None and not isinstance(system, str):
        raise err(f"must be a string, got {type(system).__name__}", "system", "give the system prompt as a string")
    if system and not (msgs and msgs[0].get("role") == "system"):  # a system turn in the conversation wins (as in LF)
        msgs.insert(0, {"role": "system", "content": system})
        what.append("the 'system' column became the first message")
    if n_calls:
        what.append(f"{n_calls} function_call value(s) -> assistant tool_calls (JSON parsed)")
    if n_obs:
        what.append(f"{n_obs} observation turn(s) -> tool messages")
    tools, note = wrap_tools(row.get("tools"))
    if note:
        out["tools"] = tools
        what.append(note)
    out["messages"] = msgs
    if what:
        done.append("LLaMA-Factory ShareGPT row -> messages: " + "; ".join(what))
    return out


def parse_calls(value, fld: str, err) -> list[dict]:
    """A LLaMA-Factory function call (a JSON string holding {"name", "arguments"} or a list of them) -> OpenAI
    tool_calls [{"type": "function", "function": {"name", "arguments"}}]; arguments given as a JSON string are parsed."""
    parsed = value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as e:
            raise err(f"is not valid JSON ({e.msg} at column {e.colno}): a function call must be a JSON object",
                      fld, f"write the call as {_CALL_EXAMPLE} (or a list of such calls)") from None
        except RecursionError:
            raise err("is a JSON string nested too deeply to parse", fld, "flatten the call's arguments") from None
    calls = parsed if isinstance(parsed, list) else [parsed]
    out = []
    for k, c in enumerate(calls):
        where = f"{fld} (call {k})" if isinstance(parsed, list) else fld
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or "arguments" not in c:
            raise err(f"holds {_short(c)}, not a call with 'name' and 'arguments'", where,
                      f"write the call as {_CALL_EXAMPLE}")
        args = c["arguments"]
        if isinstance(args, str):
            try:
                a = json.loads(args)
                args = a if isinstance(a, dict) else args
            except (json.JSONDecodeError, RecursionError):
                pass  # kept as written: validation names it
        out.append({"type": "function", "function": {"name": c["name"], "arguments": args}})
    return out


def wrap_tools(tools) -> tuple[object, str]:
    """LLaMA-Factory's tools (a JSON string; schemas flat or OpenAI-wrapped) -> (a list of OpenAI-wrapped schemas,
    what changed in words). Unparseable or odd values come back as they are, with "", for validation to name."""
    if tools is None or tools == "":
        return tools, ""
    parsed = tools
    was_string = isinstance(tools, str)
    if was_string:
        try:
            parsed = json.loads(tools)
        except (json.JSONDecodeError, RecursionError):
            return tools, ""
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list):
        return tools, ""
    n_flat = 0
    out = []
    for t in parsed:
        if isinstance(t, dict) and t.get("function") is None and isinstance(t.get("name"), str):
            out.append({"type": "function", "function": t})
            n_flat += 1
        else:
            out.append(t)
    what = []
    if was_string:
        what.append(f"the tools JSON string was parsed ({len(out)} tool(s))" if out else
                    "the tools JSON string was parsed (an empty list: no tools)")
    if n_flat:
        what.append(f'{n_flat} flat tool schema(s) wrapped as {{"type": "function", "function": {{...}}}} '
                    "(the form chat templates read)")
    return out, ", ".join(what)


# ---------------------------------------------------------------------------------------- LLaMA-Factory typed parts
LF_PART_TYPES = ("text", "reasoning", "tool_call", "image_url")


def is_typed_lf(msgs) -> bool:
    """LLaMA-Factory v1's typed content: parts carrying "value" (not OpenAI's "text")."""
    if not isinstance(msgs, list):
        return False
    return any(isinstance(m, dict) and isinstance(m.get("content"), list) and any(
        isinstance(p, dict) and "value" in p and "text" not in p and "image_url" not in p for p in m["content"])
        for m in msgs)


def _typed(row: dict, err, done: list[str]) -> dict:
    images = list(row["images"]) if isinstance(row.get("images"), list) else []
    had_images = bool(images)
    counts = {"text": 0, "reasoning": 0, "tool_call": 0, "image_url": 0}
    weights, ignored_weights = 0, []
    msgs = []
    for j, m in enumerate(row["messages"]):
        if not isinstance(m, dict):
            msgs.append(m)
            continue
        m = dict(m)
        c = m.get("content")
        lw = m.pop("loss_weight", None)
        if isinstance(c, list):
            texts, reasoning, calls, parts, has_image = [], [], [], [], False
            for k, p in enumerate(c):
                where = f"messages[{j}].content[{k}]"
                if not isinstance(p, dict):
                    raise err(f"a typed part must be an object, got {type(p).__name__}", where,
                              'write parts as {"type": "text", "value": "..."}')
                kind, v = p.get("type"), p.get("value")
                if kind not in LF_PART_TYPES:
                    media = kind in ("video_url", "audio_url")
                    raise err(f"unknown typed part {_short(kind)}" + (" (MaskLens has no video/audio processing)"
                                                                       if media else ""), where + ".type",
                              f"use one of {', '.join(LF_PART_TYPES)}")
                if kind == "tool_call":
                    calls += parse_calls(v, where + ".value", err)
                elif kind == "image_url":
                    if v is None or v == "":
                        raise err("has no image", where + ".value", "give the image's path relative to the data file")
                    images.append(v)
                    parts.append({"type": "image"})
                    has_image = True
                else:
                    if not isinstance(v, str):
                        raise err(f"value must be a string, got {type(v).__name__} {_short(v)}", where + ".value",
                                  f"give the {kind} as a string")
                    (texts if kind == "text" else reasoning).append(v)
                    if kind == "text":
                        parts.append({"type": "text", "text": v})
                counts[kind] += 1
            m["content"] = parts if has_image else "".join(texts)
            if reasoning:
                m["reasoning_content"] = "".join(reasoning)
            if calls:
                m["tool_calls"] = calls
        if lw is not None:
            if isinstance(lw, bool) or not isinstance(lw, (int, float)) or not 0 <= lw <= 1:
                raise err(f"must be a number from 0 to 1, got {_short(lw)}", f"messages[{j}].loss_weight",
                          "use 0 (not trained), 1 (trained) or a fraction (trained with that weight)")
            if m.get("role") == "assistant":
                m["weight"] = lw
                weights += 1
            elif lw:
                ignored_weights.append(j)
        msgs.append(m)
    if had_images and counts["image_url"]:
        raise err("the row has an 'images' column and image_url parts too", "images",
                  "give each image once: as an image_url part (LLaMA-Factory v1) or in 'images' with {\"type\": \"image\"} "
                  "parts")
    out = {k: v for k, v in row.items() if k != "messages"}
    out["messages"] = msgs
    if counts["image_url"]:
        out["images"] = images
        out["messages"] = as_parts(msgs)
    what = []
    if counts["text"]:
        what.append(f"{counts['text']} text part(s) -> content (joined with nothing between them"
                    + (", kept as parts beside images" if counts["image_url"] else "") + ")")
    if counts["reasoning"]:
        what.append(f"{counts['reasoning']} reasoning part(s) -> reasoning_content")
    if counts["tool_call"]:
        what.append(f"{counts['tool_call']} tool_call part(s) -> tool_calls")
    if counts["image_url"]:
        what.append(f"{counts['image_url']} image_url part(s) -> image parts + the row's images")
    if weights:
        what.append(f"loss_weight -> weight on {weights} assistant message(s) (LLaMA-Factory v1 trains each "
                    "weighted assistant turn with its history as the prompt: MaskLens's split_turns)")
    if ignored_weights:
        what.append(f"loss_weight on non-assistant message(s) {', '.join(map(str, ignored_weights))} ignored "
                    "(LLaMA-Factory supervises assistant turns only)")
    tools, note = wrap_tools(row.get("tools"))
    if note:
        out["tools"] = tools
        what.append(note)
    done.append("LLaMA-Factory typed parts -> messages: " + "; ".join(what or ["no parts"]))
    return out


# ---------------------------------------------------------------------------------------------------- <image> tags
def _image_tags(row: dict, err, done: list[str]) -> dict:
    images = row.get("images")
    if not isinstance(images, list) or not images:
        return row
    keys = [k for k in ("messages", "prompt", "completion") if isinstance(row.get(k), list)]
    n_tags = sum(len(_IMAGE_TAG_RE.findall(m["content"])) for k in keys for m in row[k]
                 if isinstance(m, dict) and isinstance(m.get("content"), str))
    if not n_tags:
        return row
    if n_tags != len(images):
        raise err(f"the conversation has {n_tags} {IMAGE_TAG} tag(s) but the row has {len(images)} image(s)", "images",
                  f"give one image per {IMAGE_TAG} tag, in order (LLaMA-Factory's rule), or use "
                  '{"type": "image"} parts')
    out = dict(row)
    for k in keys:
        msgs = []
        for m in row[k]:
            c = m.get("content") if isinstance(m, dict) else None
            if isinstance(c, str) and IMAGE_TAG in c:
                parts = []
                for piece in re.split(f"({re.escape(IMAGE_TAG)})", c):
                    if piece == IMAGE_TAG:
                        parts.append({"type": "image"})
                    elif piece:
                        parts.append({"type": "text", "text": piece})
                m = {**m, "content": parts}
            msgs.append(m)
        out[k] = as_parts(msgs)
    done.append(f"{n_tags} {IMAGE_TAG} tag(s) -> image parts where they stand (as LLaMA-Factory reads them; TRL given "
                "the row as is would put every image before the first user text and keep the literal tag); the other "
                "messages' text -> text parts")
    return out


def as_parts(msgs: list) -> list:
    """Every string content as one text part. A row with image parts needs it: TRL 1.16's prepare_multimodal_messages
    puts placeholders for ALL the row's images before the first user message whose content is still a string (and
    wraps every string in a text part, so the rendering is the same)."""
    return [{**m, "content": [{"type": "text", "text": m["content"]}]}
            if isinstance(m, dict) and isinstance(m.get("content"), str) else m for m in msgs]
