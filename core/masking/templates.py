"""Chat templates: rendering exactly as transformers does.

Rendering is transformers' ``render_jinja_template`` (a sandboxed jinja environment with the ``{% generation %}``
extension), done by core.masking.jinja_render (per thread, and faster), so the text is byte-identical to what
``apply_chat_template`` and TRL 1.16 tokenize. Untrusted templates render in a subprocess (core.masking.sandbox).
What a template does (headers, end-of-turn markers) is learnt in core.masking.template_info; where each message
lies in a rendering, in core.masking.spans.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import NamedTuple

from ..errors import MaskLensError
from .jinja_render import render_conversations

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


class RenderJob(NamedTuple):
    """One conversation to render: what apply_chat_template(tokenize=False) takes."""

    messages: list
    template: str
    tools: list | None = None
    add_generation_prompt: bool = False
    return_generation: bool = False
    kwargs: dict = {}


def render_many(tokenizer, jobs: list[RenderJob], special_map: dict | None = None,
                template_name: str = "the chat template") -> list:
    """Render many conversations at once: per job (text, generation char spans) or the MaskLensError it raised.

    Untrusted templates render in the sandbox (core.masking.sandbox), one bounded batch per template; a template past
    the sandbox's bounds on tiny probes raises at once. Trusted ones render in-process, the plain jobs (no tools, no
    template kwargs) of a template in one jinja call, as transformers renders a batch: that is most of a dataset.
    Example: render_many(tok, [RenderJob([{"role": "user", "content": "Hi"}], tpl)]) -> [("<|im_start|>user...", [])]
    """
    base = special_map if special_map is not None else dict(tokenizer.special_tokens_map)
    out: list = [None] * len(jobs)
    sandboxed: dict[str, list[int]] = {}
    batches: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        if _sandboxed(job.template):
            sandboxed.setdefault(job.template, []).append(i)
        elif job.tools is None and not job.kwargs:
            batches.setdefault((job.template, job.add_generation_prompt, job.return_generation), []).append(i)
        else:
            out[i] = _render_one(jobs[i], base)
    for template, idx in sandboxed.items():
        check_template(template, base, template_name)
        from .sandbox import render_batch  # noqa: PLC0415

        payload = [{"messages": _clean(jobs[i].messages), "tools": jobs[i].tools,
                    "add_generation_prompt": jobs[i].add_generation_prompt,
                    "return_generation": jobs[i].return_generation and has_generation_markers(template),
                    "kwargs": {**base, **jobs[i].kwargs}} for i in idx]
        for i, res in zip(idx, render_batch(template, payload, template_name=template_name)):
            out[i] = res
    for (template, agp, rg), idx in batches.items():
        try:
            texts, gens = _jinja(template, [_clean(jobs[i].messages) for i in idx], None, agp, rg, base)
        except MaskLensError:  # one conversation fails the call: render one by one to tell which
            for i in idx:
                out[i] = _render_one(jobs[i], base)
            continue
        for k, i in enumerate(idx):
            out[i] = (texts[k], gens[k] if gens else [])
    return out


def _clean(messages: list[dict]) -> list[dict]:
    # transformers' apply_chat_template drops keys whose value is None before rendering (most messages have none)
    return [{k: v for k, v in m.items() if v is not None} if None in m.values() else m for m in messages]


def _render_one(job: RenderJob, base: dict):
    try:
        texts, gens = _jinja(job.template, [_clean(job.messages)], job.tools, job.add_generation_prompt,
                             job.return_generation, {**base, **job.kwargs})
    except MaskLensError as e:
        return e
    return texts[0], (gens[0] if gens else [])


def _jinja(template: str, convos: list, tools, agp: bool, rg: bool, kwargs: dict):
    try:
        return render_conversations(template, convos, tools=tools, add_generation_prompt=agp,
                                    return_generation=rg and has_generation_markers(template), **kwargs)
    except MaskLensError:
        raise
    except Exception as e:  # jinja TemplateError, raise_exception(...) from the template, TypeError...
        raise MaskLensError(f"the chat template failed to render: {type(e).__name__}: {e}",
                            fix="check the template (and that the messages alternate as it requires)") from None


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

    special_map: the tokenizer's special_tokens_map, precomputed by callers rendering many conversations (better:
    render_many). Untrusted templates render in the sandbox (bounded).
    """
    (res,) = render_many(tokenizer, [RenderJob(messages, template, tools, add_generation_prompt, return_generation,
                                               kwargs)], special_map)
    if isinstance(res, Exception):
        raise res
    return res[0], list(res[1])
