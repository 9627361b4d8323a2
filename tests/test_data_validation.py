"""Row-level validation of the data today's models are fine-tuned on: reasoning fields, tool calls, tool messages,
tool schemas, chat_template_kwargs, lone surrogates, deep nesting. Every accepted shape is kept as written; every error
names the row, the exact field path and a fix."""

import copy
import inspect
import json
import re

import pytest

from core.data.formats import (KIND_MESSAGES, KIND_PC_CONV, MAX_DEPTH, RESERVED_TEMPLATE_KWARGS, load_examples,
                       normalize_row)
from core.errors import MaskLensError
from core.data.schema import format_path

USER = {"role": "user", "content": "Weather in Paris?"}
CALL = {"type": "function", "id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def conv(*assistant_and_more, tools=None, **row):
    out = {"messages": [USER, *assistant_and_more], **row}
    if tools is not None:
        out["tools"] = tools
    return out


def bad(row, field, pattern, index=5):
    """The row fails with an error naming row `index`, the exact `field` path and a fix; returns the message."""
    with pytest.raises(MaskLensError, match=pattern) as ei:
        normalize_row(row, index, source="data.jsonl", line=index + 1)
    e = ei.value
    assert e.field == field, str(e)
    text = str(e)
    assert f"row {index}" in text and f"field '{field}'" in text and f"line {index + 1}" in text, text
    assert e.fix, f"no fix given: {text}"
    return text


# ------------------------------------------------------------------------------------------------ accepted shapes
@pytest.mark.parametrize("field", ["reasoning_content", "thinking", "reasoning"])
def test_reasoning_fields_kept_as_written(field):
    a = {"role": "assistant", field: "  Paris is in France.\n", "content": "Sunny."}
    e = normalize_row(conv(a))
    assert e.kind == KIND_MESSAGES and e.messages[1] == a  # not renamed, not stripped


def test_same_reasoning_under_two_names_is_accepted():
    a = {"role": "assistant", "reasoning_content": "r", "thinking": "r", "content": "c"}
    assert normalize_row(conv(a)).messages[1] == a


@pytest.mark.parametrize("content", ["missing", None, ""])
def test_tool_calls_with_content_missing_null_or_empty(content):
    a = {"role": "assistant", "tool_calls": [CALL]}
    if content != "missing":
        a["content"] = content
    e = normalize_row(conv(a, {"role": "tool", "name": "get_weather", "tool_call_id": "call_1", "content": "18C"},
                           {"role": "assistant", "content": "18C in Paris."}, tools=[WEATHER_TOOL]))
    expected = {k: v for k, v in a.items() if v is not None}  # None values are dropped, as apply_chat_template does
    assert e.messages[1] == expected and e.messages[2]["tool_call_id"] == "call_1"


def test_tool_call_shapes_kept_as_written():
    calls = [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}},  # no id
        {"function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},  # no type, arguments a JSON string
        {"id": "c3", "name": "get_time", "arguments": {}},  # flat form, no arguments
        {"name": "get_time", "arguments": ' { "tz" : "UTC" } '},  # flat form, JSON string with spaces
        {"type": "function", "id": "c5", "index": 4,
         "function": {"name": "f", "arguments": {"nested": {"a": [1, {"b": None}]}}}},
    ]
    a = {"role": "assistant", "content": "Checking.", "tool_calls": copy.deepcopy(calls),
         "reasoning_content": "two calls"}
    e = normalize_row(conv(a))
    assert e.messages[1]["tool_calls"] == calls  # strings stay strings, nested nulls stay, extra keys stay
    assert isinstance(e.messages[1]["tool_calls"][1]["function"]["arguments"], str)


def test_tools_list_and_json_string():
    flat = {"name": "get_time", "description": "Time now.", "parameters": {"type": "object", "properties": {}}}
    e = normalize_row(conv({"role": "assistant", "content": "x"}, tools=[WEATHER_TOOL, flat]))
    assert e.tools == [WEATHER_TOOL, flat]
    e = normalize_row(conv({"role": "assistant", "content": "x"}, tools=json.dumps([WEATHER_TOOL])))
    assert e.tools == [WEATHER_TOOL] and isinstance(e.raw["tools"], str)  # parsed as TRL does; raw kept
    assert normalize_row(conv({"role": "assistant", "content": "x"}, tools=[])).tools is None  # [] renders as no tools


def test_chat_template_kwargs_accepted():
    ctk = {"enable_thinking": False, "reasoning_effort": "high", "custom": {"a": [1, 2.5, None, "x"]}}
    e = normalize_row(conv({"role": "assistant", "content": "x"}, chat_template_kwargs=ctk))
    assert e.chat_template_kwargs == ctk
    e = normalize_row(conv({"role": "assistant", "content": "x"}, chat_template_kwargs=None))
    assert e.chat_template_kwargs == {}


