"""Exports that TRL trains on as they are, and the equivalent settings in TRL, axolotl and LLaMA-Factory.

A pre-tokenized dataset (``input_ids`` + ``labels``) is used by TRL 1.16's SFTTrainer without re-masking, so the
exported file trains exactly the labels MaskLens shows. TRL needs no ``attention_mask`` column (its collator builds
one); axolotl's pre-tokenized format does, hence ``attention_mask=True``. Labels are unshifted, -100 ignored.

The snippets are text for the user to copy; this module never imports axolotl or LLaMA-Factory, and writes YAML by
hand (with comments, which no YAML dumper keeps). Option names were checked against the projects' sources:
axolotl ``src/axolotl/utils/schemas/datasets.py`` (``roles_to_train``, ``train_on_eos`` all|turn|last,
``message_field_training``, ``chat_template_jinja``) and ``prompt_strategies/chat_template.py``; LLaMA-Factory
``src/llamafactory/hparams/data_args.py`` (``template``, ``cutoff_len``, ``train_on_prompt``, ``mask_history``,
``packing``, ``neat_packing``, ``tokenized_path``, ``enable_thinking``, ``preserve_thinking``) and
``data/template.py`` (``ReasoningTemplate``: ``enable_thinking: false`` drops think blocks and puts the empty one it
adds in the prompt; with ``mask_history`` earlier turns lose their thinking unless ``preserve_thinking``).

MaskLens's own options (``MaskConfig.differs_from_trl()``: reasoning, empty_think, mask_tokens, template_source,
split_turns, eos, train_roles) and custom strategies (rules, strategy files, collators) are carried where a target
has an equivalent and named in a comment where it has none: the pre-tokenized export is the only faithful export of
them. ``split_turns`` has a faithful TRL form: conversational prompt/completion rows (:func:`split_turn_rows`), which
TRL trains with ``completion_only_loss`` (its default for that format).
"""

from __future__ import annotations

import json
import os
import tempfile
import textwrap
from dataclasses import replace
from pathlib import Path

from .data.formats import KIND_PC_CONV, KIND_PC_TEXT, KIND_TEXT, KIND_TOKENS, Example
from .errors import MaskLensError
from .masking.engine import MaskConfig, RenderedExample, Strategy
from .masking.strategies import get_strategy


# --------------------------------------------------------------------------------------------------------- files
def export_records(rendered: list[RenderedExample], *, row: bool = True, attention_mask: bool = False) -> list[dict]:
    """One record per example. Example: [{"input_ids": [5, 6], "labels": [-100, 6], "row": 0}].
    With split_turns (examples carrying ``turn``), each record also names its turn: the assistant message it trains."""
    out = []
    turns = row and any(getattr(r, "turn", None) is not None for r in rendered)
    weighted = any(getattr(r, "weights", None) is not None for r in rendered)
    for r in rendered:
        rec = {"input_ids": list(r.input_ids), "labels": list(r.labels)}
        if weighted:  # one column for all rows: 1.0 where labelled, 0.0 where not, when a row has no weights
            rec["loss_weights"] = list(r.weights) if getattr(r, "weights", None) is not None else [
                0.0 if lab == -100 else 1.0 for lab in r.labels]
        if attention_mask:
            rec["attention_mask"] = [1] * len(r.input_ids)
        if row:
            rec["row"] = r.row
        if turns:
            rec["turn"] = r.turn
        out.append(rec)
    return out


def split_turn_rows(examples: list[Example], cfg: MaskConfig) -> list[dict]:
    """split_turns as TRL data: one conversational prompt/completion row per trained assistant turn, the history as
    the prompt and the turn as the completion (with the row's tools and chat_template_kwargs). TRL renders the prompt
    with add_generation_prompt=True and trains the completion (completion_only_loss, its default for this format):
    exactly what MaskLens shows for split_turns with the other options at TRL's defaults. Rows that are not
    messages are left out. Example: [u, a1, u, a2] -> [{"prompt": [u], "completion": [a1]},
    {"prompt": [u, a1, u], "completion": [a2]}]."""
    from .masking.engine import split_turns  # noqa: PLC0415

    out = []
    for ex in split_turns(examples, replace(cfg, split_turns=True) if not cfg.split_turns else cfg):
        if ex.turn is None or ex.prompt is None:
            continue
        rec: dict = {"prompt": _messages(ex.prompt), "completion": _messages(ex.completion)}
        if ex.tools:
            rec["tools"] = ex.tools
        if ex.chat_template_kwargs:
            rec["chat_template_kwargs"] = ex.chat_template_kwargs
        rec["row"], rec["turn"] = ex.row, ex.turn
        out.append(rec)
    return out


