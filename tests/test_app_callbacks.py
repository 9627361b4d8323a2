"""The app's callbacks and formatting, called directly (no browser): every output checked against the engine."""

import json
import re
import time
from pathlib import Path

import pytest

from app import pickers, render, tab_audit, tab_compare, tab_export, tab_inspect, tab_templates
from app.session import (SAMPLES_DIR, SETTING_FIELDS, Session, Settings, load_sample, parse_ids, sample_choices,
                         unescape)
from core.audit import audit
from core.data.formats import normalize_row
from core.masking.engine import IGNORE, STRATEGIES, MaskConfig, render_examples
from core.errors import MaskLensError
from core.masking.strategies import strategy_names

TOKEN_RE = re.compile(r'<span class="([^"]*)" data-token-id="(-?\d+)" data-label="(-?\d+)" data-k="(\d+)">')


def tokens_of(html: str) -> list[tuple[str, int, int]]:
    """(class, id, label) of every token span in a token view."""
    return [(c, int(i), int(lab)) for c, i, lab, _ in TOKEN_RE.findall(html)]


def inspect_out(res) -> "tab_inspect.InspectOut":
    """The InspectOut part of a callback that also returns other outputs (on_sample, on_upload: the template text)."""
    return tab_inspect.InspectOut(*res[:len(tab_inspect.InspectOut._fields)])


def settings_values(**overrides) -> list:
    s = Settings(**overrides)
    return [getattr(s, n) for n in SETTING_FIELDS]


@pytest.fixture
def loaded(smol_tok):
    """A page just loaded: embedded tokenizer, the default sample, assistant_only."""
    out = tab_inspect.on_load()
    return tab_inspect.InspectOut(*out[:len(tab_inspect.InspectOut._fields)]), out


# ------------------------------------------------------------------------------------------------------ Inspect
def test_load_renders_default_sample_under_assistant_only(loaded, smol_tok):
    out, extra = loaded
    s = out.session
    assert s.tokenizer_name == "embedded" and s.data.name == "chat_multiturn.jsonl"
    assert s.settings.strategy == "assistant_only" and out.error == ""
    r = render_examples([s.data.examples[0]], smol_tok, MaskConfig("assistant_only"))[0]
    toks = tokens_of(out.view)
    assert 'id="token-view"' in out.view
    assert [i for _, i, _ in toks] == r.input_ids
    assert [lab for _, _, lab in toks] == r.labels
    assert {lab for _, _, lab in toks} & {IGNORE} and any(lab != IGNORE for _, _, lab in toks)
    # the response template box is prefilled with the chat template's generation prompt, escaped
    assert extra[-1] == r"<|im_start|>assistant\n"
    assert "<|im_start|>" in extra[-2]  # the chat template shown in the code box
    assert json.loads(out.raw) == s.data.examples[0].raw
    assert f"<b>{r.n_tokens}</b><span>tokens</span>" in out.stats
    assert f"<b>{r.n_trained}</b><span>trained</span>" in out.stats


def test_token_view_markup_roles_special_whitespace_and_tooltip_table(loaded, smol_tok):
    out, _ = loaded
    r = out.session.render_current()
    infos = r.tokens(smol_tok)
    toks = tokens_of(out.view)
    assert len(toks) == len(infos)
    for (cls, _, _), t in zip(toks, infos):
        assert cls.split()[0] == render.ROLE_CLASS.get(t.role, "ro")
        assert ("x" in cls.split()) == t.special
    info = json.loads(re.search(r'data-info="([^"]*)"', out.view).group(1).replace("&quot;", '"'))
    keys = [int(k) for *_, k in TOKEN_RE.findall(out.view)]
    for t, k in zip(infos, keys):  # the tooltip's table gives each token its own message, role, part and rule
        assert info[k] == [t.message, t.role or "", t.part, t.rule]
    assert len(info) < len(infos) / 4  # shared entries, not one per token
    assert render.visible_text(" a\tb\n") == "<s>·</s>a<s>→</s>b<s>↵</s><br>"
    assert render.visible_text("<|im_end|>") == "&lt;|im_end|&gt;"


def test_strategy_switch_changes_labels(loaded):
    out, _ = loaded
    s = out.session
    ignored = lambda html: sum(1 for *_, lab in tokens_of(html) if lab == IGNORE)  # noqa: E731
    n_asst = ignored(out.view)
    full = tab_inspect.on_settings(s, *settings_values(strategy="full"))
    assert ignored(full.view) == 0 and full.error == ""
    last = tab_inspect.on_settings(s, *settings_values(strategy="last_assistant"))
    assert ignored(last.view) > n_asst
    resp = tab_inspect.on_settings(s, *settings_values(strategy="response_template"))
    assert "pad_is_eos" in resp.findings and "Fix:" in resp.findings
    # a bad value is an error box naming the field, not an exception
    bad = tab_inspect.on_settings(s, *settings_values(strategy="response_template", response_template="1,x",
                                                      templates_as_ids=True))
    assert "errbox" in bad.error and "response_template" in bad.error and 'data-token-id' not in bad.view


