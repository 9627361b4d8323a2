"""core.masking.legacy_collator against hand-made truth tables and against the released TRL 0.19.1 collator.

The reference is the real ``DataCollatorForCompletionOnlyLM`` source from the trl-0.19.1 wheel (sha256-pinned),
exec'd on top of the installed transformers' ``DataCollatorForLanguageModeling`` (importing ``trl`` 0.19.1 as a
package is impossible next to transformers 5). The wheel comes from ``$MASKLENS_TRL019_WHEEL`` or from
``pip download``; if neither works the tests FAIL (they never skip).

Parent-class check (done while writing this): transformers 4.53.3's ``DataCollatorForLanguageModeling.torch_call``
(what 0.19.1 ran on) and 5.23's differ only in ``if self.seed`` -> ``if self.seed is not None`` and in popping
``offset_mapping``; the ``mlm=False`` labels (clone, then ``labels[labels == pad_token_id] = -100``) and
``_torch_collate_batch`` padding are identical, so running the class on transformers 5 is a faithful reference.
"""

from __future__ import annotations

import ast
import copy
import builtins
import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pytest
import torch
from transformers import DataCollatorForLanguageModeling

from core.masking.legacy_collator import (
    PAD_EQUALS_EOS_WARNING,
    LegacyResult,
    encode_template,
    find_template_in_context,
    find_template_matches,
    legacy_completion_only_labels,
)

TRL019_WHEEL_ENV = "MASKLENS_TRL019_WHEEL"
TRL019_WHEEL_SHA256 = "8a2d4277b4ba7221eaab545a35ee89b6fbb8721fa3709ac01876a8c1bd7fd78a"  # PyPI trl-0.19.1 wheel

X = -100  # the ignore label in the tables below
R = [7, 8]  # response template ids ("### Assistant:")
I = [5, 6]  # instruction template ids ("### Human:")
BATCH_PAD = 0  # pad id used when a row's own config has none (0 appears in no input below)


# --------------------------------------------------------------------------------------------------------------
# 1. Truth table: every branch of the 0.19.1 collator, expected labels written by hand.
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    input_ids: tuple[int, ...]
    response: Any  # list of ids (or a tuple, to show that quirk)
    instruction: list[int] | None
    pad: int | None
    ignore: int
    labels: tuple[int, ...]
    response_found: bool
    instruction_found: bool
    n_warnings: int
    pad_masked: tuple[int, ...] = ()


def case(id_, input_ids, labels, *, response=R, instruction=None, pad=None, ignore=-100, found=(True, False),
         warns=0, pad_masked=()):
    c = Case(tuple(input_ids), response, instruction, pad, ignore, tuple(labels), *found, warns, tuple(pad_masked))
    return pytest.param(c, id=id_)


def multi(id_, input_ids, labels, *, instruction=I, found=(True, True), **kw):
    return case("multi/" + id_, input_ids, labels, instruction=instruction, found=found, **kw)


NOT_FOUND = (False, False)
TWO_TURNS_IDS = [1, 5, 6, 11, 7, 8, 21, 2, 5, 6, 12, 7, 8, 22, 2]

