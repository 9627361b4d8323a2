"""The data layer's names in one place (kept so that ``from core.data.formats import ...`` goes on working).

Where things live: the Example type and its kinds (core.data.example), typed content parts (core.data.content),
LLaMA-Factory's formats (core.data.convert), one row -> one Example (core.data.normalize), shape checks
(core.data.validate), files/folders/hub (core.data.reader, core.data.sources), whole datasets (core.data.load).
"""

from __future__ import annotations

from .content import content_text, join_text_parts, parts_not_rendered, renders_part_list
from .example import (KIND_MESSAGES, KIND_PC_CONV, KIND_PC_TEXT, KIND_TEXT, KIND_TOKENS, KINDS, ROLES, SHAREGPT_ROLES,
                      Example, is_trained_flag_off, message_weight)
from .load import (base_dir_of, load_examples, load_examples_lenient, note_schema_nulls, read_rows, schema_findings,
                   schema_union)
from .normalize import KNOWN_FIELDS, normalize_row
from .validate import MAX_DEPTH, REASONING_FIELDS, RESERVED_TEMPLATE_KWARGS

__all__ = [
    "KINDS", "KIND_MESSAGES", "KIND_PC_CONV", "KIND_PC_TEXT", "KIND_TEXT", "KIND_TOKENS", "KNOWN_FIELDS", "MAX_DEPTH",
    "REASONING_FIELDS", "RESERVED_TEMPLATE_KWARGS", "ROLES", "SHAREGPT_ROLES", "Example", "base_dir_of", "content_text",
    "is_trained_flag_off", "join_text_parts", "load_examples", "load_examples_lenient", "message_weight",
    "normalize_row", "note_schema_nulls", "parts_not_rendered", "read_rows", "renders_part_list", "schema_findings",
    "schema_union",
]