def test_mask_tokens_reach_the_engine_and_inspect_has_their_control(loaded, smol_tok):
    assert Settings(mask_tokens=("</think>", "<|im_end|>")).to_config().mask_tokens == ("</think>", "<|im_end|>")
    assert Settings(mask_tokens=r" <|im_end|> , \n ,").to_config().mask_tokens == ("<|im_end|>", "\n")
    assert Settings().to_config().mask_tokens == ()
    out, _ = loaded
    s = out.session
    masked = tab_inspect.on_settings(s, *settings_values(mask_tokens="<|im_end|>"))
    expected = render_examples([s.example], smol_tok, MaskConfig("assistant_only", mask_tokens=("<|im_end|>",)))[0]
    assert [lab for *_, lab in tokens_of(masked.view)] == expected.labels
    im_end = smol_tok.convert_tokens_to_ids("<|im_end|>")
    assert all(lab == IGNORE for _, i, lab in tokens_of(masked.view) if i == im_end)
    assert any(lab != IGNORE for _, i, lab in tokens_of(out.view) if i == im_end)  # trained before
    assert masked.mask_tokens["value"] == "<|im_end|>"
    # the Inspect control: a text box whose submit (Enter) re-renders with the settings; no blur event, which would
    # swallow a click on another control (its pending render covers that control)
    from app.main import build_app

    demo = build_app()
    box = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "mask-tokens")
    events = {ev for f in demo.fns.values() for bid, ev in f.targets
              if bid == box._id and f.fn is tab_inspect.on_settings}
    assert events == {"submit"}


def test_navigation_and_jump(loaded):
    out, _ = loaded
    s = out.session
    n = len(s.data.examples)
    assert tab_inspect.on_next(s).number == 2
    assert tab_inspect.on_prev(s).number == 1
    assert tab_inspect.on_prev(s).number == n  # wraps
    assert tab_inspect.on_jump(s, 3).number == 3
    assert tab_inspect.on_jump(s, 999).number == n  # clamped
    assert f"of {n}" in tab_inspect.on_jump(s, 1).caption


def test_bundled_samples_all_load(smol_tok):
    choices = sample_choices()
    names = [n for _, n in choices]
    assert names[:3] == ["chat_multiturn.jsonl", "agent_traces.jsonl", "reasoning.jsonl"] and len(names) == 13
    assert all(label.startswith(n + " — ") for label, n in choices)  # a one-line description beside each file
    for name in names:
        d = load_sample(name)
        assert d.examples, name
        assert bool(d.errors) == (name == "broken.jsonl")
    with pytest.raises(MaskLensError, match="unknown sample"):
        load_sample("../../etc/passwd")


def test_upload_broken_file_lists_bad_rows_and_shows_valid_ones(loaded):
    out, _ = loaded
    res = inspect_out(tab_inspect.on_upload(out.session, str(SAMPLES_DIR / "broken.jsonl")))
    assert res.error == ""
    assert "2 examples" in res.data_info and "5 rows could not be read" in res.data_info
    for needle in ("unknown role", "content must be a string", "has no &#x27;content&#x27;", "not valid JSON",
                   "is missing"):
        assert needle in res.data_info, needle
    assert tokens_of(res.view)  # the first valid row is rendered


@pytest.mark.parametrize("name,content,needle", [
    ("empty.jsonl", "", "empty"),
    ("notes.txt", "hello", "unsupported file type"),
    ("garbage.jsonl", "this is not json\n{also not\n", "not valid JSON"),
    ("latin1.jsonl", b'{"text": "caf\xe9"}\n', "UTF-8"),
])
def test_upload_unreadable_file_is_an_error_message_not_an_exception(loaded, tmp_path, name, content, needle):
    out, _ = loaded
    before = out.session.data.name
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    res = inspect_out(tab_inspect.on_upload(out.session, str(p)))
    shown = res.error + res.data_info
    assert needle in shown
    assert name in shown  # the user's file name, not the temporary path
    assert str(tmp_path) not in shown
    if out.session.data.name == before:  # unreadable as a whole: the page keeps its data and says so in the box
        assert f"Nothing changed: still showing {before}." in res.error
    else:  # read, every row bad: the file is the data now, its rows listed under Data
        assert out.session.data.name == name and not out.session.data.examples and name in res.data_info
        assert "Nothing changed" not in res.error


def test_edit_json_and_bad_json(loaded):
    out, _ = loaded
    s = out.session
    bad = tab_inspect.on_apply_json(s, '{"messages": [')
    assert "not valid JSON" in bad.error
    bad_role = tab_inspect.on_apply_json(s, '{"messages": [{"role": "robot", "content": "x"}]}')
    assert "unknown role" in bad_role.error
    ok = tab_inspect.on_apply_json(s, json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                                               {"role": "assistant", "content": "Hello!"}]}))
    assert ok.error == "" and "Hello!" in ok.raw
    assert s.example.messages[-1]["content"] == "Hello!"


def test_bad_tokenizer_keeps_the_old_one(loaded, tmp_path):
    out, _ = loaded
    s = out.session
    res = tab_inspect.on_tokenizer(s, str(tmp_path / "no_such_dir"))
    assert "no such directory" in res[7] and s.tokenizer_name == "embedded"
    assert "Nothing changed: the tokens are still those of the tokenizer &#x27;embedded&#x27;." in res[7] or \
        "Nothing changed: the tokens are still those of the tokenizer 'embedded'." in res[7]
    assert tokens_of(res[1])  # still rendered with the old tokenizer


def test_edited_chat_template_and_a_broken_one(loaded):
    out, _ = loaded
    s = out.session
    broken = tab_inspect.on_apply_template(s, "{% for m in messages %}{{ m['content'] }")
    assert "chat template failed to render" in broken.error
    reset = tab_inspect.on_reset_template(s)
    assert reset[7] == "" and s.chat_template is None


