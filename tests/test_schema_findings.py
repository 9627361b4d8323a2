"""schema_nulls_injected / datasets_cannot_load reach the user: loading a file attaches them to the rows `datasets`
would change, naming exactly the keys the real `Dataset.from_list` adds with null (issue 7)."""

from __future__ import annotations

import json

from datasets import Dataset

from core.data.formats import load_examples, load_examples_lenient
from core.masking.engine import MaskConfig, render_examples
from core.models import load_tokenizer


def _call(args, name="get_weather"):
    return {"messages": [{"role": "user", "content": "weather?"},
                         {"role": "assistant", "content": "",
                          "tool_calls": [{"type": "function", "function": {"name": name, "arguments": args}}]},
                         {"role": "tool", "name": name, "content": "18 C"},
                         {"role": "assistant", "content": "It is 18 C."}]}


def _write(tmp_path, rows):
    p = tmp_path / "agent.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _null_paths(value, path=""):
    """Paths of None values in what datasets hands back."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _null_paths(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _null_paths(v, f"{path}[{i}]")
    elif value is None:
        yield path


def test_nulls_named_as_datasets_adds_them(tmp_path):
    rows = [_call({"city": "Paris"}), _call({"city": "Oslo", "unit": "celsius"}), _call({"city": "Rome"})]
    examples = load_examples(_write(tmp_path, rows))
    loaded = Dataset.from_list(rows)
    for ex, got in zip(examples, loaded):
        real = {p for p in _null_paths(got) if ".arguments." in p}
        notes = [f for f in ex.notes if f.code == "schema_nulls_injected"]
        if real:
            assert notes and set(notes[0].location["paths"]) == real, (ex.row, notes, real)
            assert notes[0].severity == "warning"
        else:
            assert not notes, (ex.row, notes)
    assert any(f.code == "schema_nulls_injected" for ex in examples for f in ex.notes)


def test_the_finding_reaches_rendered_examples_and_lenient_loading(tmp_path):
    p = _write(tmp_path, [_call({"city": "Paris"}), _call({"city": "Oslo", "unit": "celsius"})])
    examples, errors = load_examples_lenient(p)
    assert not errors
    r = render_examples(examples, load_tokenizer(), MaskConfig("assistant_only"), errors="finding")
    codes = [{f.code for f in x.findings} for x in r]
    assert "schema_nulls_injected" in codes[0] and "schema_nulls_injected" not in codes[1]
    assert "arguments.unit" in next(f.message for f in r[0].findings if f.code == "schema_nulls_injected")


def test_rows_datasets_cannot_load_are_flagged(tmp_path):
    rows = [_call({"city": "Paris"}), _call(json.dumps({"city": "Oslo"}))]
    try:
        Dataset.from_list(rows)
        raised = False
    except Exception:  # noqa: BLE001  (pyarrow's ArrowInvalid/ArrowTypeError)
        raised = True
    assert raised, "the real datasets loads these rows: the premise of this test changed"
    examples = load_examples(_write(tmp_path, rows))
    for ex in examples:
        f = [f for f in ex.notes if f.code == "datasets_cannot_load"]
        assert f and "arguments" in f[0].message


def test_uniform_rows_get_no_finding(tmp_path):
    examples = load_examples(_write(tmp_path, [_call(json.dumps({"city": "Paris"})),
                                               _call(json.dumps({"city": "Oslo", "unit": "c"}))]))
    assert not [f for ex in examples for f in ex.notes if f.code in ("schema_nulls_injected", "datasets_cannot_load")]
