"""Property tests (hypothesis) of the engine over generated conversations (issues 7 and 9).

Conversations: an optional system prompt, 1-3 user turns, each answered by an assistant turn that may carry
reasoning_content and may first call tools (the tool results follow); contents mix ASCII, emoji (with skin-tone
modifiers and ZWJ sequences), CJK, combining marks, whitespace at the edges, and empty-ish strings. Templates: the
embedded SmolLM2 one (ChatML), Llama-3-like, Gemma-like, DeepSeek-like (its closer <｜end▁of▁sentence｜> is not
the tokenizer's EOS and closes no user turn), gpt-oss-like (<|return|> / <|end|> / <|call|>, none of them the EOS), and
TRL 1.16's own qwen3.jinja (which template_source="trl" swaps for its training twin).

Every conversation runs under full and under assistant_only / last_assistant x eos every_turn / last_turn / none x
template_source own / trl. Invariants:
- no exception but MaskLensError escapes (and that only where the template itself cannot render the row);
- len(labels) == len(input_ids); each label is -100 or the id; full trains every token;
- every trained token lies inside a message the strategy trains (by .tokens() message/role), and none inside the
  prompt side (by an oracle that does not use the engine: see tests/test_foreign_templates.py);
- each maximal run of trained tokens decodes to exactly the text it covers (no half characters);
- for an assistant turn that ends with its content: the trained run is exactly that content, plus the closer when
  the eos mode trains it (the issue measured an emoji's last byte-level token left untrained when it is not);
- the closer after each trained turn is trained exactly as the eos mode says, whether or not it is the EOS.
The number of conversations and (conversation, configuration) cases run is printed at the end of the module.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import pytest
import trl
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from core.data.formats import normalize_row
from core.masking.engine import MaskConfig, render_examples
from core.errors import MaskLensError
from tests.test_foreign_templates import build_oracle, check_turns, generation_prompt_region, tokenizer_with_template

IGNORE = -100
COUNTS: Counter = Counter()

# ------------------------------------------------------------------------------------------------------ templates
LLAMA3_LIKE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{% if m.get('reasoning_content') %}<think>{{ m['reasoning_content'] }}</think>{% endif %}{{ m['content'] }}"
    "{% for tc in m.get('tool_calls') or [] %}<|python_tag|>{\"name\": \"{{ tc['function']['name'] }}\", "
    "\"parameters\": {{ tc['function']['arguments'] | tojson }}}{% endfor %}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
# Like Gemma 3: no reasoning, no tool calls (both dropped: reasoning_not_rendered), a tool turn is a plain turn.
GEMMA_LIKE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
DEEPSEEK_LIKE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}<｜User｜>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<｜Assistant｜>{% if m.get('reasoning_content') %}<think>\n"
    "{{ m['reasoning_content'] }}\n</think>\n\n{% endif %}{{ m['content'] }}"
    "{% for tc in m.get('tool_calls') or [] %}<｜tool▁call▁begin｜>{{ tc['function']['name'] }}<｜tool▁sep｜>"
    "{{ tc['function']['arguments'] | tojson }}<｜tool▁call▁end｜>{% endfor %}<｜end▁of▁sentence｜>"
    "{% else %}<｜tool▁output▁begin｜>{{ m['content'] }}<｜tool▁output▁end｜>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<｜Assistant｜>{% endif %}")
GPTOSS_LIKE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}"
    "{% if m.get('reasoning_content') %}<|start|>assistant<|channel|>analysis<|message|>{{ m['reasoning_content'] }}"
    "<|end|>{% endif %}{% for tc in m.get('tool_calls') or [] %}<|start|>assistant to=functions."
    "{{ tc['function']['name'] }}<|channel|>commentary json<|message|>{{ tc['function']['arguments'] | tojson }}"
    "<|call|>{% endfor %}{% if m['content'] or not m.get('tool_calls') %}<|start|>assistant<|channel|>final"
    "<|message|>{{ m['content'] }}{{ '<|return|>' if loop.last else '<|end|>' }}{% endif %}"
    "{% else %}<|start|>{{ m['role'] }}<|message|>{{ m['content'] }}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant{% endif %}")
QWEN3_TRL = (Path(trl.__file__).parent / "chat_templates" / "qwen3.jinja").read_text()

# name -> (template or None for the embedded tokenizer's own, bos, eos, closers)
TEMPLATES = {
    "smollm2": (None, None, None, ("<|im_end|>",)),
    "llama3_like": (LLAMA3_LIKE, "<|begin_of_text|>", "<|eot_id|>", ("<|eot_id|>",)),
    "gemma_like": (GEMMA_LIKE, "<bos>", "<eos>", ("<end_of_turn>",)),
    "deepseek_like": (DEEPSEEK_LIKE, "<｜begin▁of▁sentence｜>", None, ("<｜end▁of▁sentence｜>",)),
    "gptoss_like": (GPTOSS_LIKE, "<|startoftext|>", "<|endoftext|>", ("<|return|>", "<|end|>", "<|call|>")),
    "qwen3_trl": (QWEN3_TRL, None, None, ("<|im_end|>",)),
}
CONFIGS = [dict(strategy="full")] + [
    dict(strategy=s, eos=e, template_source=src)
    for s in ("assistant_only", "last_assistant") for e in ("every_turn", "last_turn", "none")
    for src in ("own", "trl")]

_TOKENIZERS: dict = {}


def tokenizer_for(name):
    """The embedded SmolLM2 tokenizer, or a copy carrying the named template (cached: hypothesis calls often)."""
    if name not in _TOKENIZERS:
        from core.models import load_tokenizer

        template, bos, eos, _ = TEMPLATES[name]
        base = load_tokenizer()
        _TOKENIZERS[name] = base if template is None else tokenizer_with_template(base, template, bos, eos)
    return _TOKENIZERS[name]


# --------------------------------------------------------------------------------------------------- generation
PIECES = ["hello", "Paris", "ok", "a", "I", "42", "!", "?", ",", " ", "  ", "\n", "\t",
          "😀", "🎉", "👍🏽", "👨‍👩‍👧",  # emoji, a skin-tone modifier, a ZWJ family
          "漢字", "語", "日本語", "e\u0301", "n\u0303", "é", "ß"]
# Tool-call argument values are rendered through tojson: no characters it escapes (newline, tab, quote, backslash).
ARG_PIECES = ["Paris", "Lima", " ", "😀", "👍🏽", "漢字", "e\u0301", "ß", "7"]
text = st.lists(st.sampled_from(PIECES), min_size=0, max_size=6).map("".join)
nonempty = st.lists(st.sampled_from(PIECES), min_size=1, max_size=6).map("".join)
arg_value = st.lists(st.sampled_from(ARG_PIECES), min_size=1, max_size=4).map("".join)
TOOLS = [{"type": "function", "function": {"name": n, "description": d, "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}
    for n, d in (("search", "Search the web"), ("lookup", "Look a word up"))]


@st.composite
def conversations(draw):
    msgs = []
    if draw(st.booleans()):
        msgs.append({"role": "system", "content": draw(nonempty)})
    used_tools = False
    for turn in range(draw(st.integers(1, 3))):
        msgs.append({"role": "user", "content": draw(nonempty)})
        if draw(st.integers(0, 3)) == 0:  # a tool-calling step first
            used_tools = True
            n = draw(st.integers(1, 2))
            calls = [{"id": f"call{turn}{k:05d}", "type": "function",
                      "function": {"name": TOOLS[k]["function"]["name"], "arguments": {"q": draw(arg_value)}}}
                     for k in range(n)]
            call = {"role": "assistant", "content": "", "tool_calls": calls}
            if draw(st.booleans()):
                call["reasoning_content"] = draw(nonempty)
            msgs.append(call)
            for c in calls:
                msgs.append({"role": "tool", "tool_call_id": c["id"], "name": c["function"]["name"],
                             "content": draw(nonempty)})
        reply = {"role": "assistant", "content": draw(text)}
        if draw(st.integers(0, 2)) == 0:
            reply["reasoning_content"] = draw(nonempty)
        msgs.append(reply)
    row = {"messages": msgs}
    if used_tools:
        row["tools"] = TOOLS
    return row


# ------------------------------------------------------------------------------------------------------ checking
def runs(labels):
    """Maximal runs [a, b) of trained positions."""
    out, start = [], None
    for t, la in enumerate(labels + [IGNORE]):
        if la != IGNORE and start is None:
            start = t
        elif la == IGNORE and start is not None:
            out.append((start, t))
            start = None
    return out


def training_template(tok) -> str:
    from trl.chat_template_utils import get_training_chat_template

    return get_training_chat_template(tok)


def check_example(tok, name, row, r, cfg, memo: dict | None = None) -> list[str]:
    """Problems of one rendered example (empty: all invariants hold). memo: oracles shared across configurations."""
    memo = {} if memo is None else memo
    ids, labels = r.input_ids, r.labels
    msgs = row["messages"]
    v = []
    # labels well formed
    if len(labels) != len(ids):
        return [f"len(labels) {len(labels)} != len(input_ids) {len(ids)}"]
    bad = [t for t, (i, la) in enumerate(zip(ids, labels)) if la not in (IGNORE, i)]
    if bad:
        v.append(f"labels that are neither -100 nor the id at {bad[:5]}")
    if cfg.strategy == "full":
        if labels != ids:
            v.append(f"full leaves {labels.count(IGNORE)} token(s) untrained")
        return v

    # the oracle renders the template that produced the tokens (TRL's twin when it was swapped in)
    if r.template_swapped not in memo:
        template = training_template(tok) if r.template_swapped else None
        tok_o = tok if template is None else tokenizer_with_template(tok, template)
        oracle = build_oracle(tok_o, msgs, row.get("tools"))
        memo[r.template_swapped] = oracle, tok(oracle.text, add_special_tokens=False, return_offsets_mapping=True)
    oracle, enc = memo[r.template_swapped]
    assert oracle.text == r.text, f"{name}: the engine's text is not the template's rendering"
    offsets = enc["offset_mapping"]
    if enc["input_ids"] != ids:
        return v + ["input_ids differ from tokenizing the rendered text"]

    asst = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    trained_turns = set(asst) if cfg.strategy == "assistant_only" else {asst[-1]}
    infos = r.tokens(tok)
    # every trained token lies in a message the strategy trains (the engine's own attribution)
    stray = [t for t, ti in enumerate(infos) if labels[t] != IGNORE and ti.message not in trained_turns]
    if stray:
        v.append(f"{len(stray)} trained token(s) attributed to messages the strategy does not train: "
                 f"{[(infos[t].text, infos[t].message, infos[t].part) for t in stray[:5]]}")
    # no half characters: each trained run decodes to exactly the text it covers
    for a, b in runs(labels):
        want = oracle.text[offsets[a][0]:offsets[b - 1][1]]
        got = tok.decode(ids[a:b])
        if got != want:
            v.append(f"trained tokens {a}..{b - 1} decode to {got!r}, the text they cover is {want!r}")

    closers = {tok.convert_tokens_to_ids(c) for c in TEMPLATES[name][3]}
    if r.template_swapped:
        # TRL's twin decides its own spans (the header of some families, the newline after the closer): it is
        # compared with SFTTrainer token for token elsewhere. Here: content trained, prompt side not.
        vv, _ = check_turns(tok, row, r, oracle, offsets, "reasoning_content", trained_turns=trained_turns)
        return v + [x for x in vv if "role header" not in x and "outside every" not in x]
    vv, _ = check_turns(tok, row, r, oracle, offsets, "reasoning_content", eos_mode=cfg.eos,
                        trained_turns=trained_turns, closer_ids=closers)
    v += vv
    # exactness where a turn ends with its content: the trained run is the content (+ the closer when trained)
    last_trained = max(trained_turns)
    trained = [la != IGNORE for la in labels]
    for i in sorted(trained_turns):
        spans = oracle.of(i)
        content = oracle.of(i, "content")
        if not content or content[0][0] == content[0][1] or max(e for _, e in spans) != content[0][1]:
            continue
        s, e = content[0]
        ct = [t for t, (a, b) in enumerate(offsets) if a < e and s < b and b > a]
        nxt = oracle.first_start_after(i, len(oracle.text))
        closer = next((t for t, (a, _) in enumerate(offsets) if e <= a < nxt and ids[t] in closers), None)
        if closer is not None and offsets[closer][0] != e:
            closer = None  # the template puts text between content and closer: not a content-last turn
        want_closer = closer is not None and (cfg.eos == "every_turn" or (cfg.eos == "last_turn" and i == last_trained))
        if not trained[ct[-1]]:
            continue  # reported by check_turns
        b = ct[-1]
        while b + 1 < len(ids) and trained[b + 1]:
            b += 1
        a = ct[-1]
        while a - 1 >= 0 and trained[a - 1]:
            a -= 1
        want_end = closer if want_closer else ct[-1]
        head = generation_prompt_region(tok, msgs, i, oracle, row.get("tools"))
        only_content = len(spans) == 1 and (head is None or head[1] == s)
        promised = oracle.text[offsets[ct[0]][0]:offsets[want_end][1]]
        got = tok.decode(ids[a:b + 1])
        if b != want_end or (only_content and a != ct[0]):
            v.append(f"message {i}: trained run decodes to {got!r}; promised {promised!r} "
                     f"(content {oracle.text[s:e]!r}{', closer trained' if want_closer else ''}, eos={cfg.eos})")
    return v


def problems_of(name, row) -> list[str]:
    tok = tokenizer_for(name)
    COUNTS["conversations"] += 1
    try:
        tok.apply_chat_template(row["messages"], tools=row.get("tools"), tokenize=False)
        renders = True
    except Exception:
        renders = False
    problems, memo = [], {}
    for kw in CONFIGS:
        cfg = MaskConfig(**kw)
        try:
            (r,) = render_examples([normalize_row(copy.deepcopy(row))], tok, cfg, errors="raise")
        except MaskLensError as e:
            assert not renders, f"{name} {kw}: MaskLensError on a row the template renders: {e}"
            COUNTS["masklens_errors"] += 1
            continue
        COUNTS["cases"] += 1
        for p in check_example(tok, name, row, r, cfg, memo):
            problems.append(f"{kw}: {p}")
    return problems


# Sized so the whole file runs in well under a minute here (13 configurations per conversation). Derandomized: every
# run checks the same conversations. No shrinking: a failure prints the generated row with each problem found, at
# once (shrinking a 13-configuration check took minutes).
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate], suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def report_counts(request):
    yield
    line = (f"test_properties: {COUNTS['conversations']} generated conversations, {COUNTS['cases']} "
            f"(conversation, configuration) cases checked, {COUNTS['masklens_errors']} MaskLensError(s)")
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if tr is not None and capman is not None:
        with capman.global_and_fixture_disabled():  # shown in the run's output, not in a captured section
            tr.write_line("\n" + line)


@pytest.mark.parametrize("name", list(TEMPLATES))
@SETTINGS
@given(row=conversations())
def test_generated_conversations(name, row):
    problems = problems_of(name, row)
    assert not problems, (f"{name}: {len(problems)} problem(s) on\n{json.dumps(row, ensure_ascii=False)}\n  "
                          + "\n  ".join(problems[:12]))


def test_half_emoji_is_caught(smol_tok):
    """The check is not vacuous: labels that leave an emoji's last byte-level token untrained are reported."""
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo 😀"}]}
    cfg = MaskConfig("assistant_only", eos="none", template_source="own")
    (r,) = render_examples([normalize_row(row)], smol_tok, cfg)
    pieces = smol_tok.convert_ids_to_tokens(r.input_ids)
    last = max(t for t, la in enumerate(r.labels) if la != IGNORE)
    assert len(smol_tok.encode("😀", add_special_tokens=False)) > 1  # the emoji spans several tokens here
    r.labels[last] = IGNORE  # the defect the issue measured
    problems = check_example(smol_tok, "smollm2", row, r, cfg)
    assert any("decode to" in p for p in problems), (pieces, problems)