# Pasted chat templates are probed in the sandbox (core.sandbox) before the server renders with them.
ECHO = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
HOSTILE = {
    "range_1e9": "{% for i in range(10**9) %}x{% endfor %}",  # Jinja's sandbox refuses the range itself
    "nested_loops": "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",  # time
    "huge_string": "{{ 'x' * 100000 * 100000 }}",  # 10 GB: memory, in the worker only
    "long_rows_only": "{% if messages|length > 3 %}{% for i in range(100000) %}{% for j in range(100000) %}x"
                      "{% endfor %}{% endfor %}{% endif %}" + ECHO,  # the probes pass; the 5-message row loops
}
# what stops it: the loops hit the output bound (2M characters) or the deadline, whichever comes first
LOOPS = ("produced more than 2,000,000 characters", "ran past")
BOUND_TEXT = {"range_1e9": ("range too big",), "nested_loops": LOOPS, "huge_string": ("mb of memory",),
              "long_rows_only": LOOPS}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_pasted_template_is_an_error_box_and_the_server_keeps_answering(loaded, name):
    import threading

    out, _ = loaded
    s = out.session
    other = tab_inspect.on_load()[0]  # another user's page, on the tokenizer's own template
    result, views = {}, []

    def paste():
        t = time.monotonic()
        result["out"] = tab_inspect.on_apply_template(s, HOSTILE[name])
        result["s"] = time.monotonic() - t

    worker = threading.Thread(target=paste)
    worker.start()
    while worker.is_alive():  # the other session is served while the hostile template is being probed
        t = time.monotonic()
        v = tab_inspect.on_next(other)
        views.append(time.monotonic() - t)
        assert v.error == "" and tokens_of(v.view)
        time.sleep(0.05)
    worker.join()
    bad = result["out"]
    assert result["s"] < 20, f"{name}: {result['s']:.1f} s"
    assert 'class="errbox"' in bad.error and "Fix:" in bad.error, bad.error
    assert any(t in bad.error.lower() for t in BOUND_TEXT[name]), bad.error
    if name == "long_rows_only":
        assert "row 0" in bad.error  # the row it loops on
    assert "data-token-id" not in bad.view
    assert views and max(views) < 3, views
    # the Templates tab shows the same error instead of rendering it in the server
    head, *_ = tab_templates.on_templates(s)
    if name != "long_rows_only" and name != "range_1e9":  # those two render the tiny probes fine
        assert 'class="errbox"' in head and any(t in head.lower() for t in BOUND_TEXT[name]), head
    # back to the tokenizer's template: everything renders again
    assert tab_inspect.on_reset_template(s)[7] == ""


def test_dataset_wide_work_renders_an_edited_template_in_the_sandbox_first(loaded):
    """A template that passes the probes but loops on long conversations is stopped in the audit, the packing
    preview, the Templates tab (spans, usage, marked twin) and the Train tab, naming the row."""
    from app import tab_train

    out, _ = loaded
    s = out.session
    s.chat_template = HOSTILE["long_rows_only"]
    checks = {
        "audit": tab_audit.on_audit(s, progress=lambda *a, **k: None)[0],
        "packing": tab_audit.on_pack(s, "bfd", 512, 0)[0],
        "templates": tab_templates.on_templates(s)[0],
        "usage": tab_templates.on_usage(s, "x"),
        "marked twin": tab_templates.on_generate(s)[0],
        "train": tab_train.on_start(s, [], "embedded", False, 1, 1e-5, 1, 1, 0, False, "bfd", 1, 8, 16, False, 0)[0],
    }
    for where, html in checks.items():
        assert 'class="errbox"' in html and "row 0" in html and any(t in html for t in LOOPS), (where, html)


def test_a_benign_pasted_template_is_probed_once_and_renders(loaded, smol_tok):
    out, _ = loaded
    s = out.session
    good = tab_inspect.on_apply_template(s, ECHO)
    assert good.error == ""
    r = render_examples([s.example], smol_tok, MaskConfig("assistant_only", chat_template=ECHO, template_source="own"))
    assert [i for _, i, _ in tokens_of(good.view)] == r[0].input_ids
    from app import session as app_session

    t = time.monotonic()
    for _ in range(50):
        app_session.check_template(ECHO, smol_tok)  # cached after the first probe
    assert time.monotonic() - t < 0.05


# ------------------------------------------------------------------------------------------------------ Compare
def compare_values(*cfgs: tab_compare.Cfg) -> list:
    """The UI values of up to MAX_CONFIGS configurations (unused slots empty)."""
    out = [v for c in cfgs for v in c]
    return out + [""] * (tab_compare.MAX_CONFIGS * tab_compare.FIELDS - len(out))


def compare(session, n, *cfgs):
    summary, *rest = tab_compare.on_compare(session, n, *compare_values(*cfgs))
    return summary, rest[:tab_compare.MAX_CONFIGS]


def test_compare_counts_differing_tokens(loaded, smol_tok):
    out, _ = loaded
    s = out.session
    Cfg = tab_compare.Cfg
    cfgs = [Cfg("full"), Cfg("assistant_only"), Cfg("response_template", response_template=r"<|im_start|>assistant\n")]
    summary, views = compare(s, 2, *cfgs)
    ex = s.example
    full, asst = (render_examples([ex], smol_tok, MaskConfig(st))[0] for st in ("full", "assistant_only"))
    n_diff = sum(1 for a, b in zip(full.labels, asst.labels) if a != b)
    assert n_diff > 0
    assert f'data-diff="{n_diff}"' in summary
    assert "labels differing vs A" in summary and "<td>reference</td>" in summary and f"<td>{n_diff}</td>" in summary
    assert sum(1 for c, *_ in tokens_of(views[0]) if "d" in c.split()) == n_diff
    assert views[2] == views[3] == ""  # only two configurations shown
    summary3, views3 = compare(s, 3, *cfgs)
    resp = render_examples([ex], smol_tok, MaskConfig("response_template",
                                                      response_template="<|im_start|>assistant\n"))[0]
    n3 = sum(1 for a, b, c in zip(full.labels, asst.labels, resp.labels) if not a == b == c)
    assert f'data-diff="{n3}"' in summary3 and tokens_of(views3[2])
    # the strategy lists are the registry's, refreshed on every comparison
    lists = tab_compare.on_compare(s, 2, *compare_values(*cfgs))[1 + tab_compare.MAX_CONFIGS:]
    assert len(lists) == tab_compare.MAX_CONFIGS and all(u["choices"] == strategy_names() for u in lists)


