"""One raw row -> one checked Example (normalize_row): TRL's formats as they are, LLaMA-Factory's converted.

Formats (as TRL 1.16's SFTTrainer accepts them):
- language modelling: ``{"text": "..."}``
- conversational: ``{"messages": [{"role": ..., "content": ...}, ...]}`` (optional ``tools``,
  ``chat_template_kwargs``); content a string or a list of typed parts (core.data.content); ShareGPT
  ``{"conversations": [{"from": ..., "value": ...}]}`` is converted as TRL does.
- prompt/completion: strings, or lists of messages.
- pre-tokenized: ``{"input_ids": [...], "labels": [...]?}``.
- images (vision-language SFT): ``images`` (a list) or ``image`` beside any of those (core.masking.vision renders them).

LLaMA-Factory's formats (alpaca, ShareGPT with function calls, typed parts, ``<image>`` tags) are converted first
(core.data.convert), with a ``format_converted`` finding saying how. Fields nothing reads get an ``unknown_fields``
finding: they are never silently dropped.

Per-message training flags on assistant messages: ``weight`` in [0, 1] (OpenAI's 0/1; LLaMA-Factory's loss_weight)
and ``train`` true/false (axolotl). A message flagged 0/false is never trained by an assistant strategy.

Every problem raises :class:`MaskLensError` naming the file, the line or row, the field and the fix.
"""

from __future__ import annotations

import os

from ..errors import MaskLensError
from ..findings import Finding
from .content import image_placeholders, images_trl_expects
from .convert import ALPACA_FIELDS, convert_row, is_alpaca
from .example import (KIND_MESSAGES, KIND_PC_CONV, KIND_PC_TEXT, KIND_TEXT, KIND_TOKENS, SHAREGPT_ROLES, Example)
from .validate import check_images, check_json_values, check_messages, check_template_kwargs, check_tools

# Columns something reads: TRL 1.16's SFTTrainer (its formats, images, chat_template_kwargs, the pre-tokenized
# columns its preparation and collators use) and MaskLens's conversions (LLaMA-Factory's alpaca columns, ShareGPT's
# system column).
KNOWN_FIELDS = frozenset({
    "messages", "conversations", "prompt", "completion", "text", "input_ids", "labels", "tools",
    "chat_template_kwargs", "images", "image",
    "attention_mask", "completion_mask", "assistant_masks", "position_ids", "seq_lengths", "token_type_ids",
})


def normalize_row(row: dict, index: int = 0, source: str | None = None, line: int | None = None,
                  base_dir: str | None = None) -> Example:
    """Check one raw row and turn it into an Example; raises MaskLensError naming the row, field path and fix.

    ``base_dir``: the folder relative image paths are read from (the data file's).
    Example: normalize_row({"messages": [{"role": "user", "content": "Hi"}]}).kind -> "messages";
    a bad tool call raises "... field 'messages[1].tool_calls[0].function.arguments': ...".
    """

    def err(msg, fld=None, fix=None):
        where = f"line {line}: " if line else ""
        return MaskLensError(where + msg, file=source, row=index, field=fld, fix=fix)

    if not isinstance(row, dict):
        raise err(f"a row must be an object, got {type(row).__name__}", None,
                  'make each row an object such as {"messages": [...]}')
    check_json_values(row, err)  # lone surrogates, non-string keys, depth: before anything else reads the row
    raw = _displayable(row)
    notes: list[Finding] = []
    # a null field holds nothing to lose (a `datasets` column other rows fill comes back as None here)
    unknown = sorted(k for k in row if row[k] is not None and k not in KNOWN_FIELDS
                     and not (k in ALPACA_FIELDS and is_alpaca(row))
                     and not (k == "system" and "conversations" in row and "messages" not in row))
    mapped = _sharegpt_roles_mapped(row)
    row, converted = convert_row(row, err)
    if mapped:
        notes.append(Finding("roles_mapped", "ShareGPT roles human/gpt were mapped to user/assistant."))
    if converted:
        notes.append(Finding("format_converted", f"row {index}: " + " | ".join(converted),
                             location={"conversions": converted}))
    if unknown:
        notes.append(Finding("unknown_fields", f"row {index}: {', '.join(unknown)} — "
                             f"{'no part of' if len(unknown) > 1 else 'nothing in'} TRL's formats reads "
                             f"{'them' if len(unknown) > 1 else 'it'}", location={"fields": unknown}))
    row = dict(row)
    tools = check_tools(row.get("tools"), err)
    ctk = check_template_kwargs(row.get("chat_template_kwargs"), err)
    images = None
    if row.get("images") is not None or row.get("image") is not None:
        fld = "images" if row.get("images") is not None else "image"
        images = check_images(row[fld], fld, err)
        if base_dir is None and source and os.path.isfile(source):  # streamed rows (core.parallel) name only the file
            base_dir = os.path.dirname(os.path.abspath(source))
    common = dict(row=index, raw=raw, source=source, line=line, tools=tools or None, chat_template_kwargs=ctk,
                  images=images, base_dir=base_dir)

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
        return Example(kind=KIND_TOKENS, input_ids=ids, labels=labels, notes=notes, **{**common, "images": None})

    msgs_field = "messages"
    if "conversations" in row and "messages" not in row:  # conversations that are not ShareGPT (already role/content)
        msgs_field = "conversations"
        row["messages"] = row["conversations"]
    elif "conversations" in raw and "messages" not in raw:
        msgs_field = "conversations"

    if "messages" in row:
        msgs = check_messages(row["messages"], msgs_field, err)
        _check_image_count(msgs, images, msgs_field, err)
        return Example(kind=KIND_MESSAGES, messages=msgs, notes=notes, **common)

    if "prompt" in row or "completion" in row:
        for k in ("prompt", "completion"):
            if k not in row or row[k] is None:
                raise err("is missing", k, "prompt/completion rows need both 'prompt' and 'completion'")
        p, c = row["prompt"], row["completion"]
        if isinstance(p, str) and isinstance(c, str):
            return Example(kind=KIND_PC_TEXT, prompt=p, completion=c, notes=notes, **common)
        if isinstance(p, list) and isinstance(c, list):
            pm = check_messages(p, "prompt", err)
            cm = check_messages(c, "completion", err, offset=len(pm))
            _check_image_count(pm, images, "prompt", err)
            if images is not None and image_placeholders(cm):
                raise err("has image parts, but TRL 1.16 fills images into the prompt only", "completion",
                          "move the image parts into the prompt")
            return Example(kind=KIND_PC_CONV, prompt=pm, completion=cm, messages=pm + cm, notes=notes, **common)
        raise err(f"prompt is {type(p).__name__} and completion is {type(c).__name__}", "prompt",
                  "give both as strings, or both as lists of messages")

    if "text" in row:
        t = row["text"]
        if not isinstance(t, str):
            raise err(f"must be a string, got {type(t).__name__}", "text", "give the text as a string")
        return Example(kind=KIND_TEXT, text=t, notes=notes, **common)

    raise err(f"no known field (found: {', '.join(sorted(row)) or 'none'})", None,
              "rows need 'messages', 'conversations', 'prompt'+'completion', 'text' or 'input_ids' (TRL), or "
              "'instruction'+'output' (LLaMA-Factory's alpaca)")


