"""The response_template strategy through the engine: the old collator's labels plus findings that explain them."""

from core.data.formats import normalize_row
from core.masking.engine import MaskConfig, render_examples

TEXT = "### Human: What is 2+2?\n\n### Assistant: It is 4."


def codes(r):
    return {f.code for f in r.findings}


def test_string_template_fails_in_context_with_sentencepiece(spm_tok):
    (r,) = render_examples([normalize_row({"text": TEXT})], spm_tok,
                           MaskConfig(strategy="response_template", response_template="### Assistant:"))
    assert r.n_trained == 0
    assert {"template_not_found", "template_ambiguous", "no_trained_tokens"} <= codes(r)
    amb = next(f for f in r.findings if f.code == "template_ambiguous")
    assert amb.location["alone"] == [774, 21631, 28747]
    assert amb.location["in_context"] == [27332, 21631, 28747]


def test_in_context_ids_train_the_answer(spm_tok):
    (r,) = render_examples([normalize_row({"text": TEXT})], spm_tok,
                           MaskConfig(strategy="response_template", response_template=[27332, 21631, 28747]))
    trained = spm_tok.decode([t for t, la in zip(r.input_ids, r.labels) if la != -100])
    assert trained.startswith("It is 4") and "Human" not in trained
    assert "template_not_found" not in codes(r)
    # Mistral's pad is unset here, so the old SFTTrainer used eos as pad: the EOS TRL appends is never trained
    assert r.input_ids[-1] == spm_tok.eos_token_id and r.labels[-1] == -100
    assert "pad_is_eos" in codes(r) and "eos_not_trained" in codes(r)


def test_chatml_response_template_with_pad_equal_eos(smol_tok):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye!"}]
    (r,) = render_examples([normalize_row({"messages": msgs})], smol_tok,
                           MaskConfig(strategy="response_template", response_template="<|im_start|>assistant\n"))
    trained = smol_tok.decode([t for t, la in zip(r.input_ids, r.labels) if la != -100])
    # single-template mode: the last match wins, so only the last answer is trained, and <|im_end|> == pad is not
    assert trained.strip() == "Goodbye!"
    assert {"pad_is_eos", "eos_not_trained"} <= codes(r)
    rules = [t.rule for t in r.tokens(smol_tok)]
    assert any("pad id" in x for x in rules)


def test_instruction_template_multi_turn(smol_tok):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye!"}]
    (r,) = render_examples([normalize_row({"messages": msgs})], smol_tok,
                           MaskConfig(strategy="response_template", response_template="<|im_start|>assistant\n",
                                      instruction_template="<|im_start|>user\n"))
    trained = smol_tok.decode([t for t, la in zip(r.input_ids, r.labels) if la != -100])
    assert "Hello!" in trained and "Goodbye!" in trained and "Hi" not in trained and "Bye" not in trained
