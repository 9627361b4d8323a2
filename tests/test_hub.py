"""core.hub: a hub id on a machine that cannot reach the Hugging Face Hub fails at once with an error saying so (not
after huggingface_hub's ~45 s of retries), and a model already in the local Hugging Face cache still loads."""

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import core.hub as hub
from core.errors import MaskLensError
from core.models import clear_tokenizer_cache, embedded_checkpoint_dir, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def no_network(monkeypatch):
    """Every connection fails as on a machine without DNS; counts the attempts."""
    calls = []

    def refuse(address, timeout=None, *a, **k):
        calls.append(address)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(hub.socket, "create_connection", refuse)
    online_mode(monkeypatch)
    return calls


def online_mode(monkeypatch):
    """As a user's machine runs: tests/conftest.py sets HF_HUB_OFFLINE=1 for the suite; no proxy configured."""
    import datasets.config as dconfig
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(dconfig, "HF_HUB_OFFLINE", False)
    for v in hub._PROXY_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(hub, "_probe", {})


def test_unreachable_hub_is_named_and_remembered(no_network):
    why = hub.hub_unreachable("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert why == f"{hub._endpoint()[0]}: Name or service not known"
    assert hub.hub_kwargs("org/other") == ({"local_files_only": True}, why)
    assert len(no_network) == 1  # remembered: one probe for both


def test_no_probe_for_a_directory_behind_a_proxy_or_offline_mode(no_network, tmp_path, monkeypatch):
    from huggingface_hub import constants

    assert hub.hub_unreachable(str(tmp_path)) is None
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # transformers reads only its cache then, at once
    assert hub.hub_kwargs("org/model") == ({}, None)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert hub.hub_kwargs("org/model") == ({}, None)
    assert no_network == []


def test_reachable_hub_loads_as_before(monkeypatch):
    class Conn:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(hub.socket, "create_connection", lambda *a, **k: Conn())
    online_mode(monkeypatch)
    assert hub.hub_kwargs("org/model") == ({}, None)


def test_unknown_id_offline_fails_at_once_reading_only_the_cache(no_network, monkeypatch):
    from transformers import AutoTokenizer

    seen = []
    real = AutoTokenizer.from_pretrained

    def spy(name, *a, **k):
        seen.append(k.get("local_files_only"))
        return real(name, *a, **k)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", spy)
    clear_tokenizer_cache()
    with pytest.raises(MaskLensError) as e:
        load_tokenizer("no-such-org/no-such-model")
    assert seen == [True]
    msg = str(e.value)
    assert "no-such-org/no-such-model" in msg and "cannot be reached" in msg and "local Hugging Face cache" in msg
    assert "Fix:" in msg and "'embedded'" in msg


def test_a_cached_hub_model_loads_when_the_hub_is_unreachable(smol_tok, tmp_path):
    """The HF cache layout (models--org--name/refs/main + snapshots/<commit>/), filled with the embedded tokenizer's
    files: with every connection failing, the id loads from it (a fresh process: the cache folder is read from
    HF_HUB_CACHE when huggingface_hub is imported)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--masklens-test--tiny-chat"
    snap = repo / "snapshots" / commit
    smol_tok.save_pretrained(snap)
    shutil.copy(embedded_checkpoint_dir() / "config.json", snap / "config.json")  # a hub snapshot has its config
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    script = textwrap.dedent("""
        import socket, sys
        def refuse(*a, **k):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        socket.create_connection = refuse
        from core.hub import hub_unreachable
        from core.models import load_tokenizer
        assert hub_unreachable("masklens-test/tiny-chat"), "the probe should fail"
        tok = load_tokenizer("masklens-test/tiny-chat")
        print(len(tok), tok("Hello world")["input_ids"])
    """)
    env = {k: v for k, v in os.environ.items() if k not in hub._PROXY_VARS and k != "HF_HUB_OFFLINE"}
    env.update(HF_HUB_CACHE=str(tmp_path / "hub"), HF_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] == str(len(smol_tok))
    assert out.stdout.strip().endswith(str(smol_tok("Hello world")["input_ids"]))


def test_hub_libraries_run_offline_only_while_the_hub_is_unreachable(no_network):
    import datasets.config as dconfig
    from huggingface_hub import constants

    with hub.offline_while_unreachable("org/data") as why:
        assert why and constants.HF_HUB_OFFLINE is True and dconfig.HF_HUB_OFFLINE is True
        with hub.offline_while_unreachable("org/other"):  # nested (another thread): put back by the last to leave
            pass
        assert constants.HF_HUB_OFFLINE is True
    assert constants.HF_HUB_OFFLINE is False and dconfig.HF_HUB_OFFLINE is False


def test_unknown_hub_dataset_offline_fails_at_once_naming_the_unreachable_hub(no_network):
    from core.data.load import load_examples

    with pytest.raises(MaskLensError) as e:
        load_examples("no-such-org/no-such-dataset")
    msg = str(e.value)
    assert "no-such-org/no-such-dataset" in msg and "cannot be reached from this machine" in msg
    assert "OfflineModeIsEnabled" in msg  # datasets read only its cache: no retries
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE is False  # put back