def _messages(msgs: list[dict]) -> list[dict]:
    """Messages as MaskLens rendered them, without the keys normalisation adds for its own use."""
    return [{k: v for k, v in m.items() if not k.startswith("_")} for m in msgs]


def export_split_rows(examples: list[Example], cfg: MaskConfig, path: str | os.PathLike) -> Path:
    """Write :func:`split_turn_rows` as JSONL (load_dataset("json") reads it; see schema_nulls_injected for rows
    whose tool calls or tools differ in keys)."""
    return write_jsonl(path, split_turn_rows(examples, cfg))


def trl_rows(examples: list[Example], *, tools_as_json: bool = True, row: bool = False) -> list[dict]:
    """The examples as TRL 1.16 rows, as MaskLens reads them: converted rows (LLaMA-Factory's alpaca, ShareGPT with
    function calls, typed parts, <image> tags: the format_converted finding) become ``messages`` rows that SFTTrainer
    trains as MaskLens shows them; rows already in TRL's format come back as normalised (ShareGPT roles mapped).

    - ``tools_as_json``: the tool schemas as one JSON string (SFTTrainer json.loads it), so that `datasets` does not
      unify their keys across rows (schema_nulls_injected). Tool-call arguments stay objects (templates differ on
      string arguments); rows whose calls differ in keys still get that finding when loaded.
    - images stay as written: paths (relative to the data file, as they were) or, for images given as bytes, an error
      (image bytes are never written outside MaskLens's run/cache folders: save such data with `datasets` instead).
    - ``row``: add each example's row number (TRL carries an extra column along and never renders it).

    Example: alpaca {"instruction": "Add", "input": "2+2", "output": "4"} ->
    {"messages": [{"role": "user", "content": "Add\\n2+2"}, {"role": "assistant", "content": "4"}]}
    """
    out = []
    for ex in examples:
        if ex.kind == KIND_TOKENS:
            rec: dict = {"input_ids": list(ex.input_ids)}
            if ex.labels is not None:
                rec["labels"] = list(ex.labels)
        elif ex.kind == KIND_TEXT:
            rec = {"text": ex.text}
        elif ex.kind == KIND_PC_TEXT:
            rec = {"prompt": ex.prompt, "completion": ex.completion}
        elif ex.kind == KIND_PC_CONV:
            rec = {"prompt": _messages(ex.prompt), "completion": _messages(ex.completion)}
        else:
            rec = {"messages": _messages(ex.messages)}
        if ex.tools and ex.kind not in (KIND_TOKENS, KIND_TEXT, KIND_PC_TEXT):
            rec["tools"] = json.dumps(ex.tools, ensure_ascii=False) if tools_as_json else ex.tools
        if ex.chat_template_kwargs:
            rec["chat_template_kwargs"] = ex.chat_template_kwargs
        if ex.images:
            for k, im in enumerate(ex.images):
                if not isinstance(im, str) and not (isinstance(im, dict) and im.get("bytes") is None and im.get("path")):
                    raise MaskLensError(f"image {k} is stored as bytes, not a path: MaskLens does not write image bytes "
                                        "into an exported file", file=ex.source, row=ex.row, field=f"images[{k}]",
                                        fix="export rows whose images are files, or save the data with `datasets` "
                                            "(Dataset.save_to_disk / push_to_hub keep the image bytes)")
            rec["images"] = [im if isinstance(im, str) else im["path"] for im in ex.images]
        if row:
            rec["row"] = ex.row
        out.append(rec)
    return out