def test_long_message_extra_keys_and_emoji_are_fine():
    text = "é😀" * 10_000  # 20,000 characters, astral-plane characters included
    a = {"role": "assistant", "content": text, "weight": 1, "metadata": {"source": "x"}, "name": None}
    e = normalize_row(conv(a))
    assert e.messages[1] == {"role": "assistant", "content": text, "weight": 1, "metadata": {"source": "x"}}
    # A surrogate PAIR written as JSON escapes is one valid character.
    e = normalize_row(json.loads('{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'))
    assert e.messages[0]["content"] == "😀"


def test_tool_message_and_prompt_completion_lists():
    row = {"prompt": [USER, {"role": "assistant", "tool_calls": [CALL]},
                      {"role": "tool", "name": "get_weather", "tool_call_id": "call_1", "content": "{\"t\": 18}"}],
           "completion": [{"role": "assistant", "thinking": "It is mild.", "content": "18C."}],
           "tools": [WEATHER_TOOL]}
    e = normalize_row(row)
    assert e.kind == KIND_PC_CONV and e.completion[0]["thinking"] == "It is mild." and len(e.messages) == 4


# --------------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("message,field,pattern", [
    ({"role": 3, "content": "x"}, "messages[1].role", r"role must be a string, got int"),
    ({"role": ["assistant"], "content": "x"}, "messages[1].role", r"role must be a string, got list"),
    ({"role": "wizard", "content": "x"}, "messages[1].role", r"unknown role 'wizard'"),
    ({"content": "x"}, "messages[1]", r"has no 'role'"),
    ({"role": "assistant", "content": None}, "messages[1].content", r"no 'content' \(null or missing\)"),
    ({"role": "assistant"}, "messages[1].content", r"no 'content'"),
    ({"role": "assistant", "content": None, "tool_calls": []}, "messages[1].content", r"no 'content'"),
    ({"role": "assistant", "content": [{"type": "text", "text": "x"}]}, "messages[1].content",
     r"list of parts \(multimodal"),
    ({"role": "assistant", "content": {"text": "x"}}, "messages[1].content", r"content must be a string, got dict"),
    ({"role": "tool", "content": {"t": 18}}, "messages[1].content", r"content must be a string, got dict.*json\.dumps"),
    ({"role": "tool", "content": "18", "name": 7}, "messages[1].name", r"name must be a string, got int"),
    ({"role": "tool", "content": "18", "tool_call_id": 1}, "messages[1].tool_call_id",
     r"tool_call_id must be a string"),
    ({"role": "user", "content": "x", "name": ["a"]}, "messages[1].name", r"name must be a string"),
    ({"role": "assistant", "content": "x", "reasoning_content": ["a"]}, "messages[1].reasoning_content",
     r"reasoning_content must be a string, got list"),
    ({"role": "assistant", "content": "x", "thinking": 1}, "messages[1].thinking", r"thinking must be a string"),
    ({"role": "assistant", "content": "x", "reasoning_content": "a", "reasoning": "b"}, "messages[1].reasoning",
     r"two different reasoning texts \(reasoning_content and reasoning\)"),
    ({"role": "user", "content": "x", "tool_calls": [CALL]}, "messages[1].tool_calls",
     r"only assistant messages carry tool_calls \(role is 'user'\)"),
])
def test_message_errors(message, field, pattern):
    bad(conv(message), field, pattern)


