"""Typed message content: ``content`` as a list of parts, the form vision-language datasets (and many text ones) use.

TRL 1.16 hands a message's content to the chat template as written: a string, or a list of parts such as
``[{"type": "text", "text": "Hi"}, {"type": "image"}]`` (OpenAI's form; ``{"type": "image_url", "image_url": {"url":
...}}`` too). Templates that read parts (TRL's qwen2_5_vl, qwen3_vl, gemma3, smolvlm, idefics3, llava_next,
lfm2_2_5_vl...) print the text parts one after the other; templates written for strings print the list itself
(``[{'type': 'text', 'text': 'Hi'}]``) or fail on it. These helpers are pure: the engine uses them to find what a
template shows of a message, to say when a template prints the list (finding ``content_parts_printed``), and to join
text-only part lists into strings (the option ``content_parts=join``, the fix most users want).

Example: content_text({"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]})
-> "Hi there"
"""

from __future__ import annotations

import json

# The part types MaskLens reads. transformers' processors also take "video" and "audio" parts; MaskLens does not
# render them (no processor here handles them), and says so with the fix.
TEXT = "text"
IMAGE = "image"
IMAGE_URL = "image_url"
PART_TYPES = (TEXT, IMAGE, IMAGE_URL)
# Where an image part carries its image itself (transformers' processors read "image", "url", "path", "base64";
# TRL 1.16's prepare_multimodal_messages fills "image" and counts an image part without it as a placeholder).
IMAGE_PAYLOAD_KEYS = ("image", "url", "path", "base64")
# How text parts are joined: with nothing between them, as the templates that read parts print them — Qwen2.5-VL /
# Qwen3-VL (`{{ content['text'] }}` per part), Idefics3 / SmolVLM, LLaVA-NeXT, LFM2.5-VL — and as LLaMA-Factory joins
# its typed text parts. (Gemma 3 also trims each part: `{{ item['text'] | trim }}`.)
JOIN_SEPARATOR = ""


def is_part_list(content) -> bool:
    """True for content given as a list of parts. Example: [{"type": "text", "text": "Hi"}] -> True; "Hi" -> False."""
    return isinstance(content, list)


def text_parts(content) -> list[str]:
    """The texts of a part list's text parts, in order (non-text parts and malformed parts skipped)."""
    if not isinstance(content, list):
        return []
    return [p["text"] for p in content if isinstance(p, dict) and p.get("type") == TEXT and isinstance(p.get("text"), str)]


def content_text(message: dict) -> str:
    """The text a template shows of a message's content: a string as is; for a part list, its text parts joined as
    templates that read parts print them (JOIN_SEPARATOR, nothing between them); "" for none.

    Example: {"content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]} -> "What is this?"
    """
    c = message.get("content")
    if c is None:
        return ""
    if isinstance(c, str):
        return c
    return JOIN_SEPARATOR.join(text_parts(c))


def is_text_only(content) -> bool:
    """A non-empty part list whose parts are all text parts. Example: [{"type": "text", "text": "a"}] -> True."""
    return isinstance(content, list) and bool(content) and all(
        isinstance(p, dict) and p.get("type") == TEXT and isinstance(p.get("text"), str) for p in content)


def join_text_parts(messages: list[dict]) -> list[dict]:
    """The fix for templates written for string content (option ``content_parts=join``): each message whose content
    is a list of text parts only gets that text as one string, joined with nothing between the parts (what
    Qwen2.5-VL, Qwen3-VL, Idefics3, SmolVLM, LLaVA-NeXT's templates print for such a list, and how LLaMA-Factory
    joins typed text parts). Lists holding an image are left as they are (joining would drop the image). Returns
    new message dicts where changed; the input is not modified.

    Example: [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}]
    -> [{"role": "user", "content": "Hi there"}]
    """
    out = []
    for m in messages:
        c = m.get("content")
        out.append({**m, "content": JOIN_SEPARATOR.join(p["text"] for p in c)} if is_text_only(c) else m)
    return out


