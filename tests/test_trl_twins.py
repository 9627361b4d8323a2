"""assistant_only == what TRL 1.16's SFTTrainer(assistant_only_loss=True) prepares, on today's chat templates.

For every text-only template pair TRL ships (trl/chat_templates/X.jinja with its X_training.jinja twin), a tokenizer
carrying X.jinja as its own template (tests/trl_reference.py) renders the hand-written conversations of
tests/assets/conversations/ (plain chats, reasoning traces, tool-calling agents) through the engine and through TRL's
own dataset preparation: input_ids and labels must be identical. Rows TRL cannot render must be reported by the engine,
not crashed on. Templates TRL cannot patch (no twin) get MaskLens's own masking and a `trl_cannot_patch` finding. The
twin comes from TRL's own function (a monkeypatched one is followed), and `template_swapped` appears exactly when the
twin renders a row differently from the tokenizer's own template.
"""

from __future__ import annotations

import copy
import re

import pytest
from trl.chat_template_utils import get_training_chat_template, has_generation_markers

from core.data.formats import normalize_row
from core.masking.engine import MaskConfig, render_examples
from core.errors import MaskLensError
from tests import trl_reference as ref
from tests.trl_reference import FAMILIES, first_difference, load_conversations, render_text, template_text

DATASETS = ("plain", "reasoning", "tools")
ROWS = {name: load_conversations(name) for name in DATASETS}
# Text-only templates TRL ships without a training twin. Those with their own {% generation %} markers (LFM2.5) are
# used as they are by SFTTrainer; on the others SFTTrainer(assistant_only_loss=True) raises.
_ALONE = sorted(p.stem for p in ref.TEMPLATES.glob("*.jinja")
                if not p.stem.endswith("_training") and not (ref.TEMPLATES / f"{p.stem}_training.jinja").exists()
                and p.stem not in ref.VLM and not p.stem.endswith("_vl"))
MARKED = [n for n in _ALONE if has_generation_markers(template_text(n))]
NO_TWIN = [n for n in _ALONE if n not in MARKED]
CASES = [pytest.param(f, d, id=f"{f}-{d}") for f in FAMILIES + MARKED for d in DATASETS]
ASSISTANT_ONLY = MaskConfig("assistant_only")

_TRL: dict[str, dict[str, list]] = {}
_OURS: dict[tuple, list] = {}


def trl_results(family_tok, family: str) -> dict[str, list]:
    """TRL's preparation of every dataset for this family, in one trl_prepare call (cached for the session)."""
    if family not in _TRL:
        rows = [r for d in DATASETS for r in ROWS[d]]
        out = ref.trl_prepare(family_tok(family), rows)
        _TRL[family], k = {}, 0
        for d in DATASETS:
            _TRL[family][d] = out[k: k + len(ROWS[d])]
            k += len(ROWS[d])
    return _TRL[family]


def trl_template(family: str) -> str:
    """What SFTTrainer(assistant_only_loss=True) renders FAMILY.jinja with: its twin, or itself when it is marked."""
    return template_text(family) if family in MARKED else template_text(f"{family}_training")


def engine_results(tok, key, rows: list[dict], cfg: MaskConfig = ASSISTANT_ONLY) -> list:
    """One entry per row: the RenderedExample (errors="finding"), or the MaskLensError normalize_row raised."""
    if key not in _OURS:
        examples, out = [], [None] * len(rows)
        for i, r in enumerate(rows):
            try:
                examples.append(normalize_row(r, i))
            except MaskLensError as e:
                out[i] = e
        for ex, r in zip(examples, render_examples(examples, tok, cfg, errors="finding")):
            out[ex.row] = r
        _OURS[key] = out
    return _OURS[key]


def codes(r) -> list[str]:
    return [f.code for f in r.findings]


def failed(r) -> bool:
    return isinstance(r, Exception) or "render_failed" in codes(r)