@pytest.mark.parametrize("calls,field,pattern", [
    ('[{"name": "f"}]', "messages[1].tool_calls", r"must be a list of tool calls, got str"),
    ({"name": "f", "arguments": {}}, "messages[1].tool_calls", r"must be a list of tool calls, got dict"),
    (["get_weather"], "messages[1].tool_calls[0]", r"a tool call must be an object, got str"),
    ([CALL, {"type": "function", "function": "get_weather"}], "messages[1].tool_calls[1].function",
     r"must be an object with 'name' and 'arguments', got str"),
    ([{"type": "code", "function": {"name": "f", "arguments": {}}}], "messages[1].tool_calls[0].type",
     r"type must be 'function', got 'code'"),
    ([{"id": 5, "function": {"name": "f", "arguments": {}}}], "messages[1].tool_calls[0].id", r"id must be a string"),
    ([{"type": "function", "function": {"arguments": {}}}], "messages[1].tool_calls[0].function.name",
     r"function name must be a non-empty string, got missing"),
    ([{"type": "function", "function": {"name": " ", "arguments": {}}}], "messages[1].tool_calls[0].function.name",
     r"non-empty string"),
    ([{"name": 3, "arguments": {}}], "messages[1].tool_calls[0].name", r"got int 3"),
    ([{"type": "function", "function": {"name": "f"}}], "messages[1].tool_calls[0].function.arguments",
     r"call to 'f' has no arguments"),
    ([{"name": "f", "arguments": None}], "messages[1].tool_calls[0].arguments", r"no arguments \(missing or null\)"),
    ([CALL, {"function": {"name": "f", "arguments": "{city: Paris}"}}], "messages[1].tool_calls[1].function.arguments",
     r"string that is not valid JSON \(Expecting property name"),
    ([{"function": {"name": "f", "arguments": "[1, 2]"}}], "messages[1].tool_calls[0].function.arguments",
     r"JSON string holding a list, not an object"),
    ([{"function": {"name": "f", "arguments": "null"}}], "messages[1].tool_calls[0].function.arguments",
     r"JSON string holding a NoneType"),
    ([{"function": {"name": "f", "arguments": ["Paris"]}}], "messages[1].tool_calls[0].function.arguments",
     r"must be an object or a JSON string, got list"),
    ([{"function": {"name": "f", "arguments": 5}}], "messages[1].tool_calls[0].function.arguments", r"got int 5"),
])
def test_tool_call_errors(calls, field, pattern):
    text = bad(conv({"role": "assistant", "content": None, "tool_calls": calls}), field, pattern)
    assert "Fix:" in text


@pytest.mark.parametrize("tools,field,pattern", [
    ({"type": "function"}, "tools", r"must be a list of tool schemas, got dict"),
    (5, "tools", r"got int"),
    ("[{not json", "tools", r"string that is not valid JSON"),
    (json.dumps(WEATHER_TOOL), "tools", r"list of tool schemas \(in the JSON string\), got dict"),
    ([json.dumps(WEATHER_TOOL)], "tools[0]", r"tool schema must be an object, got str.*json\.loads"),
    ([WEATHER_TOOL, {"type": "function", "function": "get_time"}], "tools[1].function", r"must be an object, got str"),
    ([{"type": "retrieval", "function": {"name": "f"}}], "tools[0].type", r"type must be 'function'"),
    ([{"type": "function", "function": {"description": "x"}}], "tools[0].function.name", r"tool name.*got missing"),
    ([{"name": "", "parameters": {}}], "tools[0].name", r"non-empty string"),
    ([{"name": "f", "description": ["x"]}], "tools[0].description", r"description must be a string"),
    ([{"type": "function", "function": {"name": "f", "parameters": "{}"}}], "tools[0].function.parameters",
     r"parameters must be an object \(a JSON schema\), got str"),
    (json.dumps([{"name": "f", "parameters": []}]), "tools[0].parameters", r"\(in the JSON string\), got list"),
])
def test_tools_errors(tools, field, pattern):
    bad(conv({"role": "assistant", "content": "x"}, tools=tools), field, pattern)


def test_every_reserved_template_kwarg_is_refused():
    for key in sorted(RESERVED_TEMPLATE_KWARGS) + ["image_token", "boi_token"]:
        row = conv({"role": "assistant", "content": "x"}, chat_template_kwargs={"enable_thinking": True, key: "x"})
        text = bad(row, f"chat_template_kwargs.{key}", re.escape(f"key {key!r} is"))
        assert "must not be able to change the template" in text and f"remove {key!r}" in text


@pytest.mark.parametrize("ctk,field,pattern", [
    ("enable_thinking=false", "chat_template_kwargs", r"must be an object, got str"),
    ([{"enable_thinking": False}], "chat_template_kwargs", r"must be an object, got list"),
    ({"x": {1, 2}}, "chat_template_kwargs.x", r"holds a set, which is not a JSON value"),
    ({"x": {"y": [1, object()]}}, "chat_template_kwargs.x.y[1]", r"holds a object, which is not a JSON value"),
])
def test_template_kwargs_errors(ctk, field, pattern):
    bad(conv({"role": "assistant", "content": "x"}, chat_template_kwargs=ctk), field, pattern)


