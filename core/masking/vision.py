"""Vision-language SFT: rows with images rendered exactly as TRL 1.16 trains them, token by token.

TRL 1.16's SFTTrainer sends a dataset with an ``images`` (or ``image``) column to
``DataCollatorForVisionLanguageModeling(processor, max_length, completion_only_loss, assistant_only_loss,
chat_template)``: it tokenizes and processes the images on the fly (the processor expands each image placeholder into
its run of image tokens, e.g. ``<|image_pad|>`` ×16), and its labels are the input ids with padding set to -100, then

- ``assistant_only_loss``: tokens outside the template's ``{% generation %}`` blocks set to -100 (a template without
  markers is swapped for TRL's training twin, as for text: ``get_training_chat_template``);
- ``completion_only_loss`` (prompt/completion rows; SFTTrainer's default for them): the prompt set to -100;
- neither (SFTTrainer's default for ``messages`` rows): every token trained, the image tokens included
  (finding ``image_tokens_trained``).

This module calls that collator itself, one example at a time (a batch of one is never padded), so input_ids and
labels ARE the collator's; it then explains each token (image placeholder run, message text, template text, and the
rule that set its label). Images are opened here, never by transformers: local paths relative to the data file's
folder (and inside ``root`` and the core.paths policy), ``data:`` URLs, bytes as `datasets` stores them, PIL images.
Nothing is downloaded and image bytes are never written anywhere.

Example:
    r = render_vision_examples(load_examples("vl.jsonl"), AutoProcessor.from_pretrained(...), assistant_only_loss=True)[0]
    r.input_ids, r.labels   # == DataCollatorForVisionLanguageModeling(...)([row])["input_ids"][0], ["labels"][0]
"""

from __future__ import annotations

import base64
import binascii
import copy
import io
import os
from pathlib import Path

from ..data.content import IMAGE, IMAGE_PAYLOAD_KEYS, IMAGE_URL
from ..data.example import KIND_MESSAGES, KIND_PC_CONV, KIND_PC_TEXT, Example
from ..errors import MaskLensError
from ..findings import Finding
from ..hub import hub_kwargs, offline_note
from ..paths import check_allowed, check_source, get_policy
from .labels import IGNORE
from .rendered import RenderedExample, Segment

__all__ = ["MAX_IMAGE_PIXELS", "image_token_ids", "load_processor", "open_image", "processor_for",
           "render_vision_examples", "trl_flags", "vision_chat_template"]

MAX_IMAGE_PIXELS = 64 * 2**20  # a decompression bomb stops here (PIL's own guard is a warning below 2x its limit)
_PLACEHOLDER_ATTRS = ("image_token", "image_pad_token")
_MARKER_ATTRS = ("boi_token", "eoi_token", "fake_image_token", "global_image_tag", "image_start_token",
                 "image_end_token", "vision_start_token", "vision_end_token")


def trl_flags(strategy: str) -> dict:
    """The collator flags a MaskLens strategy means for vision rows (SFTConfig's own names).
    Example: trl_flags("assistant_only") -> {"assistant_only_loss": True, "completion_only_loss": None}."""
    flags = {"assistant_only": (True, None), "completion_only": (False, True), "full": (False, False)}
    if strategy not in flags:
        raise MaskLensError(f"strategy {strategy!r} has no equivalent in TRL's vision collator", field="strategy",
                            fix="use assistant_only, completion_only or full for rows with images")
    a, c = flags[strategy]
    return {"assistant_only_loss": a, "completion_only_loss": c}


def load_processor(name: str, trust_remote_code: bool = False):
    """AutoProcessor.from_pretrained(name), through the path policy (core.paths.check_source)."""
    check_source(name, "processor")
    hub, unreachable = hub_kwargs(name)
    try:
        from transformers import AutoProcessor  # noqa: PLC0415

        return AutoProcessor.from_pretrained(name, trust_remote_code=trust_remote_code, **hub)
    except Exception as e:  # noqa: BLE001
        offline = offline_note(unreachable)
        raise MaskLensError(f"could not load a processor from {name!r}{offline}: {type(e).__name__}: {e}",
                            field="processor", fix="give a vision-language model's id or directory (it needs "
                            "preprocessor_config.json and processor files)") from None


