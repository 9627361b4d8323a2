"""Which template TRL 1.16 renders with, for the assistant strategies — decided by TRL's own code.

With ``assistant_only_loss=True`` and a chat template without ``{% generation %}`` markers, SFTTrainer swaps in a
training twin from ``trl.chat_template_utils.get_training_chat_template``: for a template it recognises it returns a
prefix-preserving, generation-marked copy (``trl/chat_templates/X_training.jinja``), which can render differently from
the tokenizer's own template (Qwen3's twin keeps every turn's think block); for one it does not, it raises. MaskLens
calls that function (never a copy of its table), so a newer TRL brings its new templates along.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path

from .templates import check_template, has_generation_markers

# How a template was chosen for the assistant strategies.
SOURCE_MARKERS = "markers"  # the template has {% generation %} markers: TRL uses them as they are
SOURCE_TRL_TWIN = "trl_twin"  # TRL swaps in its training twin
SOURCE_CANNOT_PATCH = "trl_cannot_patch"  # TRL raises; MaskLens masks with its own span finding (not what TRL does)
SOURCE_OWN = "own"  # the user asked for MaskLens's own masking on the inference template


@dataclass(frozen=True)
class TrainingTemplate:
    """The template the assistant strategies render with, and why."""

    template: str  # what renders the training sequence
    source: str  # one of the SOURCE_* values
    name: str | None = None  # TRL's name for a twin, e.g. "qwen3"
    trl_error: str = ""  # TRL's message when it cannot patch the template

    @property
    def uses_markers(self) -> bool:
        return self.source in (SOURCE_MARKERS, SOURCE_TRL_TWIN)

    @property
    def label(self) -> str:
        """One line for the token view. Example: "TRL 1.16 swaps in its qwen3 training template"."""
        v = trl_version()
        if self.source == SOURCE_TRL_TWIN:
            return f"TRL {v} swaps in its {self.name or 'training'} training template ({{% generation %}}-marked)"
        if self.source == SOURCE_MARKERS:
            return f"the chat template's own {{% generation %}} markers (as TRL {v})"
        if self.source == SOURCE_CANNOT_PATCH:
            return (f"MaskLens's own masking on the chat template — not what TRL {v} does: TRL raises "
                    "(no {% generation %} markers and no training template for it)")
        return "MaskLens's own masking on the tokenizer's (inference) chat template"


@functools.lru_cache(maxsize=1)
def trl_version() -> str:
    import trl  # noqa: PLC0415

    return ".".join(trl.__version__.split(".")[:2])


@functools.lru_cache(maxsize=1)
def _twin_names() -> dict[str, str]:
    """Training template text -> TRL's family name, read from the files TRL ships."""
    import trl  # noqa: PLC0415

    d = Path(trl.__file__).parent / "chat_templates"
    return {p.read_text(encoding="utf-8"): p.name[: -len("_training.jinja")] for p in d.glob("*_training.jinja")}


def shipped_templates() -> dict[str, Path]:
    """TRL's bundled chat templates by file name (plain and *_training twins with {% generation %}).
    Example: {"qwen3.jinja": Path(...), "qwen3_training.jinja": Path(...), ...}."""
    try:
        import trl  # noqa: PLC0415
    except ImportError:
        return {}
    d = Path(trl.__file__).parent / "chat_templates"
    return {p.name: p for p in sorted(d.glob("*.jinja"))}


_CACHE: dict = {}


def training_template(tokenizer, template: str) -> TrainingTemplate:
    """The template TRL 1.16's SFTTrainer renders with under assistant_only_loss=True, for this tokenizer + template.

    Example: a tokenizer carrying trl/chat_templates/qwen3.jinja -> TrainingTemplate(source="trl_twin", name="qwen3").
    """
    key = (id(tokenizer), template)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    if has_generation_markers(template):
        tt = TrainingTemplate(template, SOURCE_MARKERS)
    else:
        from trl.chat_template_utils import get_training_chat_template  # noqa: PLC0415

        # TRL renders the template in-process (tool-calling probes): a template MaskLens does not know passes the
        # sandbox's bounded probes first (core.templates.check_template raises past a bound).
        check_template(template, dict(tokenizer.special_tokens_map))

        # TRL reads the template from the processing class (as SFTTrainer does after chat_template_path): a shallow
        # copy carries the template without touching the caller's tokenizer (shared by the app's sessions).
        proxy = copy.copy(tokenizer)
        proxy.chat_template = template
        try:
            twin = get_training_chat_template(proxy)
        except Exception as e:  # TRL raises ValueError for templates it cannot patch; its probes may raise others
            tt = TrainingTemplate(template, SOURCE_CANNOT_PATCH, trl_error=f"{type(e).__name__}: {e}")
        else:
            if twin is None:  # already prefix-preserving and marked (cannot happen without markers, but TRL says so)
                tt = TrainingTemplate(template, SOURCE_MARKERS)
            else:
                tt = TrainingTemplate(twin, SOURCE_TRL_TWIN, name=_twin_names().get(twin))
    if len(_CACHE) > 64:
        _CACHE.clear()
    _CACHE[key] = (tokenizer, tt)
    return tt
