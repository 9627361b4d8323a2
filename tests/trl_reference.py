"""The reference the engine is compared with: TRL 1.16's own SFTTrainer dataset preparation, run offline.

- `family_tokenizer(base, family)`: the SmolLM2 vocabulary plus the special tokens of TRL's `X.jinja` / `X_training.jinja`
  templates, carrying `X.jinja` (what the real model's tokenizer ships) as its chat template. That is enough for
  SFTTrainer to recognise the template and swap in its training twin, offline.
- `trl_prepare(tokenizer, rows, **sftconfig)`: input_ids and labels exactly as `SFTTrainer(...).train_dataset` holds
  them, rows as written (see `_as_written`), with a per-row error where TRL raises.
- `load_conversations(name)`: the hand-written conversations in tests/assets/conversations/NAME.jsonl.

Example: trl_prepare(family_tokenizer(smol, "qwen3"), rows, assistant_only_loss=True)[0]["labels"] -> [-100, ..., 151]
"""

from __future__ import annotations

import copy
import functools
import json
import re
import tempfile
from pathlib import Path

import trl

TEMPLATES = Path(trl.__file__).parent / "chat_templates"
CONVERSATIONS = Path(__file__).parent / "assets" / "conversations"
# Vision-language templates iterate over content parts ({"type": "text"}); MaskLens takes string content only.
VLM = {"idefics3", "llava_next", "qwen2_5_vl", "qwen3_vl", "smolvlm"}
# Every text-only pair TRL ships: X.jinja (the model's own template) with its X_training.jinja twin.
FAMILIES = sorted(p.name[: -len("_training.jinja")] for p in TEMPLATES.glob("*_training.jinja")
                  if p.name[: -len("_training.jinja")] not in VLM)
# Families whose real tokenizers use another BOS/EOS than SmolLM2's (the test tokenizer's base).
BOS_EOS = {
    "llama3": ("<|begin_of_text|>", "<|eot_id|>"),
    "gemma": ("<bos>", "<end_of_turn>"), "gemma3": ("<bos>", "<end_of_turn>"), "diffusion_gemma": ("<bos>", "<end_of_turn>"),
    "deepseekv3": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "deepseek_r1_distill": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "phi3": ("<s>", "<|end|>"), "phi3_5": ("<s>", "<|end|>"),
    "gptoss": ("<|startoftext|>", "<|return|>"),
    "cohere": ("<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>"), "cohere2": ("<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>"),
    "glm4moe": ("[gMASK]", "<|user|>"),
    "lfm2": ("<|startoftext|>", "<|im_end|>"), "lfm2_v2": ("<|startoftext|>", "<|im_end|>"),
}
SPECIAL_RE = re.compile(r"<\|[^|<>\s'\"]+\|>|<\|[a-z_]+>|<[a-z_]+\|>|<｜[^｜]+｜>|<(?:start|end)_of_turn>|<bos>|<BOS_TOKEN>|\[gMASK\]|<sop>")
# Tags that the real tokenizers of Qwen3, DeepSeek-R1, GLM-4.5 and Nemotron 3 hold as single added (non-special)
# tokens: without them SmolLM2's BPE would split "<think>" and merge its ">" with the "\n" after it.
TAG_RE = re.compile(r"</?(?:think|tool_call|tool_response|arg_key|arg_value)>")