# ----------------------------------------------------------------------------------------- the reference itself
@pytest.mark.parametrize("family", FAMILIES + MARKED)
def test_reference_is_trl_rendering_rows_as_written(family_tok, family):
    """TRL swaps in its twin for X.jinja, and what it prepares is the twin's rendering of each row as written."""
    tok = family_tok(family)
    twin = trl_template(family)
    if family in FAMILIES:
        assert get_training_chat_template(tok) == twin, f"TRL does not swap {family}.jinja for {family}_training.jinja"
    prepared = 0
    for d in DATASETS:
        for i, (row, theirs) in enumerate(zip(ROWS[d], trl_results(family_tok, family)[d])):
            if isinstance(theirs, Exception):
                continue
            tools = row.get("tools")
            out = tok.apply_chat_template(copy.deepcopy(row["messages"]), tools=tools, chat_template=twin,
                                          tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
            assert theirs["input_ids"] == out["input_ids"], f"{family}/{d} row {i}"
            assert theirs["labels"] == [t if m else -100 for t, m in zip(out["input_ids"], out["assistant_masks"])]
            prepared += 1
    n = sum(len(r) for r in ROWS.values())
    assert prepared >= len(ROWS["plain"]), f"{family}: TRL prepared only {prepared} of {n} rows; the comparison would be thin"


def test_reference_avoids_datasets_schema_nulls(family_tok):
    """Why trl_prepare feeds rows as written: Dataset.from_list pads tool-call arguments with the keys other rows
    have, as null, and the template renders them (the engine's schema_nulls_injected finding is about this)."""
    tok = family_tok("qwen3")
    rows = [r for r in ROWS["tools"]
            if all(isinstance(c["function"]["arguments"], dict) for m in r["messages"] for c in m.get("tool_calls", []))]
    assert len(rows) >= 3
    written = ref.trl_prepare(tok, rows)
    via_arrow = ref.trl_prepare(tok, rows, as_written=False)
    changed = [i for i, (a, b) in enumerate(zip(written, via_arrow)) if a["input_ids"] != b["input_ids"]]
    assert changed, "Dataset.from_list no longer changes these rows: the as-written path may be unnecessary"
    assert "null" in tok.decode(via_arrow[changed[0]]["input_ids"])
    assert "null" not in tok.decode(written[changed[0]]["input_ids"])


# ------------------------------------------------------------------------------------------- engine == TRL
@pytest.mark.parametrize("family,dataset", CASES)
def test_assistant_only_equals_trl(family_tok, family, dataset):
    tok = family_tok(family)
    theirs = trl_results(family_tok, family)[dataset]
    ours = engine_results(tok, (family, dataset), ROWS[dataset])
    problems, compared = [], 0
    for i, (o, t) in enumerate(zip(ours, theirs)):
        if isinstance(t, Exception):
            continue  # test_unrenderable_rows_are_reported
        compared += 1
        if isinstance(o, Exception):
            problems.append(f"row {i}: normalize_row rejects a row TRL prepares: {o}")
        elif failed(o):
            problems.append(f"row {i}: engine reports render_failed on a row TRL prepares: {o.findings}")
        elif o.input_ids != t["input_ids"] or o.labels != t["labels"]:
            what = "input_ids" if o.input_ids != t["input_ids"] else "labels"
            problems.append(f"row {i}: {what} differ from TRL's; " +
                            first_difference(tok, o.input_ids, t["input_ids"], o.labels, t["labels"]))
        elif family in FAMILIES and not re.search(rf"\b{re.escape(family)}\b", o.template_label or ""):
            problems.append(f"row {i}: template_label {o.template_label!r} does not name TRL's {family} twin")
    if not compared:
        pytest.skip(f"TRL renders no {dataset} row with {family}'s training template")
    assert not problems, f"{family}/{dataset}: {len(problems)} of {compared} rows differ from TRL 1.16:\n" + \
        "\n".join(problems)


@pytest.mark.parametrize("family,dataset", CASES)
def test_unrenderable_rows_are_reported(family_tok, family, dataset):
    """A row TRL raises on comes back with a render_failed finding (errors="finding") or a MaskLensError naming the
    row (errors="raise"); the engine never crashes on it nor trains it."""
    tok = family_tok(family)
    theirs = trl_results(family_tok, family)[dataset]
    bad = [i for i, t in enumerate(theirs) if isinstance(t, Exception)]
    if not bad:
        pytest.skip(f"TRL prepares every {dataset} row with {family}")
    ours = engine_results(tok, (family, dataset), ROWS[dataset])
    problems = []
    for i in bad:
        o = ours[i]
        trl_error = f"{type(theirs[i]).__name__}: {str(theirs[i])[:100]}"
        if isinstance(o, MaskLensError):
            if o.row != i:
                problems.append(f"row {i}: normalize_row's error names row {o.row}: {o}")
            continue
        if not failed(o):
            problems.append(f"row {i}: TRL raises ({trl_error}) but the engine renders it "
                            f"({o.n_trained} trained tokens, findings {codes(o)})")
            continue
        try:
            render_examples([normalize_row(ROWS[dataset][i], i)], tok, ASSISTANT_ONLY, errors="raise")
        except MaskLensError as e:
            if e.row != i and f"row {i}" not in str(e):
                problems.append(f"row {i}: errors='raise' gives a MaskLensError not naming the row: {e}")
        except Exception as e:  # noqa: BLE001
            problems.append(f"row {i}: errors='raise' crashes with {type(e).__name__}: {e}")
        else:
            problems.append(f"row {i}: errors='raise' renders a row TRL raises on ({trl_error})")
    assert not problems, f"{family}/{dataset}: rows TRL cannot render:\n" + "\n".join(problems)


@pytest.mark.parametrize("family,dataset", CASES)
def test_template_swapped_exactly_when_renderings_differ(family_tok, family, dataset):
    tok = family_tok(family)
    twin = trl_template(family)
    ours = engine_results(tok, (family, dataset), ROWS[dataset])
    problems, checked = [], 0
    for i, (row, o) in enumerate(zip(ROWS[dataset], ours)):
        if failed(o):
            continue
        try:
            own_text = render_text(tok, row)
        except Exception:  # noqa: BLE001  (the inference template cannot render it; the twin can)
            continue
        twin_text = render_text(tok, row, twin)
        differs = own_text != twin_text
        checked += 1
        if differs != ("template_swapped" in codes(o)):
            k = next((j for j, (a, b) in enumerate(zip(own_text, twin_text)) if a != b), min(len(own_text), len(twin_text)))
            where = (f"first differing character {k}: own {own_text[max(0, k - 30): k + 30]!r} / "
                     f"twin {twin_text[max(0, k - 30): k + 30]!r}") if differs else "identical renderings"
            problems.append(f"row {i}: template_swapped finding {'missing' if differs else 'present'} ({where})")
    if not checked:
        pytest.skip(f"no {dataset} row renders with both of {family}'s templates")
    assert not problems, f"{family}/{dataset}:\n" + "\n".join(problems)


# ------------------------------------------------------------------------------- templates TRL cannot patch
def _no_twin_tokenizer(smol_tok, name):
    return smol_tok if name == "smollm2" else ref.family_tokenizer(smol_tok, name, tag_tokens=True)


@pytest.mark.parametrize("name", NO_TWIN + ["smollm2"])
def test_trl_cannot_patch(smol_tok, name):
    """TRL raises on these; the engine says so (trl_cannot_patch) and still masks with its own marker-free masking."""
    tok = _no_twin_tokenizer(smol_tok, name)
    with pytest.raises(ValueError, match="patching is not supported"):
        get_training_chat_template(tok)
    rows = ROWS["plain"] + ROWS["reasoning"] + ROWS["tools"]
    with pytest.raises(ValueError, match="patching is not supported"):
        ref.trl_prepare(tok, rows[:2])  # SFTTrainer's own error
    ours = engine_results(tok, ("no_twin", name), rows)
    problems, masked = [], 0
    for i, (row, o) in enumerate(zip(rows, ours)):
        try:
            render_text(tok, row)
        except Exception:  # noqa: BLE001
            if not failed(o):
                problems.append(f"row {i}: the template cannot render it, yet no render_failed / MaskLensError")
            continue
        if failed(o):
            problems.append(f"row {i}: renders with the template but the engine fails: "
                            f"{o if isinstance(o, Exception) else o.findings}")
            continue
        masked += 1
        if "trl_cannot_patch" not in codes(o):
            problems.append(f"row {i}: no trl_cannot_patch finding (findings: {codes(o)})")
        trained = tok.decode([t for t, la in zip(o.input_ids, o.labels) if la != -100])
        if not o.n_trained:
            problems.append(f"row {i}: nothing trained")
        for j, m in enumerate(row["messages"]):
            text = (m.get("content") or "").strip()
            if m["role"] in ("user", "system") and text in trained:
                problems.append(f"row {i}: {m['role']} message {j} is trained: {text[:40]!r}")
            if row in ROWS["plain"] and m["role"] == "assistant" and text not in trained:
                problems.append(f"row {i}: assistant message {j} is not trained: {text[:40]!r} not in {trained[:200]!r}")
    assert masked >= len(ROWS["plain"]), f"{name}: only {masked} rows rendered"
    assert not problems, f"{name}:\n" + "\n".join(problems)


# ------------------------------------------------------------------------------- the twin comes from TRL
def test_engine_follows_trls_function(family_tok, monkeypatch):
    """Whatever get_training_chat_template returns is what the engine renders with (no copied table): made to return
    Qwen2.5's twin for a Qwen3 template, TRL and the engine both render with it; made to raise, the engine reports
    trl_cannot_patch."""
    rows = ROWS["plain"] + ROWS["reasoning"]
    unpatched = trl_results(family_tok, "qwen3")
    qwen25 = template_text("qwen2_5_training")

    def other_twin(processing_class=None, tokenizer=None):
        return qwen25

    monkeypatch.setattr("trl.chat_template_utils.get_training_chat_template", other_twin)
    monkeypatch.setattr("trl.trainer.sft_trainer.get_training_chat_template", other_twin)
    tok = copy.deepcopy(family_tok("qwen3"))  # a fresh object: nothing cached for it
    theirs = ref.trl_prepare(tok, rows)
    assert [t["input_ids"] for t in theirs] != [t["input_ids"] for t in unpatched["plain"] + unpatched["reasoning"]]
    ours = engine_results(tok, ("patched", "qwen2_5"), rows)
    for i, (o, t) in enumerate(zip(ours, theirs)):
        assert not failed(o), f"row {i}: {o}"
        assert (o.input_ids, o.labels) == (t["input_ids"], t["labels"]), \
            f"row {i}: the engine did not follow TRL's (patched) get_training_chat_template; " + \
            first_difference(tok, o.input_ids, t["input_ids"], o.labels, t["labels"])
        assert "qwen2_5" in o.template_label, o.template_label

    def cannot_patch(processing_class=None, tokenizer=None):
        raise ValueError("The chat template is not training-compatible and patching is not supported for this template.")

    monkeypatch.setattr("trl.chat_template_utils.get_training_chat_template", cannot_patch)
    tok = copy.deepcopy(family_tok("qwen3"))
    ours = engine_results(tok, ("patched", "raises"), ROWS["plain"])
    for i, o in enumerate(ours):
        assert not failed(o) and "trl_cannot_patch" in codes(o), f"row {i}: {o if failed(o) else codes(o)}"
        assert o.n_trained > 0
