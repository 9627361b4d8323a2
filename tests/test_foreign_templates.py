"""Marker-free assistant_only on chat templates nobody here wrote ("any template, no per-model code", issue 7).

The templates are the ones other fine-tuning projects ship (axolotl 0.21.0, Unsloth; see
tests/assets/templates/SOURCES.md). Each runs on a tokenizer built as the other template tests do: the embedded
SmolLM2 vocabulary plus the template's special tokens, the template as its chat_template. The engine masks with
``MaskConfig("assistant_only", template_source="own")`` and is checked against an oracle that does not use the
engine: every message's content, reasoning, tool-call names and argument values are replaced by unique markers, the
conversation is rendered once with markers and once for real, and the markers' positions give the exact character
spans of each of them in the real rendering. Then, per assistant turn:
- its content, reasoning and tool calls (names, argument values) are trained, and decoding its trained tokens gives
  them back exactly;
- nothing of the prompt side (system / user / tool content, template text outside the turns) is trained;
- no token of the role header (the text the generation prompt supplies) is trained; where nothing the template
  shows lies between two assistant turns (Alpaca and Phi-3 drop tool calls and tool results), the earlier turn's
  closer is that turn's, not the next one's header;
- the turn's closer (the first special token the template puts after a final assistant turn; after each turn, the
  last such token before the next message) is trained, and so is the first special token after its tool calls.
Tool-calling conversations (one call, parallel calls, text before a call, a multi-step agent trajectory; answers after
the results) are checked on every template that renders them: where a template drops a turn's calls, the engine must
say so (tool_call_not_trained) and every later turn is still checked. A template that cannot render a case (raises)
is skipped for that case, after asserting the engine says so (render_failed); so are the reasoning cases where it
drops every reasoning (after reasoning_not_rendered); content it drops must come with content_not_rendered.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pytest

from core.data.formats import normalize_row
from core.masking.engine import MaskConfig, render_examples

TEMPLATE_DIR = Path(__file__).parent / "assets" / "templates"
TEMPLATES = sorted(f"{p.parent.name}/{p.stem}" for p in TEMPLATE_DIR.glob("*/*.jinja"))
IGNORE = -100

# Special tokens, found by shape in a template's text (no per-model list): <|x|>, <|x>, <x|> (Gemma 4), <｜x｜>
# (DeepSeek), [INST] / [/INST] / [TOOL_CALLS] (Mistral), [|x|] (EXAONE), Gemma's turn markers, think/tool tags.
SPECIAL_RE = re.compile(
    r"<\|[^|<>\s'\"\\]+\|>|<\|[a-z_]+>|<[a-z_]+\|>|<｜[^｜]+｜>|\[/?[A-Z][A-Z_]+\]|\[\|[a-z]+\|\]"
    r"|<(?:start|end)_of_turn>|<bos>|<eos>|<BOS_TOKEN>|</?(?:think|tool_call|tool_response|tools)>")
# The real BOS/EOS of the families whose tokenizers differ from SmolLM2's (its own are <|im_start|> / <|im_end|>).
# Several closers are deliberately NOT the EOS (Gemma's <end_of_turn>, Phi-3's <|end|>, Command-A's <|END_RESPONSE|>):
# end-of-turn learning must not depend on the tokenizer's EOS.
BOS_EOS = {
    "axolotl/alpaca": ("<s>", "</s>"), "axolotl/metharme": ("<s>", "</s>"),
    **{f"axolotl/{n}": ("<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>") for n in ("aya", "cohere", "command_a",
                                                                          "command_a_tool_use")},
    "axolotl/deepseek_v2": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "axolotl/deepseek_v3": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "axolotl/exaone": ("[BOS]", "[|endofturn|]"), "axolotl/exaone4": ("[BOS]", "[|endofturn|]"),
    "axolotl/gemma": ("<bos>", "<eos>"), "axolotl/gemma3": ("<bos>", "<end_of_turn>"),
    "axolotl/gemma3n": ("<bos>", "<end_of_turn>"), "unsloth/gemma3": ("<bos>", "<end_of_turn>"),
    "axolotl/gemma4": ("<bos>", "<eos>"), "unsloth/gemma4_thinking": ("<bos>", "<eos>"),
    "axolotl/jamba": ("<|startoftext|>", "<|endoftext|>"),
    "axolotl/llama3": ("<|begin_of_text|>", "<|eot_id|>"), "unsloth/llama31": ("<|begin_of_text|>", "<|eot_id|>"),
    "axolotl/llama4": ("<|begin_of_text|>", "<|eot|>"),
    **{f"axolotl/{n}": ("<s>", "</s>") for n in ("mistral_v1", "mistral_v2v3", "mistral_v3_tekken",
                                                 "mistral_v7_tekken")},
    "axolotl/phi_3": ("<s>", "<|endoftext|>"), "axolotl/phi_35": ("<s>", "<|endoftext|>"),
    "axolotl/phi_4": ("<|endoftext|>", "<|im_end|>"), "unsloth/phi4": ("<|endoftext|>", "<|im_end|>"),
    "unsloth/gptoss": ("<|startoftext|>", "<|return|>"),
    "unsloth/liquid_lfm2": ("<|startoftext|>", "<|im_end|>"),
}


def template_text(name: str) -> str:
    return (TEMPLATE_DIR / f"{name}.jinja").read_text()


def tokenizer_with_template(base, template: str, bos: str | None = None, eos: str | None = None):
    """A copy of `base` plus the template's special tokens (found by shape), the template as its chat_template."""
    tok = copy.deepcopy(base)
    specials = sorted(set(SPECIAL_RE.findall(template)) | {t for t in (bos, eos) if t})
    tok.add_special_tokens({"bos_token": bos or base.bos_token, "eos_token": eos or base.eos_token,
                            "additional_special_tokens": specials})
    tok.chat_template = template
    return tok