def test_compare_bad_configuration_does_not_hide_the_others(loaded):
    out, _ = loaded
    Cfg = tab_compare.Cfg
    summary, views = compare(out.session, 3, Cfg("full"), Cfg("assistant_only"), Cfg("response_template"))
    assert "errbox" in views[2] and "response template" in views[2]
    assert tokens_of(views[0]) and tokens_of(views[1]) and "data-diff" in summary


def test_compare_two_chat_templates(loaded):
    out, _ = loaded
    Cfg = tab_compare.Cfg
    # Qwen2.5's training template is ChatML too: same tokens, and its {% generation %} blocks differ from the
    # engine's assistant_only on SmolLM2's template only in a few tokens
    summary, views = compare(out.session, 2, Cfg("assistant_only"),
                             Cfg("assistant_only", chat_template="trl:qwen2_5_training.jinja"))
    n = int(re.search(r'data-diff="(\d+)"', summary).group(1))
    assert 0 < n < 20 and "qwen2_5_training.jinja" in summary
    # Llama 3's template renders other tokens: no position-by-position comparison, both views shown
    summary, views = compare(out.session, 2, Cfg("assistant_only"),
                             Cfg("assistant_only", chat_template="trl:llama3_training.jinja"))
    assert "tokenize the example differently" in summary
    assert tokens_of(views[0]) and tokens_of(views[1])


def test_compare_new_options_equal_the_engine(smol_tok):
    """Each configuration's options (reasoning, empty think, mask_tokens, template source, split_turns) give exactly
    the engine's labels, and the summary names them."""
    s = Session(data=load_sample("reasoning.jsonl"))
    s.index = 1  # two assistant turns with reasoning_content
    Cfg = tab_compare.Cfg
    q = "trl:qwen3.jinja"
    cfgs = [Cfg("assistant_only", chat_template=q), Cfg("assistant_only", chat_template=q, reasoning="mask"),
            Cfg("assistant_only", chat_template=q, mask_tokens="<|im_end|>, \\n"),
            Cfg("assistant_only", chat_template=q, template_source="own")]
    summary, views = compare(s, 4, *cfgs)
    qwen3 = tab_compare.resolve_template(s, q)[0]
    expected = [render_examples([s.example], smol_tok, MaskConfig("assistant_only", chat_template=qwen3, **kw))[0]
                for kw in ({}, {"reasoning": "mask"}, {"mask_tokens": ("<|im_end|>", "\n")}, {"template_source": "own"})]
    for v, r in zip(views, expected):
        assert [lab for *_, lab in tokens_of(v)] == r.labels
    assert expected[1].n_trained < expected[0].n_trained and expected[2].n_trained < expected[0].n_trained
    for needle in ("reasoning=mask", "mask_tokens=&lt;|im_end|&gt;", "template_source=own"):
        assert needle in summary, needle
    # split_turns: the row's last turn (whole history, rendered as at inference) unless Inspect shows another
    summary, views = compare(s, 2, Cfg("assistant_only", chat_template=q),
                             Cfg("assistant_only", chat_template=q, split_turns=True))
    split = render_examples([s.example], smol_tok, MaskConfig("assistant_only", chat_template=qwen3, split_turns=True))
    assert [r.turn for r in split] == [2, 4]
    assert [lab for *_, lab in tokens_of(views[1])] == split[-1].labels and "split_turns=on · qwen3.jinja (turn 4)" in summary
    s.turn = 2
    _, views = compare(s, 2, Cfg("assistant_only", chat_template=q),
                       Cfg("assistant_only", chat_template=q, split_turns=True))
    assert [lab for *_, lab in tokens_of(views[1])] == split[0].labels


# ------------------------------------------------------------------------------------------------------ Audit
def test_audit_counts_match_core_and_open_in_inspect(loaded, smol_tok):
    out, _ = loaded
    s = out.session
    tab_inspect.on_sample(s, "text.jsonl")  # the strategy follows the data: full
    s.settings.strategy = "assistant_only"  # assistant_only on plain text: nothing trained anywhere
    head, fig_share, fig_len, counts, problems = tab_audit.on_audit(s, progress=lambda *a, **k: None)
    rep, _ = audit(s.data.examples, smol_tok, s.config())
    assert len(problems) == len(rep.problems) == 3
    assert f"<b>{rep.tokens}</b><span>tokens</span>" in head
    assert f"<b>{rep.examples_without_trained_tokens}</b><span>with nothing trained</span>" in head
    for code, n in rep.findings.items():
        assert f"<code>{code}</code></td><td>{n}</td>" in counts
    assert fig_share is not None and fig_len is not None
    assert [p[0] for p in problems] == [1, 2, 3] and problems[1][3] == "no_trained_tokens, strategy_not_applicable"
    opened = tab_audit.open_problem(s, problems[1][0])
    assert opened.number == 2 and s.index == 1 and "example <b>2</b> of 3" in opened.caption


def test_audit_broken_sample_maps_file_rows_to_positions(smol_tok):
    s = Session(data=load_sample("broken.jsonl"))
    s.settings.strategy = "response_template"
    s.settings.response_template = "<|im_start|>assistant\\n"
    _, _, _, _, problems = tab_audit.on_audit(s, progress=lambda *a, **k: None)
    rows = {p[1]: p[0] for p in problems}
    assert rows == {ex.row: k + 1 for k, ex in enumerate(s.data.examples)}


def test_audit_and_export_without_data_are_messages():
    s = Session()
    assert "Nothing to audit" in tab_audit.on_audit(s, progress=lambda *a, **k: None)[0]
    assert "Nothing to export" in tab_export.on_export(s, "JSONL", progress=lambda *a, **k: None)[0]


