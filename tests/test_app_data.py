"""The app's loading of the new data: zipped dataset folders uploaded (unpacked into the cache only, errors naming
the zip and the file inside it), LLaMA-Factory samples in the Data picker with their format_converted finding shown,
and typed server paths still refused from the page."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from app import tab_inspect
from app.session import UPLOAD_TYPES, load_dataset, load_sample, sample_choices
from core.errors import MaskLensError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache for uploads, the embedded model's converted checkpoint linked in (not converted again: 20 s)."""
    from core.models import embedded_checkpoint_dir, ensure_embedded_checkpoint

    converted = ensure_embedded_checkpoint()
    d = tmp_path / "cache"
    monkeypatch.setenv("MASKLENS_CACHE", str(d))
    target = embedded_checkpoint_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(converted, target_is_directory=True)
    return d


def png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (28, 28), (9, 9, 9)).save(buf, format="PNG")
    return buf.getvalue()


def zip_of(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def chat(i):
    return {"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}]}


def test_a_zipped_folder_with_images_loads_from_the_cache(cache, tmp_path):
    row = {"messages": [{"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "Dark."}],
           "images": ["img/a.png"]}
    up = zip_of(tmp_path / "upload_tmp_123.zip", {"mydata/train.jsonl": (json.dumps(row) + "\n").encode(),
                                                  "mydata/img/a.png": png()})
    d = load_dataset(up, "mydata.zip")
    (e,) = d.examples
    assert e.images == ["img/a.png"] and e.source == "mydata.zip/mydata/train.jsonl"
    assert d.root and d.root.startswith(str(cache / "uploads")) and (cache / "uploads").is_dir()
    assert e.base_dir.startswith(d.root)
    again = load_dataset(up, "mydata.zip")  # the same zip is unpacked once
    assert again.root == d.root and len(list((cache / "uploads").iterdir())) == 1


def test_zipped_shards_name_the_shard_of_a_bad_row(cache, tmp_path):
    up = zip_of(tmp_path / "tmp9.zip", {"a.jsonl": (json.dumps(chat(0)) + "\n").encode(),
                                        "b.jsonl": (json.dumps(chat(1)) + "\n" + '{"messages": 3}\n').encode()})
    d = load_dataset(up, "shards.zip")
    assert [e.messages[1]["content"] for e in d.examples] == ["A0", "A1"] and d.n_rows == 3
    (err,) = d.errors
    assert err.row == 2 and "file shards.zip/b.jsonl" in err.message and str(cache) not in err.message


def _out(values):
    """The InspectOut part of a callback's values (on_sample/on_upload also return the chat template text)."""
    return tab_inspect.InspectOut(*values[:len(tab_inspect.InspectOut._fields)])


def test_bad_zip_upload_is_an_error_naming_the_upload(cache, tmp_path, smol_tok):
    bad = zip_of(tmp_path / "tmp7.zip", {"../escape.jsonl": b"{}"})
    out = tab_inspect.InspectOut(*tab_inspect.on_load()[:len(tab_inspect.InspectOut._fields)])
    res = _out(tab_inspect.on_upload(out.session, str(bad)))
    assert "leaves its folder" in res.error and str(tmp_path) not in res.error
    assert ".zip" in UPLOAD_TYPES


def test_llamafactory_samples_in_the_data_picker_show_the_conversion(smol_tok):
    names = [n for _, n in sample_choices()]
    assert {"alpaca.jsonl", "toolcall_sharegpt.jsonl", "typed_parts.jsonl"} <= set(names)
    out = tab_inspect.InspectOut(*tab_inspect.on_load()[:len(tab_inspect.InspectOut._fields)])
    for name in ("alpaca.jsonl", "toolcall_sharegpt.jsonl", "typed_parts.jsonl"):
        res = _out(tab_inspect.on_sample(out.session, name))
        assert res.error == "" and "format_converted" in res.findings, name
        assert 'data-label="' in res.view
    res = _out(tab_inspect.on_sample(out.session, "alpaca.jsonl"))
    assert "LLaMA-Factory alpaca row -&gt; messages" in res.findings or "LLaMA-Factory alpaca row" in res.findings


def test_a_single_uploaded_file_confines_its_images_to_its_folder(tmp_path):
    (tmp_path / "up").mkdir()
    f = tmp_path / "up" / "d.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "<image>x"}, {"role": "assistant",
                                                                                   "content": "y"}],
                             "images": ["../../secret.png"]}) + "\n")
    d = load_dataset(f, "d.jsonl")
    assert d.root == str((tmp_path / "up").resolve())
    from core.masking.vision import open_image

    (tmp_path / "secret.png").write_bytes(png())
    with pytest.raises(MaskLensError, match="outside the allowed folders"):
        open_image(d.examples[0].images[0], d.examples[0].base_dir, root=d.root)


def test_typed_server_paths_are_still_refused(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps(chat(0)) + "\n")
    for name in (str(tmp_path), str(tmp_path / "d.jsonl"), "org/name:cfg:train"):
        with pytest.raises(MaskLensError, match="unknown sample"):
            load_sample(name)
