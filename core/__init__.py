"""MaskLens engine: what supervised fine-tuning trains on, token by token. Pure Python; never imports gradio.

Example:
    from core import load_examples, load_tokenizer, render_examples, MaskConfig
    r = render_examples(load_examples("chat.jsonl"), load_tokenizer(), MaskConfig("assistant_only"))[0]
    r.input_ids, r.labels  # labels unshifted, -100 where a token is not trained
"""

from .data.formats import Example, load_examples, load_examples_lenient, normalize_row
from .masking.engine import (EOS_MODES, IGNORE, STRATEGIES, MaskConfig, RenderedExample, Strategy, TokenInfo,
                     render_example, render_examples)
from .errors import MaskLensError
from .findings import CODES, Finding
from .models import load_model, load_tokenizer

__all__ = [
    "CODES", "EOS_MODES", "IGNORE", "STRATEGIES", "Example", "Finding", "MaskConfig", "MaskLensError",
    "RenderedExample", "Strategy", "TokenInfo", "load_examples", "load_examples_lenient", "load_model",
    "load_tokenizer", "normalize_row", "render_example", "render_examples",
]
