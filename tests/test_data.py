"""Reading TRL's dataset formats from every file type, and errors that name file, row, field and fix."""

import json

import pytest

from core.data.formats import (KIND_MESSAGES, KIND_PC_CONV, KIND_PC_TEXT, KIND_TEXT, KIND_TOKENS, load_examples,
                       load_examples_lenient, normalize_row)
from core.masking.engine import MaskConfig, render_examples
from core.errors import MaskLensError

ROWS = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    {"prompt": "The sky is", "completion": " blue."},
    {"prompt": [{"role": "user", "content": "Sky?"}], "completion": [{"role": "assistant", "content": "Blue."}]},
    {"text": "plain text"},
    {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]},
]
KINDS = [KIND_MESSAGES, KIND_PC_TEXT, KIND_PC_CONV, KIND_TEXT, KIND_TOKENS]


def test_kinds():
    assert [normalize_row(r, i).kind for i, r in enumerate(ROWS)] == KINDS


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "csv"])
def test_file_formats(tmp_path, fmt):
    rows = [{"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}]}
            for i in range(3)]
    p = tmp_path / f"d.{fmt}"
    if fmt == "jsonl":
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        p.write_text(json.dumps(rows))
    else:
        import pandas as pd

        df = pd.DataFrame({"messages": [json.dumps(r["messages"]) if fmt == "csv" else r["messages"] for r in rows]})
        df.to_parquet(p) if fmt == "parquet" else df.to_csv(p, index=False)
    exs = load_examples(p)
    assert [e.messages[1]["content"] for e in exs] == ["A0", "A1", "A2"]


def test_sharegpt_converted_and_roles_mapped():
    e = normalize_row({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]})
    assert e.kind == KIND_MESSAGES and [m["role"] for m in e.messages] == ["user", "assistant"]
    assert e.notes[0].code == "roles_mapped"


def test_weight_and_train_flags_are_not_trained(smol_tok):
    e = normalize_row({"messages": [
        {"role": "user", "content": "a?"}, {"role": "assistant", "content": "WRONG", "weight": 0},
        {"role": "user", "content": "b?"}, {"role": "assistant", "content": "SKIPPED", "train": False},
        {"role": "user", "content": "c?"}, {"role": "assistant", "content": "RIGHT", "weight": 1}]})
    for strategy in ("assistant_only", "last_assistant"):
        (r,) = render_examples([e], smol_tok, MaskConfig(strategy=strategy))
        trained = smol_tok.decode([t for t, la in zip(r.input_ids, r.labels) if la != -100])
        assert "RIGHT" in trained and "WRONG" not in trained and "SKIPPED" not in trained
    (r,) = render_examples([e], smol_tok, MaskConfig(strategy="full"))
    assert r.n_trained == r.n_tokens  # full means every token


@pytest.mark.parametrize("row,pattern", [
    ({"messages": [{"role": "wizard", "content": "x"}]}, r"field 'messages\[0\]\.role'.*unknown role"),
    ({"messages": [{"role": "user", "content": ["a"]}]}, r"messages\[0\]\.content.*must be a string"),
    ({"messages": [{"role": "user"}]}, r"messages\[0\]\.content.*no 'content'"),
    ({"messages": []}, r"empty list"),
    ({"prompt": "x"}, r"field 'completion'.*missing"),
    ({"prompt": "x", "completion": [{"role": "assistant", "content": "y"}]}, r"both as strings"),
    ({"input_ids": [1, 2], "labels": [1]}, r"field 'labels'.*has 1 entries"),
    ({"messages": [{"role": "user", "content": "x", "weight": 0}]}, r"only assistant messages"),
    ({"messages": [{"role": "assistant", "content": "x", "weight": 2}]}, r"weight must be 0 or 1"),
    ({"foo": 1}, r"no known field"),
])
def test_bad_rows(row, pattern):
    with pytest.raises(MaskLensError, match=pattern) as ei:
        normalize_row(row, 7, source="data.jsonl", line=8)
    assert "file data.jsonl, row 7" in str(ei.value) and "line 8" in str(ei.value)


def test_lenient_loading_keeps_good_rows(tmp_path):
    p = tmp_path / "mixed.jsonl"
    p.write_text('{"text": "ok"}\n{"text": 3}\n{broken\n\n{"text": "also ok"}\n')
    exs, errs = load_examples_lenient(p)
    assert [e.text for e in exs] == ["ok", "also ok"]
    assert len(errs) == 2 and "line 3" in str(errs[1]) and "field 'text'" in str(errs[0])


def test_file_level_errors(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(MaskLensError, match="empty"):
        load_examples(tmp_path / "e.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(MaskLensError, match="unsupported file type"):
        load_examples(tmp_path / "x.txt")
    with pytest.raises(MaskLensError, match="no such file"):
        load_examples(tmp_path / "missing.jsonl")


def test_hub_id_without_network_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(MaskLensError, match="hub dataset"):
        load_examples("nobody/no-such-dataset")


def test_template_that_raises_names_the_row(smol_tok):
    tpl = "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}{{ m['content'] }}{% endfor %}"
    exs = [normalize_row({"messages": [{"role": "user", "content": "x"}]}, 0, source="d.jsonl"),
           normalize_row({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}]}, 1,
                         source="d.jsonl")]
    with pytest.raises(MaskLensError, match=r"row 1.*no system role"):
        render_examples(exs, smol_tok, MaskConfig(strategy="full", chat_template=tpl))


def test_tools_column_as_json_string(smol_tok):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    e = normalize_row({"messages": ROWS[0]["messages"], "tools": json.dumps(tools)})
    assert e.tools == tools


def test_render_failure_as_finding_keeps_other_rows(smol_tok):
    tpl = "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}{{ m['content'] }}{% endfor %}"
    exs = [normalize_row({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}]}, 0),
           normalize_row({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}, 1)]
    bad, good = render_examples(exs, smol_tok, MaskConfig(strategy="full", chat_template=tpl), errors="finding")
    assert bad.findings[0].code == "render_failed" and "no system role" in bad.findings[0].message
    assert bad.input_ids == [] and good.n_trained == good.n_tokens > 0


def test_user_templates_are_sandboxed(smol_tok):
    """A template reaching for Python internals fails like in transformers' sandbox, as a clear error."""
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    ex = normalize_row({"messages": [{"role": "user", "content": "x"}]}, 0, source="d.jsonl")
    with pytest.raises(MaskLensError, match="chat template failed to render.*(unsafe|SecurityError|access)"):
        render_examples([ex], smol_tok, MaskConfig(strategy="full", chat_template=evil))