def _sharegpt_roles_mapped(row: dict) -> bool:
    conv = row.get("conversations")
    if "messages" in row or not isinstance(conv, list):
        return False
    return any(isinstance(m, dict) and isinstance(m.get("from"), str) and m["from"] in SHAREGPT_ROLES
               and SHAREGPT_ROLES[m["from"]] != m["from"] for m in conv)


def _check_image_count(msgs: list[dict], images: list | None, fld: str, err) -> None:
    """Images and image placeholders must pair up as TRL 1.16's prepare_multimodal_messages pairs them."""
    if images is None:
        n = image_placeholders(msgs)
        if n:
            raise err(f"has {n} image part(s) without an image, and the row has no 'images'", fld,
                      "add the images to the row's 'images' (paths relative to the data file, or image bytes), in "
                      "the order of the image parts; or remove the image parts")
        return
    expected = images_trl_expects(msgs, len(images))
    if expected != len(images):
        own = image_placeholders(msgs)
        why = (f"{own} image part(s) plus the {len(images)} placeholder(s) TRL inserts before the first user message's "
               "string content" if own and expected > own else f"{expected} image placeholder(s)")
        raise err(f"has {len(images)} image(s) but {why}: TRL 1.16 raises ('Number of images provided ... does not "
                  "match number of image placeholders')", "images",
                  'give one {"type": "image"} part per image, in order (or give every message string content, and '
                  "TRL puts all the images before the first user text)")


def _displayable(row: dict) -> dict:
    """The row as read, for display (Example.raw): image bytes and image objects shown as short text, so the raw view
    never holds or prints them (the images themselves stay in Example.images, in memory)."""
    imgs = [k for k in ("images", "image") if row.get(k) is not None]
    if not imgs:
        return row
    out = dict(row)
    for k in imgs:
        v = row[k]
        out[k] = [_image_label(x) for x in v] if isinstance(v, list) else _image_label(v)
    return out


def _image_label(im):
    if isinstance(im, (bytes, bytearray)):
        return f"<image: {len(im)} bytes>"
    if isinstance(im, dict) and isinstance(im.get("bytes"), (bytes, bytearray, str)):
        d = {k: v for k, v in im.items() if k != "bytes"}
        d["bytes"] = f"<{len(im['bytes'])} {'bytes' if not isinstance(im['bytes'], str) else 'base64 chars'}>"
        return d
    if hasattr(im, "size") and hasattr(im, "convert"):
        return f"<image: {getattr(im, 'format', None) or 'PIL'} {im.size[0]}x{im.size[1]}>"
    return im