# ------------------------------------------------------------------------------- the locator's inline plain path
# spans._Locator.message locates a message of only role + text inline (most of a dataset); every other message takes
# the general steps. The inline path must give exactly what the general steps give, whatever the text: contents here
# also collide with role names, headers and closers.
TRICKY = PIECES + ["user", "assistant", "system", "model", "<think>", "</think>", "\n\n", "<|im_start|>", "<|im_end|>",
                   "<end_of_turn>", "<|eot_id|>", "<|message|>", "<｜User｜>"]
tricky_text = st.lists(st.sampled_from(TRICKY), min_size=0, max_size=5).map("".join)


@st.composite
def plain_heavy_conversations(draw):
    """Mostly plain {role, content} messages (empty and repeated contents too), some from conversations() above."""
    if draw(st.integers(0, 3)) == 0:
        return draw(conversations())
    msgs = []
    if draw(st.booleans()):
        msgs.append({"role": "system", "content": draw(tricky_text)})
    for _ in range(draw(st.integers(1, 3))):
        msgs.append({"role": "user", "content": draw(tricky_text)})
        reply = draw(st.sampled_from(["same", "new", "empty"]))
        content = msgs[-1]["content"] if reply == "same" else "" if reply == "empty" else draw(tricky_text)
        msgs.append({"role": "assistant", "content": content})
    return {"messages": msgs}


