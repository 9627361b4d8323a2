"""Chat templates: rendering exactly as transformers does.

Rendering goes through transformers' own ``render_jinja_template`` (a sandboxed jinja environment with the
``{% generation %}`` extension), so the text is byte-identical to what ``apply_chat_template`` and TRL 1.16 tokenize.
Finding each message and its parts in a rendering lives in :mod:`core.spans` (re-exported here).
"""

from __future__ import annotations

import hashlib
import re

from . import spans as _spans
from .errors import MaskLensError
from .spans import (MessageSpan, TemplateInfo, locate_messages, special_regex,  # noqa: F401  (re-exported)
                    special_tokens)

from .spans import PROBE  # noqa: F401  (re-exported)

_GEN_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")


def has_generation_markers(template: str | None) -> bool:
    """True when a template marks assistant output with {% generation %}. Example: "{% generation %}x{% endgeneration %}" -> True."""
    return bool(template) and bool(_GEN_RE.search(template))


def get_template(tokenizer, chat_template: str | None = None) -> str:
    """The template to render with: the given one, else the tokenizer's (its 'default' if it ships several)."""
    if chat_template:
        return chat_template
    t = getattr(tokenizer, "chat_template", None)
    if isinstance(t, dict):
        t = t.get("default")
    if not t:
        raise MaskLensError(
            "the tokenizer has no chat template, so conversational data cannot be rendered",
            fix="pass --chat-template FILE (a jinja template), or use a chat model's tokenizer",
        )
    return t


def template_hash(template: str) -> str:
    return hashlib.sha1(template.encode()).hexdigest()[:12]


def render(tokenizer, messages: list[dict], template: str, tools=None, add_generation_prompt: bool = False,
           return_generation: bool = False, special_map: dict | None = None,
           **kwargs) -> tuple[str, list[tuple[int, int]]]:
    """Render one conversation as apply_chat_template(tokenize=False) does. Returns (text, generation char spans).

    special_map: the tokenizer's special_tokens_map, precomputed by callers rendering many conversations.
    """
    from transformers.utils.chat_template_utils import render_jinja_template  # noqa: PLC0415

    convo = [{k: v for k, v in m.items() if v is not None} for m in messages]
    base = special_map if special_map is not None else tokenizer.special_tokens_map
    template_kwargs = {**base, **kwargs}
    try:
        texts, gen = render_jinja_template(
            conversations=[convo], tools=tools, chat_template=template,
            return_assistant_tokens_mask=return_generation and has_generation_markers(template),
            add_generation_prompt=add_generation_prompt, **template_kwargs,
        )
    except MaskLensError:
        raise
    except Exception as e:  # jinja TemplateError, raise_exception(...) from the template, TypeError...
        raise MaskLensError(f"the chat template failed to render: {type(e).__name__}: {e}",
                            fix="check the template (and that the messages alternate as it requires)") from None
    return texts[0], (gen[0] if gen else [])


def analyze_template(tokenizer, template: str) -> TemplateInfo:
    """Learn the end-of-turn markers, role headers and reasoning wrapping of a template (cached). See core.spans."""
    return _spans.analyze_template(tokenizer, template, render)
