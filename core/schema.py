"""Field paths in rows, as errors and findings name them: ``messages[2].tool_calls[0].function.arguments``.

Example: format_path(["messages", 2, "tool_calls", 0, "function", "arguments"])
-> "messages[2].tool_calls[0].function.arguments".
"""

from __future__ import annotations

import json
import re

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*\Z")


def format_path(parts) -> str:
    """Join keys (str) and list indices (int) into one path; odd keys are quoted: ``a["b.c"][0]``."""
    out = []
    for p in parts:
        if isinstance(p, int) and not isinstance(p, bool):
            out.append(f"[{p}]")
        elif isinstance(p, str) and _PLAIN_KEY.match(p):
            out.append(f".{p}" if out else p)
        else:
            out.append(f"[{json.dumps(str(p), ensure_ascii=True)}]")
    return "".join(out)
