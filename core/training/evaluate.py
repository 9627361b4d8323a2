"""One fair held-out evaluation: every model scored on the same tokens, whatever mask it was trained with.

A training loss is averaged over the tokens the run's own mask trains, so `full` and `assistant_only` numbers measure
different things. Here the held-out rows are rendered ONCE with `MaskConfig("assistant_only")` (the experiment's
template source) into an `EvalSet`, and every model (the base model and each run) is scored on exactly those ids and
labels:
- **loss**: token-weighted mean negative log-likelihood (nats) over the held-out tokens `assistant_only` trains
  (position 0 is never predicted), also per part (content, reasoning, tool_calls, eot) and as perplexity; rows are
  scored in right-padded batches fixed by the eval set (`EVAL_BATCH_TOKENS`);
- **generation**: greedy replies (`max_new_tokens`) to each held-out prompt (the conversation up to its last
  assistant message, rendered with the tokenizer's own inference template and the generation prompt; left-padded
  batches of `GEN_BATCH` fixed by the eval set):
  stop rate (the reply ends with the template's end of turn or EOS before the limit), role-leak rate (the reply
  contains another turn's header), empty-reply rate, length against the reference reply, and with reasoning data
  the think block opened and closed.

Example: es = build_eval_set(examples[-8:], tok); evaluate_model("embedded", es)["loss"] -> 2.31
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MaskLensError

__all__ = ["EvalRow", "EvalSet", "build_eval_set", "eval_loss", "evaluate_model", "generation_metrics",
           "load_eval_set", "select_rows"]

IGNORE = -100
EVAL_SET_FILE = "eval_set.json"
LOSS_PARTS = ("content", "reasoning", "tool_calls", "eot")
REPLY_PARTS = ("reasoning", "content", "tool_calls")  # what the reference reply is made of (its length)
N_SAMPLES = 3  # replies kept as text in the result, to read beside the numbers


@dataclass
class EvalRow:
    row: int  # the row of the data file
    input_ids: list[int]
    labels: list[int]  # assistant_only's labels: -100 where the token is not scored
    parts: list[str]  # per token: the part it belongs to ("" where not scored)
    prompt_ids: list[int] | None = None  # the generation prompt; None: no generation for this row
    reference_tokens: int = 0  # tokens of the reference reply (reasoning + content + tool calls of the last turn)
    reasoning: bool = False  # the reference reply has a think block

    @property
    def n_scored(self) -> int:
        return sum(1 for y in self.labels[1:] if y != IGNORE)


@dataclass
class EvalSet:
    """The held-out rows, rendered once; plus what the generation metrics need from the template."""

    rows: list[EvalRow]
    template_source: str = "trl"
    tokenizer: str = ""
    max_length: int | None = None
    stop_ids: list[int] = field(default_factory=list)  # end of turn (first token of the eot part) and EOS
    headers: list[str] = field(default_factory=list)  # role headers of the template, e.g. "<|im_start|>user"
    think: list[str] | None = None  # [open, close] think delimiters, when the data has reasoning

    @property
    def tokens(self) -> int:
        """How many tokens every model is scored on."""
        return sum(r.n_scored for r in self.rows)

    def to_json(self) -> dict:
        return {"version": 1, "tokens": self.tokens, **asdict(self)}

    def save(self, path: str | os.PathLike) -> None:
        from .records import atomic_write_text  # noqa: PLC0415

        atomic_write_text(Path(path), json.dumps(self.to_json(), separators=(",", ":")) + "\n")


def load_eval_set(path: str | os.PathLike) -> EvalSet:
    try:
        d = json.loads(Path(path).read_text())
        rows = [EvalRow(**r) for r in d.pop("rows")]
        d.pop("version", None)
        d.pop("tokens", None)
        return EvalSet(rows=rows, **d)
    except FileNotFoundError:
        raise MaskLensError("no such evaluation set", file=str(path),
                            fix="build it with core.training.evaluate.build_eval_set (an experiment writes one)") \
            from None
    except (ValueError, TypeError, KeyError) as e:
        raise MaskLensError(f"not an evaluation set ({type(e).__name__}: {e})", file=str(path),
                            fix="rebuild it (an experiment writes eval_set.json)") from None


def select_rows(n_rows: int, held_out: int | list[int] | None, what: str = "held_out",
                leave_some: bool = True) -> list[int]:
    """The row indices `held_out` names: a count (the last rows) or a list of indices (negative from the end).
    `leave_some`: some rows must stay to train on (an experiment; `evaluate` may score them all).
    Example: select_rows(10, 2) -> [8, 9]; select_rows(10, [0, -1]) -> [0, 9]"""
    if held_out is None:
        return list(range(n_rows))
    if isinstance(held_out, bool):
        raise MaskLensError(f"is a boolean ({held_out})", field=what,
                            fix="give a count of rows (the last ones) or a list of row indices")
    if isinstance(held_out, int):
        top = n_rows - 1 if leave_some else n_rows
        if not 1 <= held_out <= top:
            raise MaskLensError(f"{held_out} rows held out of {n_rows}", field=what,
                                fix=f"hold out at least 1 row and leave some to train on (1 to {top})" if leave_some
                                else f"score 1 to {top} rows")
        return list(range(n_rows - held_out, n_rows))
    if isinstance(held_out, (list, tuple)):
        if not held_out:
            raise MaskLensError("is an empty list", field=what, fix="list at least one row index")
        out = []
        for k, i in enumerate(held_out):
            if isinstance(i, bool) or not isinstance(i, int) or not -n_rows <= i < n_rows:
                raise MaskLensError(f"{i!r} is not a row index (the data has {n_rows} rows)", field=f"{what}[{k}]",
                                    fix=f"use whole numbers from 0 to {n_rows - 1} (negative counts from the end)")
            out.append(i % n_rows)
        if len(set(out)) != len(out):
            raise MaskLensError("names a row twice", field=what, fix="list each row once")
        return sorted(out)
    raise MaskLensError(f"is a {type(held_out).__name__}", field=what,
                        fix="give a count of rows (the last ones) or a list of row indices")


# ------------------------------------------------------------------------------------------------------ building
def _prompt_messages(ex) -> tuple[list[dict] | None, int | None]:
    """(the conversation up to its last assistant message, that message's index) or (None, None)."""
    msgs = ex.messages or []
    last = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=None)
    if last is None or not any(m.get("role") != "system" for m in msgs[:last]):
        return None, None
    return msgs[:last], last