@lru_cache(maxsize=None)
def _family_tokenizer(name: str):
    from core.models import load_tokenizer

    bos, eos = BOS_EOS.get(name, (None, None))
    return tokenizer_with_template(load_tokenizer(), template_text(name), bos, eos)


def own_masking(strategy: str = "assistant_only", **kw) -> MaskConfig:
    """MaskLens's marker-free masking on the tokenizer's own (inference) template."""
    return MaskConfig(strategy, template_source="own", **kw)


# ------------------------------------------------------------------------------------------------------- oracle
MARK_RE = re.compile(r"Zq(\d+)qZ")
THINK_OPENERS = ("<think>", "<|channel>", "<|channel|>", "<|START_THINKING|>")
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def reasoning_field_for(template: str) -> str:
    """The reasoning field a template reads (the one a dataset for it would carry); reasoning_content otherwise."""
    for f in REASONING_FIELDS:
        if re.search(rf"""(?:\.|\[['"]|get\(['"]){f}\b""", template):
            return f
    return "reasoning_content"


@dataclass
class Oracle:
    """Exact character spans, in the real rendering, of what each message carries. Keys: (message, what) with
    what in content | reasoning | tool_name | tool_arg; values: (start, end) of the first rendering of each value."""

    text: str
    spans: dict[tuple[int, str], list[tuple[int, int]]] = field(default_factory=dict)
    memo: dict = field(default_factory=dict)  # generation-prompt regions, computed once per turn

    def of(self, i: int, what: str | None = None) -> list[tuple[int, int]]:
        return [s for (k, w), ss in self.spans.items() if k == i and (what is None or w == what) for s in ss]

    def last_end_before(self, i: int) -> int:
        ends = [e for k in range(i) for _, e in self.of(k)]
        return max(ends, default=0)

    def first_start_after(self, i: int, default: int) -> int:
        starts = [s for (k, _), ss in self.spans.items() if k > i for s, _ in ss]
        return min(starts, default=default)

    def next_start(self, i: int, at: int) -> int:
        """The first start, at or after `at`, of a later message's field: Gemma 4 renders the tool results inside the
        calling turn, before its text, so a later message's field can lie before this one's end."""
        starts = [s for (k, _), ss in self.spans.items() if k > i for s, _ in ss if s >= at]
        return min(starts, default=len(self.text))


