"""Your own code (core.user_code): a strategy file and a team's collator file loaded from tests/assets/user_code and
shown through render_examples; every broken file gives an error naming the file and the line (or the row)."""

import copy
import importlib.util
from pathlib import Path

import pytest

from core.data.formats import normalize_row
from core.masking.engine import MaskConfig, render_examples
from core.errors import MaskLensError
from core.masking.strategies import get_strategy, strategy_names, unregister
from core.masking.user_code import load_collator_file, load_strategy_file
from tests.trl_reference import family_tokenizer
from tests.helpers import trained_runs

IGNORE = -100
CODE = Path(__file__).resolve().parent / "assets" / "user_code"
IM_END = "<|im_end|>"

CHAT = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"}]}
# SmolLM2 renders it as ...<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n
# <|im_start|>assistant\n4<|im_end|>\n

TOOLS = {"tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}],
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "reasoning_content": "one call",
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "name": "get_weather", "tool_call_id": "1", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."}]}


@pytest.fixture(autouse=True)
def clean_registry():
    before = set(strategy_names())
    yield
    for n in set(strategy_names()) - before:
        unregister(n)


@pytest.fixture(scope="module")
def qwen3(smol_tok):
    return family_tokenizer(smol_tok, "qwen3")


def direct_collator(path: Path, tokenizer):
    """The file's make_collator imported on its own (not through MaskLens), as a training script would."""
    spec = importlib.util.spec_from_file_location(f"direct_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_collator(tokenizer)


def write(tmp_path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------------------------------------------ strategy file
def test_strategy_file_every_assistant_turn_but_the_tool_calls(qwen3):
    assert load_strategy_file(CODE / "no_tool_calls.py") == ["no_tool_calls"]
    spec = get_strategy("no_tool_calls")
    assert spec.kind == "parts" and "but not its tool calls" in spec.help
    r = render_examples([normalize_row(copy.deepcopy(TOOLS))], qwen3, MaskConfig("no_tool_calls"))[0]
    # message 1: its think block and end-of-turn, not the <tool_call> block; message 3: content and end-of-turn, not
    # the empty think block the template inserts (the file trains reasoning, content, eot only)
    assert trained_runs(qwen3, r) == ["<think>\none call\n</think>\n\n", IM_END, "Sunny." + IM_END]
    calls = {t.rule for t in r.tokens(qwen3) if t.part == "tool_calls"}
    assert calls == {"not trained: tool calls (no_tool_calls)"}
    assert "tool_call_not_trained" in [f.code for f in r.findings]


def test_strategy_file_loaded_twice_replaces_its_own_names():
    assert load_strategy_file(CODE / "no_tool_calls.py") == ["no_tool_calls"]
    first = get_strategy("no_tool_calls")
    assert load_strategy_file(str(CODE / "no_tool_calls.py")) == ["no_tool_calls"]
    assert get_strategy("no_tool_calls") is not first


def test_syntax_error_names_file_and_line():
    with pytest.raises(MaskLensError) as e:
        load_strategy_file(CODE / "broken_syntax.py")
    assert e.value.file.endswith("broken_syntax.py")
    assert e.value.message.startswith("line 5, column") and "syntax error" in e.value.message
    assert "broken_syntax" not in strategy_names()


def test_exception_at_import_names_the_line_and_registers_nothing():
    with pytest.raises(MaskLensError) as e:
        load_strategy_file(CODE / "broken_raises.py")
    assert e.value.file.endswith("broken_raises.py")
    assert e.value.message.startswith("line 11: KeyError while importing: 'threshold'")
    assert "registered_before_the_error" not in strategy_names()  # all or nothing


def test_file_that_registers_nothing():
    with pytest.raises(MaskLensError, match="registers no strategy.*Fix: decorate a function with @register"):
        load_strategy_file(CODE / "broken_registers_nothing.py")


def test_a_file_cannot_replace_a_builtin():
    builtin = get_strategy("assistant_only")
    with pytest.raises(MaskLensError, match="'assistant_only', the name of a built-in strategy"):
        load_strategy_file(CODE / "broken_builtin_name.py")
    assert get_strategy("assistant_only").fn is builtin.fn and get_strategy("assistant_only").builtin


def test_paths_that_are_not_python_files(tmp_path):
    with pytest.raises(MaskLensError, match="no such file"):
        load_strategy_file(tmp_path / "missing.py")
    with pytest.raises(MaskLensError, match="is not a file"):
        load_collator_file(tmp_path)
    rules = write(tmp_path, "rules.yaml", "train: [{}]\n")
    with pytest.raises(MaskLensError, match="not a Python file.*use --rules"):
        load_strategy_file(rules)


# ------------------------------------------------------------------------------------------------------ collator file
def test_team_collator_labels_are_what_it_returns(smol_tok):
    name = load_collator_file(CODE / "team_collator.py")
    assert name == "collator:team_collator" and get_strategy(name).kind == "collator_fn"
    rows = [normalize_row(copy.deepcopy(CHAT), 0),
            normalize_row({"messages": CHAT["messages"][1:3]}, 1),
            normalize_row({"input_ids": smol_tok.encode("<|im_start|>assistant\nok<|im_end|>")}, 2)]
    out = render_examples(rows, smol_tok, MaskConfig(name))
    collate = direct_collator(CODE / "team_collator.py", smol_tok)
    for r in out:
        assert r.labels == collate([{"input_ids": r.input_ids}])["labels"][0].tolist(), f"row {r.row}"
    # by hand: everything after the last "<|im_start|>assistant\n", the newline after <|im_end|> included
    assert trained_runs(smol_tok, out[0]) == ["4<|im_end|>\n"]
    assert trained_runs(smol_tok, out[1]) == ["Hello!<|im_end|>\n"]
    assert trained_runs(smol_tok, out[2]) == ["ok<|im_end|>"]
    rules = {t.rule for t in out[0].tokens(smol_tok) if t.label != IGNORE}
    assert rules == {f"trained: the collator's label ({name})"}


def test_collator_name_can_be_given(smol_tok):
    name = load_collator_file(CODE / "team_collator.py", name="team")
    assert name == "team"
    r = render_examples([normalize_row(copy.deepcopy(CHAT))], smol_tok, MaskConfig("team"))[0]
    assert trained_runs(smol_tok, r) == ["4<|im_end|>\n"]


def test_collator_returning_short_labels_names_the_row(smol_tok):
    name = load_collator_file(CODE / "collator_short_labels.py")
    rows = [normalize_row(copy.deepcopy(CHAT), 7)]
    n = len(render_examples(rows, smol_tok, MaskConfig("full"))[0].input_ids)
    with pytest.raises(MaskLensError) as e:
        render_examples(rows, smol_tok, MaskConfig(name))
    assert e.value.row == 7 and f"returned {n - 1} labels for {n} tokens" in str(e.value)


def test_collator_returning_a_list_names_the_row(smol_tok):
    name = load_collator_file(CODE / "collator_returns_list.py")
    with pytest.raises(MaskLensError) as e:
        render_examples([normalize_row(copy.deepcopy(CHAT), 3)], smol_tok, MaskConfig(name))
    assert e.value.row == 3 and "returned a list, not a dict with 'labels'" in str(e.value)


def test_collator_padding_on_the_right_is_accepted_other_extra_labels_are_not(smol_tok, tmp_path):
    pad = write(tmp_path, "pad8.py", "def make_collator(tokenizer):\n"
                                     "    def c(fs):\n"
                                     "        return {'labels': [list(f['input_ids']) + [-100] * 8 for f in fs]}\n"
                                     "    return c\n")
    r = render_examples([normalize_row(copy.deepcopy(CHAT))], smol_tok, MaskConfig(load_collator_file(pad)))[0]
    assert r.labels == r.input_ids
    left = write(tmp_path, "left.py", "def make_collator(tokenizer):\n"
                                      "    return lambda fs: {'labels': [[-100] + list(f['input_ids']) for f in fs]}\n")
    with pytest.raises(MaskLensError, match="extra ones are not -100 padding on the right"):
        render_examples([normalize_row(copy.deepcopy(CHAT))], smol_tok, MaskConfig(load_collator_file(left)))


def test_collator_file_errors(smol_tok, tmp_path):
    with pytest.raises(MaskLensError, match="defines no make_collator.*Fix: define make_collator"):
        load_collator_file(CODE / "collator_no_factory.py")
    name = load_collator_file(CODE / "collator_factory_raises.py")  # imports fine; make_collator fails when called
    with pytest.raises(MaskLensError) as e:
        render_examples([normalize_row(copy.deepcopy(CHAT))], smol_tok, MaskConfig(name))
    assert e.value.file.endswith("collator_factory_raises.py")
    assert e.value.message.startswith("line 6: make_collator(tokenizer) raised KeyError")
    no_arg = write(tmp_path, "no_arg.py", "x = 1\n\n\ndef make_collator():\n    return None\n")
    with pytest.raises(MaskLensError, match="line 4: make_collator cannot be called with one argument"):
        load_collator_file(no_arg)
    returns_none = write(tmp_path, "returns_none.py", "def make_collator(tokenizer):\n    return None\n")
    with pytest.raises(MaskLensError, match="make_collator returned a NoneType, not a callable"):
        render_examples([normalize_row(copy.deepcopy(CHAT))], smol_tok,
                        MaskConfig(load_collator_file(returns_none)))
    with pytest.raises(MaskLensError, match="the name of a built-in strategy"):
        load_collator_file(CODE / "team_collator.py", name="full")