_OPEN_TAG = re.compile(r"^\s*(<[^<>\s/][^<>\s]*>)")
_CLOSE_TAG = re.compile(r"(</[^<>\s]+>)\s*$")


def build_eval_set(examples: list, tokenizer, *, template_source: str = "trl", chat_template: str | None = None,
                   max_length: int | None = None, tokenizer_name: str = "", generate: bool = True) -> EvalSet:
    """Render held-out examples once with assistant_only (this template source) into the set every model is scored
    on. Raises MaskLensError when a row has no scored token (nothing assistant_only trains)."""
    from ..data.formats import KIND_MESSAGES  # noqa: PLC0415
    from ..masking.engine import render_examples  # noqa: PLC0415
    from ..masking.options import MaskConfig  # noqa: PLC0415
    from ..masking.templates import get_template, render  # noqa: PLC0415

    cfg = MaskConfig("assistant_only", template_source=template_source, chat_template=chat_template,
                     max_length=max_length)
    rendered = render_examples(list(examples), tokenizer, cfg)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    stop_ids: list[int] = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    headers: dict[str, None] = {}
    think: list[str] | None = None
    inference_template = None
    rows = []
    for ex, r in zip(examples, rendered):
        tokens = r.tokens(tokenizer)
        parts = [t.part if t.label != IGNORE else "" for t in tokens]
        row = EvalRow(row=ex.row, input_ids=list(r.input_ids), labels=list(r.labels), parts=parts)
        if row.n_scored == 0:
            raise MaskLensError("has no token that assistant_only trains, so it cannot be scored", row=ex.row,
                                field="held_out", fix="hold out conversations with an assistant reply")
        # the template's headers and end of turn, read off the rendering
        header = {}
        for t in tokens:
            if t.part == "header" and t.message is not None:
                header[t.message] = header.get(t.message, "") + t.text
        for h in header.values():
            if h.strip():
                headers[h.strip()] = None
        prompt, last = _prompt_messages(ex) if ex.kind == KIND_MESSAGES else (None, None)
        if last is not None:
            eot = [t for t in tokens if t.message == last and t.part == "eot"]
            first = next((t for t in eot if t.id in special), eot[0] if eot else None)
            if first is not None and first.id not in stop_ids:
                stop_ids.append(int(first.id))
            reply = [t for t in tokens if t.message == last and t.part in REPLY_PARTS]
            row.reference_tokens = len(reply)
            reasoning = "".join(t.text for t in reply if t.part == "reasoning")
            if reasoning.strip():
                row.reasoning = True
                o, c = _OPEN_TAG.search(reasoning), _CLOSE_TAG.search(reasoning)
                if think is None and o and c:
                    think = [o.group(1), c.group(1)]
            if generate:
                if inference_template is None:
                    inference_template = get_template(tokenizer, chat_template)
                text, _ = render(tokenizer, prompt, inference_template, tools=ex.tools, add_generation_prompt=True,
                                 **(ex.chat_template_kwargs or {}))
                row.prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        rows.append(row)
    if any(r.reasoning for r in rows) and think is None:
        think = ["<think>", "</think>"]
    return EvalSet(rows=rows, template_source=template_source, tokenizer=tokenizer_name, max_length=max_length,
                   stop_ids=stop_ids, headers=list(headers), think=think)