# ------------------------------------------------------------------------------------------------------------ images
def open_image(ref, base_dir: str | None = None, root: str | os.PathLike | None = None, *, where: str = "images",
               row: int | None = None, source: str | None = None):
    """One image as a PIL image, read in memory. ``ref``: a PIL image; bytes; {"bytes": bytes or base64, "path"};
    a data: URL; a local path (relative paths are read from ``base_dir``, the data file's folder). A path must lie
    inside ``root`` when given (an upload's own folder) and inside the allowed folders of the core.paths policy.
    URLs are refused (MaskLens downloads nothing)."""
    from PIL import Image  # noqa: PLC0415

    def err(msg, fix):
        return MaskLensError(msg, file=source, row=row, field=where, fix=fix)

    if hasattr(ref, "convert") and hasattr(ref, "size"):
        return ref
    data = None
    if isinstance(ref, dict):
        b = ref.get("bytes")
        if b is not None:
            data = _b64(b, err) if isinstance(b, str) else bytes(b)
        else:
            ref = ref.get("path")
    elif isinstance(ref, (bytes, bytearray)):
        data = bytes(ref)
    if data is None:
        if not isinstance(ref, str) or not ref.strip():
            raise err(f"is not an image ({type(ref).__name__})", "give a path relative to the data file, or bytes")
        if ref.startswith("data:"):
            head, _, payload = ref.partition(",")
            if ";base64" not in head:
                raise err("is a data: URL that is not base64", "encode the image as data:image/png;base64,...")
            data = _b64(payload, err)
        elif ref.split(":", 1)[0].lower() in ("http", "https", "ftp", "s3", "gs", "hf"):
            raise err(f"is a URL ({ref[:60]}): MaskLens does not download images",
                      "download the images and give their paths relative to the data file")
        else:
            data = _read_local(ref, base_dir, root, err)
    try:
        im = Image.open(io.BytesIO(data))
        if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
            raise err(f"is {im.size[0]}x{im.size[1]} pixels, more than {MAX_IMAGE_PIXELS // 2**20}M",
                      "resize the image (processors resize it anyway)")
        im.load()
    except MaskLensError:
        raise
    except Exception as e:  # noqa: BLE001  (PIL raises UnidentifiedImageError, DecompressionBombError, OSError...)
        raise err(f"could not be read as an image ({type(e).__name__}: {e})",
                  "give a PNG/JPEG/WebP... file (or its bytes)") from None
    return im


def _b64(text: str, err) -> bytes:
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        raise err("holds text that is not base64", "store the image's bytes, or base64 of them") from None


def _read_local(ref: str, base_dir: str | None, root, err) -> bytes:
    p = Path(ref).expanduser()
    if not p.is_absolute():
        if base_dir is None:
            raise err(f"is a relative path ({ref}), but the dataset has no folder to read it from (a hub dataset?)",
                      "give image bytes, or absolute paths")
        p = Path(base_dir) / p
    try:
        if root is not None:
            check_allowed(p, [root])
        policy = get_policy()
        if policy.allowed_dirs is not None:
            check_allowed(p, policy.allowed_dirs)
    except MaskLensError as e:
        raise err(f"image path {ref!r}: {e.message}", "keep images inside the dataset's folder "
                  "(paths relative to the data file)") from None
    if not p.is_file():
        raise err(f"image not found: {ref} (read from {base_dir or 'the current folder'})",
                  "image paths are relative to the data file's folder: fix the path or move the image")
    return p.read_bytes()


# ---------------------------------------------------------------------------------------------------- the collator
def vision_chat_template(processor, assistant_only_loss: bool, chat_template: str | None = None) -> tuple[str | None, str]:
    """(the template the collator renders with, in words), as SFTTrainer decides it: a given template as is; with
    assistant_only_loss and a processor template without {% generation %} markers, TRL's training twin
    (get_training_chat_template; raises MaskLensError where TRL raises)."""
    if chat_template:
        return chat_template, "the chat template given"
    if not assistant_only_loss:
        return None, "the processor's chat template"
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers  # noqa: PLC0415

    own = getattr(processor, "chat_template", None)
    if own and has_generation_markers(own):
        return None, "the processor's chat template ({% generation %} markers)"
    try:
        twin = get_training_chat_template(processor)
    except Exception as e:  # noqa: BLE001
        raise MaskLensError(f"TRL 1.16 cannot train this processor's template with assistant_only_loss: {e}",
                            field="chat_template", fix="use a template with {% generation %} markers (TRL ships "
                            "qwen2_5_vl, qwen3_vl, smolvlm, idefics3, llava_next, lfm2_2_5_vl twins), or the "
                            "full / completion_only strategy") from None
    return twin, "TRL's training twin of the processor's chat template"


