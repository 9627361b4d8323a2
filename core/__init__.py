"""MaskLens engine: what supervised fine-tuning trains on, token by token. Pure Python; never imports gradio.

Layers (each imports only those above it): `errors`, `findings`, `paths` -> `data` (reading datasets) -> `masking`
(rendering and masking) -> `models` (tokenizers, the embedded model) -> `training` (runs) and the tools over whole
datasets (`pipeline`, `parallel`, `audit`, `packing`, `export`, `hf`) -> `cli`.

Example:
    from core import load_examples, load_tokenizer, render_examples, MaskConfig
    r = render_examples(load_examples("chat.jsonl"), load_tokenizer(), MaskConfig("assistant_only"))[0]
    r.input_ids, r.labels  # labels unshifted, -100 where a token is not trained
"""

from .data import Example, load_examples, load_examples_lenient, normalize_row
from .errors import MaskLensError
from .findings import CODES, Finding
from .masking import (EOS_MODES, IGNORE, STRATEGIES, Decider, MaskConfig, RenderedExample, Strategy, TokenInfo,
                      register, render_example, render_examples)
from .models import load_model, load_tokenizer

__all__ = [
    "CODES", "EOS_MODES", "IGNORE", "STRATEGIES", "Decider", "Example", "Finding", "MaskConfig", "MaskLensError",
    "RenderedExample", "Strategy", "TokenInfo", "load_examples", "load_examples_lenient", "load_model",
    "load_tokenizer", "normalize_row", "register", "render_example", "render_examples",
]
