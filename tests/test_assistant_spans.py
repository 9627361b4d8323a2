"""assistant_only without {% generation %} markers, checked against the training templates TRL 1.16 ships.

For each family, the plain template (what real tokenizers carry) goes through the engine's own span finding, and its
`*_training.jinja` twin through transformers' generation-marker mask, on the same conversations. Then:
- every assistant content token is trained, and no system/user/tool content token is;
- after each assistant turn's content, the special tokens trained (the end-of-turn marker) are the same as the
  training template trains. Role headers may differ: TRL's families disagree there.
Templates that rewrite history (DeepSeek, Phi-3, Nemotron) are included.
"""

import pytest

from core.data.formats import normalize_row
from core.masking.engine import MaskConfig, render_examples
from core.masking.templates import analyze_template, locate_messages, render
from tests.trl_reference import FAMILIES, TEMPLATES, family_tokenizer

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "It is 4."}, {"role": "user", "content": "Are you sure?"},
     {"role": "assistant", "content": "Yes, quite sure."}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Teal."},
     {"role": "user", "content": "Another one."}, {"role": "assistant", "content": "Mauve."},
     {"role": "user", "content": "And a third?"}, {"role": "assistant", "content": "Ochre, a yellow-brown."}],
    [{"role": "user", "content": "What's the weather in Paris?"},
     {"role": "assistant", "content": "I will look it up."},
     {"role": "tool", "content": "Sunny, 21 C"},
     {"role": "assistant", "content": "It is sunny and 21 C in Paris."}],
]


def token_span_set(offsets, s, e):
    """Tokens lying wholly inside characters [s, e)."""
    return [i for i, (a, b) in enumerate(offsets) if a >= s and b <= e and b > a]


def training_mask(tok, template, messages):
    out = tok.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    text, _ = render(tok, messages, template)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["input_ids"] == out["input_ids"]
    return text, out["input_ids"], out["assistant_masks"], enc["offset_mapping"]


def gap(text, spans, k):
    nxt = next((s.content_start for s in spans[k + 1:] if s.found), len(text))
    return text[spans[k].content_end: nxt]


def trained_specials_after(text, ids, trained, offsets, spans, k, specials):
    """Special tokens trained between message k's content end and the next message's content start."""
    sp = spans[k]
    nxt = next((s.content_start for s in spans[k + 1:] if s.found), len(text))
    return [ids[i] for i in token_span_set(offsets, sp.content_end, nxt) if trained[i] and ids[i] in specials]


@pytest.mark.parametrize("family", FAMILIES)
def test_assistant_only_matches_training_template(smol_tok, family):
    tok = family_tokenizer(smol_tok, family)
    plain = (TEMPLATES / f"{family}.jinja").read_text()
    training = (TEMPLATES / f"{family}_training.jinja").read_text()
    specials = set(tok.all_special_ids)
    checked = eot_checked = 0
    for conv in CONVERSATIONS:
        try:
            text, _ = render(tok, conv, plain)
            render(tok, conv, training)
        except Exception:
            continue  # e.g. a template that takes no tool role or no system message
        if not all(m["content"] in text for m in conv):
            continue  # the template rewrites a message (Gemma's diffusion template wraps tool output in JSON)
        tok.chat_template = plain
        (r,) = render_examples([normalize_row({"messages": conv})], tok, MaskConfig(strategy="assistant_only"))
        assert not [f for f in r.findings if f.severity == "error"], (family, r.findings)
        ours_trained = [la != -100 for la in r.labels]
        ours_spans = locate_messages(r.text, conv, analyze_template(tok, plain), tok.eos_token)

        t_text, t_ids, t_mask, t_off = training_mask(tok, training, conv)
        t_spans = locate_messages(t_text, conv, analyze_template(tok, training), tok.eos_token)
        for k, m in enumerate(conv):
            osp, tsp = ours_spans[k], t_spans[k]
            assert osp.found and tsp.found, (family, k)
            ours_content = [ours_trained[i] for i in token_span_set(r.offsets, osp.content_start, osp.content_end)]
            theirs_content = [bool(t_mask[i]) for i in token_span_set(t_off, tsp.content_start, tsp.content_end)]
            expect = m["role"] == "assistant"
            assert ours_content and all(x == expect for x in ours_content), (family, k, m["role"])
            assert all(x == expect for x in theirs_content), (family, k, "training template itself")
            # GLM's training template appends "<|user|>" after the last turn, which its plain template never renders:
            # compare the end-of-turn tokens where both renderings put the same text after the content.
            if m["role"] == "assistant" and gap(r.text, ours_spans, k) == gap(t_text, t_spans, k):
                ours_eot = trained_specials_after(r.text, r.input_ids, ours_trained, r.offsets, ours_spans, k, specials)
                theirs_eot = trained_specials_after(t_text, t_ids, t_mask, t_off, t_spans, k, specials)
                assert ours_eot == theirs_eot, (family, k, tok.convert_ids_to_tokens(ours_eot),
                                                tok.convert_ids_to_tokens(theirs_eot))
                eot_checked += bool(theirs_eot)
        checked += 1
    assert checked >= 2, f"{family}: fewer than two probe conversations rendered"
    assert eot_checked >= 2, f"{family}: the end-of-turn marker was compared on fewer than two turns"