def image_token_ids(processor) -> dict[int, str]:
    """{token id: token} of the processor's image tokens: the placeholder each image expands into (image_token) and
    the markers around it (boi/eoi, <fake_token_around_image>, <global-img>, <|vision_start|>...)."""
    tok = getattr(processor, "tokenizer", processor)
    names = []
    for attr in _PLACEHOLDER_ATTRS + _MARKER_ATTRS:
        v = getattr(processor, attr, None) or getattr(tok, attr, None)
        if isinstance(v, str):
            names.append(v)
    for s in getattr(tok, "all_special_tokens", []) or []:
        low = s.lower()
        if ("image" in low or "vision" in low or low in ("<global-img>",)) and "video" not in low:
            names.append(s)
    out = {}
    for s in dict.fromkeys(names):
        tid = tok.convert_tokens_to_ids(s)
        if isinstance(tid, int) and tid != tok.unk_token_id:
            out[tid] = s
    return out


def _placeholder_id(processor) -> int | None:
    tid = getattr(processor, "image_token_id", None)
    if isinstance(tid, int):
        return tid
    tok = getattr(processor, "tokenizer", processor)
    s = getattr(processor, "image_token", None)
    return tok.convert_tokens_to_ids(s) if isinstance(s, str) else None


def _image_ref(part: dict):
    """What an image part points at: its "image" (TRL fills it from the row's images), OpenAI's image_url.url, or
    transformers' url/path/base64 keys."""
    if part.get("type") == IMAGE_URL:
        v = part.get("image_url")
        return v.get("url") if isinstance(v, dict) else v
    return next((part[k] for k in IMAGE_PAYLOAD_KEYS if part.get(k) is not None), None)


def _trl_example(ex: Example, root) -> dict:
    """The row as the collator receives it, images opened here. messages: TRL's own prepare_multimodal_messages
    structures them (the row's images fill the placeholders), then every image part carries its PIL image, so the
    processor takes the images from the parts (as it does when TRL fills them) and opens nothing itself.
    prompt/completion: the collator processes the images apart from the text, so the parts stay placeholders and the
    images go in `images`, in order."""
    from trl.data_utils import prepare_multimodal_messages  # noqa: PLC0415

    refs = list(ex.images or [])
    src, row = ex.source, ex.row

    def structured(msgs, imgs):
        try:
            return prepare_multimodal_messages(copy.deepcopy(msgs), images=imgs)
        except ValueError as e:  # TRL's own checks (roles, image count): what SFTTrainer raises for this row
            raise MaskLensError(f"TRL 1.16 refuses this row: {e}", file=src, row=row, field="images",
                                fix="one image per image part; roles system/user/assistant/tool") from None

    def open_parts(msgs, field: str, keep_in_parts: bool) -> list:
        opened = []
        for i, m in enumerate(msgs):
            c = m.get("content")
            if not isinstance(c, list):
                continue
            new = []
            for j, p in enumerate(c):
                if not (isinstance(p, dict) and p.get("type") in (IMAGE, IMAGE_URL)):
                    new.append(p)
                    continue
                im = open_image(_image_ref(p), ex.base_dir, root, where=f"{field}[{i}].content[{j}]", row=row,
                                source=src)
                rest = {k: v for k, v in p.items() if k not in (*IMAGE_PAYLOAD_KEYS, "image_url", "type")}
                new.append({"type": IMAGE, **rest, "image": im} if keep_in_parts else {"type": IMAGE, **rest})
                opened.append(im)
            m["content"] = new
        return opened

    if ex.kind == KIND_MESSAGES:
        msgs = structured(ex.messages, refs)
        open_parts(msgs, "messages", True)
        return {"messages": msgs, "images": []}
    if ex.kind == KIND_PC_CONV:
        prompt = structured(ex.prompt, refs)
        images = open_parts(prompt, "prompt", False)
        return {"prompt": prompt, "completion": structured(ex.completion, []), "images": images}
    images = [open_image(r, ex.base_dir, root, where=f"images[{k}]", row=row, source=src) for k, r in enumerate(refs)]
    if ex.kind == KIND_PC_TEXT:
        return {"prompt": ex.prompt, "completion": ex.completion, "images": images}
    return {"text": ex.text, "images": images}


_PROCESSORS: dict = {}


def processor_for(tokenizer):
    """The vision-language processor of the model a tokenizer was loaded from (its directory or hub id), or None
    when that model has none (a text model). Loaded once per name; the path policy applies (load_processor)."""
    name = getattr(tokenizer, "name_or_path", None)
    if not name:
        return None
    if name not in _PROCESSORS:
        try:
            proc = load_processor(name)
        except MaskLensError:
            proc = None
        _PROCESSORS[name] = proc if hasattr(proc, "image_processor") else None
    return _PROCESSORS[name]


