"""Reasoning traces and tool calls: the options (reasoning, empty_think, mask_tokens, split_turns, template_source), the
findings they come with, and the edges (multi-byte characters at a span's end, a closer that is not the EOS).

Expected texts are written out by hand and compared with the decoded trained tokens.
"""

import copy

import pytest

from core.data.formats import normalize_row
from core.masking.engine import MaskConfig, render_examples
from core.errors import MaskLensError
from tests.trl_reference import family_tokenizer
from tests.helpers import trained_runs

IGNORE = -100


@pytest.fixture(scope="module")
def qwen3(smol_tok):
    return family_tokenizer(smol_tok, "qwen3")


def codes(r):
    return [f.code for f in r.findings]


TWO_QUERIES = {"messages": [
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4", "reasoning_content": "add them"},
    {"role": "user", "content": "3+3?"},
    {"role": "assistant", "content": "6", "reasoning_content": "add again"}]}

TOOLS = {"tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}],
    "messages": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "", "reasoning_content": "two calls",
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                        {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "name": "get_weather", "tool_call_id": "1", "content": "sunny"},
        {"role": "tool", "name": "get_weather", "tool_call_id": "2", "content": "rainy"},
        {"role": "assistant", "content": "Paris is sunny, Rome is rainy."}]}


def test_trl_swaps_in_its_qwen3_twin_and_says_how_it_differs(qwen3):
    r = render_examples([normalize_row(TWO_QUERIES)], qwen3, MaskConfig("assistant_only"))[0]
    assert r.template_swapped and "qwen3 training template" in r.template_label
    assert "TRL" in r.template_label
    swap = next(f for f in r.findings if f.code == "template_swapped")
    assert "1 keep their reasoning in training but lose it at inference" in swap.message
    assert "add them" not in r.inference_text and "add them" in r.text
    assert trained_runs(qwen3, r) == ["<think>\nadd them\n</think>\n\n4<|im_end|>\n",
                                      "<think>\nadd again\n</think>\n\n6<|im_end|>\n"]


def test_own_masking_on_the_inference_template_drops_history_reasoning(qwen3):
    r = render_examples([normalize_row(TWO_QUERIES)], qwen3, MaskConfig("assistant_only", template_source="own"))[0]
    assert not r.template_swapped and r.inference_text is None
    assert "reasoning_not_rendered" in codes(r)
    assert trained_runs(qwen3, r) == ["4<|im_end|>", "<think>\nadd again\n</think>\n\n6<|im_end|>"]


@pytest.mark.parametrize("source", ["trl", "own"])
def test_reasoning_mask_keeps_it_rendered_but_untrained(qwen3, source):
    r = render_examples([normalize_row(TWO_QUERIES)], qwen3,
                        MaskConfig("assistant_only", template_source=source, reasoning="mask"))[0]
    assert "add again" in r.text
    joined = "".join(trained_runs(qwen3, r))
    assert "think" not in joined and "add" not in joined and "6<|im_end|>" in joined
    parts = {t.part for t in r.tokens(qwen3) if t.label != IGNORE}
    assert parts <= {"content", "eot"}


def test_empty_think_block_trained_by_default_and_maskable(qwen3):
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    r = render_examples([normalize_row(row)], qwen3, MaskConfig("assistant_only"))[0]
    assert "empty_think_trained" in codes(r)
    assert trained_runs(qwen3, r) == ["<think>\n\n</think>\n\nhello<|im_end|>\n"]
    scaffold = [t for t in r.tokens(qwen3) if t.part == "scaffold"]
    assert scaffold and all(t.label != IGNORE for t in scaffold)
    m = render_examples([normalize_row(row)], qwen3, MaskConfig("assistant_only", empty_think="mask"))[0]
    assert "empty_think_trained" not in codes(m)
    assert trained_runs(qwen3, m) == ["hello<|im_end|>\n"]


def test_tool_calls_are_trained_and_parts_named(qwen3):
    r = render_examples([normalize_row(TOOLS)], qwen3, MaskConfig("assistant_only"))[0]
    runs = trained_runs(qwen3, r)
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in runs[0]
    assert '{"name": "get_weather", "arguments": {"city": "Rome"}}' in runs[0]
    assert "tool_call_not_trained" not in codes(r)
    toks = r.tokens(qwen3)
    by_part = {}
    for t in toks:
        if t.message == 1:
            by_part.setdefault(t.part, []).append(t)
    assert {"header", "reasoning", "tool_calls", "eot"} <= set(by_part)
    assert "".join(t.text for t in by_part["reasoning"]).startswith("<think>\ntwo calls")
    assert all(t.label == IGNORE for t in toks if t.role == "tool")


def test_tool_calls_the_template_ignores_are_flagged(smol_tok):
    # The embedded SmolLM2 template prints content only: tool calls are never rendered, so never trained.
    row = {"messages": TOOLS["messages"]}
    r = render_examples([normalize_row(row)], smol_tok, MaskConfig("assistant_only"))[0]
    assert "tool_call_not_trained" in codes(r) and "trl_cannot_patch" in codes(r)
    assert "not what TRL" in r.template_label


