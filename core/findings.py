"""Findings: what MaskLens noticed about an example, as data (code, message, location), never as log lines.

The app and the CLI format them; the audit counts them by code. Codes are stable: scripts and CI pipelines match on them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# code -> (severity, what it means, how to fix it). The explanation and fix are shown beside a finding in the app.
CODES: dict[str, tuple[str, str, str]] = {
    "template_not_found": (
        "error",
        "The response (or instruction) template was not found in the tokenized example, so the old collator "
        "masked the whole example: it trains on nothing.",
        "Pass the template as the token ids it has in context (see template_ambiguous), or use assistant_only.",
    ),
    "template_ambiguous": (
        "warning",
        "The template string tokenizes differently alone than inside the text, so a search for its ids alone "
        "misses it.",
        "Use the in-context ids given in the message (--response-template-ids).",
    ),
    "no_trained_tokens": (
        "error",
        "No token of this example is trained: it adds nothing to the loss (TRL 1.16 drops such examples after "
        "truncation; assistant_only_loss raises on them).",
        "Check the strategy, the templates and max_length; remove the example if it is meant to be skipped.",
    ),
    "truncated_supervision": (
        "warning",
        "Truncation to max_length removed tokens that would have been trained.",
        "Raise max_length, switch truncation (keep_start/keep_end) or shorten the example.",
    ),
    "eos_not_trained": (
        "warning",
        "The end-of-turn / EOS token that ends the trained response is not trained, so the model may never "
        "learn to stop.",
        "Train the end-of-turn marker (eos: every_turn) and make sure pad != eos for the old collator.",
    ),
    "pad_is_eos": (
        "warning",
        "The tokenizer's pad token is its EOS token. Collators that mask pad ids (TRL <= 0.19.1's "
        "DataCollatorForCompletionOnlyLM, many custom loops) then never train EOS.",
        "Set a distinct pad token (e.g. SFTConfig(pad_token=...) or tokenizer.pad_token = '<|pad|>').",
    ),
    "content_not_rendered": (
        "error",
        "The chat template did not render this message's content verbatim (it dropped or rewrote it), so its "
        "tokens cannot be attributed to it.",
        "Check the template handles this role and content, or fix the message.",
    ),
    "prompt_not_prefix": (
        "warning",
        "The tokenized prompt is not a prefix of the tokenized prompt+completion; the completion starts where "
        "they diverge (as in TRL 1.16).",
        "Use a template that renders the prompt the same way in both cases, or end the prompt on a token boundary.",
    ),
    "message_not_trained": (
        "info",
        "An assistant message is flagged off (weight: 0 / train: false) and is not trained.",
        "Nothing to fix if intended.",
    ),
    "bos_doubled": (
        "warning",
        "The sequence starts with BOS twice (the template adds one and the tokenizer adds another).",
        "Tokenize the rendered template with add_special_tokens=False (TRL does for chat data).",
    ),
    "labels_from_data": (
        "info",
        "The row carries its own labels; they are used as they are (as TRL 1.16 does) and the strategy is not applied.",
        "Remove the labels column to let a strategy decide.",
    ),
    "roles_mapped": (
        "info",
        "ShareGPT roles (human/gpt) were mapped to user/assistant. TRL's own conversion keeps them as they are, "
        "and chat templates then render them under those names.",
        "Map the roles in your data to user/assistant/system/tool.",
    ),
    "render_failed": (
        "error",
        "The chat template raised an error on this example, so it cannot be tokenized (TRL would stop on it).",
        "Read the template's message; fix the example (e.g. roles out of order) or the template.",
    ),
    "completion_only_trains_all": (
        "error",
        "TRL 1.16's completion_only_loss masks the prompt of prompt/completion rows only; on messages or text rows "
        "there is no completion mask, so TRL trains every token (as the full strategy does) and says nothing.",
        "Use assistant_only or last_assistant for messages rows, or write the data as prompt/completion.",
    ),
    "strategy_not_applicable": (
        "error",
        "The strategy needs another data format (e.g. completion_only needs prompt/completion rows).",
        "Choose a strategy that fits the data format.",
    ),
    "template_swapped": (
        "info",
        "TRL 1.16 trains this row on its own {% generation %}-marked training twin of the chat template "
        "(get_training_chat_template), which renders it differently from the tokenizer's template the model is served "
        "with (e.g. earlier turns keep their reasoning in training but lose it at inference).",
        "Nothing to fix if intended; to train on what inference shows, use split_turns (each turn with its history as "
        "at inference) or template_source=own.",
    ),
    "trl_cannot_patch": (
        "info",
        "The chat template has no {% generation %} markers and TRL 1.16 has no training template for it: "
        "SFTTrainer(assistant_only_loss=True) raises. MaskLens shows its own span-finding mask instead — not what TRL does.",
        "Add {% generation %} markers (Templates tab: proven twin), train with pre-tokenized labels from MaskLens's "
        "export, or use completion_only / full.",
    ),
    "reasoning_not_rendered": (
        "warning",
        "These assistant messages carry reasoning (reasoning_content / thinking / <think>) that the chat template drops, "
        "so the model is neither shown nor trained on it.",
        "Use a template that renders reasoning for every turn (TRL's training twin does for Qwen3), split_turns, or "
        "drop the reasoning from history turns on purpose.",
    ),
    "empty_think_trained": (
        "info",
        "The template inserts an empty think block into assistant turns without reasoning and it is trained: the model "
        "learns to open and close an empty think block (at inference the generation prompt may supply it).",
        "Set empty_think=mask to keep it rendered but untrained, or give those turns reasoning.",
    ),
    "tool_call_not_trained": (
        "error",
        "An assistant message has tool calls, but they are not rendered by the template or not trained, so the model "
        "never learns to call the tool.",
        "Check that the template renders tool_calls (and that content is null/absent where it expects it), and the strategy.",
    ),
    "schema_nulls_injected": (
        "warning",
        "Loading this file through `datasets` (as TRL does) unifies the Arrow schema across rows: these keys appear with "
        "null values in this row's tool-call arguments / tool schemas, templates render them, and the model learns to "
        "emit them. MaskLens renders the row as written in the file.",
        "Store tool-call `arguments` and `tools` as JSON strings, or load the rows without schema unification.",
    ),
    "labels_shifted": (
        "error",
        "The row's labels look shifted by hand (labels[i] == input_ids[i+1]). Hugging Face causal LMs shift labels "
        "themselves, so each position would be trained on the token two ahead.",
        "Give labels aligned with input_ids (labels[i] = input_ids[i] or -100); do not shift them.",
    ),
    "datasets_cannot_load": (
        "error",
        "`datasets` cannot load these rows (as TRL's users do, with Dataset.from_list or load_dataset): one field "
        "holds values of different types across rows (e.g. tool-call arguments as an object in some rows and a JSON "
        "string in others, a number and a string, a boolean and an integer), and Arrow stores one type per field. "
        "MaskLens still renders each row as written.",
        "Give that field one type in every row (e.g. every `arguments` as a JSON string); the message names the field "
        "and the rows.",
    ),
    "format_converted": (
        "info",
        "This row is in one of LLaMA-Factory's formats (alpaca, ShareGPT with function_call/observation turns and a "
        "tools string, typed parts with loss_weight, <image> tags), which TRL's SFTTrainer does not read as such. "
        "MaskLens converted it into TRL's messages format as LLaMA-Factory reads it (the message says what became "
        "what) and shows the converted conversation.",
        "Train TRL on the converted rows (export them as TRL messages data), or keep training with LLaMA-Factory.",
    ),
    "unknown_fields": (
        "info",
        "The row has fields that neither TRL's formats nor MaskLens's conversions read. TRL carries extra columns "
        "along and never renders them, so whatever they hold is not trained.",
        "Nothing to fix if they are metadata (ids, sources); if one holds training text, move it into the messages "
        "(or rename it to the field it is meant to be).",
    ),
    "content_parts_printed": (
        "warning",
        "Message content is a list of typed parts ({'type': 'text', 'text': ...}), and this chat template prints the "
        "list itself (its Python text, \"[{'type': 'text', ...}]\") instead of reading the parts: the model is "
        "trained on that text. TRL 1.16 passes the parts to the template as they are, so it trains on it too.",
        "Join the text parts into one string (option content_parts=join: parts joined with nothing between them, as "
        "templates that read parts print them), store content as strings, or use a template that reads parts.",
    ),
    "images_not_processed": (
        "info",
        "This row has images, but the tokenizer's model has no vision-language processor here, so the text is shown "
        "with one image placeholder per image rather than the run of image tokens (e.g. <|image_pad|> x256) that TRL "
        "1.16's DataCollatorForVisionLanguageModeling inserts; counts and labels of image tokens are not shown.",
        "Load the vision-language model's tokenizer (Tokenizer box in the app, --tokenizer on the CLI): a hub id or a "
        "directory with its processor files (preprocessor_config.json).",
    ),
    "image_tokens_trained": (
        "warning",
        "Image placeholder tokens (e.g. <|image_pad|>) are trained: TRL 1.16's vision collator (DataCollatorFor"
        "VisionLanguageModeling) only masks padding unless assistant_only_loss or completion_only_loss is set, so the "
        "loss includes predicting the image tokens, which the model never has to generate.",
        "Set assistant_only_loss=True (a template with {% generation %} markers, e.g. TRL's training twin), or give "
        "prompt/completion rows (completion_only_loss); or mask the image token ids in a custom collator.",
    ),
}


@dataclass(frozen=True)
class Finding:
    """One thing noticed about one example. Example: Finding("no_trained_tokens", "0 of 41 tokens are trained")."""

    code: str
    message: str
    severity: str = ""
    location: dict = field(default_factory=dict)  # e.g. {"message": 3} or {"token": 17}

    def __post_init__(self):
        assert self.code in CODES, f"unknown finding code {self.code!r}: add it to core.findings.CODES"
        if not self.severity:
            object.__setattr__(self, "severity", CODES[self.code][0])

    @property
    def explanation(self) -> str:
        return CODES[self.code][1]

    @property
    def fix(self) -> str:
        return CODES[self.code][2]

    def to_dict(self) -> dict:
        return asdict(self)
