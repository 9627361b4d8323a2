"""Rendering and masking: what each token of an example trains on, exactly as TRL 1.16 decides it.

Where things are: the pipeline and its stages (`engine`: render -> locate -> decide -> labels -> findings), the
options (`options.MaskConfig`), the strategies (`strategies`: one registry; add yours with `register`), where labels
are built (`labels.build_labels`, the only place), templates (`templates`, `template_info`, `trl_templates`,
`sandbox`), message parts (`spans`), your own masking (`rules`, `user_code`), the old collator (`legacy_collator`,
`response_template`), template checks (`checks`).

Example: render_examples([ex], tok, MaskConfig("assistant_only"))[0].labels -> [-100, ..., 9690, 198, 2]
"""

from .engine import render_example, render_examples, split_turns
from .labels import IGNORE
from .options import EOS_MODES, STRATEGIES, TRUNCATION_MODES, MaskConfig, Option, options
from .rendered import RenderedExample, Segment, TokenInfo
from .strategies import Decider, Strategy, StrategyContext, StrategyKind, get_strategy, register, strategy_names

__all__ = ["EOS_MODES", "IGNORE", "STRATEGIES", "TRUNCATION_MODES", "Decider", "MaskConfig", "Option",
           "RenderedExample", "Segment", "Strategy", "StrategyContext", "StrategyKind", "TokenInfo", "get_strategy",
           "options", "register", "render_example", "render_examples", "split_turns", "strategy_names"]