def _apply(tok, messages, tools=None, add_generation_prompt=False, **kw) -> str:
    return tok.apply_chat_template(messages, tools=tools, tokenize=False,
                                   add_generation_prompt=add_generation_prompt, **kw)


def mark(messages: list[dict], rfield: str):
    """(marked copy of the messages, marker number -> (message, what, real value))."""
    table: dict[int, tuple[int, str, str]] = {}

    def m(i, what, value):
        n = len(table)
        table[n] = (i, what, value)
        return f"Zq{n}qZ"

    out = []
    for i, msg in enumerate(messages):
        msg = copy.deepcopy(msg)
        if msg.get("content"):
            msg["content"] = m(i, "content", msg["content"])
        if msg.get(rfield):
            msg[rfield] = m(i, "reasoning", msg[rfield])
        for tc in msg.get("tool_calls") or []:
            fn = tc["function"]
            fn["name"] = m(i, "tool_name", fn["name"])
            args = json.loads(fn["arguments"]) if isinstance(fn["arguments"], str) else fn["arguments"]
            args = {k: m(i, "tool_arg", v) for k, v in args.items()}
            fn["arguments"] = json.dumps(args) if isinstance(fn["arguments"], str) else args
        out.append(msg)
    return out, table


def _rendered_forms(value: str) -> list[str]:
    """How templates print a value: as is, or trimmed (Llama 3's `| trim`, Qwen3's `.strip('\\n')`)."""
    forms = [value, value.strip(), value.strip("\n"), value.lstrip("\n"), value.rstrip("\n"), value.lstrip(),
             value.rstrip()]
    return list(dict.fromkeys(forms))


def build_oracle(tok, messages, tools=None, rfield="reasoning_content", **kw) -> Oracle:
    """Render with markers and for real; the marker positions give each field's exact span in the real text.

    The template's own text between markers must appear unchanged in the real rendering; each value in between is
    matched as printed (as is or trimmed), so a template that trims contents still gets exact spans."""
    real = _apply(tok, messages, tools, **kw)
    marked, table = mark(messages, rfield)
    mtext = _apply(tok, marked, tools, **kw)
    marks = list(MARK_RE.finditer(mtext))
    literals = [mtext[a:b] for a, b in zip([0] + [m.end() for m in marks], [m.start() for m in marks] + [len(mtext)])]
    spans, seen = {}, set()
    pos = len(literals[0])
    assert real.startswith(literals[0]), "oracle: the real rendering does not start as the marked one"
    for k, mm in enumerate(marks):
        n = int(mm.group(1))
        i, what, value = table[n]
        nxt = literals[k + 1]
        # the printed form that lets the template's next literal text follow it
        form = next((f for f in _rendered_forms(value) if real.startswith(f + nxt, pos)), None)
        assert form is not None, (f"oracle: message {i}'s {what} {value!r} is not printed (as is or trimmed) at "
                                  f"{real[pos:pos + 40]!r}; the template transforms it")
        if n not in seen:  # a later occurrence is an echo (Gemma 4 repeats a call's name in the tool response)
            spans.setdefault((i, what), []).append((pos, pos + len(form)))
        seen.add(n)
        pos += len(form) + len(nxt)
    assert pos == len(real), "oracle: the real rendering is longer than the marked one"
    return Oracle(real, spans)


def generation_prompt_region(tok, messages, i, oracle: Oracle, tools=None, rfield="reasoning_content", **kw):
    """[a, b) in the real text: what follows message i-1's last field up to the end of the generation prompt, where
    the real rendering agrees with `messages[:i]` + generation prompt. None when that cannot be rendered."""
    if ("head", i) not in oracle.memo:
        oracle.memo[("head", i)] = _generation_prompt_region(tok, messages, i, oracle, tools, rfield, **kw)
    return oracle.memo[("head", i)]