@pytest.mark.parametrize("strategy", ["bfd", "wrapped"])
def test_packing_preview_rows_and_boundaries(loaded, strategy):
    out, _ = loaded
    html, view = tab_audit.on_pack(out.session, strategy, 256, 0)
    n_rows = html.count('class="prow"')
    assert n_rows >= 3 and 'data-source="' in html
    assert 'class="brk"' in view and tokens_of(view)
    assert ("padding-free: True" in html) == (strategy == "bfd")
    bad, _ = tab_audit.on_pack(out.session, strategy, 0, 0)
    assert "positive max_length" in bad


# ------------------------------------------------------------------------------------------------------ Templates
def test_templates_checks_spans_derived_usage_and_generation(loaded):
    out, _ = loaded
    s = out.session
    head, checks, spans, derived = tab_templates.on_templates(s)
    assert "generation markers" in checks and "chk-fail" in checks and "chk-pass" in checks
    assert spans.count('class="spans"') == 2 and 'class="sc ra"' in spans
    assert "[1, 520, 9531, 198]" in derived
    usage = tab_templates.on_usage(s, r"<|im_start|>assistant\n")
    assert f"Found as text in <b>{len(s.data.examples)}</b> of {len(s.data.examples)}" in usage
    proof, marked, path = tab_templates.on_generate(s)
    assert "Proven" in proof and "{% generation %}" in marked
    assert Path(path).read_text() == marked
    use = tab_inspect.on_use_template(s, marked)
    assert s.chat_template == marked and use[7] == ""
    # rendering under the marked template with generation markers gives the same labels
    r_marked = s.render_current()
    s.chat_template = None
    assert r_marked.labels == s.render_current().labels


# ------------------------------------------------------------------------------------------------------ Export
@pytest.mark.parametrize("fmt", ["JSONL", "Parquet"])
def test_export_writes_engine_labels(loaded, smol_tok, fmt):
    out, _ = loaded
    s = out.session
    status, path = tab_export.on_export(s, fmt, progress=lambda *a, **k: None)
    assert path and Path(path).name == f"chat_multiturn.masked{tab_export.FORMATS[fmt]}" and "Wrote" in status
    if fmt == "JSONL":
        recs = [json.loads(line) for line in Path(path).read_text().splitlines()]
    else:
        import pyarrow.parquet as pq
        recs = pq.read_table(path).to_pylist()
    expected = render_examples(s.data.examples, smol_tok, s.config())
    assert [r["labels"] for r in recs] == [e.labels for e in expected]
    head, sft, axo, lf = tab_export.on_snippets(s)
    assert "SFTConfig" in sft and "datasets:" in axo and "stage" in lf and "assistant_only" in head


# ------------------------------------------------------------------------------------------------------ misc
def test_settings_parsing():
    assert unescape(r"<|im_start|>assistant\n") == "<|im_start|>assistant\n"
    assert parse_ids("[1, 520 9531]", "response_template") == [1, 520, 9531]
    with pytest.raises(MaskLensError, match="response_template"):
        parse_ids("1, two", "response_template")
    cfg = Settings(strategy="response_template", response_template="1,2", templates_as_ids=True, max_length=0,
                   instruction_template="  ").to_config()
    assert cfg.response_template == [1, 2] and cfg.instruction_template is None and cfg.max_length is None


def test_app_builds_without_side_effects_and_strategy_choices_are_the_registry():
    import gradio as gr

    from app.main import build_app, launch_options

    demo = build_app()
    radios = [b for b in demo.blocks.values() if isinstance(b, (gr.Radio, gr.Dropdown)) and b.label == "Strategy"]
    assert len(radios) == 1 and [c[1] for c in radios[0].choices] == STRATEGIES
    assert not demo.is_running
    opts = launch_options()
    assert opts["max_file_size"] and Path(opts["css_paths"][0]).is_file()


def test_cli_arguments():
    from app.__main__ import main, parse_args

    a = parse_args([])
    assert (a.host, a.port, a.auth, a.data, a.tokenizer) == ("127.0.0.1", 7860, None, None, None)
    a = parse_args(["--host", "0.0.0.0", "--port", "9000", "--auth", "u:p", "--data", "x.jsonl", "--tokenizer", "t"])
    assert (a.host, a.port, a.auth, a.data, a.tokenizer) == ("0.0.0.0", 9000, "u:p", "x.jsonl", "t")
    assert main(["--auth", "nopassword"]) == 2


def test_cli_data_and_tokenizer_open_the_page(tmp_path):
    p = tmp_path / "mine.jsonl"
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]})
                 + "\n")
    out = tab_inspect.make_loader(str(p), "embedded")()
    assert out[0].data.name == str(p) and tokens_of(out[1])  # the CLI path, as given
    missing = tab_inspect.make_loader(str(tmp_path / "nope.jsonl"), None)()
    assert "no such file" in missing[7]


def long_conversation(n_tokens_target: int = 4000) -> dict:
    msgs = [{"role": "system", "content": "You are a meticulous assistant."}]
    k = 0
    while sum(len(m["content"]) for m in msgs) < n_tokens_target * 4:
        msgs.append({"role": "user", "content": f"Question {k}: explain step {k} of the build, with details.\n"})
        msgs.append({"role": "assistant", "content": (f"Step {k}: run `make build-{k}`, then check the log.\n"
                                                      "    - compile\n    - link\n    - test\n") * 3})
        k += 1
    return {"messages": msgs}


