"""Typed content (a message's content as a list of parts): accepted and kept as written (TRL 1.16 passes the list to
the template as is), and the pure helpers the engine uses — content_text, join_text_parts (the fix
``content_parts=join``), renders_part_list (finding ``content_parts_printed``), parts_not_rendered — checked against
TRL's real chat templates rendered by transformers."""

from __future__ import annotations

import copy

import pytest

from core.data import content_text, join_text_parts, normalize_row, parts_not_rendered, renders_part_list
from core.data.content import JOIN_SEPARATOR, image_placeholders, images_trl_expects
from core.errors import MaskLensError
from core.findings import CODES, Finding
from tests.trl_reference import template_text

HI = [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]
TYPED = [{"role": "user", "content": HI}, {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]}]
AS_STRINGS = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]


def render(tok, messages, name: str) -> str:
    return tok.apply_chat_template(copy.deepcopy(messages), chat_template=template_text(name), tokenize=False)


# ---------------------------------------------------------------------------------------------------------- helpers
def test_content_text():
    assert content_text({"content": "plain"}) == "plain"
    assert content_text({"content": HI}) == "Hi there"
    assert content_text({"content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}) == "What is it?"
    assert content_text({"role": "assistant", "tool_calls": []}) == ""
    assert content_text({"content": []}) == ""


def test_join_text_parts_joins_text_only_lists_and_keeps_the_rest():
    msgs = [{"role": "user", "content": HI, "name": "u"},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]},
            {"role": "assistant", "content": "already a string"}]
    before = copy.deepcopy(msgs)
    out = join_text_parts(msgs)
    assert out[0] == {"role": "user", "content": "Hi there", "name": "u"} and JOIN_SEPARATOR == ""
    assert out[1] is msgs[1] and out[2] is msgs[2]  # an image would be lost; strings are already joined
    assert msgs == before  # the input is not modified


def test_part_lists_are_kept_as_written():
    row = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}],
           "images": ["cat.png"]}
    e = normalize_row(row)
    assert e.messages == row["messages"] and e.images == ["cat.png"]
    e = normalize_row({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                                  "image_url": {"url": "data:image/png;base64,AA"}}]}]})
    assert e.messages[0]["content"][0]["type"] == "image_url" and e.images is None


