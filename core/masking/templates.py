"""Chat templates: rendering exactly as transformers does.

Rendering goes through transformers' own ``render_jinja_template`` (a sandboxed jinja environment with the
``{% generation %}`` extension), so the text is byte-identical to what ``apply_chat_template`` and TRL 1.16 tokenize.
Finding each message and its parts in a rendering lives in :mod:`core.spans` (re-exported here).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path

from ..masking import spans as _spans
from ..errors import MaskLensError
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


# ------------------------------------------------------------------------------------------- bounded rendering
# A chat template is code. Templates MaskLens knows (the ones TRL 1.16 ships in trl/chat_templates/, the embedded
# model's) render in-process; any other (a tokenizer's from the hub or a folder, a --chat-template file, one pasted in
# the app) renders in core.sandbox's worker processes, bounded in time, memory and output. MASKLENS_SANDBOX=0 turns
# that off for a trusted pipeline.
_TRUSTED: set[str] | None = None
_local = threading.local()


def sandbox_enabled() -> bool:
    return os.environ.get("MASKLENS_SANDBOX", "1") not in ("0", "false", "no", "off")


def trusted_template(template: str) -> bool:
    """A template byte-identical to one TRL ships or to the embedded model's (core.models marks it when it loads the
    embedded tokenizer): rendered in-process."""
    global _TRUSTED
    if _TRUSTED is None:
        found = set()
        try:
            import trl  # noqa: PLC0415

            for p in (Path(trl.__file__).parent / "chat_templates").glob("*.jinja"):
                found.add(p.read_text(encoding="utf-8"))
        except Exception:  # noqa: BLE001  (no TRL: nothing is trusted but the embedded template)
            pass
        _TRUSTED = found
    return template in _TRUSTED


def trust_template(template: str) -> None:
    """Mark a template as known (e.g. the embedded model's, once loaded)."""
    trusted_template("")
    _TRUSTED.add(template)


def _sandboxed(template: str) -> bool:
    return not trusted_template(template) and sandbox_enabled()


@contextmanager
def prerendered(results: dict):
    """Within this block, render() answers from `results` first: {(id(messages), template, add_generation_prompt,
    return_generation): (text, spans) or MaskLensError}, filled by prerender() in one bounded batch."""
    old = getattr(_local, "cache", None)
    _local.cache = results
    try:
        yield
    finally:
        _local.cache = old


def prerender(tokenizer, jobs: list[tuple], template_name: str = "the chat template",
              special_map: dict | None = None) -> dict:
    """Render many conversations of untrusted templates in the sandbox, a batch per template.

    jobs: (messages, template, tools, add_generation_prompt, return_generation, kwargs). Returns the dict prerendered()
    takes; jobs whose template is trusted (or with the sandbox off) are left to render in-process.
    """
    from .sandbox import render_batch  # noqa: PLC0415

    base = special_map if special_map is not None else tokenizer.special_tokens_map
    by_template: dict[str, list[tuple]] = {}
    for job in jobs:
        if _sandboxed(job[1]):
            by_template.setdefault(job[1], []).append(job)
    out: dict = {}
    for template, group in by_template.items():
        check_template(template, base, template_name)
        payload = [{"messages": [{k: v for k, v in m.items() if v is not None} for m in msgs], "tools": tools,
                    "add_generation_prompt": agp, "return_generation": rg and has_generation_markers(template),
                    "kwargs": {**base, **kw}} for msgs, _, tools, agp, rg, kw in group]
        for job, res in zip(group, render_batch(template, payload, template_name=template_name)):
            out[(id(job[0]), template, job[3], job[4])] = res
    return out


_CHECKED: dict[str, MaskLensError | None] = {}


def check_template(template: str, special_map: dict | None = None, template_name: str = "the chat template") -> None:
    """Reject a template that exceeds the sandbox's bounds on tiny probe conversations (once per template): a
    hostile template costs seconds once, not a deadline per row. A template that merely raises passes (it may
    raise only on some rows)."""
    if not _sandboxed(template):
        return
    key = template_hash(template)
    if key not in _CHECKED:
        from .sandbox import probe_template  # noqa: PLC0415

        try:
            probe_template(template, special_map, template_name=template_name)
            _CHECKED[key] = None
        except MaskLensError as e:
            _CHECKED[key] = e if getattr(e, "bound", None) not in (None, "skipped") else None
    if _CHECKED[key] is not None:
        raise _CHECKED[key]


def render(tokenizer, messages: list[dict], template: str, tools=None, add_generation_prompt: bool = False,
           return_generation: bool = False, special_map: dict | None = None,
           **kwargs) -> tuple[str, list[tuple[int, int]]]:
    """Render one conversation as apply_chat_template(tokenize=False) does. Returns (text, generation char spans).

    special_map: the tokenizer's special_tokens_map, precomputed by callers rendering many conversations.
    Untrusted templates render in the sandbox (bounded); within prerendered(), from its batch results.
    """
    cache = getattr(_local, "cache", None)
    if cache is not None:
        hit = cache.get((id(messages), template, add_generation_prompt, return_generation))
        if hit is not None:
            if isinstance(hit, Exception):
                raise hit
            return hit[0], list(hit[1])
    if _sandboxed(template):
        from .sandbox import render_sandboxed  # noqa: PLC0415

        base = special_map if special_map is not None else tokenizer.special_tokens_map
        check_template(template, base)
        return render_sandboxed(tokenizer, messages, template, tools=tools, add_generation_prompt=add_generation_prompt,
                                return_generation=return_generation, special_map=base, **kwargs)
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