def _generation_prompt_region(tok, messages, i, oracle: Oracle, tools=None, rfield="reasoning_content", **kw):
    marked, _ = mark(messages[:i], rfield)
    try:
        p = _apply(tok, marked, tools, add_generation_prompt=True, **kw)
    except Exception:
        return None
    last = list(MARK_RE.finditer(p))
    if not last:
        return None
    # The role header proper: a think block the generation prompt opens (Qwen3's "<think>\n", Gemma 4's empty
    # "<|channel>thought\n<channel|>") is the reasoning / empty_think options' business, not the header's.
    suffix = re.split("|".join(map(re.escape, THINK_OPENERS)), p[last[-1].end():])[0]
    a = oracle.last_end_before(i)
    n = 0
    for x, y in zip(suffix, oracle.text[a:]):
        if x != y:
            break
        n += 1
    return (a, a + n) if oracle.text[a:a + n].strip() else None


# ------------------------------------------------------------------------------------------------- conversations
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                   "required": ["city"]}}}
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "description": "Local time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def _tool_case(json_args: bool, parallel: bool = True, reasoning: bool = False, text: str = "") -> dict:
    """A tool-calling exchange. json_args: arguments as a JSON string and no content key (OpenAI style); otherwise
    arguments as an object and content `text` ("" is what many datasets store). Call ids are 9 alphanumerics
    (Mistral's rule)."""

    def args(d):
        return json.dumps(d) if json_args else d

    calls = [{"id": "call00001", "type": "function",
              "function": {"name": "get_weather", "arguments": args({"city": "Paris", "unit": "celsius"})}},
             {"id": "call00002", "type": "function",
              "function": {"name": "get_time", "arguments": args({"city": "Lima"})}}]
    results = [{"role": "tool", "tool_call_id": "call00001", "name": "get_weather", "content": "Sunny and 21 degrees"},
               {"role": "tool", "tool_call_id": "call00002", "name": "get_time", "content": "It is 9 in the morning"}]
    if not parallel:
        calls, results = calls[:1], results[:1]
    call_msg = {"role": "assistant", "tool_calls": calls, **({} if json_args else {"content": text})}
    if reasoning:
        call_msg["reasoning_content"] = "The weather tool takes a city name."
    return {"tools": [WEATHER_TOOL, TIME_TOOL], "messages": [
        {"role": "system", "content": "You answer with tools when useful."},
        {"role": "user", "content": "Weather in Paris and the time in Lima?" if parallel else "Weather in Paris?"},
        call_msg, *results,
        {"role": "assistant", "content": "Paris is sunny at 21 degrees; in Lima it is 9 am." if parallel
         else "Paris is sunny at 21 degrees."}]}