def template_text(name: str) -> str:
    """trl/chat_templates/NAME.jinja. Example: template_text("qwen3_training") -> "{%- if tools %}..."."""
    return (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")


def family_tokenizer(base, family: str, template: str | None = None, tag_tokens: bool = False):
    """A copy of `base` with the special tokens of TRL's `family` templates (and their BOS/EOS), carrying `template`
    (default: trl/chat_templates/FAMILY.jinja) as its own chat template. `tag_tokens` also adds <think>, <tool_call>...
    as single non-special tokens, as the real Qwen3 / DeepSeek-R1 / GLM / Nemotron tokenizers hold them."""
    tok = copy.deepcopy(base)
    texts = template_text(family)
    if (TEMPLATES / f"{family}_training.jinja").exists():
        texts += template_text(f"{family}_training")
    specials = sorted(set(SPECIAL_RE.findall(texts)))
    bos, eos = BOS_EOS.get(family, (base.bos_token, base.eos_token))
    tok.add_special_tokens({"bos_token": bos, "eos_token": eos, "additional_special_tokens": specials})
    if tag_tokens:
        tok.add_tokens(sorted(set(TAG_RE.findall(texts))))
    tok.chat_template = template_text(family) if template is None else template
    return tok


def load_conversations(name: str) -> list[dict]:
    """The rows of tests/assets/conversations/NAME.jsonl, as written. Example: load_conversations("tools")[0]["tools"]."""
    with open(CONVERSATIONS / f"{name}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------------------------------------------- TRL's preparation
@functools.lru_cache(maxsize=1)
def _tiny_model(vocab_size: int):
    """One randomly initialised 1-layer Llama for every SFTTrainer built here: preparation never runs it, but the
    trainer needs a model. 65,536 entries cover every family tokenizer (SmolLM2's 49,152 + a few specials)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=8192)
    return LlamaForCausalLM(cfg)


def _as_written(rows: list[dict]):
    """The rows as TRL's tokenization should see them: exactly as written in the file.

    `Dataset.from_list(rows)` (and `load_dataset("json")`) unify the Arrow schema across rows AND across the messages
    of a row: every message gains `reasoning_content: None`, `tool_calls: None`, `name: None`... and tool-call
    arguments / tool schemas gain the keys other rows have, as `null`. Templates render those (`is defined` holds for
    None), so TRL would train on text no row holds; MaskLens renders rows as written and reports that difference as
    its `schema_nulls_injected` finding. One Dataset per row does not avoid it (the messages of a row are unified), and
    stripping the Nones in a `.map` does not either (the map's output goes back through Arrow). A generator-backed
    `IterableDataset` with no declared features hands TRL's `.map` the Python objects themselves: SFTTrainer accepts it
    (it is how streaming datasets reach it) and runs the same preparation code on it.
    """
    from datasets import IterableDataset

    return IterableDataset.from_generator(_yield_rows, gen_kwargs={"rows": rows})


def _yield_rows(rows):
    yield from copy.deepcopy(rows)


ROW_KEY = "masklens_row"  # an extra column naming each row: TRL carries extra columns along and never renders them


def _run_sft(tokenizer, dataset, **sftconfig) -> dict[int, dict]:
    """{row: dict(input_ids, labels)} as SFTTrainer's train_dataset holds them (rows it dropped are absent)."""
    from trl import SFTConfig, SFTTrainer

    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, report_to=[], per_device_train_batch_size=1, bf16=False, use_cpu=True,
                         max_steps=1, **sftconfig)
        trainer = SFTTrainer(model=_tiny_model(max(len(tokenizer), 1 << 16)), args=args, train_dataset=dataset,
                             processing_class=tokenizer)
        return {r[ROW_KEY]: {"input_ids": list(r["input_ids"]), "labels": list(r["labels"])}
                for r in trainer.train_dataset}


def trl_prepare(tokenizer, rows: list[dict], as_written: bool = True, **sftconfig) -> list[dict | Exception | None]:
    """SFTTrainer's own dataset preparation of `rows` (TRL 1.16, offline): one dict(input_ids, labels) per row, the
    exception TRL raised for that row (a template that cannot render it, a row with no assistant token), or None for a
    row TRL dropped (no trained token left after truncation).

    Defaults: assistant_only_loss=True, no truncation (max_length=None). TRL stops at the first row it cannot
    prepare, so rows that its chat template cannot render are predicted first (rendering them as TRL will) and each
    such row goes through an SFTTrainer of its own, to record what TRL raises on it; all other rows go through one
    SFTTrainer. Where SFTTrainer itself raises (a template TRL cannot patch), this raises too. as_written=False feeds
    `Dataset.from_list(rows)` instead (TRL's users' usual path, with the schema nulls described in `_as_written`).
    """
    from datasets import Dataset

    sftconfig = {"assistant_only_loss": True, "max_length": None, **sftconfig}
    tagged = [{**r, ROW_KEY: i} for i, r in enumerate(rows)]

    def prepare(indices):
        rs = [tagged[i] for i in indices]
        return _run_sft(tokenizer, _as_written(rs) if as_written else Dataset.from_list(rs), **sftconfig)

    failing: set[int] = set()
    if all("messages" in r for r in rows):
        try:
            template = _template_trl_uses(tokenizer, sftconfig["assistant_only_loss"])
        except Exception:  # noqa: BLE001  (TRL cannot patch the template: let SFTTrainer raise its own error)
            prepare(range(len(rows)))
            raise AssertionError("get_training_chat_template raised, but SFTTrainer did not") from None
        failing = {i for i, r in enumerate(rows) if not _renders(tokenizer, r, template, sftconfig["assistant_only_loss"])}
    ok = [i for i in range(len(rows)) if i not in failing]
    results: dict[int, dict | Exception] = {}
    try:
        results.update(prepare(ok) if ok else {})
    except Exception:  # noqa: BLE001  (the prediction missed a failure: fall back to one SFTTrainer per row)
        failing = set(range(len(rows)))
    for i in sorted(failing):
        try:
            results.update(prepare([i]))
        except Exception as e:  # noqa: BLE001  (TRL raises TemplateError, ValueError, RuntimeError, TypeError...)
            results[i] = e
    return [results.get(i) for i in range(len(rows))]


def _template_trl_uses(tokenizer, assistant_only_loss: bool) -> str:
    """The template SFTTrainer renders with (raises where SFTTrainer raises)."""
    from trl.chat_template_utils import has_generation_markers

    if assistant_only_loss and not has_generation_markers(tokenizer.chat_template):
        return training_twin(tokenizer)
    return tokenizer.chat_template


def _renders(tokenizer, row: dict, template: str, assistant_only_loss: bool) -> bool:
    """Whether TRL's tokenization will get through this row (a prediction: TRL's own run decides)."""
    tools = row.get("tools")
    try:
        out = tokenizer.apply_chat_template(copy.deepcopy(row["messages"]), chat_template=template, tokenize=True,
                                            return_dict=True, return_assistant_tokens_mask=assistant_only_loss,
                                            tools=json.loads(tools) if isinstance(tools, str) else tools,
                                            **row.get("chat_template_kwargs", {}))
    except Exception:  # noqa: BLE001
        return False
    return not assistant_only_loss or 1 in out["assistant_masks"]


def training_twin(tokenizer) -> str | None:
    """The template SFTTrainer(assistant_only_loss=True) renders with, by TRL's own function; raises where TRL does."""
    from trl.chat_template_utils import get_training_chat_template

    return get_training_chat_template(tokenizer)


def render_text(tokenizer, row: dict, template: str | None = None) -> str:
    """The row rendered (as text) by `template` (default: the tokenizer's own), as TRL renders it: tools (a JSON
    string is parsed, as SFTTrainer does) and chat_template_kwargs passed along."""
    tools = row.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools
    return tokenizer.apply_chat_template(copy.deepcopy(row["messages"]), tools=tools, chat_template=template,
                                         tokenize=False, **row.get("chat_template_kwargs", {}))


# ------------------------------------------------------------------------------------------------ failure messages
def first_difference(tokenizer, ours: list[int], theirs: list[int], labels_ours=None, labels_theirs=None,
                     context: int = 6) -> str:
    """Where two token sequences (or their labels) first differ, with the decoded tokens around it.

    Example: "first difference at token 41 of 88/90: ours 'Hello' (label -100), TRL '<think>' (label 151667); ..."
    """
    a = list(zip(ours, labels_ours)) if labels_ours is not None else [(t, None) for t in ours]
    b = list(zip(theirs, labels_theirs)) if labels_theirs is not None else [(t, None) for t in theirs]
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    def show(seq, k):
        if k >= len(seq):
            return "(end)"
        tid, lab = seq[k]
        return f"{tokenizer.decode([tid])!r}" + ("" if lab is None else f" ({'trained' if lab != -100 else 'masked'})")

    def window(seq):
        lo = max(0, i - context)
        return "".join(
            ("[" if k == i else "") + tokenizer.decode([t]) + ("]" if k == i else "") + ("" if lab in (None, -100) else "ˇ")
            for k, (t, lab) in enumerate(seq[lo: i + context], lo))

    return (f"first difference at token {i} of {len(a)}/{len(b)}: ours {show(a, i)}, TRL {show(b, i)}\n"
            f"    ours: {window(a)!r}\n    TRL:  {window(b)!r}   (ˇ = trained)")
