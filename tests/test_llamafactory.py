"""LLaMA-Factory's formats (its demo data in tests/assets/llamafactory/, Apache-2.0): converted into TRL's messages as
its data/README.md and converters read them, with a format_converted finding, and trained exactly as TRL 1.16's
SFTTrainer trains the converted rows (assistant_only: the output and its end of turn, never the prompt)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.data import load_examples, normalize_row
from core.errors import MaskLensError
from core.export import export_trl_rows, trl_rows
from core.masking.engine import MaskConfig, render_examples
from tests import trl_reference as ref
from tests.trl_reference import first_difference

LF = Path(__file__).parent / "assets" / "llamafactory"
ASSISTANT_ONLY = MaskConfig("assistant_only")


def codes(ex) -> list[str]:
    return [f.code for f in ex.notes]


def trained_text(tok, r) -> str:
    return tok.decode([t for t, lab in zip(r.input_ids, r.labels) if lab != -100])


def render_as_trl(tok, examples) -> list:
    """MaskLens's assistant_only rendering of `examples`, asserted equal (ids and labels) to TRL 1.16's SFTTrainer
    preparation of the same converted rows."""
    ours = render_examples(examples, tok, ASSISTANT_ONLY)
    for r, t in zip(ours, ref.trl_prepare(tok, trl_rows(examples))):
        assert (r.input_ids, r.labels) == (t["input_ids"], t["labels"]), first_difference(
            tok, r.input_ids, t["input_ids"], r.labels, t["labels"])
    return ours


# ------------------------------------------------------------------------------------------------------------ alpaca
def test_alpaca_as_its_readme_says():
    row = {"instruction": "Translate.", "input": "Bonjour", "output": "Hello", "system": "Be brief.",
           "history": [["Hi", "Hey!"], ["Who are you?", "A bot."]]}
    e = normalize_row(row, 3)
    assert e.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey!"},
        {"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "A bot."},
        {"role": "user", "content": "Translate.\nBonjour"}, {"role": "assistant", "content": "Hello"}]
    (f,) = [n for n in e.notes if n.code == "format_converted"]
    assert "alpaca" in f.message and "2 earlier turn(s) from 'history'" in f.message and '+ "\\n" + input' in f.message
    assert e.raw == row  # the row as written stays the raw view
    # empty input: the instruction alone (no trailing newline); empty instruction: the input alone
    assert normalize_row({"instruction": "Hi", "input": "", "output": "x"}).messages[0] == {"role": "user", "content": "Hi"}
    assert normalize_row({"instruction": "", "input": "Hi", "output": "x"}).messages[0]["content"] == "Hi"
    assert normalize_row({"instruction": "Hi", "output": "x"}).messages[0]["content"] == "Hi"
    assert normalize_row({"instruction": "Hi", "input": None, "output": "x", "system": ""}).messages[0]["role"] == "user"


@pytest.mark.parametrize("row,field,pattern", [
    ({"instruction": "x"}, "output", r"is missing: an alpaca row needs the response in 'output'"),
    ({"instruction": "x", "chosen": "a", "rejected": "b"}, "output", r"preference data"),
    ({"instruction": "x", "output": ["a", "b"]}, "output", r"must be a string, got list"),
    ({"instruction": 3, "output": "y"}, "instruction", r"must be a string, got int"),
    ({"instruction": "x", "output": "y", "history": "a"}, "history", r"list of \[query, response\] pairs"),
    ({"instruction": "x", "output": "y", "history": [["a"]]}, "history[0]", r"\[query, response\] pair of strings"),
])
def test_alpaca_errors_name_the_field(row, field, pattern):
    with pytest.raises(MaskLensError, match=pattern) as ei:
        normalize_row(row, 4, source="a.json")
    assert f"field '{field}'" in str(ei.value) and "row 4" in str(ei.value) and "Fix:" in str(ei.value)


@pytest.mark.parametrize("family", ["qwen2_5", "llama3"])
def test_alpaca_demo_trains_exactly_the_output_and_its_end_of_turn(family_tok, family):
    """The real alpaca_en_demo rows, converted: MaskLens's assistant_only == TRL 1.16's SFTTrainer on the converted
    messages, token for token, and what is trained is the output and the end-of-turn marker, nothing else."""
    tok = family_tok(family)
    examples = load_examples(LF / "alpaca_en_demo.json")
    raw = json.loads((LF / "alpaca_en_demo.json").read_text())
    assert all("format_converted" in codes(e) for e in examples)
    ours = render_as_trl(tok, examples)
    # TRL's training twins decide the edges: Qwen2.5's generation block opens right after "<|im_start|>assistant", so
    # it also trains the header's newline; Llama 3's holds the content and <|eot_id|> only.
    before, eot = {"qwen2_5": ("\n", "<|im_end|>\n"), "llama3": ("", "<|eot_id|>")}[family]
    for r, row in zip(ours, raw):
        assert trained_text(tok, r) == before + row["output"] + eot


# ---------------------------------------------------------------------------------------------------------- ShareGPT
def test_glaive_function_calls_become_tool_calls():
    e0, e1 = load_examples(LF / "glaive_toolcall_en_demo.json")
    roles = [m["role"] for m in e0.messages]
    assert roles == ["user", "assistant", "user", "assistant", "tool", "assistant", "user", "assistant"]
    call = e0.messages[3]
    assert call["content"] == "" and call["tool_calls"] == [{"type": "function", "function": {
        "name": "search_recipes", "arguments": {"ingredients": ["chicken", "bell peppers", "rice"]}}}]
    assert e0.messages[4]["content"].startswith('{"recipes": [{"name": "Chicken and Bell Pepper Stir Fry"')
    assert e0.tools == [{"type": "function", "function": {
        "name": "search_recipes", "description": "Search for recipes based on ingredients",
        "parameters": {"type": "object", "properties": {"ingredients": {
            "type": "array", "items": {"type": "string"}, "description": "The ingredients to search for"}},
            "required": ["ingredients"]}}}]
    (f,) = [n for n in e0.notes if n.code == "format_converted"]
    assert "1 function_call value(s) -> assistant tool_calls" in f.message and "1 observation turn(s)" in f.message
    assert "flat tool schema(s) wrapped" in f.message and "roles_mapped" in codes(e0)
    assert e1.tools is None and "an empty list: no tools" in e1.notes[1].message


def test_sharegpt_system_column_calls_in_a_list_and_string_arguments():
    row = {"system": "Be terse.", "tools": json.dumps([{"name": "f", "parameters": {}}]), "conversations": [
        {"from": "human", "value": "go"},
        {"from": "function_call", "value": json.dumps([{"name": "f", "arguments": '{"a": 1}'},
                                                        {"name": "f", "arguments": {"a": 2}}])},
        {"from": "observation", "value": "1"}, {"from": "observation", "value": "2"},
        {"from": "gpt", "value": "done"}]}
    e = normalize_row(row)
    assert e.messages[0] == {"role": "system", "content": "Be terse."}
    assert [c["function"]["arguments"] for c in e.messages[2]["tool_calls"]] == [{"a": 1}, {"a": 2}]
    assert [m["role"] for m in e.messages] == ["system", "user", "assistant", "tool", "tool", "assistant"]
    assert "unknown_fields" not in codes(e)  # system is read
    # a system turn in the conversation wins over the column (as in LLaMA-Factory)
    e = normalize_row({"system": "column", "conversations": [{"from": "system", "value": "turn"},
                                                             {"from": "human", "value": "x"}]})
    assert [m["content"] for m in e.messages] == ["turn", "x"]


@pytest.mark.parametrize("value,pattern", [
    ('{"name": "f", "arguments": {', r"is not valid JSON \(Expecting"),
    ('"just text"', r"not a call with 'name' and 'arguments'"),
    ('{"arguments": {}}', r"not a call with 'name'"),
])
def test_bad_function_call_names_row_turn_and_field(value, pattern):
    row = {"conversations": [{"from": "human", "value": "x"}, {"from": "function_call", "value": value}]}
    with pytest.raises(MaskLensError, match=pattern) as ei:
        normalize_row(row, 9, source="glaive.json")
    assert "row 9" in str(ei.value) and "field 'conversations[1].value" in str(ei.value)
    assert 'Fix: write the call as {"name": "get_weather", "arguments": {"city": "Paris"}}' in str(ei.value)


@pytest.mark.parametrize("family", ["qwen2_5", "qwen3"])
def test_glaive_demo_matches_trl_and_trains_calls_not_results(family_tok, family):
    """The converted tool-calling rows through each template's own tool syntax: identical to TRL's preparation; the
    function call is trained, the tool result (observation) never is."""
    tok = family_tok(family)
    examples = load_examples(LF / "glaive_toolcall_en_demo.json")
    ours = render_as_trl(tok, examples)
    text = trained_text(tok, ours[0])
    assert '"name": "search_recipes"' in text and "Chicken and Rice Casserole" in text  # the call + final answer
    assert '"recipes": [' not in text  # the observation


# ------------------------------------------------------------------------------------------------------ typed parts
def test_typed_parts_reasoning_tool_calls_and_loss_weight():
    sft = load_examples(LF / "v1_sft_demo.jsonl")
    assert sft[0].messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": (
        "Hello! I am {{name}}, an AI assistant developed by {{author}}. How can I assist you today?"), "weight": 1.0}]
    e = load_examples(LF / "reason_tool_use_demo_50.jsonl")[1]
    a = e.messages[2]
    assert a["content"] == "" and a["reasoning_content"].startswith("Alright, the user wants information")
    assert a["tool_calls"] == [{"type": "function", "function": {"name": "get_movie_details",
                                                                 "arguments": {"title": "Inception"}}}]
    assert e.messages[3]["role"] == "tool" and e.messages[3]["content"].startswith('[{"title": "Inception"')
    (f,) = [n for n in e.notes if n.code == "format_converted"]
    assert "reasoning part(s) -> reasoning_content" in f.message and "2 tool_call part(s) -> tool_calls" in f.message
    assert e.tools[0]["function"]["name"] == "get_movie_details"


def test_typed_text_parts_join_with_nothing_between_and_fractional_weights():
    row = {"messages": [{"role": "user", "content": [{"type": "text", "value": "a"}, {"type": "text", "value": "b"}],
                         "loss_weight": 0.0},
                        {"role": "assistant", "content": [{"type": "text", "value": "c"}], "loss_weight": 0.25},
                        {"role": "user", "content": [{"type": "text", "value": "d"}], "loss_weight": 1.0},
                        {"role": "assistant", "content": [{"type": "text", "value": "e"}], "loss_weight": 0}]}
    e = normalize_row(row)
    assert [m["content"] for m in e.messages] == ["ab", "c", "d", "e"]
    assert [m.get("weight") for m in e.messages] == [None, 0.25, None, 0]
    assert "loss_weight on non-assistant message(s) 2 ignored" in e.notes[0].message


@pytest.mark.parametrize("part,field,pattern", [
    ({"type": "video_url", "value": "a.mp4"}, "messages[0].content[0].type", r"no video/audio processing"),
    ({"type": "code", "value": "x"}, "messages[0].content[0].type", r"unknown typed part 'code'"),
    ({"type": "text", "value": 3}, "messages[0].content[0].value", r"value must be a string"),
    ({"type": "tool_call", "value": "{oops"}, "messages[0].content[0].value", r"is not valid JSON"),
])
def test_typed_part_errors(part, field, pattern):
    with pytest.raises(MaskLensError, match=pattern) as ei:
        normalize_row({"messages": [{"role": "assistant", "content": [part]}]}, 2)
    assert f"field '{field}'" in str(ei.value)


def test_loss_weight_out_of_range_is_an_error():
    with pytest.raises(MaskLensError, match=r"field 'messages\[0\]\.loss_weight'.*from 0 to 1, got 2"):
        normalize_row({"messages": [{"role": "assistant", "content": [{"type": "text", "value": "x"}],
                                     "loss_weight": 2}]})


def test_reason_tool_use_matches_trl(family_tok):
    """Reasoning + tool calls from typed parts, on Qwen3's template (TRL swaps in its training twin)."""
    tok = family_tok("qwen3")
    examples = load_examples(LF / "reason_tool_use_demo_50.jsonl")
    render_as_trl(tok, examples)