TRUTH_TABLE = [
    # ---- single-template mode (instruction_template is None), utils.py lines 140-164 ----
    case("single/found-once", [1, 5, 6, 11, 12, 7, 8, 21, 22, 2], [X] * 7 + [21, 22, 2]),
    # the loop overwrites the start at each match: the LAST occurrence wins, the first answer is not trained
    case("single/found-twice-last-wins", [1, 7, 8, 21, 7, 8, 22, 2], [X] * 6 + [22, 2]),
    case("single/not-found-masks-all", [1, 11, 12, 2], [X] * 4, found=NOT_FOUND, warns=1),
    case("single/false-start-then-match", [1, 7, 9, 7, 8, 21], [X] * 5 + [21]),
    case("single/template-at-end-trains-nothing-silently", [1, 11, 7, 8], [X] * 4),
    case("single/template-truncated-not-found", [1, 11, 7], [X] * 3, found=NOT_FOUND, warns=1),
    case("single/overlapping-matches", [1, 7, 7, 7, 21], [X] * 4 + [21], response=[7, 7]),
    case("single/one-token-template", [1, 7, 21, 7, 22], [X] * 4 + [22], response=[7]),
    # parent collator: labels == pad_token_id -> -100 before the search; pad == eos: EOS never trained
    case("single/pad-eq-eos-never-trained", [1, 11, 7, 8, 21, 2], [X, X, X, X, 21, X], pad=2, pad_masked=[5]),
    # the parent writes a literal -100 at pads; the template logic writes ignore_index
    case("single/custom-ignore-pad-keeps-minus-100", [1, 2, 7, 8, 21, 2], [-1, -1, -1, -1, 21, -100],
         pad=2, ignore=-1, pad_masked=[5]),
    case("single/custom-ignore-not-found", [1, 11, 2], [-1, -1, -1], pad=2, ignore=-1, found=NOT_FOUND, warns=1),
    # the search runs on labels, where the pad id is already -100: a template containing it never matches
    case("single/template-containing-pad-never-matches", [1, 7, 2, 21], [X] * 4, response=[7, 2], pad=2,
         found=NOT_FOUND, warns=1),
    case("single/empty-input", [], [], found=NOT_FOUND, warns=1),
    # `template_ids == labels[...].tolist()`: a tuple never equals a list
    case("single/tuple-template-never-matches", [1, 7, 8, 21], [X] * 4, response=(7, 8), found=NOT_FOUND, warns=1),
    # ---- multi-turn mode (instruction template given), lines 166-218 ----
    multi("one-pair", [1, 5, 6, 11, 7, 8, 21, 2], [X] * 6 + [21, 2]),
    multi("two-turns", TWO_TURNS_IDS, [X] * 6 + [21, 2] + [X] * 5 + [22, 2]),
    # first instruction start (4) > first response end (3): a 0 is prepended to the instruction starts
    multi("response-before-first-instruction", [1, 7, 8, 21, 5, 6, 11, 7, 8, 22], [X, X, X, 21] + [X] * 5 + [22]),
    # response missing: row masked, then the instruction is searched in the masked labels -> 2 warnings
    multi("no-response", [1, 5, 6, 11, 2], [X] * 5, found=NOT_FOUND, warns=2),
    multi("no-instruction", [1, 7, 8, 21, 2], [X] * 5, found=(True, False), warns=1),
    multi("neither-found", [1, 11, 12], [X] * 3, found=NOT_FOUND, warns=2),
    multi("ends-mid-response", [1, 5, 6, 11, 7, 8, 21, 22], [X] * 6 + [21, 22]),
    # fewer responses than instructions: everything from the last instruction start on is masked
    multi("ends-in-instruction", [1, 5, 6, 11, 7, 8, 21, 5, 6, 12], [X] * 6 + [21, X, X, X]),
    # zip drops the surplus response: its template tokens (7, 8) are trained
    multi("extra-response-template-trained", [1, 5, 6, 11, 7, 8, 21, 7, 8, 22], [X] * 6 + [21, 7, 8, 22]),
    # two instructions then one response: pairs (1, 9), then [4:] masked -> nothing trained, no warning
    multi("two-instructions-one-response-all-masked", [1, 5, 6, 11, 5, 6, 12, 7, 8, 21], [X] * 10),
    multi("response-first-then-trailing-instruction", [1, 7, 8, 21, 5, 6, 11], [X, X, X, 21, X, X, X]),
    # instruction start (2) == first response end (2): not strictly greater, no 0 prepended; the pair (2, 2)
    # masks only [:2], so the whole instruction is trained
    multi("instruction-right-after-response-template", [7, 8, 5, 6, 11, 7, 8, 21], [X, X, 5, 6, 11, 7, 8, 21]),
    multi("pad-eq-eos", TWO_TURNS_IDS, [X] * 6 + [21, X] + [X] * 5 + [22, X], pad=2, pad_masked=[7, 14]),
    multi("pad-eq-eos-custom-ignore", TWO_TURNS_IDS, [-1] * 6 + [21, -100] + [-1] * 5 + [22, -100],
          pad=2, ignore=-1, pad_masked=[7, 14]),
    # "### Human:" and "### Assistant:" share their first token
    multi("shared-first-token", [1, 9, 5, 11, 9, 7, 21, 9, 5, 12, 9, 7, 22], [X] * 6 + [21] + [X] * 5 + [22],
          response=[9, 7], instruction=[9, 5]),
    # ignore_index equal to the instruction id: after the no-response mask the instruction "matches" everywhere
    multi("instruction-searched-after-masking", [1, 5, 11], [5, 5, 5], instruction=[5], ignore=5,
          found=(False, True), warns=1),
]