def test_reserved_kwargs_cover_what_rendering_takes(smol_tok):
    """The refused keys are every parameter of the functions that render (transformers 5.23, TRL 1.16, MaskLens), every
    special token name the tokenizer merges into the template variables, and the jinja environment's globals."""
    import transformers.tokenization_utils_base as tub
    from transformers.utils import chat_template_utils as ctu
    from trl.trainer import sft_trainer

    from core.masking.templates import render

    def params(fn):
        return {n for n, p in inspect.signature(fn).parameters.items() if p.kind is not p.VAR_KEYWORD}

    taken = (params(tub.PreTrainedTokenizerBase.apply_chat_template) | params(ctu.render_jinja_template)
             | params(ctu._render_with_assistant_indices) | params(sft_trainer._tokenize) | params(render)
             | set(tub.PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES) | set(smol_tok.special_tokens_map)
             | set(ctu._cached_compile_jinja_template("x").environment.globals))
    assert taken - RESERVED_TEMPLATE_KWARGS == set()
    # Why it matters: a kwarg replaces the template outright (TRL merges the row's kwargs after its own chat_template).
    msgs = [{"role": "user", "content": "hi"}]
    assert smol_tok.apply_chat_template(msgs, tokenize=False, **{"chat_template": "SWAPPED"}) == "SWAPPED"
    assert smol_tok.apply_chat_template(msgs, tokenize=False, chat_template="{{ eos_token }}",
                                        **{"eos_token": "<not eos>"}) == "<not eos>"


# ------------------------------------------------------------------------------------- surrogates and deep nesting
@pytest.mark.parametrize("line,field", [
    ('{"messages": [{"role": "user", "content": "a\\ud800b"}]}', "messages[0].content"),
    ('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "\\udc00"}]}',
     "messages[1].content"),
    ('{"messages": [{"role": "assistant", "content": "c", "reasoning_content": "\\ud83d"}]}',
     "messages[0].reasoning_content"),
    ('{"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": '
     '{"city": "\\udfff"}}}]}]}',
     "messages[0].tool_calls[0].function.arguments.city"),
    ('{"messages": [{"role": "user", "content": "x"}], "tools": [{"name": "f", "description": "\\ud800"}]}',
     "tools[0].description"),
    ('{"messages": [{"role": "user", "content": "x"}], '
     '"tools": "[{\\"name\\": \\"f\\", \\"description\\": \\"\\\\ud800\\"}]"}',
     "tools[0].description"),
    ('{"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": {"note": "\\ud800"}}',
     "chat_template_kwargs.note"),
    ('{"text": "\\ud800"}', "text"),
    ('{"prompt": "ok", "completion": "\\ud800"}', "completion"),
])
def test_lone_surrogates_are_named(line, field):
    row = json.loads(line)  # json.loads accepts lone surrogates; tokenizers do not
    text = bad(row, field, r"lone UTF-16 surrogate \('\\ud[89a-f][0-9a-f]{2}' at character \d+\)")
    assert "which no tokenizer can encode" in text


def test_lone_surrogate_in_a_key():
    row = json.loads('{"messages": [{"role": "user", "content": "x", "\\ud800": 1}]}')
    bad(row, 'messages[0]["\\ud800"]', r"the key holds a lone UTF-16 surrogate")


def test_lone_surrogate_really_breaks_the_tokenizer(smol_tok):
    with pytest.raises(Exception):
        smol_tok("a\ud800b")


def test_lone_surrogate_in_a_file_names_the_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"messages": [{"role": "user", "content": "fine"}]}\n'
                 '{"messages": [{"role": "user", "content": "bad \\ud800"}]}\n')
    with pytest.raises(MaskLensError, match=r"row 1, field 'messages\[0\]\.content': line 2: .*lone UTF-16 surrogate"):
        load_examples(p)


def test_deep_nesting_is_a_clear_error_not_a_recursion_error():
    deep = {}
    node = deep
    for _ in range(50_000):  # far past Python's recursion limit
        node["a"] = {}
        node = node["a"]
    row = conv({"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": deep}}]})
    text = bad(row, format_path(["messages", 1, "tool_calls", 0, "function", "arguments"] + ["a"] * (MAX_DEPTH - 5)),
               rf"nested more than {MAX_DEPTH} levels deep")
    assert "flatten" in text
    ok = {}
    node = ok
    for _ in range(MAX_DEPTH - 10):
        node["a"] = {}
        node = node["a"]
    normalize_row(conv({"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": ok}}]}))


def test_conversation_level_errors():
    bad({"messages": []}, "messages", r"empty list \(an empty conversation\)")
    bad({"messages": "hi"}, "messages", r"must be a list of messages, got str")
    bad({"messages": ["hi"]}, "messages[0]", r"must be an object with 'role' and 'content', got str")
    bad({"conversations": [{"from": "human", "value": "x"}, {"from": "wizard", "value": "y"}]}, "conversations[1].role",
        r"unknown role 'wizard'")
    bad({"prompt": [USER], "completion": [{"role": "assistant", "tool_calls": [{"name": "f"}]}]},
        "completion[0].tool_calls[0].arguments", r"no arguments")
    bad({"prompt": [{"role": 1, "content": "x"}], "completion": [{"role": "assistant", "content": "y"}]},
        "prompt[0].role", r"role must be a string")