def _located(text, msgs, info, eos, inline: bool):
    from core.masking import spans as S

    keys, S._PLAIN_KEYS = S._PLAIN_KEYS, (S._PLAIN_KEYS if inline else frozenset())
    try:
        return [(sp, sp.parts) for sp in S.locate_messages(text, msgs, info, eos)]
    finally:
        S._PLAIN_KEYS = keys


@pytest.mark.parametrize("name", list(TEMPLATES))
@settings(max_examples=60, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow])
@given(row=plain_heavy_conversations())
def test_inline_plain_messages_locate_as_the_general_steps_do(name, row):
    from core.masking.template_info import analyze_template

    tok = tokenizer_for(name)
    msgs = row["messages"]
    try:
        text = tok.apply_chat_template(msgs, tools=row.get("tools"), tokenize=False)
    except Exception:  # noqa: BLE001  (a template that cannot render the row: nothing to locate)
        return
    info = analyze_template(tok, tok.chat_template)
    inline = _located(text, msgs, info, tok.eos_token, True)
    general = _located(text, msgs, info, tok.eos_token, False)
    assert inline == general, json.dumps(row, ensure_ascii=False)


def test_the_inline_path_is_taken(smol_tok):
    """Not vacuous: with the plain keys emptied, the general steps run (the path the test above compares with)."""
    from core.masking import spans as S
    from core.masking.template_info import analyze_template

    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    text = smol_tok.apply_chat_template(msgs, tokenize=False)
    info = analyze_template(smol_tok, smol_tok.chat_template)
    calls = []
    real = S._texts
    S._texts = lambda *a: calls.append(a) or real(*a)
    try:
        _located(text, msgs, info, smol_tok.eos_token, True)
        assert calls == []
        _located(text, msgs, info, smol_tok.eos_token, False)
        assert len(calls) == 2
    finally:
        S._texts = real