def render_vision_examples(examples: list[Example], processor, *, assistant_only_loss: bool = False,
                           completion_only_loss: bool | None = None, chat_template: str | None = None,
                           max_length: int | None = None, root: str | os.PathLike | None = None,
                           errors: str = "raise") -> list[RenderedExample]:
    """Each example as TRL 1.16's DataCollatorForVisionLanguageModeling prepares it (see the module docstring):
    input_ids and labels are the collator's own (unshifted, -100 ignored), with per-token rules and findings.

    ``completion_only_loss`` None: SFTTrainer's default (True for prompt/completion rows). ``chat_template``: one to
    use instead of the processor's (SFTConfig.chat_template_path). ``root``: image paths must lie inside it (an
    upload's folder). errors="finding": a row that fails comes back empty with a render_failed finding.
    """
    assert errors in ("raise", "finding"), errors
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling  # noqa: PLC0415

    tok = getattr(processor, "tokenizer", processor)
    if tok.pad_token is None:  # SFTTrainer sets it (pad_token or eos) before building the collator
        tok.pad_token = tok.eos_token
    template, label = vision_chat_template(processor, assistant_only_loss, chat_template)
    img_ids = image_token_ids(processor)
    placeholder = _placeholder_id(processor)
    out = []
    for ex in examples:
        pc = ex.kind in (KIND_PC_CONV, KIND_PC_TEXT)
        col = completion_only_loss if completion_only_loss is not None else pc
        strategy = "assistant_only" if assistant_only_loss else "completion_only" if col and pc else "full"
        try:
            if assistant_only_loss and ex.kind != KIND_MESSAGES:
                raise MaskLensError("assistant_only_loss needs conversational language-modelling rows (messages); "
                                    f"this row is {ex.kind} (TRL 1.16 raises)", file=ex.source, row=ex.row,
                                    fix="use completion_only for prompt/completion rows")
            if col and not pc:
                raise MaskLensError("completion_only_loss needs prompt/completion rows (TRL 1.16 raises: 'not "
                                    "supported for language modeling datasets')", file=ex.source, row=ex.row,
                                    fix="use assistant_only (or full) for messages rows")
            collator = DataCollatorForVisionLanguageModeling(processor, max_length=max_length,
                                                             completion_only_loss=col,
                                                             assistant_only_loss=assistant_only_loss,
                                                             chat_template=template)
            row = _trl_example(ex, root)
            try:
                batch = collator([row])
            except MaskLensError:
                raise
            except Exception as e:  # noqa: BLE001  (processor/template errors: what TRL raises on this row)
                raise MaskLensError(f"TRL's vision collator failed on this row: {type(e).__name__}: {e}",
                                    file=ex.source, row=ex.row,
                                    fix="check the images and image parts pair up, and the template renders the row"
                                    ) from None
        except MaskLensError as e:
            if errors == "raise":
                raise
            out.append(RenderedExample(row=ex.row, kind=ex.kind, input_ids=[], labels=[], messages=ex.messages,
                                       findings=[*ex.notes, Finding("render_failed", str(e))], strategy=strategy))
            continue
        ids = batch["input_ids"][0].tolist()
        labels = batch["labels"][0].tolist()
        # the messages as the template saw them (TRL's image parts in place), to attribute image runs and text
        shown = row.get("messages") or (row["prompt"] + row["completion"] if isinstance(row.get("prompt"), list)
                                        else None)
        out.append(_explain(ex, tok, ids, labels, strategy, img_ids, placeholder, label, shown))
    return out


# ------------------------------------------------------------------------------------------------- explaining tokens
_RULES = {
    "assistant_only": ("trained: inside {% generation %} (assistant_only_loss)",
                       "not trained: outside {% generation %} (assistant_only_loss)"),
    "completion_only": ("trained: completion (completion_only_loss)", "not trained: prompt (completion_only_loss)"),
    "full": ("trained: TRL's vision collator trains every token that is not padding",
             "not trained: padding"),
}


