"""Template checks, derived templates and {% generation %}-marked twins."""

import pytest

from core.masking.checks import (PROBE_CONVERSATION, PROBE_TOOL, add_generation_markers, derive_templates,
                         template_checks, verify_generation_template)
from core.data.formats import normalize_row
from core.errors import MaskLensError
from core.masking.templates import has_generation_markers, render
from tests.test_assistant_spans import CONVERSATIONS, TEMPLATES, family_tokenizer


def by_name(checks):
    return {c.name: c for c in checks}


def test_checks_on_embedded_smollm2(smol_tok):
    c = by_name(template_checks(smol_tok))
    assert c["generation markers"].passed is False
    assert c["prefix-preserving"].passed is True
    assert c["renders every message"].passed is True
    assert c["end-of-turn token trained"].passed is True and "<|im_end|>" in c["end-of-turn token trained"].detail
    assert c["pad != eos"].passed is False  # SmolLM2's pad token is <|im_end|>, its EOS
    assert c["BOS not doubled"].passed is True


def test_checks_catch_a_history_rewriting_template(smol_tok):
    """Like Qwen3 or DeepSeek-R1: earlier assistant turns lose their reasoning once a later turn exists."""
    tpl = ("{% for m in messages %}{% set c = m['content'] %}{% if m['role'] == 'assistant' and not loop.last %}"
           "{% set c = c.split('.')[-1] %}{% endif %}{{ '<|im_start|>' + m['role'] + '\n' + c + '<|im_end|>\n' }}"
           "{% endfor %}")
    c = by_name(template_checks(smol_tok, tpl))
    assert c["prefix-preserving"].passed is False


def test_checks_flag_missing_end_of_turn(smol_tok):
    tpl = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}")
    c = by_name(template_checks(smol_tok, tpl))
    assert c["end-of-turn token trained"].passed is False
    assert "nothing teaches the model to stop" in c["end-of-turn token trained"].detail


def test_bos_doubled_detected(spm_tok):
    tpl = "{{ bos_token }}{% for m in messages %}{{ '[' + m['role'] + '] ' + m['content'] + eos_token }}{% endfor %}"
    c = by_name(template_checks(spm_tok, tpl))
    assert c["BOS not doubled"].passed is False


def test_derived_templates_chatml(smol_tok):
    d = {t.name: t for t in derive_templates(smol_tok)}
    assert d["response"].text == "<|im_start|>assistant\n"
    assert d["instruction"].text == "<|im_start|>user\n"
    assert d["response"].ids_alone == smol_tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    assert d["response"].ids_in_context == d["response"].ids_alone


def test_derived_template_differs_in_context_for_sentencepiece(spm_tok):
    tpl = ("{% for m in messages %}{% if m['role'] != 'assistant' %}{{ '### Human: ' + m['content'] + '\n\n' }}"
           "{% else %}{{ '### Assistant: ' + m['content'] + eos_token + '\n\n' }}{% endif %}{% endfor %}"
           "{% if add_generation_prompt %}{{ '### Assistant:' }}{% endif %}")
    d = {t.name: t for t in derive_templates(spm_tok, tpl)}
    assert d["response"].text.startswith("### Assistant:")
    assert d["response"].ids_in_context and d["response"].ids_in_context != d["response"].ids_alone


def test_generation_twin_of_embedded_template_is_proven(smol_tok):
    marked = add_generation_markers(smol_tok)
    assert has_generation_markers(marked) and not has_generation_markers(smol_tok.chat_template)
    exs = [normalize_row({"messages": c}, i) for i, c in enumerate(CONVERSATIONS + [PROBE_CONVERSATION, PROBE_TOOL])]
    proof = verify_generation_template(smol_tok, smol_tok.chat_template, marked, exs)
    assert proof.ok and proof.n_conversations == len(exs), proof.differences
    # and TRL's own mask machinery accepts it
    out = smol_tok.apply_chat_template(CONVERSATIONS[1], chat_template=marked, tokenize=True, return_dict=True,
                                       return_assistant_tokens_mask=True)
    assert 1 in out["assistant_masks"]


@pytest.mark.parametrize("family", ["qwen2_5", "gemma", "phi3", "phi3_5"])
def test_generation_twin_for_trl_families(smol_tok, family):
    tok = family_tokenizer(smol_tok, family)
    plain = (TEMPLATES / f"{family}.jinja").read_text()
    marked = add_generation_markers(tok, plain)
    exs = []
    for i, c in enumerate(CONVERSATIONS):
        try:
            render(tok, c, plain)
        except MaskLensError:
            continue
        exs.append(normalize_row({"messages": c}, i))
    proof = verify_generation_template(tok, plain, marked, exs)
    assert proof.ok and proof.n_conversations >= 2, proof.differences


def test_generation_twin_not_possible_is_a_clear_error(smol_tok):
    tok = family_tokenizer(smol_tok, "llama3")
    with pytest.raises(MaskLensError, match="by hand"):
        add_generation_markers(tok, (TEMPLATES / "llama3.jinja").read_text())


def test_mismatching_twin_is_reported(smol_tok):
    """A marked template that trains the role header too is byte-identical but its mask is not assistant_only's."""
    bad = smol_tok.chat_template.replace("{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}",
                                         "{% generation %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endgeneration %}")
    assert bad != smol_tok.chat_template
    exs = [normalize_row({"messages": c}, i) for i, c in enumerate(CONVERSATIONS)]
    proof = verify_generation_template(smol_tok, smol_tok.chat_template, bad, exs)
    assert proof.byte_identical and not proof.masks_equal
