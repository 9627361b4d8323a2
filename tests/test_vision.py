"""Rows with images: core.masking.vision gives exactly the input_ids and labels of TRL 1.16's
DataCollatorForVisionLanguageModeling (fed as SFTTrainer feeds it: the row and its opened images), for processors
built offline from transformers classes (tests/vision_reference.py), under assistant_only_loss (TRL's training twin),
completion_only_loss and full; and explains each token (image runs, message text, the rule)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest

from core.data import load_examples, normalize_row
from core.errors import MaskLensError
from core.export import trl_rows
from core.masking.vision import image_token_ids, open_image, render_vision_examples, trl_flags
from core.paths import PathPolicy, set_policy
from tests.vision_reference import FAMILIES, build_processor, raw_trl_batch

LF = Path(__file__).parent / "assets" / "llamafactory"


@pytest.fixture(scope="module")
def processors(smol_tok):
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = build_processor(smol_tok, family)
        return cache[family]

    return get


def png(color=(200, 10, 10), size=(56, 56)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "red.png").write_bytes(png())
    (tmp_path / "img" / "blue.png").write_bytes(png((10, 10, 200), (28, 56)))
    return tmp_path


def rows_in(tmp_path) -> list[dict]:
    user_parts = [{"type": "image"}, {"type": "text", "text": "What colour is this?"}]
    return [
        {"messages": [{"role": "user", "content": user_parts},
                      {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
                      {"role": "user", "content": [{"type": "text", "text": "And this?"}, {"type": "image"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "Blue."}]}],
         "images": ["img/red.png", "img/blue.png"]},
        # string content: TRL puts the images before the first user message's text
        {"messages": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Colour?"},
                      {"role": "assistant", "content": "Red."}], "images": ["img/red.png"]},
    ]


def opened(row, base: Path):
    from PIL import Image

    return [Image.open(base / p) for p in row["images"]]


def trained(tok, r) -> str:
    return tok.decode([t for t, lab in zip(r.input_ids, r.labels) if lab != -100])


# ---------------------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["assistant_only", "full"])
def test_messages_rows_equal_trls_vision_collator(processors, data_dir, family, mode):
    proc = processors(family)
    rows = rows_in(data_dir)
    path = data_dir / "vl.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = load_examples(path)
    flags = trl_flags(mode)
    ours = render_vision_examples(examples, proc, **flags)
    for r, row in zip(ours, rows):
        ids, labels = raw_trl_batch(proc, row, opened(row, data_dir), **flags)
        assert (r.input_ids, r.labels) == (ids, labels)
        codes = [f.code for f in r.findings]
        assert ("image_tokens_trained" in codes) == (mode == "full"), codes
    if mode == "assistant_only":
        assert trained(proc.tokenizer, ours[0]).replace(" ", "").startswith(("Red.", "\nRed.", "Red"))


def test_prompt_completion_rows_train_the_completion_only(processors, data_dir):
    proc = processors("qwen2_5_vl")
    row = {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
           "completion": [{"role": "assistant", "content": [{"type": "text", "text": "Red."}]}],
           "images": ["img/red.png"]}
    ex = normalize_row(row, 0, base_dir=str(data_dir))
    (r,) = render_vision_examples([ex], proc)  # SFTTrainer's default for prompt/completion: completion_only_loss
    ids, labels = raw_trl_batch(proc, row, opened(row, data_dir))
    assert (r.input_ids, r.labels) == (ids, labels) and r.strategy == "completion_only"
    assert "image_tokens_trained" not in [f.code for f in r.findings]
    (full,) = render_vision_examples([ex], proc, **trl_flags("full"))
    assert (full.input_ids, full.labels) == raw_trl_batch(proc, row, opened(row, data_dir), completion_only_loss=False)
    assert "image_tokens_trained" in [f.code for f in full.findings]


def test_llamafactory_mllm_demo_converted_then_collated(processors):
    """The real mllm_demo rows (<image> tags, real JPEGs): converted to image parts, then exactly TRL's collator on the
    converted rows (what a user trains after exporting them)."""
    from PIL import Image

    proc = processors("qwen2_5_vl")
    examples = load_examples(LF / "mllm_demo.json")
    ours = render_vision_examples(examples, proc, assistant_only_loss=True)
    for r, row in zip(ours, trl_rows(examples)):
        imgs = [Image.open(LF / p) for p in row["images"]]
        assert (r.input_ids, r.labels) == raw_trl_batch(proc, row, imgs, assistant_only_loss=True)
        assert "<|image_pad|>" not in trained(proc.tokenizer, r)
    runs = [s for s in ours[0].segments if s.part == "image"]
    assert [(s.message, s.role) for s in runs] == [(0, "user"), (2, "user")]  # each run where its <image> tag stood


# ------------------------------------------------------------------------------------------------- explaining tokens
def test_every_token_is_explained(processors, data_dir):
    proc = processors("qwen2_5_vl")
    ex = normalize_row(rows_in(data_dir)[0], 0, base_dir=str(data_dir))
    (r,) = render_vision_examples([ex], proc, **trl_flags("full"))
    infos = r.tokens(proc.tokenizer)
    pad = proc.image_token_id
    img = [t for t in infos if t.id == pad]
    assert len(img) == 4 + 2  # 56x56 -> 4 tokens, 28x56 -> 2
    assert all(t.part == "image" and t.message in (0, 2) and "image placeholder" in t.rule for t in img)
    assert all("trained" in t.rule for t in infos) and r.n_trained == r.n_tokens
    (f,) = [f for f in r.findings if f.code == "image_tokens_trained"]
    assert "<|image_pad|> ×4, <|image_pad|> ×2" in f.message and "assistant_only_loss=True" in f.fix
    text = [t for t in infos if t.part == "content"]
    assert "".join(t.text for t in text if t.message == 0) == "What colour is this?"
    (a,) = render_vision_examples([ex], proc, assistant_only_loss=True)
    rules = {t.rule for t in a.tokens(proc.tokenizer) if t.id == pad}
    assert rules == {"not trained: outside {% generation %} (assistant_only_loss) — image placeholder"}
    assert image_token_ids(proc)[pad] == "<|image_pad|>" and a.template_label.startswith("TRL's training twin")
    # string content: the run TRL inserts before the first user text belongs to that message
    ex = normalize_row(rows_in(data_dir)[1], 1, base_dir=str(data_dir))
    (r,) = render_vision_examples([ex], proc)
    assert {(t.message, t.role) for t in r.tokens(proc.tokenizer) if t.id == pad} == {(1, "user")}


# ------------------------------------------------------------------------------------------------------------ images
def test_image_sources(data_dir):
    red = png()
    assert open_image({"bytes": red, "path": None}).size == (56, 56)
    assert open_image(red).size == (56, 56)
    assert open_image({"bytes": base64.b64encode(red).decode()}).size == (56, 56)
    assert open_image("data:image/png;base64," + base64.b64encode(red).decode()).size == (56, 56)
    assert open_image("img/red.png", str(data_dir)).size == (56, 56)
    im = open_image("img/red.png", str(data_dir))
    assert open_image(im) is im


@pytest.mark.parametrize("ref,pattern", [
    ("https://example.com/cat.png", r"is a URL .*does not download"),
    ("img/missing.png", r"image not found: img/missing.png \(read from"),
    ("../outside.png", r"outside the allowed folders"),
    ({"bytes": b"not an image"}, r"could not be read as an image"),
    ("data:image/png,abc", r"not base64"),
])
def test_image_errors(data_dir, ref, pattern):
    (data_dir.parent / "outside.png").write_bytes(png())
    with pytest.raises(MaskLensError, match=pattern) as ei:
        open_image(ref, str(data_dir), root=str(data_dir), where="images[0]", row=3, source="vl.jsonl")
    assert "row 3" in str(ei.value) and "field 'images[0]'" in str(ei.value) and "Fix:" in str(ei.value)


def test_path_policy_applies_to_images(data_dir, tmp_path_factory):
    other = tmp_path_factory.mktemp("allowed")
    old = set_policy(PathPolicy.restricted([other]))
    try:
        with pytest.raises(MaskLensError, match="outside the allowed folders"):
            open_image("img/red.png", str(data_dir))
    finally:
        set_policy(old)


def test_rows_the_collator_refuses_are_reported(processors, data_dir):
    proc = processors("qwen2_5_vl")
    ex = normalize_row({"messages": [{"role": "developer", "content": "Be nice."},
                                     {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]},
                                     {"role": "assistant", "content": "y"}], "images": ["img/red.png"]}, 5,
                       base_dir=str(data_dir))
    with pytest.raises(MaskLensError, match=r"row 5.*TRL 1.16 refuses this row: Invalid role in message: developer"):
        render_vision_examples([ex], proc)
    (r,) = render_vision_examples([ex], proc, errors="finding")
    assert r.input_ids == [] and [f.code for f in r.findings] == ["render_failed"]
    missing = normalize_row({"messages": [{"role": "user", "content": [{"type": "image"}]}],
                             "images": ["img/nope.png"]}, 6, base_dir=str(data_dir))
    with pytest.raises(MaskLensError, match=r"row 6, field 'messages\[0\]\.content\[0\]'.*image not found"):
        render_vision_examples([missing], proc)
    pc = normalize_row({"prompt": "x", "completion": "y", "images": ["img/red.png"]}, 7, base_dir=str(data_dir))
    with pytest.raises(MaskLensError, match="assistant_only_loss needs conversational"):
        render_vision_examples([pc], proc, assistant_only_loss=True)


def test_image_url_parts_are_opened_here(processors, data_dir):
    """OpenAI's image_url parts: transformers would open the URL itself; MaskLens opens it (path policy, no
    downloads) and hands the image over in the part, which renders the same tokens as the images column."""
    proc = processors("qwen2_5_vl")
    url_row = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "img/red.png"}},
                                                         {"type": "text", "text": "Colour?"}]},
                            {"role": "assistant", "content": "Red."}]}
    col_row = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
                            {"role": "assistant", "content": "Red."}], "images": ["img/red.png"]}
    a, b = render_vision_examples([normalize_row(url_row, 0, base_dir=str(data_dir)),
                                   normalize_row(col_row, 1, base_dir=str(data_dir))], proc, assistant_only_loss=True)
    assert (a.input_ids, a.labels) == (b.input_ids, b.labels)
    assert (b.input_ids, b.labels) == raw_trl_batch(proc, col_row, opened(col_row, data_dir), assistant_only_loss=True)


def test_trl_flags():
    assert trl_flags("completion_only") == {"assistant_only_loss": False, "completion_only_loss": True}
    with pytest.raises(MaskLensError, match="no equivalent in TRL's vision collator"):
        trl_flags("last_assistant")
