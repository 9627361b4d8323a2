"""Which server paths a user may name: the one check for tokenizers, models, datasets and chat templates.

The CLI runs as its user on its user's files: no limit (the default policy allows everything). A shared app that
listens beyond loopback sets a policy once at start-up (`set_policy`), and every load by name goes through
`check_source` (core.models calls it for tokenizers and models): a local path must lie, after resolving `..` and
symlinks, inside one of the allowed folders; a hub id is allowed unless the policy says `allow_hub=False`.

Example: check_allowed("assets/../../etc", ["assets"]) -> MaskLensError("... is outside the allowed folders ...")
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .errors import MaskLensError

__all__ = ["PathPolicy", "check_allowed", "check_source", "get_policy", "looks_like_path", "set_policy"]

_FIX = "put it in an allowed folder, or start the app with --allow-dir DIR (repeatable) to allow another one."


@dataclass(frozen=True)
class PathPolicy:
    """allowed_dirs None: any local path (the CLI, a loopback app). allow_hub False: no hub ids either."""

    allowed_dirs: tuple[Path, ...] | None = None
    allow_hub: bool = True

    @classmethod
    def restricted(cls, allowed_dirs: Iterable[str | os.PathLike], allow_hub: bool = True) -> "PathPolicy":
        return cls(tuple(Path(d).expanduser().resolve() for d in allowed_dirs), allow_hub)

    def describe(self) -> str:
        where = "any folder" if self.allowed_dirs is None else ", ".join(map(str, self.allowed_dirs)) or "no folder"
        return f"local paths: {where}; hub ids: {'allowed' if self.allow_hub else 'refused'}"


_policy = PathPolicy()


def set_policy(policy: PathPolicy) -> PathPolicy:
    """Install the process-wide policy (the app does, once, at start-up); returns the previous one."""
    global _policy
    previous, _policy = _policy, policy
    return previous


def get_policy() -> PathPolicy:
    return _policy


def check_allowed(path: str | os.PathLike, allowed_dirs: Iterable[str | os.PathLike]) -> Path:
    """The resolved path (`..` and every symlink followed) if it lies in one of `allowed_dirs`; else MaskLensError.

    Resolving first means a symlink inside an allowed folder that points outside it is refused, and so is
    `allowed/../elsewhere`. The path need not exist (the caller reports a missing one)."""
    resolved = Path(path).expanduser().resolve()
    roots = [Path(d).expanduser().resolve() for d in allowed_dirs]
    if any(resolved == root or resolved.is_relative_to(root) for root in roots):
        return resolved
    where = ", ".join(map(str, roots)) or "none"
    raise MaskLensError(f"{os.fspath(path)} is outside the allowed folders ({where}).", field="path", fix=_FIX)


def looks_like_path(name: str) -> bool:
    """Hub ids are "name" or "org/name"; anything else (absolute, ./, ~, a/b/c) is meant as a local path."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def check_source(name: str | os.PathLike, what: str = "tokenizer") -> None:
    """Raise MaskLensError unless the current policy lets a user load `what` from `name` (a local path or hub id).

    A name that exists on disk, or looks like a path, is a path; anything else is a hub id."""
    policy = _policy
    text = os.fspath(name).strip()
    is_path = isinstance(name, os.PathLike) or looks_like_path(text) or Path(text).expanduser().exists()
    if is_path:
        if policy.allowed_dirs is not None:
            try:
                check_allowed(text, policy.allowed_dirs)
            except MaskLensError as e:
                raise MaskLensError(f"{what} {e.message}", field=what, fix=_FIX) from None
        return
    if not policy.allow_hub:
        raise MaskLensError(f"this server does not download a {what} from the hub ({text!r}).", field=what,
                            fix="give a local directory in an allowed folder, or start the app without --no-hub.")