ERROR_CASES = [
    pytest.param([], None, id="single/empty-response-template"),
    pytest.param([], I, id="multi/empty-response-template"),
    pytest.param(R, [], id="multi/empty-instruction-template"),
]


def port(c: Case, input_ids=None, pad=None, **kw) -> LegacyResult:
    return legacy_completion_only_labels(
        list(c.input_ids if input_ids is None else input_ids),
        c.response,
        c.instruction,
        pad_token_id=c.pad if pad is None else pad,
        ignore_index=c.ignore,
        **kw,
    )


@pytest.mark.parametrize("c", TRUTH_TABLE)
def test_truth_table(c: Case):
    res = port(c)
    assert res.labels == list(c.labels)
    assert len(res.labels) == len(c.input_ids)
    assert (res.response_found, res.instruction_found) == (c.response_found, c.instruction_found)
    assert len(res.warnings) == c.n_warnings
    assert all(w.startswith("Could not find") for w in res.warnings)
    assert res.pad_masked == list(c.pad_masked)
    assert res.mode == ("single" if c.instruction is None else "multi_turn")
    # the explanation is consistent with the labels: trained <=> label is the input id outside spans/pads
    for i, (token, label) in enumerate(zip(c.input_ids, res.labels)):
        if i in res.trained_positions:
            assert label == token
        elif i in res.pad_masked:
            assert label == -100 and token == c.pad
        else:
            assert label == c.ignore
    if not c.response_found and c.labels:
        assert res.masked_spans[0] == (0, len(c.input_ids), "response template not found: whole example ignored")


def test_explanation_fields():
    res = legacy_completion_only_labels([1, 7, 8, 21, 7, 8, 22, 2], R)
    assert (res.response_starts, res.response_ends, res.chosen_response_start) == ([1, 4], [3, 6], 4)
    assert res.trained_positions == [6, 7]
    res = legacy_completion_only_labels([1, 7, 8, 21, 5, 6, 11, 7, 8, 22], R, I)
    assert res.instruction_starts == [4] and res.instruction_zero_prepended
    assert res.pairs == [(0, 3), (4, 9)]
    assert [s[:2] for s in res.masked_spans] == [(0, 3), (4, 9)]
    res = legacy_completion_only_labels([1, 5, 6, 11, 7, 8, 21, 5, 6, 12], R, I)
    assert res.masked_spans[-1] == (7, 10, "from the last instruction on (fewer responses than instructions)")


def test_warning_texts_and_pad_eos_warning():
    res = legacy_completion_only_labels(
        [1, 11], [7, 8], [5, 6], response_template="### A:", instruction_template="### H:", decode=lambda ids: "<s> hi"
    )
    assert res.warnings == [
        "Could not find response key `### A:` in the following instance: <s> hi. This instance will be ignored in "
        "loss calculation. Note, if this happens often, consider increasing the `max_length`.",
        "Could not find instruction key `### H:` in the following instance: <s> hi. This instance will be ignored "
        "in loss calculation. Note, if this happens often, consider increasing the `max_length`.",
    ]
    assert legacy_completion_only_labels([5, 6, 7, 8, 9, 2], R, I, pad_token_id=2, eos_token_id=2).warnings == [
        PAD_EQUALS_EOS_WARNING
    ]
    # single mode, or pad != eos: no such warning
    assert legacy_completion_only_labels([7, 8, 9, 2], R, pad_token_id=2, eos_token_id=2).warnings == []
    assert legacy_completion_only_labels([5, 6, 7, 8, 9, 2], R, I, pad_token_id=0, eos_token_id=2).warnings == []