def test_mask_tokens_never_trained(qwen3):
    r = render_examples([normalize_row(TWO_QUERIES)], qwen3,
                        MaskConfig("assistant_only", mask_tokens=("</think>",)))[0]
    joined = "".join(trained_runs(qwen3, r))
    assert "</think>" not in joined and "add again" in joined
    assert any("mask_tokens" in t.rule for t in r.tokens(qwen3))


def test_split_turns_renders_history_as_at_inference(qwen3):
    exs = [normalize_row(TWO_QUERIES, 7)]
    rs = render_examples(exs, qwen3, MaskConfig("assistant_only", split_turns=True))
    assert [(r.row, r.turn) for r in rs] == [(7, 1), (7, 3)]
    second = rs[1]
    # the history turn is rendered as the tokenizer's template shows it at inference: without its reasoning
    assert "add them" not in second.text and "add again" in second.text
    plain = qwen3.apply_chat_template(TWO_QUERIES["messages"], tokenize=False)
    assert second.text == plain
    assert trained_runs(qwen3, second) == ["<think>\nadd again\n</think>\n\n6<|im_end|>\n"]
    with pytest.raises(MaskLensError, match="split_turns"):
        MaskConfig("full", split_turns=True)


def test_multibyte_character_at_the_end_of_content_is_never_split(smol_tok):
    # byte-level BPE splits 😀 over two tokens; with the end-of-turn untrained the content must still decode whole
    row = {"messages": [{"role": "user", "content": "hi 你好"}, {"role": "assistant", "content": "Sure 😀"},
                        {"role": "user", "content": "more"}, {"role": "assistant", "content": "ok 你好世界😀"}]}
    for eos, expected in (("none", ["Sure 😀", "ok 你好世界😀"]),
                          ("last_turn", ["Sure 😀", "ok 你好世界😀<|im_end|>"])):
        r = render_examples([normalize_row(row)], smol_tok, MaskConfig("assistant_only", eos=eos))[0]
        assert trained_runs(smol_tok, r) == expected


def test_closer_that_is_not_the_tokenizers_eos_is_trained(smol_tok):
    # DeepSeek's <｜end▁of▁sentence｜> closes assistant turns, but the tokenizer names another EOS.
    tok = family_tokenizer(smol_tok, "deepseekv3")
    tok = copy.deepcopy(tok)
    tok.add_special_tokens({"eos_token": "<|im_end|>"})
    assert tok.eos_token != "<｜end▁of▁sentence｜>"
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                        {"role": "user", "content": "again"}, {"role": "assistant", "content": "sure"}]}
    r = render_examples([normalize_row(row)], tok, MaskConfig("assistant_only", template_source="own"))[0]
    assert trained_runs(tok, r) == ["yo<｜end▁of▁sentence｜>", "sure<｜end▁of▁sentence｜>"]


def test_labels_shifted_by_hand_are_flagged():
    ids = [5, 6, 7, 8, 9]
    shifted = normalize_row({"input_ids": ids, "labels": [-100, 7, 8, 9, -100]})
    aligned = normalize_row({"input_ids": ids, "labels": [-100, 6, 7, 8, 9]})
    from core.models import load_tokenizer

    tok = load_tokenizer()
    rs = render_examples([shifted, aligned], tok, MaskConfig("full"))
    assert "labels_shifted" in codes(rs[0]) and "labels_shifted" not in codes(rs[1])


def test_pad_token_option(smol_tok):
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    base = dict(strategy="response_template", response_template="<|im_start|>assistant\n")
    default = render_examples([normalize_row(row)], smol_tok, MaskConfig(**base))[0]
    assert default.labels[-2] == IGNORE  # pad == eos == <|im_end|>: the old collator never trains it
    other = render_examples([normalize_row(row)], smol_tok, MaskConfig(**base, pad_token="<|endoftext|>"))[0]
    assert other.labels[-2] == other.input_ids[-2]
    with pytest.raises(MaskLensError, match="pad token"):
        render_examples([normalize_row(row)], smol_tok, MaskConfig(**base, pad_token="<nope-not-a-token>"))


def test_trl_function_decides_the_twin(qwen3, monkeypatch):
    # MaskLens asks TRL (no copied table): whatever get_training_chat_template returns is what renders.
    import trl.chat_template_utils as ctu

    from core.masking import trl_templates

    marked = ("{% for m in messages %}{{ '<|im_start|>' + m.role + '\n' }}{% if m.role == 'assistant' %}"
              "{% generation %}{{ m.content + '<|im_end|>' }}{% endgeneration %}{% else %}{{ m.content + '<|im_end|>' }}"
              "{% endif %}{{ '\n' }}{% endfor %}")
    monkeypatch.setattr(ctu, "get_training_chat_template", lambda pc: marked)
    trl_templates._CACHE.clear()
    try:
        r = render_examples([normalize_row(TWO_QUERIES)], qwen3, MaskConfig("assistant_only"))[0]
    finally:
        trl_templates._CACHE.clear()
    assert "<think>" not in r.text and trained_runs(qwen3, r) == ["4<|im_end|>", "6<|im_end|>"]