def export_trl_rows(examples: list[Example], path: str | os.PathLike, **kwargs) -> Path:
    """Write :func:`trl_rows` as JSONL: TRL's `messages` data (load_dataset("json", data_files=path))."""
    return write_jsonl(path, trl_rows(examples, **kwargs))


def write_jsonl(path: str | os.PathLike, records, compact: bool = False) -> Path:
    """One JSON object per line, written atomically (compact: no spaces, for token lists)."""

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in records:
                f.write((json.dumps(rec, separators=(",", ":")) if compact else json.dumps(rec, ensure_ascii=False))
                        + "\n")
            f.flush()
            os.fsync(f.fileno())

    return _atomic_write(path, write)


def _atomic_write(path: str | os.PathLike, write) -> Path:
    """Write through a temporary file in the same folder, then os.replace: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def export_jsonl(rendered: list[RenderedExample], path: str | os.PathLike, *, row: bool = True,
                 attention_mask: bool = False) -> Path:
    """Write ``{"input_ids", "labels"[, "attention_mask"][, "row"]}`` per line; load_dataset("json") reads it."""
    return write_jsonl(path, export_records(rendered, row=row, attention_mask=attention_mask), compact=True)


def export_parquet(rendered: list[RenderedExample], path: str | os.PathLike, *, row: bool = True,
                   attention_mask: bool = False) -> Path:
    """The same columns as export_jsonl, as Parquet (int32 lists: every vocabulary and -100 fit)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = export_records(rendered, row=row, attention_mask=attention_mask)
    ints = pa.list_(pa.int32())
    fields = [("input_ids", ints), ("labels", ints)]
    if records and "loss_weights" in records[0]:
        fields.append(("loss_weights", pa.list_(pa.float32())))
    if attention_mask:
        fields.append(("attention_mask", ints))
    if row:
        fields.append(("row", pa.int64()))
    if records and "turn" in records[0]:
        fields.append(("turn", pa.int64()))
    schema = pa.schema(fields)
    table = pa.Table.from_pylist(records, schema=schema)
    return _atomic_write(path, lambda tmp: pq.write_table(table, tmp))


# ----------------------------------------------------------------------------------------------------- describing
def describe(cfg: MaskConfig) -> str:
    """One line naming a configuration. Example: "strategy=assistant_only, eos=every_turn, train_roles=assistant"."""
    parts = [f"strategy={cfg.strategy}"]
    if cfg.strategy in (Strategy.ASSISTANT_ONLY, Strategy.LAST_ASSISTANT):
        parts += [f"eos={cfg.eos}", f"train_roles={','.join(cfg.train_roles)}"]
    if cfg.strategy == Strategy.RESPONSE_TEMPLATE:
        parts.append(f"response_template={cfg.response_template!r}")
    parts += [o for o in cfg.differs_from_trl() if not o.startswith(("eos=", "train_roles="))]
    parts.append(f"max_length={cfg.max_length}" + (f" ({cfg.truncation})" if cfg.max_length else ""))
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------- options per target
LOSS_WEIGHTS_NOTE = (
    "the pre-tokenized export carries a loss_weights column (a weight in [0, 1] per token; the labels hold the token "
    "id wherever the weight is above 0). TRL 1.16, axolotl and LLaMA-Factory do not read it: their loss averages "
    "every labelled token alike, so they would train the prompt at full weight. MaskLens's training reads it: "
    "`python -m core train` / experiments, or in your own script core.training.weighted.WeightedSFTTrainer (an "
    "SFTTrainer whose compute_loss is sum(w * nll) / sum(w) over the whole accumulated step; a run's exported "
    "train.py embeds it).")
FAITHFUL = ("The pre-tokenized export (input_ids + labels, JSONL or Parquet) is the only faithful export of these "
            "options and of custom rules: train on it to get exactly MaskLens' labels.")


def is_custom(cfg: MaskConfig) -> bool:
    """A strategy that is not one of the built-ins: rules, a strategy file, a team's collator."""
    spec = get_strategy(cfg.strategy)
    return spec is not None and not spec.builtin