def _explain(ex: Example, tok, ids: list[int], labels: list[int], strategy: str, img_ids: dict[int, str],
             placeholder: int | None, template_label: str, shown: list[dict] | None = None) -> RenderedExample:
    yes, no = _RULES[strategy]
    rules = {}
    n_img_trained = 0
    for i, (t, lab) in enumerate(zip(ids, labels)):
        trained = lab != IGNORE
        if t in img_ids:
            what = "image placeholder" if t == placeholder else f"image marker {img_ids[t]}"
            rules[i] = (f"{yes} — {what}: the model is taught to predict it (image_tokens_trained)" if trained
                        else f"{no} — {what}")
            n_img_trained += trained
        else:
            rules[i] = yes if trained else no
    text, offsets = _text_and_offsets(tok, ids)
    findings = list(ex.notes)
    if n_img_trained:
        runs = _runs(ids, placeholder)
        listed = ", ".join(f"{img_ids.get(placeholder, '?')} ×{n}" for n in runs[:4]) + (" ..." if len(runs) > 4 else "")
        findings.append(Finding("image_tokens_trained", f"{n_img_trained} image token(s) are trained ({listed}) under "
                                f"{strategy}", location={"tokens": [i for i, t in enumerate(ids)
                                                                    if t in img_ids and labels[i] != IGNORE][:20]}))
    n_trained = len(labels) - labels.count(IGNORE)
    if n_trained == 0:
        findings.append(Finding("no_trained_tokens", f"0 of {len(ids)} tokens are trained"))
    located = shown if shown is not None else ex.messages

    def segments():
        return _segments(text, offsets, ids, labels, located, img_ids, yes, no) if offsets is not None else []

    return RenderedExample(row=ex.row, kind=ex.kind, input_ids=ids, labels=labels, text=text, findings=findings,
                           messages=ex.messages, token_rules=rules, n_before_truncation=len(ids), strategy=strategy,
                           turn=ex.turn, template_label=template_label, _offsets=offsets, _segment_builder=segments)


def _runs(ids: list[int], tid: int | None) -> list[int]:
    """Lengths of the runs of `tid`. Example: ([5, 9, 9, 9, 5, 9], 9) -> [3, 1]."""
    out, n = [], 0
    for t in ids + [None]:
        if t == tid and tid is not None:
            n += 1
        elif n:
            out.append(n)
            n = 0
    return out


def _text_and_offsets(tok, ids: list[int]):
    """The decoded text and each token's character span in it: the tokenizer re-encodes its own decoding to the same
    ids for the fast tokenizers here; otherwise (None offsets) the token view shows token pieces."""
    text = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    try:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    except Exception:  # noqa: BLE001  (a slow tokenizer has no offsets)
        return text, None
    if enc["input_ids"] != ids:
        return text, None
    return text, [tuple(o) for o in enc["offset_mapping"]]


def _segments(text: str, offsets, ids, labels, msgs, img_ids, yes: str, no: str) -> list[Segment]:
    """Message text parts found in order in the text, image runs (part "image") attributed to the message whose image
    part they stand for; everything else is template text. Trained/rule per segment from the labels."""
    # character spans of image runs (consecutive image tokens)
    runs, i = [], 0
    while i < len(ids):
        if ids[i] in img_ids:
            j = i
            while j + 1 < len(ids) and ids[j + 1] in img_ids:
                j += 1
            runs.append((offsets[i][0], offsets[j][1], i, j))
            i = j + 1
        else:
            i += 1
    cuts = []
    pos, r = 0, 0
    for k, m in enumerate(msgs or []):
        c = m.get("content")
        if isinstance(c, str):
            pieces = [("content", c)]
        elif isinstance(c, list):
            pieces = [("image", None) if isinstance(p, dict) and p.get("type") in (IMAGE, IMAGE_URL) else
                      ("content", p.get("text")) for p in c if isinstance(p, dict)]
        else:
            pieces = []
        for part, t in pieces:
            if part == "image":
                if r < len(runs) and runs[r][0] >= pos:
                    cuts.append((runs[r][0], runs[r][1], k, m.get("role"), "image"))
                    pos = runs[r][1]
                    r += 1
            elif isinstance(t, str) and t:
                at = text.find(t, pos)
                if at >= 0:
                    cuts.append((at, at + len(t), k, m.get("role"), "content"))
                    pos = at + len(t)
    for s, e, *_ in runs[r:]:  # runs not matched to a part (a text row, or TRL-inserted placeholders)
        cuts.append((s, e, None, None, "image"))
    cuts.sort()

    def trained_at(a: int, b: int) -> bool:
        return any(labels[t] != IGNORE for t, (s, e) in enumerate(offsets) if s < b and e > a)

    segs, pos = [], 0
    for s, e, k, role, part in cuts:
        if s < pos:
            continue
        if s > pos:
            tr = trained_at(pos, s)
            segs.append(Segment(pos, s, None, None, "template", tr, yes if tr else no))
        tr = trained_at(s, e)
        segs.append(Segment(s, e, k, role, part, tr, yes if tr else no))
        pos = e
    if pos < len(text):
        tr = trained_at(pos, len(text))
        segs.append(Segment(pos, len(text), None, None, "template", tr, yes if tr else no))
    return segs