def test_4000_token_conversation_renders_fast(smol_tok):
    ex = normalize_row(long_conversation(), 0)
    r = render_examples([ex], smol_tok, MaskConfig("assistant_only"))[0]
    assert r.n_tokens >= 4000
    t0 = time.perf_counter()
    infos = r.tokens(smol_tok)
    t1 = time.perf_counter()
    html = render.token_view_html(infos)
    t2 = time.perf_counter()
    assert len(tokens_of(html)) == r.n_tokens
    per_token = len(html) / r.n_tokens
    print(f"\n4k-token view: {r.n_tokens} tokens, tokens() {1000 * (t1 - t0):.1f} ms, HTML {1000 * (t2 - t1):.1f} ms, "
          f"{len(html) / 1024:.0f} KiB ({per_token:.0f} B/token)")
    assert per_token < 100  # minimal per-token markup
    assert t2 - t1 < 0.5


def test_a_row_the_template_cannot_render_does_not_stop_audit_or_export(smol_tok):
    # SmolLM2's template concatenates message['content']: an assistant turn with only tool_calls fails to render
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
            {"messages": [{"role": "user", "content": "Weather?"},
                          {"role": "assistant", "tool_calls": [{"type": "function",
                                                                "function": {"name": "w", "arguments": {}}}]}]}]
    from app.session import Dataset

    s = Session(data=Dataset("mixed.jsonl", [normalize_row(r, i) for i, r in enumerate(rows)], [], 2))
    s.index = 1
    assert "chat template failed to render" in tab_inspect.view(s).error
    head, _, _, counts, problems = tab_audit.on_audit(s, progress=lambda *a, **k: None)
    assert "render_failed" in counts and [p[1] for p in problems] == [1]
    status, path = tab_export.on_export(s, "JSONL", progress=lambda *a, **k: None)
    assert len(Path(path).read_text().splitlines()) == 1 and "rows 1" in status
    html, _ = tab_audit.on_pack(s, "bfd", 64, 0)
    assert html.count('class="prow"') == 1


def test_out_of_range_numbers_open_the_nearest_example_or_an_error_box(loaded):
    """Example 0, -3 or 99 and a negative max_length never reach Gradio's bounds check (which raised and blanked the
    tab's panels): the example number is clamped, a bad max_length is the error box."""
    out, _ = loaded
    s = out.session
    n = len(s.data.examples)
    assert "example <b>1</b> of" in tab_inspect.on_jump(s, 0).caption and s.index == 0
    assert "example <b>1</b> of" in tab_inspect.on_jump(s, -3).caption and s.index == 0
    assert f"example <b>{n}</b> of {n}" in tab_inspect.on_jump(s, 99).caption and s.index == n - 1
    bad = tab_inspect.on_settings(s, *settings_values(max_length=-5))
    assert "max_length" in bad.error and "positive number of tokens" in bad.error
    from app.main import build_app

    demo = build_app()
    for elem_id in ("example-number", "max-length"):  # Inspect's numbers: bounds are checked here instead
        box = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)
        assert box.minimum is None and box.maximum is None


@pytest.mark.parametrize("fmt", ["JSONL", "Parquet"])
def test_export_with_the_attention_mask_column_the_snippets_name(loaded, fmt):
    """axolotl's and LLaMA-Factory's snippets point at the attention_mask column: the Export tab writes it."""
    s = loaded[0].session
    status, path = tab_export.on_export(s, fmt, True, progress=lambda *a, **k: None)
    import datasets

    ds = datasets.load_dataset("json" if fmt == "JSONL" else "parquet", data_files=path, split="train")
    assert ds.column_names == ["input_ids", "labels", "attention_mask", "row"] and "attention_mask" in status
    assert all(m == [1] * len(i) for m, i in zip(ds["attention_mask"], ds["input_ids"]))
    _, _, axo, lf = tab_export.on_snippets(s)
    assert "attention_mask column (Export tab checkbox" in axo and "attention_mask column (Export tab" in lf
    assert "attention_mask=True (" not in axo  # no option that does not exist


def test_a_finding_with_many_paths_shows_a_short_location():
    """schema_nulls_injected on a row with 63 null paths: the card's location line is short (it was one 63-item
    list that overflowed the findings column); the message keeps naming the first paths."""
    from app.render import findings_html, location_text
    from core.findings import Finding

    paths = [f"tools[0].function.parameters.properties.p{i}" for i in range(63)]
    f = Finding("schema_nulls_injected", "row 3: `datasets` adds 63 key(s) with null here: ...",
                location={"paths": paths})
    loc = location_text(f.location)
    assert loc.startswith("paths tools[0]") and loc.endswith("…") and len(loc) <= 60
    assert location_text({"paths": ["a.x", "a.y", "b", "c", "d"]}) == "paths a.x, a.y, b … (+2)"
    assert location_text({"token": 41}) == "token 41"
    html = findings_html([f])
    assert "p62" not in html and "p0" in html


def test_a_mask_token_that_masks_nothing_is_flagged_beside_the_box(loaded):
    s = loaded[0].session
    typo = tab_inspect.on_settings(s, *settings_values(mask_tokens="notatoken_xyz, <|im_end|>"))
    assert "not a token of this tokenizer and not in this example: notatoken_xyz" in typo.mask_tokens["info"]
    assert "<|im_end|>" not in typo.mask_tokens["info"].split("⚠")[1]
    ok = tab_inspect.on_settings(s, *settings_values(mask_tokens="<|im_end|>"))
    assert "⚠" not in ok.mask_tokens["info"]
    phrase = s.example.raw["messages"][0]["content"][:15]  # several tokens, in the text: it masks something
    assert phrase in s.render_current().text and phrase not in s.tokenizer().get_vocab()
    assert "⚠" not in tab_inspect.on_settings(s, *settings_values(mask_tokens=phrase)).mask_tokens["info"]