def option_notes(cfg: MaskConfig, target: str) -> list[str]:
    """One note per option set away from TRL's behaviour (MaskConfig.differs_from_trl), for target "trl", "axolotl"
    or "llamafactory": its equivalent there, or that it has none. eos and train_roles are handled by each snippet."""
    notes = []
    if is_custom(cfg):
        notes.append(f"strategy {cfg.strategy}: a custom strategy (rules, a strategy file or a collator) has no "
                     f"{_TARGET[target]} equivalent.")
    for opt in cfg.differs_from_trl():
        name = opt.split("=", 1)[0]
        if name in ("eos", "train_roles"):
            continue
        if name == "split_turns" and cfg.strategy != Strategy.ASSISTANT_ONLY:
            continue
        notes.append(f"{opt}: {_EQUIVALENTS[name][target]}")
    if notes:
        notes.append(FAITHFUL)
    return notes


_TARGET = {"trl": "TRL 1.16", "axolotl": "axolotl", "llamafactory": "LLaMA-Factory"}
_EQUIVALENTS = {
    "template_source": {
        "trl": "no TRL option: with assistant_only_loss TRL renders with its training template (or raises); "
               "MaskLens' own masking on the inference template is not something TRL does.",
        "axolotl": "axolotl renders with the chat template given (no training-template swap) and locates each turn "
                   "itself: close to template_source=own, not exact.",
        "llamafactory": "LLaMA-Factory renders with its own template (the `template` key), not the tokenizer's.",
    },
    "reasoning": {
        "trl": "no TRL option (TRL trains the think blocks inside {% generation %}).",
        "axolotl": "no exact option: axolotl trains the reasoning it renders with the turn (field_thinking / "
                   "template_thinking_key only say where it is; split_thinking only splits Qwen3 content).",
        "llamafactory": "no exact option: enable_thinking: false removes think blocks from the data instead of "
                        "masking them (the model then never sees them).",
    },
    "empty_think": {
        "trl": "no TRL option (TRL trains what its template inserts inside {% generation %}).",
        "axolotl": "no axolotl option (it trains what the template renders inside the turn).",
        "llamafactory": "enable_thinking: false puts the empty think block it adds in the prompt (not trained), but "
                        "also removes every think block: exact only for data without reasoning.",
    },
    "mask_tokens": {
        "trl": "no TRL option.",
        "axolotl": "no axolotl option (message_field_training_detail marks character ranges of content only).",
        "llamafactory": "no LLaMA-Factory option.",
    },
    "prompt_loss_weight": {
        "trl": LOSS_WEIGHTS_NOTE,
        "axolotl": "no axolotl option: " + LOSS_WEIGHTS_NOTE,
        "llamafactory": "no LLaMA-Factory option (its per-message loss_weight is not per token): " + LOSS_WEIGHTS_NOTE,
    },
    "content_parts": {
        "trl": "no TRL option: TRL passes part lists to the template as they are; join the text parts in the data "
               "(Export: TRL rows after content_parts=join) or train on the pre-tokenized export.",
        "axolotl": "no axolotl option: store the content as strings.",
        "llamafactory": "LLaMA-Factory joins typed text parts itself (no separator), as content_parts=join does.",
    },
    "split_turns": {
        "trl": "faithful as conversational prompt/completion rows (Export: split rows), trained with "
               "completion_only_loss=True: see split_args below.",
        "axolotl": "no option: write the split rows as messages (history + the turn) and train only the last "
                   "message (roles_to_train: [], train_on_eos: null, as for last_assistant).",
        "llamafactory": "train the split rows (history + the turn) with mask_history: true: the last turn only, "
                        "earlier turns' thinking dropped as at inference (unless preserve_thinking: true).",
    },
}


def _comment(text: str, indent: str = "", width: int = 116) -> list[str]:
    """Comment lines, long ones wrapped (lines starting with a space are kept as they are: code, YAML)."""
    out = []
    for line in text.split("\n"):
        wrapped = [line] if line.startswith(" ") else textwrap.wrap(line, width - len(indent) - 2) or [""]
        out += [f"{indent}# {w}".rstrip() for w in wrapped]
    return out


