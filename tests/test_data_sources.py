"""Datasets that are not one file: a save_to_disk folder, a folder of shards (split as `datasets` splits them), a hub
dataset with config and split, and a zip (the app's uploads). Built here with the real `datasets`; the hub is not
reachable offline, so its code path is checked with load_dataset replaced."""

from __future__ import annotations

import io
import json
import os
import stat
import zipfile

import pytest

from core.data import load_examples, load_examples_lenient
from core.data.sources import parse_hub_spec, unpack_zip
from core.errors import MaskLensError


def chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}]}


def answers(examples) -> list[str]:
    return [e.messages[1]["content"] for e in examples]


def png_bytes(size=(28, 28)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------------ save_to_disk
def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    from datasets import Dataset, DatasetDict

    Dataset.from_list([chat(i) for i in range(3)]).save_to_disk(str(tmp_path / "one"))
    assert answers(load_examples(tmp_path / "one")) == ["A0", "A1", "A2"]
    DatasetDict({"train": Dataset.from_list([chat(0)]), "test": Dataset.from_list([chat(7), chat(8)])}).save_to_disk(
        str(tmp_path / "dict"))
    assert answers(load_examples(tmp_path / "dict", split="test")) == ["A7", "A8"]
    assert answers(load_examples(tmp_path / "dict", limit=1)) == ["A0"]
    with pytest.raises(MaskLensError, match=r"saved DatasetDict without a 'validation' split \(it has train, test\)"):
        load_examples(tmp_path / "dict", split="validation")


def test_saved_images_come_back_as_bytes_and_stay_out_of_the_raw_view(tmp_path):
    import datasets

    rows = [{"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "Red."}]}],
             "images": [{"bytes": png_bytes(), "path": None}]}]
    ds = datasets.Dataset.from_list(rows).cast_column("images", datasets.List(datasets.Image()))
    ds.save_to_disk(str(tmp_path / "vl"))
    (e,) = load_examples(tmp_path / "vl")
    assert isinstance(e.images[0]["bytes"], bytes) and e.images[0]["bytes"].startswith(b"\x89PNG")
    assert e.raw["images"][0]["bytes"].startswith("<") and json.dumps(e.raw)  # printable, no bytes


# ------------------------------------------------------------------------------------------------------------ shards
def test_folder_of_parquet_shards_split_by_file_names(tmp_path):
    from datasets import Dataset

    d = tmp_path / "shards" / "data"
    d.mkdir(parents=True)
    Dataset.from_list([chat(0), chat(1)]).to_parquet(str(d / "train-00000-of-00002.parquet"))
    Dataset.from_list([chat(2)]).to_parquet(str(d / "train-00001-of-00002.parquet"))
    Dataset.from_list([chat(9)]).to_parquet(str(d / "test-00000-of-00001.parquet"))
    exs = load_examples(tmp_path / "shards")
    assert answers(exs) == ["A0", "A1", "A2"] and [e.row for e in exs] == [0, 1, 2]
    assert exs[2].source.endswith("train-00001-of-00002.parquet")
    assert answers(load_examples(tmp_path / "shards", split="test")) == ["A9"]
    assert answers(load_examples(tmp_path / "shards", limit=2)) == ["A0", "A1"]
    with pytest.raises(MaskLensError, match=r"has no 'validation' split \(its files give: test, train\)"):
        load_examples(tmp_path / "shards", split="validation")


def test_folder_of_jsonl_shards_names_the_shard_and_line_of_a_bad_row(tmp_path):
    d = tmp_path / "jl"
    d.mkdir()
    (d / "part-a.jsonl").write_text(json.dumps(chat(0)) + "\n" + json.dumps(chat(1)) + "\n")
    (d / "part-b.jsonl").write_text(json.dumps(chat(2)) + "\n{broken\n" + json.dumps(chat(4)) + "\n")
    (d / "README.md").write_text("not data")  # other files are not read
    with pytest.raises(MaskLensError) as ei:
        load_examples(d)
    assert ei.value.file.endswith("part-b.jsonl") and ei.value.row == 3 and "line 2 is not valid JSON" in str(ei.value)
    exs, errs = load_examples_lenient(d)
    assert answers(exs) == ["A0", "A1", "A2", "A4"] and [e.row for e in exs] == [0, 1, 2, 4]
    assert [e.line for e in exs] == [1, 2, 1, 3] and len(errs) == 1 and errs[0].row == 3


@pytest.mark.parametrize("files,pattern", [
    ({}, r"folder without data files"),
    ({"a.txt": "x"}, r"holds no .jsonl/.json/.parquet/.csv files"),
    ({"a.jsonl": json.dumps(chat(0)) + "\n", "b.csv": "text\nx\n"}, r"mixes file types"),
    ({"a.jsonl": "\n\n"}, r"hold no examples"),
])
def test_folder_errors(tmp_path, files, pattern):
    d = tmp_path / "f"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    with pytest.raises(MaskLensError, match=pattern):
        load_examples(d)


# --------------------------------------------------------------------------------------------------------------- hub
@pytest.mark.parametrize("text,spec", [
    ("org/name", ("org/name", None, None)),
    ("org/name:cfg", ("org/name", "cfg", None)),
    ("org/name:cfg:test", ("org/name", "cfg", "test")),
    ("org/name::test", ("org/name", None, "test")),
    ("squad:plain_text:train", ("squad", "plain_text", "train")),
    ("data.jsonl", None), ("./x/y", None), ("a/b/c", None), ("/abs/path", None), ("org/name.jsonl", None),
])
def test_hub_spec(text, spec):
    assert parse_hub_spec(text) == spec


def test_hub_dataset_config_and_split_reach_load_dataset(monkeypatch):
    """Offline, the hub cannot be reached: load_dataset is replaced to check what it is asked for."""
    import datasets

    calls = []

    def fake(name, config=None, split=None, **kw):
        calls.append((name, config, split))
        return datasets.Dataset.from_list([chat(5)])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    (e,) = load_examples("org/some-data:mini:validation")
    assert calls == [("org/some-data", "mini", "validation")] and e.messages[1]["content"] == "A5"
    assert e.source == "org/some-data:mini:validation" and e.base_dir is None
    load_examples("org/some-data", split="test", config="big")
    assert calls[-1] == ("org/some-data", "big", "test")


def test_hub_failure_names_config_and_split(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(MaskLensError, match=r"hub dataset \(nobody/nothing \(config 'c'\), split 'test'\) failed"):
        load_examples("nobody/nothing:c:test")


# --------------------------------------------------------------------------------------------------------------- zip
def make_zip(path, members: dict[str, bytes], links=()):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def test_zip_of_a_folder_with_images(tmp_path):
    row = {"messages": [{"role": "user", "content": "<image>What colour?"}, {"role": "assistant", "content": "Red."}],
           "images": ["img/red.png"]}
    z = make_zip(tmp_path / "ds.zip", {"ds/data.jsonl": (json.dumps(row) + "\n").encode(),
                                       "ds/img/red.png": png_bytes()})
    folder = unpack_zip(z, tmp_path / "cache" / "u1")
    assert folder == tmp_path / "cache" / "u1" / "ds" and (folder / "img" / "red.png").is_file()
    (e,) = load_examples(folder)
    assert e.images == ["img/red.png"] and e.base_dir == str(folder.resolve())


@pytest.mark.parametrize("members,links,pattern", [
    ({"../evil.jsonl": b"{}"}, (), r"leaves its folder"),
    ({"/abs.jsonl": b"{}"}, (), r"leaves its folder"),
    ({"a.jsonl": b"{}"}, [("link", "/etc/passwd")], r"holds a link"),
    ({"big.bin": b"0" * 5000}, (), r"unpacks to more than"),
])
def test_zip_refusals(tmp_path, members, links, pattern):
    z = make_zip(tmp_path / "bad.zip", members, links)
    dest = tmp_path / "cache" / "u2"
    with pytest.raises(MaskLensError, match=pattern):
        unpack_zip(z, dest, max_bytes=4096)
    assert not dest.exists() and not (tmp_path / "evil.jsonl").exists()


def test_not_a_zip(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"nope")
    with pytest.raises(MaskLensError, match="not a readable zip"):
        unpack_zip(tmp_path / "x.zip", tmp_path / "d")
    with pytest.raises(MaskLensError, match="is a zip file.*Fix: unzip it"):
        load_examples(tmp_path / "x.zip")
    assert "d" not in os.listdir(tmp_path)
