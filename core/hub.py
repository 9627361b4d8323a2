"""Whether the Hugging Face Hub can be reached from this machine, asked once before a hub id is loaded.

huggingface_hub retries a connection that fails for about 45 s before it gives up; on a machine without network
(an air-gapped GPU box, CI) a mistyped id would hang the app that long. When the hub cannot be reached, ids load from
the local Hugging Face cache only (`local_files_only`), at once, and the error says the hub is unreachable.

`datasets` has no such argument that stops its retries, so a hub dataset loads under `offline_while_unreachable()`:
huggingface_hub's and datasets' offline mode while the hub cannot be reached (a cached dataset still loads).

Example: hub_kwargs("HuggingFaceTB/SmolLM2-135M-Instruct") -> ({"local_files_only": True}, "huggingface.co: Name or
service not known") offline, ({}, None) online.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import urllib.parse
from pathlib import Path

from .process_switch import ProcessSwitch

_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
_PROBE_TTL_S = 30.0
_probe: dict[str, tuple[float, str | None]] = {}  # hub endpoint -> (when probed, why unreachable or None)


def hub_unreachable(name: str) -> str | None:
    """Why the Hugging Face Hub cannot be reached from this machine (no DNS answer, no connection within 3 s), or None
    where it can, where `name` is a local directory, where HF_HUB_OFFLINE is set (transformers then reads only its
    cache, at once) or where a proxy is configured (the hub client knows how to use it). Asked before a hub id is
    loaded: huggingface_hub retries a connection that fails for about 45 s before it gives up; a model already in the
    local Hugging Face cache still loads (local_files_only). Remembered for 30 s.
    Example: hub_unreachable("HuggingFaceTB/SmolLM2-135M-Instruct") -> "huggingface.co: Name or service not known"."""
    if Path(name).is_dir() or any(os.environ.get(v) for v in _PROXY_VARS):
        return None
    from huggingface_hub import constants  # noqa: PLC0415  (a dependency of transformers)

    if constants.HF_HUB_OFFLINE:
        return None
    host, port = _endpoint()
    key = f"{host}:{port}"
    seen = _probe.get(key)
    if seen is not None and time.monotonic() - seen[0] < _PROBE_TTL_S:
        return seen[1]
    try:
        with socket.create_connection((host, port), timeout=3):
            why = None
    except OSError as e:  # socket.gaierror (no DNS answer), a refused or timed-out connection
        why = f"{host}: {e.strerror or e or type(e).__name__}"
    _probe[key] = (time.monotonic(), why)
    return why


def _endpoint() -> tuple[str, int]:
    """(host, port) of the hub endpoint huggingface_hub uses (HF_ENDPOINT: a mirror, if set)."""
    from huggingface_hub import constants  # noqa: PLC0415

    url = urllib.parse.urlsplit(constants.ENDPOINT)
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def offline_note(why: str | None) -> str:
    """The words an error adds where the hub could not be reached (`why`), else ''."""
    return f" (the Hugging Face Hub cannot be reached from this machine: {why}; only the local cache was read)" \
        if why else ""


def hub_kwargs(name: str) -> tuple[dict, str | None]:
    """(extra from_pretrained arguments, why the hub is unreachable or None): the local cache only when it is."""
    why = hub_unreachable(name)
    return ({"local_files_only": True} if why else {}), why


def _offline_on() -> tuple[bool, bool]:
    """Both libraries' offline flags on; returns what they were."""
    import datasets.config as dconfig  # noqa: PLC0415
    from huggingface_hub import constants  # noqa: PLC0415

    saved = (constants.HF_HUB_OFFLINE, dconfig.HF_HUB_OFFLINE)
    constants.HF_HUB_OFFLINE = dconfig.HF_HUB_OFFLINE = True
    return saved


def _offline_back(saved: tuple[bool, bool]) -> None:
    import datasets.config as dconfig  # noqa: PLC0415
    from huggingface_hub import constants  # noqa: PLC0415

    constants.HF_HUB_OFFLINE, dconfig.HF_HUB_OFFLINE = saved


# Process-wide: while it is held, every hub access of the process reads only the cache — which is all any of them could
# do, since it is held only while the hub cannot be reached. Put back when the last user leaves.
_OFFLINE = ProcessSwitch(_offline_on, _offline_back)


@contextlib.contextmanager
def offline_while_unreachable(name: str):
    """Yields why the hub is unreachable (None where it is reachable); meanwhile, where it is not, huggingface_hub
    and datasets run in their offline mode (the cache only, no retries)."""
    why = hub_unreachable(name)
    if why is None:
        yield None
        return
    with _OFFLINE.held():
        yield why