def test_compare_follows_inspects_template_and_says_which_it_renders(smol_tok):
    """A template picked in Inspect (qwen3) is what Compare's default 'as in Inspect' renders and names; 'tokenizer's
    own template' really is the tokenizer's; different renderings are explained by the templates used."""
    s = Session(data=load_sample("reasoning.jsonl"))
    qwen3 = tab_compare.resolve_template(s, "trl:qwen3.jinja")[0]
    s.chat_template = qwen3
    Cfg = tab_compare.Cfg
    assert Cfg("full").chat_template == tab_compare.INSPECT_TEMPLATE
    assert tab_compare.resolve_template(s, tab_compare.INSPECT_TEMPLATE) == (qwen3, "qwen3")
    summary, views = compare(s, 2, Cfg("full"), Cfg("full", chat_template=tab_compare.TOKENIZER_TEMPLATE))
    want = [render_examples([s.example], smol_tok, MaskConfig("full", chat_template=t))[0] for t in (qwen3, None)]
    assert [[i for _, i, _ in tokens_of(v)] for v in views[:2]] == [r.input_ids for r in want]
    assert "full · qwen3" in summary or "qwen3" in summary.split("<tbody>")[1]
    s.index = 1  # two turns with reasoning: the twin keeps the first turn's, the inference template drops it
    summary, _ = compare(s, 2, Cfg("full"), Cfg("assistant_only"))  # assistant_only: TRL's qwen3 training twin
    assert "they render with different templates" in summary and "training template" in summary


def test_templates_tab_with_a_trl_template_says_trl_swaps_in_its_twin(smol_tok):
    """qwen3 picked in Inspect: the Templates tab names it, says TRL swaps in its training template, 'Generate'
    hands over TRL's own twin (not an error), and 'Use it in Inspect' with nothing generated says so in the tab."""
    from core.masking.trl_templates import training_template

    s = Session(data=load_sample("reasoning.jsonl"))
    s.chat_template = tab_compare.resolve_template(s, "trl:qwen3.jinja")[0]
    head, checks, _, _ = tab_templates.on_templates(s)
    assert "TRL's <code>qwen3</code>, picked in Inspect" in head and "swaps in its own <code>qwen3</code>" in head
    proof, marked, path = tab_templates.on_generate(s)
    assert "ships a" in proof and marked == training_template(smol_tok, s.chat_template).template
    assert "{% generation %}" in marked and Path(path).read_text() == marked
    empty = tab_inspect.on_use_template(s, "")
    assert "Generate a marked template first" in empty[-1] and s.chat_template != ""


# ------------------------------------------------------------------------------------------------------ first minutes
def test_the_first_view_names_the_source_in_effect_and_offers_the_marked_template(loaded, smol_tok):
    """The embedded SmolLM2 template is one TRL cannot patch: the Template source radio shows MaskLens's own masking,
    locked; the line above the tokens says why in plain words; one click gives the proven marked copy."""
    from core.masking.checks import add_generation_markers

    out, _ = loaded
    s = out.session
    assert out.source["value"] == "own" and out.source["interactive"] is False
    assert out.use_marked["visible"] is True
    assert "masked by MaskLens" in out.template_line and "raises" not in out.template_line
    before = [lab for *_, lab in tokens_of(out.view)]
    # the locked radio sends "own" with every other control's event: not a choice, the session keeps "trl"
    tab_inspect.on_settings(s, *settings_values(template_source="own"))
    assert s.settings.template_source == "trl"

    res = inspect_out(tab_inspect.on_use_marked(s))
    assert s.chat_template == add_generation_markers(smol_tok, smol_tok.chat_template)
    assert tab_inspect.template_choice(s) == tab_inspect.MARKED_TEMPLATE and res.template_pick["value"] == "marked"
    assert "proven on 7 conversations" in res.notice  # the sample's 6 and a probe
    assert res.source == {**res.source, "value": "trl", "interactive": True} and res.use_marked["visible"] is False
    assert "trl_cannot_patch" not in res.findings and "{% generation %} markers" in res.template_line
    assert [lab for *_, lab in tokens_of(res.view)] == before  # proven: TRL's mask equals MaskLens's
    # the picker's entry does the same, and a pick Gradio sends twice is answered once
    other = tab_inspect.on_load()[0]
    assert inspect_out(tab_inspect.on_pick_template(other, "marked")).notice
    assert tab_inspect.on_pick_template(other, "marked") == tab_inspect._unchanged()


@pytest.mark.parametrize("sample, strategy", [("prompt_completion.jsonl", "completion_only"),
                                              ("prompt_completion_chat.jsonl", "completion_only"),
                                              ("text.jsonl", "full")])
def test_the_strategy_follows_the_datas_format(loaded, sample, strategy):
    out, _ = loaded
    s = out.session
    res = inspect_out(tab_inspect.on_sample(s, sample))
    assert s.settings.strategy == strategy and f"Strategy set to <b>{strategy}</b>" in res.notice
    assert res.strategy["value"] == strategy and '"sev-error"' not in res.findings
    assert any(lab != IGNORE for *_, lab in tokens_of(res.view))
    back = inspect_out(tab_inspect.on_sample(s, "chat_multiturn.jsonl"))
    assert s.settings.strategy == "assistant_only" and "Strategy set to" in back.notice


def test_data_of_the_same_format_keeps_the_strategy_chosen(loaded):
    out, _ = loaded
    s = out.session
    tab_inspect.on_settings(s, *settings_values(strategy="last_assistant"))
    res = inspect_out(tab_inspect.on_sample(s, "weighted.jsonl"))
    assert s.settings.strategy == "last_assistant" and "Strategy" not in res.notice


@pytest.mark.parametrize("sample, missing", [("reasoning.jsonl", ["reasoning"]), ("tools.jsonl", ["tool calls"]),
                                             ("agent_traces.jsonl", ["tool calls"])])