# ------------------------------------------------------------------------------------------------------------ TRL
def _native_trl(cfg: MaskConfig) -> tuple[dict[str, object] | None, list[str]]:
    """The closest native TRL 1.16 SFTConfig options for a strategy (None: there is none), and what differs."""
    notes: list[str] = []
    s = cfg.strategy
    if is_custom(cfg):
        notes.append(f"{s}: no native TRL option for a custom strategy: train on the exported labels.")
        return None, notes
    if s == Strategy.FULL:
        notes.append("TRL's default trains every token of 'messages' and 'text' data; on prompt/completion data it "
                     "trains only the completion unless completion_only_loss=False.")
        return {"completion_only_loss": False}, notes
    if s == Strategy.COMPLETION_ONLY:
        notes.append("completion_only_loss=True on prompt/completion data (TRL's default for that format).")
        return {"completion_only_loss": True}, notes
    if s == Strategy.ASSISTANT_ONLY:
        notes.append("assistant_only_loss=True needs {% generation %} markers in the chat template; TRL 1.16 swaps "
                     "in a training template for the model families it ships (trl/chat_templates/) and raises "
                     "otherwise. It trains every assistant turn with its end-of-turn marker.")
        if cfg.eos != "every_turn":
            notes.append(f"eos={cfg.eos}: no native TRL option (TRL trains every turn's end-of-turn marker).")
        if tuple(cfg.train_roles) != ("assistant",):
            notes.append(f"train_roles={','.join(cfg.train_roles)}: no native TRL option (assistant only).")
        if not cfg.use_generation_markers:
            notes.append("use_generation_markers=False: TRL always uses the template's generation markers.")
        notes.append("Per-message flags (weight 0, train false) are ignored by TRL.")
        return {"assistant_only_loss": True}, notes
    if s == Strategy.LAST_ASSISTANT:
        notes.append("last_assistant has no native TRL option (TRL trains every assistant turn or none): train on "
                     "the exported labels.")
        return None, notes
    notes.append("response_template: DataCollatorForCompletionOnlyLM(response_template=...) was removed in TRL "
                 "0.20; no native option: train on the exported labels.")
    return None, notes


def split_rows_name(data_path: str) -> str:
    """The split rows' file name beside an export. Example: "data.masked.jsonl" -> "data.split_turns.jsonl"."""
    name = Path(str(data_path)).name
    stem = name.split(".masked")[0] if ".masked" in name else Path(name).stem
    return f"{stem}.split_turns.jsonl"


def _py_kwargs(kwargs: dict[str, object], comments: dict[str, str], indent: str = "    ") -> list[str]:
    lines = []
    for k, v in kwargs.items():
        line = f"{indent}{k}={v!r},"
        if k in comments:
            line += f"  # {comments[k]}"
        lines.append(line)
    return lines


