"""The response_template strategy in the engine: TRL 0.19.1's collator (core.masking.legacy_collator, a pure port)
run on an example's ids, each token's rule said in words, and what went wrong as findings (template not found,
tokenized differently in context, pad == eos).

Example: OldCollator.for_config(tok, cfg).labels(ids, text, enc, rules, findings) -> [-100, ..., 9690, 198]
"""

from __future__ import annotations

from dataclasses import dataclass

from ..findings import Finding
from .legacy_collator import encode_template, legacy_completion_only_labels
from .vocab import ids_in_context, pad_id_for


@dataclass(frozen=True)
class OldCollator:
    cfg: object  # MaskConfig
    response_ids: list[int]
    instruction_ids: list[int] | None
    pad_id: int | None
    eos_id: int | None
    pad_assumed: str  # why this pad id, when the tokenizer names none

    @classmethod
    def for_config(cls, tokenizer, cfg) -> OldCollator:
        instr = encode_template(tokenizer, cfg.instruction_template) if cfg.instruction_template else None
        assumed = ""
        if cfg.pad_token is None and tokenizer.pad_token_id is None:
            assumed = (f"; the tokenizer has no pad token, so its EOS {tokenizer.eos_token!r} is assumed (as TRL "
                       "0.19.1's SFTTrainer set it) — pass --pad-token to name another")
        return cls(cfg, encode_template(tokenizer, cfg.response_template), instr, pad_id_for(tokenizer, cfg.pad_token),
                   tokenizer.eos_token_id, assumed)

    def labels(self, ids: list[int], text: str, enc, rules: dict, findings: list) -> list[int]:
        """The collator's labels for one example; rules[i] says why for each token, findings what went wrong."""
        res = legacy_completion_only_labels(ids, list(self.response_ids),
                                            list(self.instruction_ids) if self.instruction_ids else None,
                                            pad_token_id=self.pad_id)
        labels = list(res.labels)
        _explain(res, labels, rules)
        if not res.response_found:
            findings.append(Finding("template_not_found", f"response template ids {self.response_ids} not found in the "
                                                          "example; the old collator masked all of it"))
        if self.instruction_ids and not res.instruction_found:
            findings.append(Finding("template_not_found", f"instruction template ids {self.instruction_ids} not found",
                                    location={"template": "instruction"}))
        if res.pad_masked:
            findings.append(Finding("pad_is_eos" if self.pad_id == self.eos_id else "eos_not_trained",
                                    f"{len(res.pad_masked)} token(s) equal to the pad id ({self.pad_id}) were masked "
                                    f"by the old collator{self.pad_assumed}", severity="warning",
                                    location={"tokens": res.pad_masked[:20]}))
        if enc is not None:
            findings += self._ambiguous(res, text, enc, ids)
        return labels

    def _ambiguous(self, res, text: str, enc, ids: list[int]) -> list[Finding]:
        """template_ambiguous: a template string found in the text whose ids there differ from its ids alone."""
        out = []
        for name, tmpl, t_ids, found in (
                ("response", self.cfg.response_template, self.response_ids, res.response_found),
                ("instruction", self.cfg.instruction_template, self.instruction_ids, res.instruction_found)):
            if isinstance(tmpl, str) and tmpl and not found and tmpl in text:
                ctx_ids = ids_in_context(text, ids, enc.offsets, tmpl)
                if ctx_ids and ctx_ids != t_ids:
                    out.append(Finding("template_ambiguous",
                                       f"{name} template {tmpl!r} is {t_ids} alone but {ctx_ids} in context; pass "
                                       f"--{name}-template-ids {','.join(map(str, ctx_ids))}",
                                       location={"template": name, "alone": t_ids, "in_context": ctx_ids}))
        return out


def _explain(res, labels: list[int], rules: dict) -> None:
    for i, lab in enumerate(labels):
        if lab != -100:
            rules[i] = "trained: after the response template (old collator)"
    for a, b, reason in res.masked_spans:  # in the order the collator applied them: later reasons win
        for k in range(a, min(b, len(labels))):
            rules[k] = f"not trained: {reason} (old collator)"
    for p in res.pad_masked:
        rules[p] = "not trained: id equals the pad id (the old collator masks pad ids; pad == eos masks EOS)"