def test_samples_render_with_a_template_that_shows_their_feature(loaded, sample, missing):
    """SmolLM2's own template drops reasoning_content and tool_calls: such data renders with TRL's qwen3 (this
    vocabulary), and the notice says so; other data goes back to the tokenizer's own."""
    out, _ = loaded
    s = out.session
    assert pickers.unrendered_features(Session(data=load_sample(sample))) == missing
    res = inspect_out(tab_inspect.on_sample(s, sample))
    assert tab_inspect.template_choice(s) == "trl:qwen3" and "qwen3.jinja" in res.notice
    assert " and ".join(missing) in res.notice
    assert "reasoning_not_rendered" not in res.findings and "tool_call_not_trained" not in res.findings
    part = "pr" if missing == ["reasoning"] else "pt"
    assert any(part in c.split() and lab != IGNORE for c, _, lab in tokens_of(res.view))
    back = inspect_out(tab_inspect.on_sample(s, "chat_multiturn.jsonl"))
    assert s.chat_template is None and "back to <b>the tokenizer&#x27;s own chat template</b>" in back.notice


def test_a_template_the_user_picked_stays_when_the_data_changes(loaded):
    out, _ = loaded
    s = out.session
    tab_inspect.on_pick_template(s, "trl:llama3")
    res = inspect_out(tab_inspect.on_sample(s, "reasoning.jsonl"))
    assert tab_inspect.template_choice(s) == "trl:llama3" and "qwen3" not in res.notice


def test_an_upload_stays_in_the_data_picker(loaded):
    out, _ = loaded
    s = out.session
    res = inspect_out(tab_inspect.on_upload(s, str(SAMPLES_DIR / "weighted.jsonl")))
    entry = tab_inspect.UPLOADED + "weighted.jsonl"
    assert res.data_pick["value"] == entry and ("weighted.jsonl — your file", entry) in res.data_pick["choices"]
    uploaded = s.data
    tab_inspect.on_sample(s, "chat_multiturn.jsonl")
    again = inspect_out(tab_inspect.on_sample(s, entry))
    assert s.data is uploaded and again.data_pick["value"] == entry


def test_an_example_number_out_of_range_says_which_is_shown(loaded):
    out, _ = loaded
    s = out.session
    res = tab_inspect.on_jump(s, 99)
    assert res.number == 6 and "There is no example 99" in res.notice and "(the last)" in res.notice
    assert tab_inspect.on_jump(s, 2).notice == ""


def test_fixes_in_the_app_name_its_controls_not_cli_flags():
    from core.findings import CODES, Finding

    flag = re.compile(r"(?<![\w-])--[a-z]")
    for code in CODES:
        assert not flag.search(render.findings_html([Finding(code, "m")])), code
    core_text = "".join(p.read_text() for p in (Path(__file__).parent.parent / "core").rglob("*.py"))
    for cli, app in render.APP_WORDING:
        assert cli in core_text, f"{cli!r} is no longer in core: drop it from APP_WORDING"
        box = render.error_html(f"x. Fix: {cli}")
        assert cli not in box and render.esc(app) in box
    assert "Chat template" in render.error_html(str(MaskLensError("no chat template",
                                                                  fix="pass --chat-template FILE (a jinja template)")))


def test_findings_and_their_counts_list_errors_first():
    from core.findings import Finding

    html = render.findings_html([Finding("trl_cannot_patch", "m"), Finding("pad_is_eos", "m"),
                                 Finding("no_trained_tokens", "m")])
    assert [m for m in re.findall(r'data-code="(\w+)"', html)] == ["no_trained_tokens", "pad_is_eos",
                                                                     "trl_cannot_patch"]
    counts = render.finding_counts_html({"template_swapped": 9, "pad_is_eos": 5, "no_trained_tokens": 1})
    assert re.findall(r"<code>(\w+)</code>", counts) == ["no_trained_tokens", "pad_is_eos", "template_swapped"]
    folded = render.findings_html([Finding("trl_cannot_patch", "TRL would raise: ValueError: x")])
    assert "<details" in folded and folded.index("ValueError") > folded.index("<summary>")


def test_export_offers_split_rows_only_with_split_turns():
    s = Session()
    assert tab_export.SPLIT_ROWS not in tab_export.formats(s)
    assert tab_export.on_formats(s, tab_export.SPLIT_ROWS)["value"] == "JSONL"
    s.settings.split_turns = True
    assert tab_export.on_formats(s, tab_export.SPLIT_ROWS)["value"] == tab_export.SPLIT_ROWS


def test_a_pick_sent_twice_at_once_keeps_the_first_picks_notice(monkeypatch):
    """Gradio's dropdown sends a pick twice and its queue may run the two at once: the second waits for the first,
    sees the data already picked and changes nothing, so the first's notice ("Strategy set to ...") stays."""
    import threading
    import time

    from app import session as session_mod
    from app import tab_inspect
    from app.inspect_view import InspectOut

    import dataclasses

    s = tab_inspect.Session()
    s.data = session_mod.load_sample("prompt_completion.jsonl")  # as after picking it: completion_only
    s.settings = dataclasses.replace(s.settings, strategy="completion_only")
    real = tab_inspect.load_sample

    def slow(name):
        time.sleep(0.3)
        return real(name)

    monkeypatch.setattr(tab_inspect, "load_sample", slow)
    outs = []

    def pick():
        outs.append(tab_inspect.on_sample(s, "chat_multiturn.jsonl"))

    threads = [threading.Thread(target=pick) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    notice = InspectOut._fields.index("notice")
    assert "Strategy set to <b>assistant_only</b>" in outs[0][notice]
    assert outs[1] == tab_inspect._unchanged()
    assert s.settings.strategy == "assistant_only"


def test_a_sessions_pick_lock_goes_with_it():
    import gc

    from app import tab_inspect

    s = tab_inspect.Session()
    assert tab_inspect._one_pick_at_a_time(s) is tab_inspect._one_pick_at_a_time(s)
    key = id(s)
    assert key in tab_inspect._PICKS
    del s
    gc.collect()
    assert key not in tab_inspect._PICKS