# ------------------------------------------------------------------------------------------------------- image tags
def test_image_tags_become_image_parts_where_they_stand():
    e0, e1 = load_examples(LF / "mllm_demo.json")
    assert e0.images == ["mllm_demo_data/1.jpg", "mllm_demo_data/1.jpg"]
    assert e0.messages[0]["content"] == [{"type": "image"}, {"type": "text", "text": "Who are they?"}]
    assert e0.messages[2]["content"] == [{"type": "text", "text": "What are they doing?"}, {"type": "image"}]
    assert e1.messages[2]["content"] == [{"type": "text", "text": "Why is he on the ground?"}]  # wrapped: see as_parts
    assert e0.base_dir == str(LF.resolve())
    with pytest.raises(MaskLensError, match=r"2 <image> tag\(s\) but the row has 1 image"):
        normalize_row({"messages": [{"role": "user", "content": "<image><image>x"}], "images": ["a.png"]})


def test_v1_multimodal_image_url_parts():
    e = load_examples(LF / "v1_multimodal_demo.jsonl")[0]
    assert e.images == ["data/mllm_demo_data/1.jpg", "data/mllm_demo_data/1.jpg"]
    assert e.messages[0]["content"] == [{"type": "image"}, {"type": "text", "text": "Who are they?"}]
    assert e.messages[1]["content"] == [{"type": "text", "text": "They're Kane and Gretzka from Bayern Munich."}]