def part_list_reprs(content: list) -> tuple[str, ...]:
    """How a template that does not read parts prints a part list: Jinja's str() of it (Python's repr of the dicts,
    `{{ message['content'] }}`) or its JSON (`{{ message['content'] | tojson }}`)."""
    out = [str(content)]
    try:
        out.append(json.dumps(content, ensure_ascii=False))
        out.append(json.dumps(content))
    except (TypeError, ValueError):  # a part holding bytes or an image object: no JSON form
        pass
    return tuple(out)


_REPR_STARTS = ("[{'type': '", '[{"type": "', "{'type': '", '{"type": "')


def renders_part_list(text: str, messages: list[dict]) -> bool:
    """True when a rendering shows a part list itself rather than its text: the template printed a message's content
    list (its Python repr, "[{'type': 'text', 'text': ...}]", or its JSON). Only messages with part lists count.

    Example: renders_part_list("<s>[{'type': 'text', 'text': 'Hi'}]</s>",
                               [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]) -> True
    """
    lists = [m["content"] for m in messages if isinstance(m, dict) and isinstance(m.get("content"), list) and m["content"]]
    if not lists:
        return False
    for c in lists:
        if any(r in text for r in part_list_reprs(c)):
            return True
        for p in c:  # a template printing one part dict (e.g. `{{ message['content'][0] }}`)
            if isinstance(p, dict) and any(r in text for r in (str(p), _json(p)) if r):
                return True
    return False


def parts_not_rendered(text: str, messages: list[dict]) -> list[int]:
    """Indices of the messages whose part list a rendering lost: some text part (whitespace at its edges aside: Gemma 3
    trims each part) is not found, in order, and the list is not printed either. Qwen3's template does this: content
    that is not a string becomes ''. The same fix applies (content_parts=join).

    Example: parts_not_rendered("<|im_start|>user\\n<|im_end|>\\n", [{"role": "user", "content": [{"type": "text",
    "text": "Hi"}]}]) -> [0]
    """
    out = []
    pos = 0
    for i, m in enumerate(messages):
        c = m.get("content") if isinstance(m, dict) else None
        if not isinstance(c, list):
            if isinstance(c, str) and c:
                k = text.find(c, pos)
                pos = k + len(c) if k >= 0 else pos
            continue
        if any(r in text for r in part_list_reprs(c)):
            continue
        start = pos
        for t in text_parts(c):
            t = t.strip()
            if not t:
                continue
            k = text.find(t, pos)
            if k < 0:
                out.append(i)
                pos = start
                break
            pos = k + len(t)
    return out


def _json(value) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return ""


def image_payload(part: dict):
    """The image an image part carries itself (a path, URL, bytes...), or None for a placeholder that TRL fills from
    the row's ``images``. Example: {"type": "image_url", "image_url": {"url": "a.png"}} -> "a.png"."""
    if part.get("type") == IMAGE_URL:
        v = part.get("image_url")
        return v.get("url") if isinstance(v, dict) else v
    for k in IMAGE_PAYLOAD_KEYS:
        if part.get(k) is not None:
            return part[k]
    return None


def image_placeholders(messages: list[dict]) -> int:
    """Image parts without an image of their own, counted as TRL 1.16's prepare_multimodal_messages counts them
    (tool messages are skipped). Example: [{"role": "user", "content": [{"type": "image"}]}] -> 1."""
    n = 0
    for m in messages:
        c = m.get("content")
        if m.get("role") == "tool" or not isinstance(c, list):
            continue
        n += sum(1 for p in c if isinstance(p, dict) and p.get("type") == IMAGE and "image" not in p)
    return n


def images_trl_expects(messages: list[dict], n_images: int) -> int:
    """How many images TRL 1.16's prepare_multimodal_messages needs for these messages given n_images: it puts one
    placeholder per image before the text of the first user message with string content (if there is one), then counts
    all placeholders; the count must equal n_images or it raises. Returns the placeholder count it will find."""
    inserted = n_images if any(m.get("role") == "user" and isinstance(m.get("content"), str) for m in messages) else 0
    return inserted + image_placeholders(messages)


def has_image_parts(messages: list[dict] | None) -> bool:
    return any(isinstance(m.get("content"), list) and any(isinstance(p, dict) and p.get("type") in (IMAGE, IMAGE_URL)
                                                          for p in m["content"]) for m in messages or ())