def _agent_case() -> dict:
    """A multi-step agent trajectory: call, result, call, result, answer. Arguments as JSON strings with content ""
    (DeepSeek-V3's template concatenates the arguments as a string; the other tool cases pass objects)."""
    def call(n, name, args):
        return {"role": "assistant", "content": "", "tool_calls": [
            {"id": f"call0000{n}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]}

    return {"tools": [WEATHER_TOOL, TIME_TOOL], "messages": [
        {"role": "user", "content": "Is it warm in Paris right now, and what time is it there?"},
        call(1, "get_weather", {"city": "Paris"}),
        {"role": "tool", "tool_call_id": "call00001", "name": "get_weather", "content": "Cloudy, 14 degrees"},
        call(2, "get_time", {"city": "Paris"}),
        {"role": "tool", "tool_call_id": "call00002", "name": "get_time", "content": "Quarter past six in the evening"},
        {"role": "assistant", "content": "Not really: 14 degrees and cloudy, and it is 6:15 pm in Paris."}]}


CASES = {
    "multi_turn_system": {"messages": [
        {"role": "system", "content": "You are terse and exact."},
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "Four, as always."},
        {"role": "user", "content": "And three plus three?"},
        {"role": "assistant", "content": "Six, of course."}]},
    # A reply that is one character which the role header also contains ("a" in "assistant", "I" in "[INST]").
    "one_char_reply": {"messages": [
        {"role": "user", "content": "Give me a vowel, lower case."},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "A pronoun now, upper case."},
        {"role": "assistant", "content": "I"}]},
    # Replies that repeat the user's words exactly, one of them the assistant role's own name.
    "repeats_user": {"messages": [
        {"role": "user", "content": "Say exactly: blue whales sing at night"},
        {"role": "assistant", "content": "blue whales sing at night"},
        {"role": "user", "content": "assistant"},
        {"role": "assistant", "content": "assistant"}]},
    "reasoning": {"messages": [
        {"role": "user", "content": "Is 91 prime?"},
        {"role": "assistant", "reasoning_content": "91 is 7 times 13, so it has divisors.",
         "content": "No: 91 = 7 x 13."},
        {"role": "user", "content": "Is 97 prime?"},
        {"role": "assistant", "reasoning_content": "No prime up to 9 divides 97.", "content": "Yes, 97 is prime."}]},
    # Templates that render reasoning only when asked (EXAONE 4) or only on tool-calling turns (Gemma 4).
    "reasoning_enable_thinking": {"chat_template_kwargs": {"enable_thinking": True}, "messages": [
        {"role": "user", "content": "Is 91 prime?"},
        {"role": "assistant", "reasoning_content": "91 is 7 times 13, so it has divisors.",
         "content": "No: 91 = 7 x 13."}]},
    "tool_call_with_reasoning": _tool_case(json_args=False, parallel=False, reasoning=True),
    "parallel_tool_calls": _tool_case(json_args=False),
    "parallel_tool_calls_json_arguments": _tool_case(json_args=True),
    "one_tool_call": _tool_case(json_args=False, parallel=False),
    "tool_call_after_text": _tool_case(json_args=False, parallel=False, text="Let me look that up."),
    "agent_trajectory": _agent_case(),
}


def case_row(case: str, rfield: str) -> dict:
    row = copy.deepcopy(CASES[case])
    if rfield != "reasoning_content":
        for m in row["messages"]:
            if "reasoning_content" in m:
                m[rfield] = m.pop("reasoning_content")
    return row


# ---------------------------------------------------------------------------------------------------- checking
def _overlap(a, b, s, e) -> bool:
    return a < e and s < b and b > a


def check_turns(tok, row, r, oracle: Oracle, offsets, rfield: str, eos_mode: str = "every_turn",
                trained_turns: set[int] | None = None, closer_ids: set[int] = frozenset(), **kw
                ) -> tuple[list[str], dict]:
    """Compare the engine's labels with the oracle. Returns (violations, counts of what was checked).

    trained_turns: the assistant messages the strategy trains (default: all); closer_ids: the template's end-of-turn
    tokens (the first of them after a turn is its closer)."""
    msgs = row["messages"]
    ids, labels = r.input_ids, r.labels
    trained = [la != IGNORE for la in labels]
    text = oracle.text
    infos = r.tokens(tok)
    v: list[str] = []
    counts = {"content": 0, "reasoning": 0, "tool": 0, "header": 0, "closer": 0, "prompt": 0}

    def show(a, b):
        return repr(text[max(0, a - 15):a]) + "[" + repr(text[a:b]) + "]" + repr(text[b:b + 15])

    def toks(s, e):
        return [t for t, (a, b) in enumerate(offsets) if _overlap(a, b, s, e)]

    asst = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    trained_turns = set(asst) if trained_turns is None else trained_turns
    last_trained = max(trained_turns, default=None)
    asst_spans = [s for i in asst for s in oracle.of(i)]
    specials = set(tok.all_special_ids)

    def closer_at(i):
        """Message i's closer token: the last end-of-turn token between its last field and the next message's."""
        spans_i = oracle.of(i)
        if not closer_ids or not spans_i:
            return None
        end = max(e for _, e in spans_i)
        nxt = oracle.next_start(i, end)
        # the last one: a think block's own closer (gpt-oss's analysis channel ends with <|end|> too) may come first
        return next((t for t in range(len(offsets) - 1, -1, -1)
                     if end <= offsets[t][0] < nxt and ids[t] in closer_ids), None)

    windows = []
    for i in asst:
        if i not in trained_turns:
            continue
        windows.append((oracle.last_end_before(i), oracle.first_start_after(i, len(text))))
        if oracle.of(i):  # its own fields and what follows them up to the next message's (Gemma 4 reorders)
            end = max(e for _, e in oracle.of(i))
            windows += oracle.of(i) + [(end, oracle.next_start(i, end))]
        # 1. content, reasoning and tool calls trained; decoding the turn's trained tokens gives them back
        turn_ids = [ids[t] for t, ti in enumerate(infos) if trained[t] and ti.message == i]
        decoded = tok.decode(turn_ids)
        for what in ("content", "reasoning", "tool_name", "tool_arg"):
            for s, e in oracle.of(i, what):
                counts["tool" if what.startswith("tool") else what] += 1
                missed = [t for t in toks(s, e) if not trained[t]]
                if missed:
                    eg = tok.convert_ids_to_tokens([ids[t] for t in missed[:3]])
                    v.append(f"message {i} ({what}) {text[s:e]!r}: {len(missed)} of its {len(toks(s, e))} tokens "
                             f"not trained, e.g. {eg} at {show(s, e)}")
                if text[s:e] not in decoded:
                    v.append(f"message {i} ({what}) {text[s:e]!r} is not in the decoded trained text of message {i}: "
                             f"{decoded!r}")
                wrong = {infos[t].message for t in toks(s, e) if offsets[t][0] >= s and offsets[t][1] <= e} - {i}
                if wrong:
                    v.append(f"message {i} ({what}) {text[s:e]!r}: the token view attributes it to message(s) "
                             f"{sorted(wrong, key=str)}")
        # 2. the role header (what the generation prompt supplies) is not trained
        reg = generation_prompt_region(tok, msgs, i, oracle, row.get("tools"), rfield, **kw)
        cut = previous_turn_end(tok, row, i, oracle, offsets, ids, closer_at, **kw)
        if reg and reg[0] < cut:
            reg = (cut, reg[1]) if cut < reg[1] else None  # the previous turn's closer is its own, not a header
        if reg:
            hs = [t for t, (a, b) in enumerate(offsets) if reg[0] <= a and b <= reg[1] and b > a]
            counts["header"] += len(hs)
            bad = [t for t in hs if trained[t]]
            if bad:
                v.append(f"message {i}: role header token(s) {tok.convert_ids_to_tokens([ids[t] for t in bad])} "
                         f"trained, header {text[reg[0]:reg[1]]!r}")
        # 3. the closer after the turn: trained per eos mode
        t = closer_at(i)
        if t is not None:
            want = eos_mode == "every_turn" or (eos_mode == "last_turn" and i == last_trained)
            counts["closer"] += 1
            if trained[t] != want:
                v.append(f"message {i}: its closer {tok.convert_ids_to_tokens(ids[t])!r} (token {t}) is "
                         f"{'not ' if want else ''}trained (eos={eos_mode}) at {show(*offsets[t])}")
        # 3b. the token closing its calls (gpt-oss <|call|>, Gemma 4 <tool_call|>, Qwen </tool_call>): what teaches
        # the model to stop and wait for the result (often the turn's end-of-turn, so with eos=every_turn only)
        calls_i = oracle.of(i, "tool_name") + oracle.of(i, "tool_arg")
        if calls_i and eos_mode == "every_turn":
            end = max(e for _, e in calls_i)
            nxt = oracle.next_start(i, end)
            t = next((t for t, (a, _) in enumerate(offsets) if end <= a < nxt and ids[t] in specials), None)
            if t is not None:
                counts["closer"] += 1
                if not trained[t]:
                    v.append(f"message {i}: the token closing its tool calls {tok.convert_ids_to_tokens(ids[t])!r} "
                             f"(token {t}) is not trained at {show(*offsets[t])}")
    # 4. nothing of the prompt side, nor template text outside the assistant turns, is trained
    for i, m in enumerate(msgs):
        if m["role"] == "assistant":
            continue
        for s, e in oracle.of(i):
            counts["prompt"] += 1
            bad = [t for t in toks(s, e) if trained[t]
                   and not any(_overlap(offsets[t][0], offsets[t][1], a, b) for a, b in asst_spans)]
            if bad:
                v.append(f"message {i} ({m['role']}) content trained: "
                         f"{tok.convert_ids_to_tokens([ids[t] for t in bad[:5]])} at {show(s, e)}")
    outside = [t for t, (a, b) in enumerate(offsets) if trained[t]
               and not any(_overlap(a, b, s, e) for s, e in windows)]
    if outside:
        v.append(f"{len(outside)} trained token(s) lie outside every trained assistant turn, e.g. "
                 f"{tok.convert_ids_to_tokens([ids[t] for t in outside[:5]])}")
    return v, counts


def previous_turn_end(tok, row, i, oracle: Oracle, offsets, r_ids, closer_at, **kw) -> int:
    """Where the last assistant turn before message i ends (0: there is none): after its closer token (and an EOS
    right after it); for a turn that shows none of its fields, where rendering the conversation up to it stops agreeing
    with the real text. A template that drops tool calls and results (Alpaca, Phi-3) renders an empty turn
    ("### Response:\n</s>") or the text before the call, then at once the next assistant turn: that closer is the
    earlier turn's, not part of the next turn's header."""
    msgs = row["messages"]
    for k in range(i - 1, -1, -1):
        if msgs[k]["role"] != "assistant":
            continue  # a message shown after the turn puts the header region after it: the caller's check
        if oracle.of(k):
            t = closer_at(k)
            if t is not None and t + 1 < len(offsets) and r_ids[t + 1] == tok.eos_token_id:
                t += 1  # an EOS right after the closer closes the turn with it (Command-A's <|END_OF_TURN_TOKEN|>)
            return offsets[t][1] if t is not None else 0
        try:
            upto = _apply(tok, msgs[:k + 1], row.get("tools"), **kw)
        except Exception:
            return 0
        return len(os.path.commonprefix([upto, oracle.text]))
    return 0


def closer_of(tok, oracle: Oracle, offsets, ids, last_assistant: int) -> int | None:
    """The template's closer: the first special token it puts after a final assistant turn (None: it puts none)."""
    spans = oracle.of(last_assistant)
    if not spans:
        return None
    end = max(e for _, e in spans)
    specials = set(tok.all_special_ids)
    return next((ids[t] for t, (a, _) in enumerate(offsets) if a >= end and ids[t] in specials), None)


def render_case(tok, row, cfg):
    ex = normalize_row(row)
    (r,) = render_examples([ex], tok, cfg, errors="finding")
    return r


def codes(r) -> set[str]:
    return {f.code for f in r.findings}


# ------------------------------------------------------------------------------------------------------- tests
def test_templates_vendored():
    """The vendored set covers the families issue 7 names; SOURCES.md accounts for every file, unchanged."""
    import hashlib

    sources = (TEMPLATE_DIR / "SOURCES.md").read_text()
    listed = dict(re.findall(r"^\| `([^`]+)\.jinja` \|.*\| `([0-9a-f]{16})` \|$", sources, re.M))
    assert sorted(listed) == TEMPLATES, "tests/assets/templates/SOURCES.md must list exactly the vendored templates"
    for name, digest in listed.items():
        got = hashlib.sha256((TEMPLATE_DIR / f"{name}.jinja").read_bytes()).hexdigest()[:16]
        assert got == digest, f"{name}.jinja changed since it was vendored (sha256 {got}, SOURCES.md says {digest})"
    for must in ("axolotl/command_a_tool_use", "axolotl/gemma4", "axolotl/exaone4", "axolotl/mistral_v7_tekken",
                 "axolotl/mistral_v3_tekken", "axolotl/deepseek_v3", "axolotl/qwen3", "unsloth/qwen3",
                 "axolotl/llama3", "axolotl/phi_4", "unsloth/gptoss"):
        assert must in TEMPLATES, must


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", TEMPLATES)
def test_assistant_turns_exact(name, case):
    template = template_text(name)
    tok = _family_tokenizer(name)
    rfield = reasoning_field_for(template)
    row = case_row(case, rfield)
    msgs, tools, kw = row["messages"], row.get("tools"), row.get("chat_template_kwargs", {})
    r = render_case(tok, row, own_masking())
    try:
        oracle = build_oracle(tok, msgs, tools, rfield, **kw)
    except Exception as e:  # the template itself cannot render this conversation
        if isinstance(e, AssertionError):
            raise
        assert "render_failed" in codes(r), (f"{name}: the template raises on {case} ({type(e).__name__}: {e}) but "
                                             f"the engine reports {r.findings}")
        pytest.skip(f"{name} cannot render {case}: {type(e).__name__}: {str(e)[:120]}")
    assert "render_failed" not in codes(r), f"{name}/{case}: the template renders, the engine failed: {r.findings}"

    skipped = []
    for i, m in enumerate(msgs):
        if m.get("content") and not oracle.of(i, "content"):
            assert any(f.code == "content_not_rendered" and (f.location or {}).get("message") == i
                       for f in r.findings), f"{name}/{case}: message {i}'s content is not rendered, no finding"
            skipped.append(f"message {i} content not rendered")
        if m.get(rfield) and not oracle.of(i, "reasoning"):
            assert "reasoning_not_rendered" in codes(r), (
                f"{name}/{case}: message {i}'s reasoning ({rfield}) is not rendered and the engine does not say so "
                f"(no reasoning_not_rendered finding; findings: {sorted(codes(r))})")
            skipped.append(f"message {i} reasoning not rendered")
        if m.get("tool_calls") and not oracle.of(i, "tool_name"):
            # Dropped (Alpaca, Phi-3, Llama 3's text-only turns...): said so, and every later turn still checked.
            assert any(f.code == "tool_call_not_trained" and i in (f.location or {}).get("messages", ())
                       for f in r.findings), (f"{name}/{case}: message {i}'s tool calls are not rendered and the "
                                              f"engine does not say so (findings: {sorted(codes(r))})")
    if case.startswith("reasoning") and not any(oracle.of(i, "reasoning") for i, m in enumerate(msgs)):
        pytest.skip(f"{name} drops every reasoning of {case} ({'; '.join(skipped)})")

    enc = tok(oracle.text, add_special_tokens=False, return_offsets_mapping=True)
    assert r.input_ids == enc["input_ids"], f"{name}/{case}: engine ids differ from tokenizing the template's text"
    offsets = enc["offset_mapping"]
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    closer = closer_of(tok, oracle, offsets, r.input_ids, last)
    violations, counts = check_turns(tok, row, r, oracle, offsets, rfield, closer_ids={closer} - {None}, **kw)
    assert counts["content"] + counts["tool"] >= 1, f"{name}/{case}: nothing of the assistant turns was checked"
    assert not violations, (f"{name}/{case} ({len(violations)} problem(s); checked {counts}):\n  "
                            + "\n  ".join(violations))


def test_oracle_catches_a_wrong_mask(smol_tok):
    """The oracle is not vacuous: a mask that trains the role header and drops the closer is reported."""
    tok = tokenizer_with_template(smol_tok, template_text("axolotl/chatml"))
    row = copy.deepcopy(CASES["one_char_reply"])
    r = render_case(tok, row, own_masking())
    oracle = build_oracle(tok, row["messages"])
    enc = tok(oracle.text, add_special_tokens=False, return_offsets_mapping=True)
    offsets, ids = enc["offset_mapping"], enc["input_ids"]
    closer = closer_of(tok, oracle, offsets, ids, 3)
    assert tok.convert_ids_to_tokens(closer) == "<|im_end|>"
    # Train exactly the header tokens of message 1 and nothing else.
    reg = generation_prompt_region(tok, row["messages"], 1, oracle)
    assert oracle.text[reg[0]:reg[1]] == "<|im_end|>\n<|im_start|>assistant\n"
    r.labels = [i if reg[0] <= offsets[t][0] < reg[1] else IGNORE for t, i in enumerate(ids)]
    v, _ = check_turns(tok, row, r, oracle, offsets, "reasoning_content", closer_ids={closer})
    text = "\n".join(v)
    assert "role header token(s)" in text and "not trained" in text and "closer" in text, text