# ---------------------------------------------------------------------------------------------- unknown fields, export
def test_unknown_fields_are_named_never_dropped_silently():
    e = normalize_row({"id": 7, "source": "web", "messages": [{"role": "user", "content": "x"}]}, 5)
    (f,) = [n for n in e.notes if n.code == "unknown_fields"]
    assert f.location == {"fields": ["id", "source"]} and f.message.startswith("row 5: id, source")
    assert f.severity == "info" and "not trained" in f.explanation
    e = normalize_row({"instruction": "x", "output": "y", "kto_tag": True})
    assert [n.location for n in e.notes if n.code == "unknown_fields"] == [{"fields": ["kto_tag"]}]
    assert "unknown_fields" not in codes(normalize_row({"messages": [{"role": "user", "content": "x"}],
                                                        "images": [], "tools": None}))


def test_converted_rows_export_as_trl_messages_and_read_back_unchanged(tmp_path):
    for name in ("alpaca_en_demo.json", "glaive_toolcall_en_demo.json", "reason_tool_use_demo_50.jsonl",
                 "v1_sft_demo.jsonl", "mllm_demo.json"):
        examples = load_examples(LF / name)
        out = export_trl_rows(examples, tmp_path / f"{name}.jsonl")
        again = load_examples(out)
        assert [e.messages for e in again] == [e.messages for e in examples]
        assert [e.tools for e in again] == [e.tools for e in examples]
        assert [e.images for e in again] == [e.images for e in examples]
        assert not any("format_converted" in codes(e) for e in again)  # already TRL's format
    rec = json.loads((tmp_path / "glaive_toolcall_en_demo.json.jsonl").read_text().splitlines()[0])
    assert set(rec) == {"messages", "tools"} and isinstance(rec["tools"], str)  # TRL json.loads a tools string


def test_export_refuses_image_bytes():
    e = normalize_row({"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}],
                       "images": [{"bytes": b"\x89PNG...", "path": None}]}, 3)
    assert e.raw["images"] == [{"path": None, "bytes": "<7 bytes>"}]  # the raw view never holds the bytes
    with pytest.raises(MaskLensError, match=r"row 3, field 'images\[0\]'.*stored as bytes"):
        trl_rows([e])
