"""Typed content in the engine (issue #15 item 1): content given as a list of parts goes to the template as TRL 1.16
passes it, so input_ids and labels equal SFTTrainer's on the templates that read parts; a template that prints the
list itself gets `content_parts_printed`, and `content_parts=join` gives exactly the string-content rendering. Rows
with images go through TRL's vision collator when the tokenizer's model has a processor, and say so when not.
"""

from __future__ import annotations

import copy
import json

import pytest

from core.data.formats import normalize_row
from core.masking import MaskConfig, render_examples
from tests import trl_reference as ref
from tests.trl_reference import first_difference, load_conversations

# TRL-shipped templates that read text parts (H15 measured: qwen2_5_vl, qwen3_vl, glm4moe print them with nothing
# between parts; gemma3 trims each part) — with their training twins, so SFTTrainer(assistant_only_loss) runs.
READ_PARTS = ("gemma3", "qwen2_5_vl", "qwen3_vl", "glm4moe")


def typed(rows: list[dict]) -> list[dict]:
    """The rows with every string content as one text part; assistant turns with text split into two parts."""
    out = copy.deepcopy(rows)
    for r in out:
        for m in r["messages"]:
            c = m.get("content")
            if isinstance(c, str) and c:
                half = len(c) // 2 if m["role"] == "assistant" and len(c) > 8 else len(c)
                m["content"] = [{"type": "text", "text": t} for t in (c[:half], c[half:]) if t]
    return out


@pytest.fixture(scope="module")
def part_tok(smol_tok):
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = ref.family_tokenizer(smol_tok, family, tag_tokens=True)
        return cache[family]

    return get


@pytest.mark.parametrize("family", READ_PARTS)
def test_typed_rows_equal_sfttrainers_preparation(part_tok, family):
    tok = part_tok(family)
    rows = typed(load_conversations("plain"))[:6]
    theirs = ref.trl_prepare(tok, rows)
    ours = render_examples([normalize_row(r, i) for i, r in enumerate(rows)], tok, MaskConfig("assistant_only"),
                           errors="finding")
    compared = 0
    for i, (o, t) in enumerate(zip(ours, theirs)):
        if isinstance(t, Exception) or t is None:
            assert o.n_trained == 0 or any(f.code == "render_failed" for f in o.findings), (family, i)
            continue
        assert o.input_ids == t["input_ids"], first_difference(tok, o.input_ids, t["input_ids"])
        assert o.labels == t["labels"], first_difference(tok, o.labels, t["labels"], o.labels, t["labels"])
        assert not any(f.code == "content_parts_printed" for f in o.findings)
        compared += 1
    assert compared >= 4, (family, compared)


def test_own_masking_trains_exactly_the_text_parts(part_tok):
    tok = part_tok("qwen2_5_vl")
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Name a colour."}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "Red, "},
                                                          {"type": "text", "text": "mostly."}]}]}
    (r,) = render_examples([normalize_row(row)], tok, MaskConfig("assistant_only", template_source="own"))
    trained = tok.decode([t for t, lab in zip(r.input_ids, r.labels) if lab != -100])
    assert trained.startswith("Red, mostly.") and "colour" not in trained, trained
    assert not [f.code for f in r.findings if f.severity == "error"]


def test_a_template_printing_the_list_is_named_and_join_renders_the_strings(part_tok):
    """Llama 3's template prints `message['content']`: a part list appears as Python text (and is trained)."""
    tok = part_tok("llama3")
    strings = {"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]}
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text",
                                                                                        "text": "there"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]}]}
    (kept,) = render_examples([normalize_row(parts)], tok, MaskConfig("assistant_only"))
    assert "[{'type': 'text'" in kept.text
    printed = [f for f in kept.findings if f.code == "content_parts_printed"]
    assert printed and "content_parts=join" in printed[0].message
    (joined,) = render_examples([normalize_row(parts)], tok, MaskConfig("assistant_only", content_parts="join"))
    (plain,) = render_examples([normalize_row(strings)], tok, MaskConfig("assistant_only"))
    assert (joined.input_ids, joined.labels, joined.text) == (plain.input_ids, plain.labels, plain.text)
    assert not any(f.code == "content_parts_printed" for f in joined.findings)


def test_join_keeps_lists_with_images_and_changes_nothing_else(smol_tok):
    rows = load_conversations("plain")[:3]
    a = render_examples([normalize_row(r, i) for i, r in enumerate(rows)], smol_tok, MaskConfig("assistant_only"))
    b = render_examples([normalize_row(r, i) for i, r in enumerate(rows)], smol_tok,
                        MaskConfig("assistant_only", content_parts="join"))
    assert [(x.input_ids, x.labels) for x in a] == [(x.input_ids, x.labels) for x in b]
    from core.masking.engine import join_parts

    ex = normalize_row({"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]},
                                     {"role": "assistant", "content": "A"}], "images": [{"bytes": b"x"}]})
    assert join_parts(ex).messages[0]["content"] == ex.messages[0]["content"]  # joining would drop the image


def test_rows_with_images_but_no_processor_say_so(part_tok, tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    row = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
                        {"role": "assistant", "content": "A cat."}], "images": ["a.png"]}
    (path := tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    from core.data import load_examples

    (r,) = render_examples(load_examples(path), part_tok("qwen2_5_vl"), MaskConfig("assistant_only"), errors="finding")
    assert "images_not_processed" in [f.code for f in r.findings] and r.n_trained > 0


def test_rows_with_images_go_through_the_vision_collator_with_a_processor(smol_tok, tmp_path):
    from PIL import Image

    from core.data import load_examples
    from core.masking.vision import render_vision_examples
    from tests.vision_reference import build_processor

    proc = build_processor(smol_tok, "qwen2_5_vl")
    Image.new("RGB", (56, 56), (200, 0, 0)).save(tmp_path / "red.png")
    rows = [{"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "Red."}]}], "images": ["red.png"]},
            {"messages": [{"role": "user", "content": "No image here."}, {"role": "assistant", "content": "Fine."}]}]
    (path := tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    exs = load_examples(path)
    got = render_examples(exs, proc.tokenizer, MaskConfig("assistant_only"), processor=proc, image_root=tmp_path)
    want = render_vision_examples(exs[:1], proc, assistant_only_loss=True, root=tmp_path)[0]
    assert (got[0].input_ids, got[0].labels) == (want.input_ids, want.labels)
    assert got[0].input_ids.count(proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")) == 4
    text_only = render_examples(exs[1:], proc.tokenizer, MaskConfig("assistant_only"))[0]
    assert (got[1].input_ids, got[1].labels) == (text_only.input_ids, text_only.labels)