@pytest.mark.parametrize("row,field,pattern", [
    ({"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]}, "messages",
     r"1 image part\(s\) without an image, and the row has no 'images'"),
    ({"messages": [{"role": "user", "content": [{"type": "image"}]}], "images": ["a.png", "b.png"]}, "images",
     r"has 2 image\(s\) but 1 image placeholder"),
    ({"messages": [{"role": "user", "content": [{"type": "image"}]}, {"role": "user", "content": "more"}],
      "images": ["a.png"]}, "images", r"1 image part\(s\) plus the 1 placeholder\(s\) TRL inserts"),
    ({"messages": [{"role": "user", "content": "x"}], "images": "a.png"}, "images", r"must be a list of images"),
    ({"messages": [{"role": "user", "content": "x"}], "images": [None]}, "images[0]", r"is null"),
    ({"messages": [{"role": "user", "content": "x"}], "images": [{"path": None}]}, "images[0]",
     r"neither 'bytes' nor 'path'"),
    ({"messages": [{"role": "user", "content": "x"}], "images": [3]}, "images[0]", r"is a int, not an image"),
    ({"prompt": [{"role": "user", "content": [{"type": "image"}]}],
      "completion": [{"role": "assistant", "content": [{"type": "image"}]}], "images": ["a.png"]}, "completion",
     r"TRL 1.16 fills images into the prompt only"),
])
def test_image_rows_checked_as_trl_pairs_them(row, field, pattern):
    with pytest.raises(MaskLensError, match=pattern) as ei:
        normalize_row(row, 1)
    assert ei.value.field == field and ei.value.row == 1 and ei.value.fix


def test_trl_placeholder_count():
    """TRL 1.16's prepare_multimodal_messages: images go before the first user message with string content."""
    from trl.data_utils import prepare_multimodal_messages

    for msgs, n in (([{"role": "user", "content": "x"}], 2),
                    ([{"role": "user", "content": [{"type": "image"}, {"type": "image"}]}], 2),
                    ([{"role": "user", "content": [{"type": "image"}]}, {"role": "user", "content": "y"}], 1),
                    ([{"role": "tool", "content": [{"type": "image"}]}, {"role": "user", "content": "y"}], 1)):
        ok = images_trl_expects(msgs, n) == n
        try:
            prepare_multimodal_messages(copy.deepcopy(msgs), images=[object()] * n)
            trl_ok = True
        except ValueError:
            trl_ok = False
        assert ok == trl_ok, msgs
    assert image_placeholders([{"role": "user", "content": [{"type": "image", "image": "a.png"}]}]) == 0


# ------------------------------------------------------------------------------- real templates, rendered by transformers
# How TRL's templates take a part list (SmolLM2 vocabulary; typed copy of a 3-message chat):
PRINTS_THE_LIST = ["llama3", "llama3_1", "llama3_2", "cohere2", "lfm2", "nemotron_3_nano"]
DROPS_THE_TEXT = ["qwen3", "qwen3_instruct_2507"]  # `{%- if message.content is string %}...{%- else %}''`
READS_PARTS_JOINED = ["qwen2_5_vl", "qwen3_vl", "glm4moe", "lfm2_2_5_vl", "qwen3_5_think"]  # as join_text_parts joins
FAILS = ["qwen2_5", "phi3", "deepseekv3", "gptoss"]  # 'str' + list: a TypeError, the engine's render_failed


@pytest.mark.parametrize("name", PRINTS_THE_LIST)
def test_printed_lists_are_detected_and_join_is_the_fix(smol_tok, name):
    text = render(smol_tok, TYPED, name)
    printed = ("[{'type': 'text', 'text': 'Hi '}, {'type': 'text', 'text': 'there'}]",  # {{ content }}
               '[{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]')  # {{ content | tojson }}
    assert any(p in text for p in printed) and renders_part_list(text, TYPED)
    fixed = render(smol_tok, join_text_parts(TYPED), name)
    assert fixed == render(smol_tok, AS_STRINGS, name) and not renders_part_list(fixed, TYPED)


@pytest.mark.parametrize("name", DROPS_THE_TEXT)
def test_dropped_part_lists_are_detected(smol_tok, name):
    text = render(smol_tok, TYPED, name)
    assert not renders_part_list(text, TYPED) and parts_not_rendered(text, TYPED) == [0, 1]
    fixed = render(smol_tok, join_text_parts(TYPED), name)
    assert parts_not_rendered(fixed, TYPED) == [] and fixed == render(smol_tok, AS_STRINGS, name)


@pytest.mark.parametrize("name", READS_PARTS_JOINED)
def test_templates_that_read_parts_print_them_as_join_text_parts_joins_them(smol_tok, name):
    text = render(smol_tok, TYPED, name)
    assert not renders_part_list(text, TYPED) and parts_not_rendered(text, TYPED) == []
    assert text == render(smol_tok, join_text_parts(TYPED), name) == render(smol_tok, AS_STRINGS, name)


def test_gemma3_reads_parts_and_trims_each(smol_tok):
    text = render(smol_tok, TYPED, "gemma3")
    assert "Hithere" in text and not renders_part_list(text, TYPED) and parts_not_rendered(text, TYPED) == []


@pytest.mark.parametrize("name", FAILS)
def test_templates_written_for_strings_fail_on_lists(smol_tok, name):
    with pytest.raises(TypeError, match="can only concatenate str"):
        render(smol_tok, TYPED, name)
    render(smol_tok, join_text_parts(TYPED), name)  # the fix renders


def test_repr_detection_edges():
    assert not renders_part_list("[{'type': 'text', 'text': 'Hi'}]", [{"role": "user", "content": "Hi"}])
    one = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    assert renders_part_list('x[{"type": "text", "text": "Hi"}]x', one)  # | tojson
    assert renders_part_list("x{'type': 'text', 'text': 'Hi'}x", one)  # one part printed
    assert not renders_part_list("user: Hi", one)


def test_the_finding_names_the_option():
    assert CODES["content_parts_printed"][0] == "warning"
    f = Finding("content_parts_printed", "messages 0, 1")
    assert "content_parts=join" in f.fix and "nothing between them" in f.fix
