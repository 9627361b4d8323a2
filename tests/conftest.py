"""Shared fixtures. Everything is offline: the embedded SmolLM2 tokenizer (converted once into .cache/), the
Llama-2-family SentencePiece model that mistral-common ships, and tiny random models built here."""

import json
import os
import shutil
from pathlib import Path

import pytest

# Tests are offline by design: never wait on the Hugging Face Hub (set before datasets/transformers are imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Files whose tests measure time or load on the machine's cores (deadlines, latencies while other work runs, CPU
# limits): `make test` runs them alone, after the rest has run in parallel workers (pytest-xdist), so that no other
# test competes with them for the cores.
EXCLUSIVE = {"test_sandbox.py", "test_load.py", "test_faults.py", "test_app_wiring.py", "test_app_callbacks.py",
             "test_browser.py", "test_models.py"}


def pytest_configure(config):
    config.addinivalue_line("markers", "exclusive: measures time or load; run alone (make test's second phase)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in EXCLUSIVE:
            item.add_marker(pytest.mark.exclusive)


@pytest.fixture(scope="session")
def smol_tok():
    from core.models import load_tokenizer

    return load_tokenizer()  # the embedded default (converted once, then loaded from the cache)


@pytest.fixture(scope="session")
def spm_tok_dir(tmp_path_factory) -> Path:
    """Mistral 7B v0.1's SentencePiece model (Llama-2 family), as a transformers tokenizer directory."""
    import mistral_common

    src = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    assert src.exists(), f"mistral-common no longer ships {src}; pin mistral-common==1.13.1"
    d = tmp_path_factory.mktemp("spm_tok")
    shutil.copy(src, d / "tokenizer.model")
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "legacy": True,
    }))
    return d


@pytest.fixture(scope="session")
def spm_tok(spm_tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spm_tok_dir)


def tiny_llama(tokenizer, seed: int = 0):
    """A randomly initialised 2-layer Llama with the tokenizer's vocabulary: trains in milliseconds on a CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      bos_token_id=tokenizer.bos_token_id)
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="session")
def family_tok(smol_tok):
    """family -> a tokenizer carrying trl/chat_templates/FAMILY.jinja as its own template: the SmolLM2 vocabulary plus
    the family's special tokens and its <think>/<tool_call> tags as single tokens (tests/trl_reference.py). Built once
    per family and shared: copy.deepcopy it before changing it."""
    from tests.trl_reference import family_tokenizer

    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = family_tokenizer(smol_tok, family, tag_tokens=True)
        return cache[family]

    return get
