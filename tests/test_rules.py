"""Declarative rules (core.rules): every key and value against labels written out by hand, and every invalid rule.

The expected trained texts are written by hand from the chat template (SmolLM2's ChatML; TRL's Qwen3 template on the
SmolLM2 vocabulary for reasoning, tool calls and scaffolding) and compared with the decoded runs of trained tokens.
"""

import copy
import json
from pathlib import Path

import pytest

from core.data.formats import normalize_row
from core.masking.engine import MaskConfig, render_examples
from core.errors import MaskLensError
from core.masking.rules import (DEFAULT_PARTS, Rules, TrainEntry, load_rules, parse_rules, register_rules, rules_config)
from core.masking.strategies import get_strategy, strategy_names, unregister
from tests.trl_reference import family_tokenizer, load_conversations
from tests.helpers import trained_runs

IGNORE = -100
RULES_DIR = Path(__file__).resolve().parent / "assets" / "rules"
IM_END = "<|im_end|>"

# SmolLM2 renders: <|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n
# <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n
# <|im_start|>user\n3+3?<|im_end|>\n<|im_start|>assistant\n6<|im_end|>\n
CHAT = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "3+3?"},
    {"role": "assistant", "content": "6"}]}

# Qwen3 renders the tools block in the system turn, then:
# <|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<think>\none call\n</think>\n\n<tool_call>\n
# {"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n
# sunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nSunny.<|im_end|>\n
TOOLS = {"tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}],
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "reasoning_content": "one call",
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "name": "get_weather", "tool_call_id": "1", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."}]}
THINK1 = "<think>\none call\n</think>\n\n"
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
EMPTY_THINK = "<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def qwen3(smol_tok):
    return family_tokenizer(smol_tok, "qwen3")


@pytest.fixture(autouse=True)
def clean_registry():
    before = set(strategy_names())
    yield
    for n in set(strategy_names()) - before:
        unregister(n)


def run(tok, rules, row=CHAT, **kw):
    r = rules if isinstance(rules, Rules) else parse_rules(rules)
    return render_examples([normalize_row(copy.deepcopy(row))], tok, rules_config(r, **kw))[0]


def entry(**e):
    return {"name": "t", "train": [e]}


# ------------------------------------------------------------------------------------------------------ turns
@pytest.mark.parametrize("turns, expected", [
    ("all", ["Hello!" + IM_END, "4" + IM_END, "6" + IM_END]),
    ("first", ["Hello!" + IM_END]),
    ("last", ["6" + IM_END]),
    (0, ["Hello!" + IM_END]),
    (1, ["4" + IM_END]),
    (2, ["6" + IM_END]),
    (-1, ["6" + IM_END]),
    (-2, ["4" + IM_END]),
    (-3, ["Hello!" + IM_END]),
])
def test_turns(smol_tok, turns, expected):
    assert trained_runs(smol_tok, run(smol_tok, entry(role="assistant", turns=turns))) == expected


@pytest.mark.parametrize("turns", [3, -4, 99])
def test_turn_index_past_the_conversation_trains_nothing(smol_tok, turns):
    r = run(smol_tok, entry(turns=turns))
    assert trained_runs(smol_tok, r) == []
    assert "no_trained_tokens" in [f.code for f in r.findings]


def test_defaults_are_assistant_every_turn_reasoning_content_tool_calls_eot(smol_tok):
    r = parse_rules({"train": [{}]})
    assert r.name == "custom" and r.train == (TrainEntry("assistant", "all", DEFAULT_PARTS),)
    assert DEFAULT_PARTS == ("reasoning", "content", "tool_calls", "eot")
    assert trained_runs(smol_tok, run(smol_tok, r)) == ["Hello!" + IM_END, "4" + IM_END, "6" + IM_END]


# ------------------------------------------------------------------------------------------------------ parts
@pytest.mark.parametrize("parts, expected", [
    (["header"], ["<|im_start|>assistant\n"] * 3),
    (["content"], ["Hello!", "4", "6"]),
    (["eot"], [IM_END] * 3),
    (["header", "content", "eot"], ["<|im_start|>assistant\nHello!<|im_end|>", "<|im_start|>assistant\n4<|im_end|>",
                                    "<|im_start|>assistant\n6<|im_end|>"]),
])
def test_parts_chatml(smol_tok, parts, expected):
    assert trained_runs(smol_tok, run(smol_tok, entry(parts=parts))) == expected


@pytest.mark.parametrize("parts, expected", [
    (["reasoning"], [THINK1]),
    (["tool_calls"], [CALL]),
    (["scaffold"], [EMPTY_THINK]),
    (["content"], ["Sunny."]),
    (["eot"], [IM_END, IM_END]),
    (["reasoning", "tool_calls"], [THINK1 + CALL]),
    (["reasoning", "content", "tool_calls", "eot"], [THINK1 + CALL + IM_END, "Sunny." + IM_END]),
    (["reasoning", "content", "tool_calls", "eot", "scaffold"],
     [THINK1 + CALL + IM_END, EMPTY_THINK + "Sunny." + IM_END]),
])
def test_parts_reasoning_tool_calls_scaffold(qwen3, parts, expected):
    assert trained_runs(qwen3, run(qwen3, entry(parts=parts), row=TOOLS)) == expected


def test_parts_of_one_turn_with_a_negative_index(qwen3):
    r = run(qwen3, entry(turns=-2, parts=["tool_calls", "eot"]), row=TOOLS)
    assert trained_runs(qwen3, r) == [CALL + IM_END]


# ------------------------------------------------------------------------------------------------------ roles
def test_role_user_and_system(smol_tok):
    assert trained_runs(smol_tok, run(smol_tok, entry(role="user"))) == ["Hi" + IM_END, "2+2?" + IM_END,
                                                                        "3+3?" + IM_END]
    assert trained_runs(smol_tok, run(smol_tok, entry(role="user", turns="last", parts=["content"]))) == ["3+3?"]
    assert trained_runs(smol_tok, run(smol_tok, entry(role="system", parts=["content"]))) == ["Be brief."]


def test_role_tool(qwen3):
    r = run(qwen3, entry(role="tool", parts=["content"]), row=TOOLS)
    assert trained_runs(qwen3, r) == ["sunny"]
    msg = {t.message: t.role for t in r.tokens(qwen3) if t.label != IGNORE}
    assert msg == {2: "tool"}


def test_entries_union(smol_tok):
    rules = {"train": [{"role": "user", "turns": "first", "parts": ["content"]},
                       {"role": "assistant", "turns": "last", "parts": ["content", "eot"]},
                       {"role": "assistant", "turns": 0, "parts": ["content"]}]}
    assert trained_runs(smol_tok, run(smol_tok, rules)) == ["Hi", "Hello!", "6" + IM_END]


def test_yaml_file_with_tool_results(qwen3):
    rules = load_rules(RULES_DIR / "answers_and_tool_results.yaml")
    assert rules.name == "answers_and_tool_results" and rules.roles == ("assistant", "tool")
    r = run(qwen3, rules, row=TOOLS)
    # the first assistant turn has empty content: only its end-of-turn marker is trained
    assert trained_runs(qwen3, r) == [IM_END, "sunny", "Sunny." + IM_END]


# ------------------------------------------------------------------------------------------------------ mask_tokens
def test_mask_tokens_from_the_rules(smol_tok):
    r = run(smol_tok, {"train": [{}], "mask_tokens": [IM_END]})
    assert trained_runs(smol_tok, r) == ["Hello!", "4", "6"]
    assert any(t.rule.startswith("not trained: mask_tokens") for t in r.tokens(smol_tok) if t.text == IM_END)


def test_mask_tokens_merge_with_the_configs(smol_tok):
    rules = parse_rules({"train": [{}], "mask_tokens": [IM_END]})
    cfg = rules_config(rules, mask_tokens=("!",))
    assert cfg.mask_tokens == ("!", IM_END)
    r = render_examples([normalize_row(CHAT)], smol_tok, cfg)[0]
    assert trained_runs(smol_tok, r) == ["Hello", "4", "6"]


def test_mask_tokens_think_close_inside_reasoning(qwen3):
    r = run(qwen3, {"train": [{"parts": ["reasoning", "tool_calls"]}], "mask_tokens": ["</think>"]}, row=TOOLS)
    assert trained_runs(qwen3, r) == ["<think>\none call\n", "\n\n" + CALL]


def test_json_file_first_turn(smol_tok):
    rules = load_rules(RULES_DIR / "first_turn.json")
    assert rules.name == "first_turn" and rules.mask_tokens == ("</think>",)
    cfg = rules_config(rules)
    assert cfg.strategy == "rules:first_turn" and cfg.mask_tokens == ("</think>",)
    r = render_examples([normalize_row(CHAT)], smol_tok, cfg)[0]
    assert trained_runs(smol_tok, r) == ["Hello!" + IM_END]


# ------------------------------------------------------------------------------------------------------ flags, options
@pytest.mark.parametrize("flag", [{"weight": 0}, {"train": False}])
def test_flagged_off_message_is_never_trained(smol_tok, flag):
    row = copy.deepcopy(CHAT)
    row["messages"][4].update(flag)  # the assistant's "4"
    r = run(smol_tok, entry(), row=row)
    assert trained_runs(smol_tok, r) == ["Hello!" + IM_END, "6" + IM_END]
    assert any(f.code == "message_not_trained" and f.location == {"message": 4} for f in r.findings)
    why = "weight 0" if "weight" in flag else "train false"
    assert {t.rule for t in r.tokens(smol_tok) if t.message == 4} == {f"not trained: message 4 is flagged off ({why})"}
    # turns count every message of the role, flagged or not: turn 1 is still the flagged "4"
    assert trained_runs(smol_tok, run(smol_tok, entry(turns=1), row=row)) == []


def test_take_out_options_apply(qwen3, smol_tok):
    both = entry(parts=["reasoning", "content", "tool_calls", "eot", "scaffold"])
    assert trained_runs(qwen3, run(qwen3, both, row=TOOLS, reasoning="mask", empty_think="mask")) == [
        CALL + IM_END, "Sunny." + IM_END]
    assert trained_runs(smol_tok, run(smol_tok, entry(), eos="last_turn")) == ["Hello!", "4", "6" + IM_END]
    assert trained_runs(smol_tok, run(smol_tok, entry(), eos="none")) == ["Hello!", "4", "6"]


# ------------------------------------------------------------------------------------------------------ rule texts
def test_every_token_says_which_rule_decided_it(smol_tok):
    r = run(smol_tok, {"name": "first_turn", "train": [{"role": "assistant", "turns": "first",
                                                         "parts": ["content", "eot"]}]})
    rules = {(t.message, t.part): t.rule for t in r.tokens(smol_tok)}
    assert rules[(2, "content")] == "trained: rule train[0] (assistant, first turn, content)"
    assert rules[(2, "eot")] == "trained: rule train[0] (assistant, first turn, eot)"
    assert rules[(2, "header")] == "not trained: rule train[0] (assistant, first turn) trains content, eot, not header"
    assert rules[(4, "content")] == "not trained: no rule selects assistant turn 1 (message 4)"
    assert rules[(1, "content")] == "not trained: no rule selects user turn 0 (message 1)"
    assert rules[(None, "template")] == "not trained: template text outside any message"


def test_register_rules_names_and_replaces(smol_tok):
    rules = parse_rules({"name": "mine", "train": [{"turns": "last"}]})
    assert register_rules(rules) == "rules:mine"
    spec = get_strategy("rules:mine")
    assert spec.kind == "parts" and not spec.trl_generation and "rules:mine" in strategy_names()
    assert "last turn" in spec.help
    unique = register_rules(rules, unique=True)
    assert unique == f"rules:mine@{rules.digest()}" and len(rules.digest()) == 8
    other = parse_rules({"name": "mine", "train": [{"turns": "first"}]})
    assert register_rules(other, unique=True) != unique  # same name, other rules: another strategy
    register_rules(other)  # plain names: the latest registration wins (one CLI run loads one rules file)
    r = render_examples([normalize_row(CHAT)], smol_tok, MaskConfig("rules:mine", train_roles=("assistant",)))[0]
    assert trained_runs(smol_tok, r) == ["Hello!" + IM_END]


def test_rules_config_keeps_other_options(smol_tok):
    rules = parse_rules({"train": [{"role": "tool"}, {"role": "assistant"}]})
    cfg = rules_config(rules, max_length=12, truncation="keep_end")
    assert cfg.train_roles == ("tool", "assistant") and cfg.max_length == 12 and cfg.truncation == "keep_end"
    assert rules_config(rules, train_roles=("assistant",)).train_roles == ("assistant",)
    with pytest.raises(TypeError, match="strategy"):
        rules_config(rules, strategy="full")


def test_round_trip_through_plain_data():
    for path in sorted(RULES_DIR.glob("*")):
        if path.stem.startswith("bad_"):
            continue
        rules = load_rules(path)
        again = parse_rules(json.loads(json.dumps(rules.to_dict())))
        assert again == rules and again.digest() == rules.digest()


# ------------------------------------------------------------------------------------------------------ agreement
@pytest.mark.parametrize("turns, builtin", [("all", "assistant_only"), ("last", "last_assistant")])
@pytest.mark.parametrize("family", ["qwen3", "llama3", "gemma"])
def test_rules_agree_with_the_builtins_own_masking(family_tok, family, turns, builtin):
    """Every part of the assistant turns as a rule == the built-in on MaskLens's own masking, on real templates and
    the test conversations (plain, reasoning, tool calls): the rules reuse the same parts, nothing else."""
    tok = family_tok(family)
    rows = [normalize_row(r, i) for name in ("plain", "reasoning", "tools") for i, r in
            enumerate(load_conversations(name))]
    rules = parse_rules({"train": [{"turns": turns, "parts": ["reasoning", "content", "tool_calls", "eot",
                                                                "scaffold"]}]})
    got = render_examples(rows, tok, rules_config(rules), errors="finding")
    want = render_examples(rows, tok, MaskConfig(builtin, template_source="own"), errors="finding")
    assert sum(r.n_trained for r in got) > 0
    for g, w in zip(got, want):
        assert (g.input_ids, g.labels) == (w.input_ids, w.labels), f"row {g.row}"


# ------------------------------------------------------------------------------------------------------ invalid rules
GOOD = {"role": "assistant", "turns": "all"}


@pytest.mark.parametrize("obj, key, fix", [
    ({"train": [GOOD], "bogus": 1}, "bogus", "use only name, description, train, mask_tokens"),
    ({"trian": [GOOD]}, "trian", "did you mean 'train'"),
    ({"name": "x"}, "train", 'add "train"'),
    ({"train": "assistant"}, "train", "not a list"),
    ({"train": GOOD}, "train", "wrap the entry in a list"),
    ({"train": []}, "train", "add an entry"),
    ({"train": [5]}, "train[0]", "write {"),
    ({"train": [GOOD, {"turn": "first"}]}, "train[1].turn", "did you mean 'turns'"),
    ({"train": [{"role": "bot"}]}, "train[0].role", "use one of system, user, assistant, tool, developer"),
    ({"train": [{"role": 3}]}, "train[0].role", "use one of"),
    ({"train": [{"turns": "second"}]}, "train[0].turns", "use all, first, last, or a 0-based index"),
    ({"train": [{"turns": "2"}]}, "train[0].turns", "write the index as a number: 2"),
    ({"train": [{"turns": True}]}, "train[0].turns", "write all, first, last or an index"),
    ({"train": [{"turns": [0, 1]}]}, "train[0].turns", "one entry per turn"),
    ({"train": [{"turns": 1.5}]}, "train[0].turns", "write all, first, last or an index"),
    ({"train": [{"parts": "content"}]}, "train[0].parts", 'write a list: ["content"]'),
    ({"train": [{"parts": {"content": 1}}]}, "train[0].parts", "not a list"),
    ({"train": [{"parts": []}]}, "train[0].parts", "or delete the entry"),
    ({"train": [{"parts": ["content", "contnet"]}]}, "train[0].parts[1]", "did you mean 'content'"),
    ({"train": [{"parts": ["template"]}]}, "train[0].parts[0]", "use any of header, reasoning, content, tool_calls"),
    ({"train": [GOOD], "mask_tokens": "</think>"}, "mask_tokens", 'write a list: ["</think>"]'),
    ({"train": [GOOD], "mask_tokens": {"a": 1}}, "mask_tokens", "not a list"),
    ({"train": [GOOD], "mask_tokens": ["</think>", ""]}, "mask_tokens[1]", "write each token as text"),
    ({"train": [GOOD], "mask_tokens": [7]}, "mask_tokens[0]", "write each token as text"),
    ({"train": [GOOD], "name": "has space"}, "name", "1-64 letters"),
    ({"train": [GOOD], "name": 5}, "name", "1-64 letters"),
    ({"train": [GOOD], "description": ["x"]}, "description", "as text"),
    ({"train": [GOOD] * 101}, "train", "merge entries"),
])
def test_invalid_rules_name_the_key_and_the_fix(obj, key, fix):
    with pytest.raises(MaskLensError) as e:
        parse_rules(obj)
    assert e.value.field == key, str(e.value)
    assert e.value.fix and fix in str(e.value), str(e.value)
    assert f"field '{key}'" in str(e.value) and "Fix:" in str(e.value)


@pytest.mark.parametrize("text, where", [
    ("", "the rules are empty"),
    ("[1, 2]", "not a mapping"),
    ('{"train": [{"turns": "all"}', "line 1, column 28: not valid JSON"),
    ("train:\n  - role: assistant\n turns: all\n", "line 3, column 2: not valid YAML"),
    ("x" * 100_001, "at most 100,000"),
])
def test_invalid_text(text, where):
    with pytest.raises(MaskLensError, match=where):
        parse_rules(text)


def test_json_text_yaml_accepts_is_taken():
    """A trailing comma is not JSON but is YAML flow syntax: the text box takes it (a .json file does not)."""
    assert parse_rules('{"train": [{"turns": "all"},]}').train == (TrainEntry(),)


def test_yaml_and_json_text_parse_alike():
    y = parse_rules("name: t\ntrain:\n  - role: user\n    turns: -1\n    parts: [content]\nmask_tokens: ['</s>']\n")
    j = parse_rules('{"name": "t", "train": [{"role": "user", "turns": -1, "parts": ["content"]}], '
                    '"mask_tokens": ["</s>"]}')
    assert y == j == Rules("t", (TrainEntry("user", -1, ("content",)),), ("</s>",))


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(MaskLensError) as e:
        load_rules(RULES_DIR / "bad_turns.yaml")
    assert e.value.file.endswith("bad_turns.yaml") and e.value.field == "train[1].turns" and "'second'" in str(e.value)
    with pytest.raises(MaskLensError, match=r"bad_syntax.json.*line 2, column \d+: not valid JSON"):
        load_rules(RULES_DIR / "bad_syntax.json")
    with pytest.raises(MaskLensError, match="no such rules file"):
        load_rules(tmp_path / "missing.yaml")
    with pytest.raises(MaskLensError, match="is not a file"):
        load_rules(tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(MaskLensError, match="not UTF-8"):
        load_rules(latin)
    stem = tmp_path / "my rules.yml"
    stem.write_text("train:\n  - turns: first\n")
    assert load_rules(stem).name == "my_rules"  # the file's stem, made a usable name


def test_yaml_aliases_do_not_explode():
    """An alias bomb (9 * 4**8 = 589,824 leaves, a few hundred bytes of YAML) as a part: safe_load keeps aliases as
    shared references, validation stops at the first bad part and its message shows a cut-short value."""
    chain = "&a [x, x, x, x, x, x, x, x, x]" + "".join(
        f", &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]" for i in range(8))
    with pytest.raises(MaskLensError) as e:
        parse_rules(f"train:\n  - parts: [[{chain}]]\n")
    assert e.value.field == "train[0].parts[0]" and len(str(e.value)) < 400


@pytest.mark.parametrize("text", [
    '{"name": "a", "name": "b", "train": [{"role": "assistant"}]}',
    '{"train": [{"role": "assistant", "turns": "first", "turns": "last"}]}',
    "name: a\nname: b\ntrain:\n  - role: assistant\n",
    "train:\n  - role: assistant\n    parts: [content]\n    parts: [eot]\n",
])
def test_a_key_written_twice_is_an_error_not_the_last_one_wins(text):
    key = "name" if "name" in text else ("turns" if "turns" in text else "parts")
    with pytest.raises(MaskLensError, match=rf"the key '{key}' is written twice"):
        parse_rules(text)