@pytest.mark.parametrize("response, instruction", ERROR_CASES)
def test_empty_template_raises_index_error(response, instruction):
    with pytest.raises(IndexError):
        legacy_completion_only_labels([1, 7, 8, 21], response, instruction)


def test_find_template_matches_and_encode_template_passthrough():
    assert find_template_matches([1, 7, 7, 7, 2], [7, 7]) == [1, 2]
    assert find_template_matches([1, 7, 8], (7, 8)) == []
    assert encode_template(None, [7, 8]) == [7, 8]
    ids = (7, 8)
    assert encode_template(None, ids) is ids  # passed through unchanged, as the collator did


# --------------------------------------------------------------------------------------------------------------
# 2. The released TRL 0.19.1 class, run on the same rows.
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def trl019_wheel(tmp_path_factory) -> Path:
    given = os.environ.get(TRL019_WHEEL_ENV)
    if given:
        wheel = Path(given)
        if not wheel.is_file():
            pytest.fail(f"${TRL019_WHEEL_ENV}={given} is not a file: point it at trl-0.19.1-py3-none-any.whl")
    else:
        dest = tmp_path_factory.mktemp("trl019")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "trl==0.19.1"]
        cmd += ["-d", str(dest)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.fail(f"could not download trl==0.19.1 ({exc}); set ${TRL019_WHEEL_ENV} to a local wheel")
        wheels = sorted(dest.glob("trl-0.19.1-*.whl"))
        if proc.returncode != 0 or not wheels:
            pytest.fail(
                f"`{' '.join(cmd)}` failed (rc={proc.returncode}): {proc.stderr.strip()[-2000:]}\n"
                f"The reference tests need the released TRL 0.19.1 wheel: allow pip to reach its index, or set "
                f"${TRL019_WHEEL_ENV} to a local copy of trl-0.19.1-py3-none-any.whl."
            )
        wheel = wheels[0]
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != TRL019_WHEEL_SHA256:
        pytest.fail(f"{wheel} has sha256 {digest}, not the released trl-0.19.1 wheel's {TRL019_WHEEL_SHA256}")
    return wheel


@pytest.fixture(scope="session")
def RealCollator(trl019_wheel):
    """``DataCollatorForCompletionOnlyLM`` exactly as released, cut out of trl/trainer/utils.py with ``ast``."""
    with zipfile.ZipFile(trl019_wheel) as zf:
        source = zf.read("trl/trainer/utils.py").decode()
    tree = ast.parse(source)
    node = next(
        (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DataCollatorForCompletionOnlyLM"), None
    )
    assert node is not None, "DataCollatorForCompletionOnlyLM not found in trl-0.19.1 trl/trainer/utils.py"
    namespace = {
        "__name__": "trl.trainer.utils",
        "DataCollatorForLanguageModeling": DataCollatorForLanguageModeling,
        "np": np,
        "torch": torch,
        "warnings": warnings,
        "Any": Any,
        "Optional": Optional,
        "Union": Union,
    }
    # every global the class reads must be one we provide (or a builtin): no silent NameError paths
    bound = {a.arg for n in ast.walk(node) if isinstance(n, ast.arguments) for a in n.args + n.kwonlyargs}
    bound |= {n.arg for n in ast.walk(node) if isinstance(n, ast.arg)}
    bound |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    free = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    missing = free - bound - set(namespace) - set(dir(builtins))
    assert not missing, f"the 0.19.1 class needs names the test does not provide: {sorted(missing)}"
    exec(compile(ast.get_source_segment(source, node), "trl-0.19.1/trl/trainer/utils.py", "exec"), namespace)
    return namespace["DataCollatorForCompletionOnlyLM"]


class FakeTokenizer:
    """What DataCollatorForLanguageModeling(mlm=False) and the 0.19.1 class touch on list examples."""

    mask_token = None

    def __init__(self, pad_token_id=None, eos_token_id=2, padding_side="right"):
        self.pad_token_id = pad_token_id
        self.pad_token = None if pad_token_id is None else f"<pad:{pad_token_id}>"
        self.eos_token_id = eos_token_id
        self.padding_side = padding_side

    def encode(self, text, add_special_tokens=True):  # templates written as "7 8"
        return [int(t) for t in text.split()]

    def decode(self, ids):
        return " ".join(str(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids))


def run_real(RealCollator, tokenizer, examples, response, instruction, ignore, **kw):
    """Labels, padded input ids and 'Could not find' warnings of the released collator."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        collator = RealCollator(response, instruction, tokenizer=tokenizer, mlm=False, ignore_index=ignore, **kw)
        batch = collator(examples)
    found = [str(w.message) for w in caught if str(w.message).startswith("Could not find")]
    return batch["labels"].tolist(), batch["input_ids"].tolist(), found


def as_text(template):
    return None if template is None else " ".join(map(str, template))


# string templates ("7 8") go through tokenizer.encode in the collator and encode_template in the port
ONE_ROW_RUNS = [pytest.param(p.values[0], "ids", id=p.id + "-ids") for p in TRUTH_TABLE] + [
    pytest.param(p.values[0], "strings", id=p.id + "-strings")
    for p in TRUTH_TABLE
    if not isinstance(p.values[0].response, tuple)  # a tuple template has no string form
]


@pytest.mark.parametrize("c, templates_as", ONE_ROW_RUNS)
def test_batch_of_one_matches_released_collator(RealCollator, c: Case, templates_as):
    tok = FakeTokenizer(pad_token_id=c.pad)
    if templates_as == "strings":
        response, instruction = as_text(c.response), as_text(c.instruction)
    else:
        response, instruction = c.response, c.instruction
    labels, _, real_warnings = run_real(RealCollator, tok, [list(c.input_ids)], response, instruction, c.ignore)
    res = legacy_completion_only_labels(
        list(c.input_ids),
        encode_template(tok, response),
        encode_template(tok, instruction) if instruction is not None else None,
        pad_token_id=c.pad,
        ignore_index=c.ignore,
        response_template=response,
        instruction_template=instruction,
        decode=tok.decode,
    )
    assert res.labels == labels[0] == list(c.labels)
    assert res.warnings == real_warnings


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("pad_to_multiple_of", [None, 8])
@pytest.mark.parametrize("c", TRUTH_TABLE)
def test_padded_batches_match_released_collator(RealCollator, c: Case, padding_side, pad_to_multiple_of):
    """Every truth-table input in one padded batch, under this row's templates, pad id and ignore_index."""
    pad = c.pad if c.pad is not None else BATCH_PAD
    inputs = [list(c.input_ids)] + [list(p.values[0].input_ids) for p in TRUTH_TABLE if p.values[0] is not c]
    if padding_side == "left":
        # transformers' _torch_collate_batch left-pads with result[i, -len:], which breaks on an empty example
        inputs = [ids for ids in inputs if ids]
    tok = FakeTokenizer(pad_token_id=pad, padding_side=padding_side)
    labels, padded, real_warnings = run_real(
        RealCollator, tok, inputs, c.response, c.instruction, c.ignore, pad_to_multiple_of=pad_to_multiple_of
    )
    port_warnings = []
    for row, (ids, padded_ids, real_labels) in enumerate(zip(inputs, padded, labels)):
        res = port(c, input_ids=padded_ids, pad=pad, decode=tok.decode)
        assert res.labels == real_labels, f"row {row}"
        port_warnings += res.warnings
        # the real tokens' labels do not depend on padding: the unpadded row gives the same
        n = len(ids)
        real_part = real_labels[: n] if padding_side == "right" else real_labels[len(real_labels) - n :]
        assert port(c, input_ids=ids, pad=pad).labels == real_part, f"row {row} unpadded"
    assert port_warnings == real_warnings
    if c.pad is None:  # the row itself, as in the table, once the batch's pad id is set aside
        assert port(c).labels == list(c.labels)


@pytest.mark.parametrize("response, instruction", ERROR_CASES)
def test_empty_template_raises_in_released_collator_too(RealCollator, response, instruction):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collator = RealCollator(response, instruction, tokenizer=FakeTokenizer(), mlm=False)
        with pytest.raises(IndexError):
            collator([[1, 7, 8, 21]])


def test_pad_equals_eos_warning_matches_released_collator(RealCollator):
    def init_warnings(tok, instruction):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            RealCollator(R, instruction, tokenizer=tok, mlm=False)
        return [str(w.message) for w in caught if w.category is UserWarning]

    assert init_warnings(FakeTokenizer(pad_token_id=2, eos_token_id=2), I) == [PAD_EQUALS_EOS_WARNING]
    assert init_warnings(FakeTokenizer(pad_token_id=0, eos_token_id=2), I) == []
    assert init_warnings(FakeTokenizer(pad_token_id=2, eos_token_id=2), None) == []
    # documented divergence: the collator also warns when both ids are None; the port only when eos is given
    assert init_warnings(FakeTokenizer(pad_token_id=None, eos_token_id=None), I) == [PAD_EQUALS_EOS_WARNING]
    assert legacy_completion_only_labels([5, 6, 7, 8, 9], R, I).warnings == []


def test_numpy_return_tensors_bypasses_template_logic(RealCollator):
    """The class overrides only torch_call: with return_tensors="np" the labels are the parent's, unmasked."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collator = RealCollator(R, tokenizer=FakeTokenizer(pad_token_id=2), mlm=False, return_tensors="np")
    assert collator([[1, 11, 7, 8, 21, 2]])["labels"].tolist() == [[1, 11, 7, 8, 21, -100]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collator = RealCollator(R, tokenizer=FakeTokenizer(pad_token_id=2), mlm=False)
    assert collator([[1, 11, 7, 8, 21, 2]])["labels"].tolist() == [[X, X, X, X, 21, X]]


# --------------------------------------------------------------------------------------------------------------
# 3. A real Llama-2-family SentencePiece tokenizer: the classic "### Assistant:" failure.
# --------------------------------------------------------------------------------------------------------------

ALONE = [774, 21631, 28747]  # "▁###", "▁Assistant", ":"
IN_CONTEXT = [27332, 21631, 28747]  # "###" after a newline
ONE_TURN = "### Human: What is 2+2?\n\n### Assistant: 4"
TWO_TURNS = "### Human: hi\n\n### Assistant: hello\n\n### Human: and 2+2?\n\n### Assistant: 4"


@pytest.fixture(scope="module")
def llama_tokenizer(tmp_path_factory):
    import mistral_common
    from transformers import AutoTokenizer

    model = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    assert model.is_file(), f"mistral_common no longer ships {model}"
    d = tmp_path_factory.mktemp("llama_sp")
    shutil.copy(model, d / "tokenizer.model")
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    return AutoTokenizer.from_pretrained(str(d))


def test_template_alone_vs_in_context(llama_tokenizer):
    tok = llama_tokenizer
    assert encode_template(tok, "### Assistant:") == ALONE
    ids = tok(ONE_TURN, add_special_tokens=False)["input_ids"]
    assert find_template_matches(ids, IN_CONTEXT) != [] and find_template_matches(ids, ALONE) == []
    # the usual workaround: encode with a leading newline and drop "▁" and "\n"
    assert tok.encode("\n### Assistant:", add_special_tokens=False)[2:] == IN_CONTEXT


def test_string_template_masks_whole_example(llama_tokenizer, RealCollator):
    tok = llama_tokenizer
    ids = tok(ONE_TURN)["input_ids"] + [tok.eos_token_id]
    res = legacy_completion_only_labels(
        ids, encode_template(tok, "### Assistant:"), response_template="### Assistant:", decode=tok.decode
    )
    assert not res.response_found and res.labels == [X] * len(ids)
    assert len(res.warnings) == 1 and "Could not find response key `### Assistant:`" in res.warnings[0]
    assert tok.pad_token_id is None  # Llama has no pad token: nothing is pad-masked
    labels, _, real_warnings = run_real(RealCollator, tok, [ids], "### Assistant:", None, -100)
    assert labels == [res.labels] and real_warnings == res.warnings


@pytest.mark.parametrize("template", [IN_CONTEXT, "workaround"])
def test_in_context_ids_train_the_answer(llama_tokenizer, RealCollator, template):
    tok = llama_tokenizer
    if template == "workaround":
        template = tok.encode("\n### Assistant:", add_special_tokens=False)[2:]
    ids = tok(ONE_TURN)["input_ids"] + [tok.eos_token_id]
    res = legacy_completion_only_labels(ids, template)
    assert res.response_found and res.warnings == []
    assert tok.decode([ids[i] for i in res.trained_positions]).strip() == "4</s>"
    labels, _, _ = run_real(RealCollator, tok, [ids], template, None, -100)
    assert labels == [res.labels]


def test_multi_turn_padded_batch_with_pad_eq_eos(llama_tokenizer, RealCollator):
    """pad == eos, left padding through tokenizer.pad: the first "### Human:" is "▁###" (text start), the second
    "###": only the second matches the in-context ids, so a 0 is prepended and the pairing still works."""
    tok = copy.deepcopy(llama_tokenizer)
    tok.pad_token = tok.eos_token  # the common choice, and the one that never trains EOS
    human = tok.encode("\n### Human:", add_special_tokens=False)[2:]
    rows = [tok(t)["input_ids"] + [tok.eos_token_id] for t in (TWO_TURNS, ONE_TURN)]
    labels, padded, _ = run_real(RealCollator, tok, [{"input_ids": r} for r in rows], IN_CONTEXT, human, -100)
    assert tok.padding_side == "left" and padded[1][0] == tok.pad_token_id
    for row, real in zip(padded, labels):
        assert legacy_completion_only_labels(row, IN_CONTEXT, human, pad_token_id=tok.pad_token_id).labels == real
    res = legacy_completion_only_labels(rows[0], IN_CONTEXT, human, pad_token_id=tok.pad_token_id)
    assert res.instruction_zero_prepended and len(res.pairs) == 2
    # trained: both answers and the "\n\n" before the next "### Human:" (matches start at "###"); EOS (== pad) not
    assert tok.convert_ids_to_tokens([rows[0][i] for i in res.trained_positions]) == [
        "▁hell", "o", "<0x0A>", "<0x0A>", "▁", "4"
    ]
    assert res.pad_masked == [len(rows[0]) - 1]


def test_find_template_in_context_reports_matching_ids(llama_tokenizer):
    tok = llama_tokenizer
    texts = [ONE_TURN, "no template here", "### Assistant: first thing"]
    info = find_template_in_context(tok, "### Assistant:", texts)
    assert info["alone_ids"] == ALONE and info["ambiguous"]
    assert info["texts_containing"] == [0, 2] and info["texts_with_alone_ids"] == [2]
    first, second = info["occurrences"]
    assert (first["text_index"], first["in_context_ids"], first["same_as_alone"], first["alone_ids_found"]) == (
        0, IN_CONTEXT, False, False,
    )
    assert ONE_TURN[first["char_start"] : first["char_end"]] == "### Assistant:" and first["aligned"]
    assert (second["in_context_ids"], second["same_as_alone"], second["alone_ids_found"]) == (ALONE, True, True)
    assert info["in_context_variants"] == [
        {"ids": IN_CONTEXT, "count": 1, "same_as_alone": False},
        {"ids": ALONE, "count": 1, "same_as_alone": True},
    ]
    # the in-context ids it reports are the ones that make the collator find the template
    assert legacy_completion_only_labels(tok(ONE_TURN)["input_ids"], first["in_context_ids"]).response_found
    unambiguous = find_template_in_context(tok, "### Assistant:", ["### Assistant: x", "nothing"])
    assert not unambiguous["ambiguous"] and unambiguous["texts_with_alone_ids"] == [0]
