"""Processors for vision-language tests, built offline from transformers classes and the SmolLM2 vocabulary.

Each one is a real transformers processor (image processor + tokenizer) carrying one of TRL's vision chat templates
(trl/chat_templates/X.jinja) and that family's special tokens, configured for tiny images so tests stay fast:
- qwen2_5_vl: Qwen2_5_VLProcessor + Qwen2VLImageProcessorPil (28x28 pixel patches merged 2x2: a 56x56 image is
  4 <|image_pad|> tokens); the video processor needs torchvision, which is not installed, so it is left out.
- idefics3: Idefics3Processor + Idefics3ImageProcessor, 4 <image> tokens per image, no splitting.
- llava_next: LlavaNextProcessor + LlavaNextImageProcessor, 28x28 crops, patch size 14.

`raw_trl_batch(processor, row, images, ...)` is TRL's own path, fed as SFTTrainer feeds it: the row with its opened
images in the `images` column, through DataCollatorForVisionLanguageModeling.
"""

from __future__ import annotations

import copy

from tests.trl_reference import SPECIAL_RE, template_text

EXTRA_TOKENS = {
    "qwen2_5_vl": ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"],
    "idefics3": ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"],
    "llava_next": ["<image>"],
}
FAMILIES = tuple(EXTRA_TOKENS)


def _tokenizer(base, family: str):
    tok = copy.deepcopy(base)
    texts = template_text(family) + template_text(f"{family}_training")
    tok.add_special_tokens({"additional_special_tokens": sorted(set(SPECIAL_RE.findall(texts)) |
                                                                set(EXTRA_TOKENS[family]))})
    tok.chat_template = template_text(family)
    return tok


def build_processor(base, family: str):
    import transformers

    tok = _tokenizer(base, family)
    tpl = template_text(family)
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        class NoVideoQwen2_5_VLProcessor(Qwen2_5_VLProcessor):  # the video processor needs torchvision
            def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
                super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

        ip = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56)
        return NoVideoQwen2_5_VLProcessor(image_processor=ip, tokenizer=tok, chat_template=tpl)
    if family == "idefics3":
        IP = getattr(transformers, "Idefics3ImageProcessorPil", None) or transformers.Idefics3ImageProcessor
        ip = IP(size={"longest_edge": 56}, max_image_size={"longest_edge": 28}, do_image_splitting=False)
        return transformers.Idefics3Processor(image_processor=ip, tokenizer=tok, chat_template=tpl, image_seq_len=4)
    IP = getattr(transformers, "LlavaNextImageProcessorPil", None) or transformers.LlavaNextImageProcessor
    ip = IP(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, image_grid_pinpoints=[[28, 28]])
    return transformers.LlavaNextProcessor(image_processor=ip, tokenizer=tok, chat_template=tpl, patch_size=14,
                                           vision_feature_select_strategy="default")


def raw_trl_batch(processor, row: dict, images: list, *, assistant_only_loss=False, completion_only_loss=None):
    """(input_ids, labels) as SFTTrainer + DataCollatorForVisionLanguageModeling prepare `row` with `images` opened:
    the template SFTTrainer picks (its training twin under assistant_only_loss), the images in the row's `images`."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    tok = processor.tokenizer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    template = get_training_chat_template(processor) if assistant_only_loss and not has_generation_markers(
        processor.chat_template) else None
    pc = "prompt" in row
    col = pc if completion_only_loss is None else completion_only_loss
    collator = DataCollatorForVisionLanguageModeling(processor, completion_only_loss=col,
                                                     assistant_only_loss=assistant_only_loss, chat_template=template)
    example = {k: copy.deepcopy(v) for k, v in row.items() if k in ("messages", "prompt", "completion", "text")}
    example["images"] = images
    out = collator([example])
    return out["input_ids"][0].tolist(), out["labels"][0].tolist()


def save_vision_tokenizer(base, dest, family: str = "llava_next"):
    """A processor built here, saved (tokenizer + processor files) into `dest`: the app loads that folder by path as
    its tokenizer and finds the processor beside it (core.masking.vision.processor_for). qwen2_5_vl cannot come back
    from disk here (its video processor needs torchvision), so LLaVA-NeXT: one 28x28 crop is <image> x9. Its tokenizer
    alone (a text model's folder: no processor) goes to dest/tokenizer_only. Returns dest."""
    from pathlib import Path

    proc = build_processor(base, family)
    proc.save_pretrained(dest)
    proc.tokenizer.save_pretrained(Path(dest) / "tokenizer_only")
    return dest


def save_vision_data(dest):
    """A one-row conversation about one image (dest/red.png) in dest/vl.jsonl, the image path relative to the file.
    Returns dest."""
    import json
    from pathlib import Path

    from PIL import Image

    Image.new("RGB", (56, 56), (200, 0, 0)).save(Path(dest) / "red.png")
    row = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "Red."}]}], "images": ["red.png"]}
    (Path(dest) / "vl.jsonl").write_text(json.dumps(row) + "\n")
    return dest
