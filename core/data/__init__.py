"""Reading datasets: TRL's formats (and the ones other tools write) as normalised Examples, with errors naming file,
row, field and fix. `formats` (Example, kinds, normalize_row, load_examples), `reader` (files, streamed line by line),
`schema` (what `datasets` does to rows).

Example: load_examples("chat.jsonl")[0].kind -> "messages"
"""

from .formats import (KIND_MESSAGES, KIND_PC_CONV, KIND_PC_TEXT, KIND_TEXT, KIND_TOKENS, KINDS, ROLES, Example,
                      is_trained_flag_off, load_examples, load_examples_lenient, normalize_row, read_rows,
                      schema_findings, schema_union)

__all__ = ["KINDS", "KIND_MESSAGES", "KIND_PC_CONV", "KIND_PC_TEXT", "KIND_TEXT", "KIND_TOKENS", "ROLES", "Example",
           "is_trained_flag_off", "load_examples", "load_examples_lenient", "normalize_row", "read_rows",
           "schema_findings", "schema_union"]