def sftconfig_snippet(cfg: MaskConfig, tokenizer_name: str, data_path: str,
                      extra_args: dict[str, object] | None = None) -> str:
    """A runnable TRL 1.16 script training on the exported file, plus the closest native SFTConfig for the strategy.

    ``extra_args``: more SFTConfig keywords for both configs (hyper-parameters; ``bf16=False, use_cpu=True`` on a CPU:
    TRL defaults to bf16).

    The export was truncated by MaskLens already, so ``max_length`` is MaskLens' own (None when it did not truncate:
    TRL's default of 1024 would cut longer rows again). With a ``max_length``, TRL also drops rows left with no
    trained token, which MaskLens keeps and flags.
    """
    fmt = "parquet" if str(data_path).lower().endswith(".parquet") else "json"
    exact: dict[str, object] = {"output_dir": "sft-output", "max_length": cfg.max_length}
    exact_notes = {"max_length": ("MaskLens did not truncate; TRL's default, 1024, would cut longer rows"
                                  if cfg.max_length is None
                                  else "as MaskLens truncated; TRL also drops rows with no trained token")}
    extra = dict(extra_args or {})
    exact.update(extra)
    native, notes = _native_trl(cfg)

    lines = [f'"""Train on MaskLens\' labels with TRL 1.16 ({describe(cfg)}).', "",
             "The file is pre-tokenized: SFTTrainer uses its input_ids and labels as they are (no chat template, no",
             "re-masking). Use the model whose tokenizer made the ids.", '"""',
             "from datasets import load_dataset",
             "from trl import SFTConfig, SFTTrainer", "",
             f"MODEL = {tokenizer_name!r}",
             f"dataset = load_dataset({fmt!r}, data_files={str(data_path)!r}, split='train')", "",
             "# TRL defaults to bf16: on a CPU (or a GPU without bf16) add bf16=False (and use_cpu=True).",
             "args = SFTConfig(", *_py_kwargs(exact, exact_notes), ")", ""]
    lines += _comment("The closest native TRL 1.16 setting, for raw (untokenized) data instead of the export:")
    lines += _comment("\n".join(notes + option_notes(cfg, "trl")))
    if native is not None:
        nkw: dict[str, object] = {"output_dir": "sft-output", **native, "max_length": cfg.max_length}
        ncomments = {}
        if cfg.max_length is not None and cfg.truncation != "keep_start":  # keep_start is TRL's default
            nkw["truncation_mode"] = cfg.truncation
            ncomments["truncation_mode"] = "deprecated in TRL 1.16, to be removed in 2.0"
        nkw.update(extra)
        if cfg.chat_template:
            nkw["chat_template_path"] = "chat_template.jinja"
            ncomments["chat_template_path"] = "save MaskLens' chat template to this file"
        lines += ["native_args = SFTConfig(", *_py_kwargs(nkw, ncomments), ")",
                  "# raw = load_dataset('json', data_files='your_raw_data.jsonl', split='train')",
                  "# SFTTrainer(model=MODEL, args=native_args, train_dataset=raw).train()"]
    if cfg.split_turns and cfg.strategy == Strategy.ASSISTANT_ONLY:
        skw: dict[str, object] = {"output_dir": "sft-output", "completion_only_loss": True, "max_length": cfg.max_length}
        skw.update(extra)
        lines += ["", *_comment("split_turns, faithfully: one conversational prompt/completion row per assistant turn "
                                "(MaskLens Export: split rows). TRL renders the prompt as at inference "
                                "(add_generation_prompt=True) and trains the completion."),
                  "split_args = SFTConfig(", *_py_kwargs(skw, {}), ")",
                  f"# split = load_dataset('json', data_files={split_rows_name(data_path)!r}, split='train')",
                  "# SFTTrainer(model=MODEL, args=split_args, train_dataset=split).train()"]
    lines += ["", "trainer = SFTTrainer(model=MODEL, args=args, train_dataset=dataset)", "trainer.train()", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------ YAML
def _y(v) -> str:
    """A YAML scalar or flow list. JSON strings are valid YAML double-quoted scalars."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_y(x) for x in v) + "]"
    return json.dumps(str(v), ensure_ascii=False)


def _yaml_lines(items: list, indent: str = "") -> list[str]:
    """items: (key, value[, comment]) tuples, or a string (a comment line)."""
    out = []
    for it in items:
        if isinstance(it, str):
            out += _comment(it, indent)
            continue
        k, v, *c = it
        line = f"{indent}{k}: {_y(v)}"
        out.append(line + (f"  # {c[0]}" if c else ""))
    return out


def axolotl_snippet(cfg: MaskConfig, data_path: str = "data.jsonl", base_model: str | None = None) -> str:
    """An axolotl config (YAML) with the options closest to ``cfg``; comments say where there is no equivalent."""
    s = cfg.strategy
    head = [f"axolotl equivalent of MaskLens {describe(cfg)}.",
            "Exactly MaskLens' labels instead: export with the attention_mask column (Export tab checkbox; Python:",
            "core.export.export_jsonl(..., attention_mask=True): axolotl's pre-tokenized format needs input_ids,",
            "attention_mask, labels) and use a dataset with an empty type:",
            "  datasets:", "    - path: masklens_export.jsonl", "      ds_type: json", "      type:"]
    top: list = [("base_model", base_model or "CHANGE_ME", "the model whose tokenizer MaskLens used")]
    if cfg.chat_template:
        top += [("chat_template", "jinja"), ("chat_template_jinja", cfg.chat_template)]
    else:
        top.append(("chat_template", "tokenizer_default"))
    if cfg.max_length:
        top.append(("sequence_len", cfg.max_length))
        if cfg.truncation == "keep_start":
            top.append(("excess_length_strategy", "truncate", "axolotl's default, drop, removes long rows"))
        else:
            top.append("truncation=keep_end: no axolotl equivalent (excess_length_strategy truncates the end or drops)")
    else:
        top.append("MaskLens did not truncate: set sequence_len above your longest example "
                   "(axolotl's default, 512, drops longer rows)")
    top.append(("sample_packing", False, "true packs like TRL's bfd + padding-free"))

    ds: list = [("path", data_path), ("ds_type", "json")]
    notes: list[str] = []
    if s == Strategy.FULL:
        top.append(("train_on_inputs", True))
        ds += [("type", "chat_template"), ("field_messages", "messages"),
               ("roles_to_train", ["system", "user", "assistant", "tool"]), ("train_on_eos", "all")]
        notes.append("full: axolotl trains every message's content and EOS but not role headers or other template "
                     "text: not exact (text data: type: completion trains everything). The pre-tokenized export is.")
    elif s == Strategy.COMPLETION_ONLY:
        top.append(("train_on_inputs", False))
        ds += [("type", "input_output")]
        notes.append("completion_only: convert each row to segments: [{text: prompt, label: false}, "
                     "{text: completion + EOS, label: true}]. Segments are tokenized one by one, so ids at the seam "
                     "can differ from TRL's (which tokenizes prompt + completion together).")
    elif s in (Strategy.ASSISTANT_ONLY, Strategy.LAST_ASSISTANT) and not is_custom(cfg):
        top.append(("train_on_inputs", False))
        ds += [("type", "chat_template"), ("field_messages", "messages")]
        if s == Strategy.ASSISTANT_ONLY:
            ds.append(("roles_to_train", list(cfg.train_roles)))
            if cfg.eos == "none":
                notes.append("eos=none: no equivalent in current axolotl (train_on_eos accepts all, turn, last).")
            else:
                ds.append(("train_on_eos", {"every_turn": "turn", "last_turn": "last"}[cfg.eos]))
            ds.append(("message_field_training", "train", "per-message train: true/false, as MaskLens reads it"))
            notes.append("axolotl locates each turn's content by rendering a dummy message; role headers stay "
                         "masked as in MaskLens. OpenAI-style weight 0 is not read by axolotl.")
        else:
            ds += [("roles_to_train", []), ("train_on_eos", None)]
            notes.append("last_assistant: with no roles_to_train and no train_on_eos, axolotl trains the last message "
                         "only (everything after the generation prompt, its end-of-turn included): the same when "
                         "conversations end with the trained turn.")
            if cfg.eos == "none":
                notes.append("eos=none: no equivalent (that path trains the last end-of-turn marker).")
    else:  # response_template, or a custom strategy
        ds += [("type", None, "pre-tokenized: the MaskLens export with its attention_mask column")]
        what = "response_template" if s == Strategy.RESPONSE_TEMPLATE else s
        notes.append(f"{what}: no axolotl equivalent: the dataset above is MaskLens' pre-tokenized export.")
        ds[0] = ("path", "masklens_export.jsonl")
    if cfg.split_turns and s == Strategy.ASSISTANT_ONLY:
        ds = [("path", split_rows_name(data_path), "the split rows: one per assistant turn")] + [
            d for d in ds if d[0] not in ("path", "roles_to_train", "train_on_eos", "message_field_training")]
        ds += [("field_messages", "messages", "convert each split row: messages = prompt + completion"),
               ("roles_to_train", []), ("train_on_eos", None)]
        ds = list(dict((d[0], d) for d in ds).values())
    notes += option_notes(cfg, "axolotl")

    lines = _comment("\n".join(head)) + _yaml_lines(top) + ["datasets:"]
    body = _yaml_lines(ds, "    ")
    body[0] = "  - " + body[0].lstrip()
    lines += body + _comment("\n".join(notes)) + [""]
    return "\n".join(lines)


def llamafactory_snippet(cfg: MaskConfig, dataset: str = "your_dataset", template: str | None = None,
                         model: str | None = None) -> str:
    """A LLaMA-Factory training config (YAML) with the options closest to ``cfg``."""
    s = cfg.strategy
    tok_cmd = ("python -c \"from datasets import DatasetDict, load_dataset; DatasetDict({'train': load_dataset('json', "
               "data_files='masklens_export.jsonl', split='train')}).save_to_disk('masklens_tokenized')\"")
    lines = _comment(f"LLaMA-Factory equivalent of MaskLens {describe(cfg)}.\n"
                     "Exactly MaskLens' labels instead: export with the attention_mask column (Export tab checkbox;\n"
                     "Python: core.export.export_jsonl(..., attention_mask=True)), then\n"
                     f"  {tok_cmd}\n"
                     "and set tokenized_path: masklens_tokenized (LLaMA-Factory then skips its own preprocessing).")
    items: list = [("model_name_or_path", model or "CHANGE_ME"), ("stage", "sft"), ("do_train", True)]
    notes: list[str] = []
    if s == Strategy.RESPONSE_TEMPLATE or is_custom(cfg):
        items.append(("tokenized_path", "masklens_tokenized", "the MaskLens export, saved as above"))
        what = "response_template" if s == Strategy.RESPONSE_TEMPLATE else s
        notes.append(f"{what}: no LLaMA-Factory equivalent: train on the pre-tokenized export.")
    else:
        items.append(("dataset", dataset, "registered in data/dataset_info.json"))
    items.append(("template", template, "required: LLaMA-Factory's name for the model's template (e.g. qwen, llama3)"))
    if cfg.chat_template:
        notes.append("A custom chat template has no direct equivalent: LLaMA-Factory templates are registered in "
                     "src/llamafactory/data/template.py.")
    if cfg.max_length:
        items.append(("cutoff_len", cfg.max_length))
        notes.append(f"truncation={cfg.truncation}: LLaMA-Factory shares cutoff_len between prompt and response "
                     "(neither keep_start nor keep_end).")
    else:
        notes.append("MaskLens did not truncate: set cutoff_len (default 2048) above your longest example.")
    if s == Strategy.FULL:
        items += [("train_on_prompt", True), ("mask_history", False)]
    elif s == Strategy.COMPLETION_ONLY:
        items += [("train_on_prompt", False), ("mask_history", False)]
        notes.append("completion_only: alpaca-format prompt (instruction + input) and completion (output).")
    elif s == Strategy.ASSISTANT_ONLY and cfg.split_turns:
        items += [("train_on_prompt", False), ("mask_history", True, "on the split rows: each row's last turn")]
        if cfg.eos != "every_turn":
            notes.append(f"eos={cfg.eos}: no LLaMA-Factory option (each response trains its template's end-of-turn).")
    elif s == Strategy.ASSISTANT_ONLY:
        items += [("train_on_prompt", False), ("mask_history", False)]
        if cfg.eos != "every_turn":
            notes.append(f"eos={cfg.eos}: no LLaMA-Factory option (each response trains its template's end-of-turn).")
        if tuple(cfg.train_roles) != ("assistant",):
            notes.append(f"train_roles={','.join(cfg.train_roles)}: no LLaMA-Factory option (responses only).")
    elif s == Strategy.LAST_ASSISTANT:
        items += [("train_on_prompt", False), ("mask_history", True, "train the last turn only")]
        if cfg.eos != "every_turn":
            notes.append(f"eos={cfg.eos}: no LLaMA-Factory option.")
    items += [("packing", False), ("neat_packing", False, "true: packing without cross-attention (like TRL's bfd)")]
    if not is_custom(cfg) and s in (Strategy.ASSISTANT_ONLY, Strategy.LAST_ASSISTANT) and cfg.empty_think == "train" \
            and cfg.reasoning == "train":
        items.append(("enable_thinking", True, "think blocks written inline in the response are kept and trained "
                                               "(its default, as TRL); it does not read reasoning_content"))
    notes += option_notes(cfg, "llamafactory")
    lines += _yaml_lines(items) + _comment("\n".join(notes)) + [""]
    return "\n".join(lines)