# ------------------------------------------------------------------------------------------------------ scoring
def _device(model):
    return next(model.parameters()).device


EVAL_BATCH_TOKENS = 2048  # padded tokens per forward pass of the loss evaluation (logits: tokens x vocab floats)


def _batches(rows: list[EvalRow], budget: int) -> list[list[EvalRow]]:
    """Consecutive rows, as many per batch as fit `budget` padded tokens (a long row alone). Fixed by the eval set
    alone, so every model is scored in the same batches."""
    out: list[list[EvalRow]] = []
    cur: list[EvalRow] = []
    for r in rows:
        longest = max([len(x.input_ids) for x in cur] + [len(r.input_ids)])
        if cur and longest * (len(cur) + 1) > budget:
            out.append(cur)
            cur = []
        cur.append(r)
    if cur:
        out.append(cur)
    return out


def eval_loss(model, eval_set: EvalSet, batch_tokens: int = EVAL_BATCH_TOKENS) -> dict[str, Any]:
    """Mean NLL (nats) over the eval set's scored tokens, per part, and perplexity; sums in float64. Rows are
    right-padded into batches of at most `batch_tokens` tokens: a causal model's outputs for a row's tokens do not
    depend on the padding after them, and the batches depend on the eval set only. The model's train/eval mode is
    restored. Example: -> {"loss": 2.31, "tokens": 412, "perplexity": 10.1, "parts": {"content": {...}}}"""
    import torch  # noqa: PLC0415

    was_training = model.training
    model.eval()
    device = _device(model)
    total, n = 0.0, 0
    by_part: dict[str, list] = {}
    try:
        with torch.no_grad():
            for batch in _batches(eval_set.rows, batch_tokens):
                width = max(len(r.input_ids) for r in batch)
                ids = torch.zeros((len(batch), width), dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for i, r in enumerate(batch):
                    ids[i, : len(r.input_ids)] = torch.tensor(r.input_ids)
                    mask[i, : len(r.input_ids)] = 1
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
                for i, r in enumerate(batch):
                    pos = [p for p in range(1, len(r.labels)) if r.labels[p] != IGNORE]
                    if not pos:
                        continue
                    picked = logits[i, torch.tensor([p - 1 for p in pos], device=logits.device)].float()
                    logp = torch.log_softmax(picked, dim=-1)
                    targets = torch.tensor([r.labels[p] for p in pos], device=logits.device)
                    nll = (-logp.gather(1, targets[:, None])[:, 0]).double().cpu().tolist()
                    for p, v in zip(pos, nll):
                        total += v
                        n += 1
                        acc = by_part.setdefault(r.parts[p] or "other", [0.0, 0])
                        acc[0] += v
                        acc[1] += 1
                del logits
    finally:
        model.train(was_training)
    loss = total / n if n else float("nan")
    parts = {k: {"loss": s / c, "tokens": c} for k, (s, c) in sorted(by_part.items())}
    return {"loss": loss, "tokens": n, "perplexity": math.exp(loss) if n and loss < 700 else float("inf"),
            "parts": parts}


GEN_BATCH = 16  # prompts generated together (left-padded)


def generate_replies(model, tokenizer, eval_set: EvalSet, max_new_tokens: int,
                     batch_size: int = GEN_BATCH) -> list[list[int] | None]:
    """Greedy new token ids for each row's prompt (None for a row without one), up to and including the first end
    of turn / EOS. Prompts are generated `batch_size` at a time, left-padded: the batches depend on the eval set
    alone, so every model generates in the same batches (batch_size=1: no padding at all)."""
    import torch  # noqa: PLC0415

    was_training = model.training
    model.eval()
    device = _device(model)
    stops = set(eval_set.stop_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eval_set.stop_ids or [0])[0]
    todo = [(i, r.prompt_ids) for i, r in enumerate(eval_set.rows) if r.prompt_ids]
    out: list[list[int] | None] = [None] * len(eval_set.rows)
    try:
        with torch.no_grad():
            for k in range(0, len(todo), max(1, batch_size)):
                chunk = todo[k:k + max(1, batch_size)]
                width = max(len(p) for _, p in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for j, (_, p) in enumerate(chunk):
                    ids[j, width - len(p):] = torch.tensor(p)
                    mask[j, width - len(p):] = 1
                gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                     max_new_tokens=max_new_tokens, do_sample=False,
                                     eos_token_id=list(eval_set.stop_ids) or None, pad_token_id=pad,
                                     temperature=None, top_p=None, top_k=None)
                for j, (i, _) in enumerate(chunk):
                    new = gen[j, width:].tolist()
                    end = next((n for n, t in enumerate(new) if t in stops), None)
                    out[i] = new[: end + 1] if end is not None else new  # a finished row is padded after its stop
    finally:
        model.train(was_training)
    return out


def generation_metrics(eval_set: EvalSet, replies: list[list[int] | None], tokenizer,
                       max_new_tokens: int) -> dict[str, Any]:
    """Rates over the rows with a prompt. stop: the reply's last token is an end of turn / EOS (generation stopped
    there, before the limit); role_leak: its text contains a role header of the template; empty: nothing but
    whitespace (and an empty think block) before the end of turn; length_ratio: reply tokens / reference tokens."""
    stops = set(eval_set.stop_ids)
    n = stopped = leaked = empty = 0
    ratios, lengths, samples = [], [], []
    think_rows = opened = closed = 0
    for r, ids in zip(eval_set.rows, replies):
        if ids is None:
            continue
        n += 1
        ended = bool(ids) and ids[-1] in stops
        body = ids[:-1] if ended else ids
        stopped += ended
        raw = tokenizer.decode(body, skip_special_tokens=False)
        text = tokenizer.decode(body, skip_special_tokens=True)
        leaked += any(h in raw for h in eval_set.headers)
        visible = text
        if eval_set.think:
            o, c = eval_set.think
            visible = re.sub(re.escape(o) + r".*?(" + re.escape(c) + r"|$)", "", text, flags=re.S)
            if r.reasoning:
                think_rows += 1
                opened += o in raw
                closed += o in raw and c in raw.split(o, 1)[1]
        empty += not visible.strip()
        lengths.append(len(body))
        if r.reference_tokens:
            ratios.append(len(body) / r.reference_tokens)
        if len(samples) < N_SAMPLES:
            samples.append({"row": r.row, "reply": text, "stopped": ended})
    if n == 0:
        return {"generated": 0}
    out = {"generated": n, "stop_rate": stopped / n, "role_leak_rate": leaked / n, "empty_rate": empty / n,
           "mean_new_tokens": sum(lengths) / n, "length_ratio": sum(ratios) / len(ratios) if ratios else None,
           "max_new_tokens": max_new_tokens, "samples": samples}
    if think_rows:
        out.update(think_open_rate=opened / think_rows, think_close_rate=closed / think_rows)
    return out


def evaluate_model(model: Any, eval_set: EvalSet, tokenizer: Any = None, *, max_new_tokens: int = 64,
                   trust_remote_code: bool = False) -> dict[str, Any]:
    """Loss (and, with max_new_tokens > 0, generation behaviour) of a model on the eval set. `model`: a loaded
    model (then pass its tokenizer), or anything `core.models.load_model` takes (a run's final/ directory, full
    weights or a LoRA adapter; 'embedded'; a hub id).
    Example: evaluate_model("runs/x/final", es) -> {"loss": 1.92, "tokens": 412, "stop_rate": 0.88, ...}"""
    from ..models import load_model, load_tokenizer  # noqa: PLC0415

    started = time.monotonic()
    if model is None or isinstance(model, (str, os.PathLike)):
        name = model
        model = load_model(name, trust_remote_code=trust_remote_code)
        if tokenizer is None:
            tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
    if tokenizer is None:
        raise MaskLensError("a loaded model needs its tokenizer.", fix="pass tokenizer=...")
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        raise MaskLensError(f"the tokenizer has {len(tokenizer)} tokens, the model's embeddings "
                            f"{model.get_input_embeddings().weight.shape[0]}: they do not belong together",
                            fix="evaluate with the model's own tokenizer (the one the held-out rows were rendered "
                                "with)")
    result = eval_loss(model, eval_set)
    loss_s = time.monotonic() - started
    if max_new_tokens > 0:
        replies = generate_replies(model, tokenizer, eval_set, max_new_tokens)
        result.update(generation_metrics(eval_set, replies, tokenizer, max_new_tokens))
    result["seconds"] = round(time.monotonic() - started, 3)
    result["loss_seconds"] = round(loss_s, 3)
    return result
