"""A pure-Python port of TRL 0.19.1's ``DataCollatorForCompletionOnlyLM`` (the ``response_template`` strategy).

TRL <= 0.19.1 shipped ``DataCollatorForCompletionOnlyLM`` (``trl/trainer/utils.py``, lines 71-247 of the 0.19.1
wheel); later versions removed it. :func:`legacy_completion_only_labels` reproduces, token for token, the ``labels``
row it produced for one example (``mlm=False``, ``return_tensors="pt"``), and records what happened so a UI can say
why a token is or is not trained. ``tests/test_legacy_collator.py`` runs the released class on every case and
compares.

Quirks of the original, all reproduced (line numbers refer to ``trl/trainer/utils.py`` in trl-0.19.1):

* The parent ``DataCollatorForLanguageModeling.torch_call`` (``mlm=False``) first copies ``input_ids`` to
  ``labels`` and sets ``labels[labels == pad_token_id] = -100``: a hard-coded -100, not ``ignore_index``
  (line 138 calls it). So with pad == eos the EOS is never trained, and with a custom ``ignore_index`` the pad
  positions left alone by the template logic hold -100 while everything the template logic masks holds
  ``ignore_index``.
* The templates are searched in ``labels``, not in ``input_ids`` (lines 144, 171, 189): a template containing the
  pad id can never match, and in multi-turn mode the instruction is searched *after* a missing response has
  already masked the whole row, so it is then never found either (a second warning).
* The match is an exact list comparison ``template_ids == labels[idx:idx + n].tolist()`` (lines 147-148, 174-175,
  191): overlapping occurrences all count, and template ids given as a tuple never match anything.
* Single-template mode (no instruction template) keeps the LAST occurrence: the loop overwrites
  ``response_token_ids_start_idx`` at each match (lines 144-150). Everything up to the end of that occurrence is
  masked (line 164), so earlier responses are never trained. A template at the very end trains nothing, silently.
* Not found: warn and mask the whole row with ``ignore_index`` (lines 152-159, 179-186, 194-201).
* Multi-turn mode: responses are recorded by their END (start + len, line 177), instructions by their START
  (line 192). If the first instruction start is *strictly greater* than the first response end, a 0 is
  prepended to the instructions (lines 203-208). Instructions and responses are then paired positionally with
  ``zip`` (line 210), not by order in the text: the first pair masks ``[:end]``, the others ``[start:end]``
  (lines 211-215). Surplus responses are left alone (their template tokens are trained); if there are fewer
  responses than instructions, everything from the LAST instruction start on is masked (lines 217-218), which
  silently masks the whole row when two instructions precede one response.
* An empty template raises ``IndexError`` (``template_ids[0]``, lines 144, 171, 189); the branch is chosen by
  ``instruction_template is None`` (line 140), so an empty instruction template still selects multi-turn mode.
* ``return_tensors="np"`` would bypass all of this: the class overrides only ``torch_call``.

Not ported: ``padding_free=True`` (lines 220-245: it flattens the batch, adds ``position_ids`` and masks each
sequence's first token) and ``mlm=True``. Padding is not modelled either: pass a padded row (pad ids included)
to get the padded row's labels; the real tokens' labels do not depend on padding side or length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

# DataCollatorForLanguageModeling (mlm=False) writes this literal at pad positions, whatever ignore_index is.
PARENT_PAD_LABEL = -100

# Lines 126-130, warned at construction (the collator's check is on the instruction template's truthiness).
PAD_EQUALS_EOS_WARNING = (
    "The pad_token_id and eos_token_id values of this tokenizer are identical. "
    "If you are planning for multi-turn training, "
    "it can result in the model continuously generating questions and answers without eos token. "
    "To avoid this, set the pad_token_id to a different value."
)

_NOT_FOUND_TAIL = (
    "This instance will be ignored in loss calculation. Note, if this happens often, consider increasing the "
    "`max_length`."
)


@dataclass
class LegacyResult:
    """What TRL 0.19.1's completion-only collator did to one example.

    ``labels`` is unshifted, one per input id. Positions are token indices in the row that was passed in.
    ``masked_spans`` lists, in the order applied, the half-open ranges the template logic overwrote with
    ``ignore_index`` and why (clipped to the row).

    >>> legacy_completion_only_labels([1, 7, 8, 21, 2], [7, 8], pad_token_id=2).trained_positions
    [3]
    """

    labels: list[int]
    mode: str  # "single" (no instruction template) or "multi_turn"
    response_starts: list[int] = field(default_factory=list)  # every match of the response template
    response_ends: list[int] = field(default_factory=list)  # start + len(template): where training may begin
    chosen_response_start: int | None = None  # single mode: the occurrence that counted (the last one)
    instruction_starts: list[int] = field(default_factory=list)  # every match of the instruction template
    instruction_zero_prepended: bool = False  # multi-turn: a response came before the first instruction
    pairs: list[tuple[int, int]] = field(default_factory=list)  # multi-turn: zip(instructions, response ends)
    response_found: bool = False
    instruction_found: bool = False
    pad_masked: list[int] = field(default_factory=list)  # -100 only because input id == pad id
    masked_spans: list[tuple[int, int, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def trained_positions(self) -> list[int]:
        """Positions whose label is the input id: outside every masked span and not pad-masked."""
        pads = set(self.pad_masked)
        return [i for i in range(len(self.labels)) if i not in pads and not _covered(self.masked_spans, i)]


def encode_template(tokenizer: Any, template: str | list[int]) -> list[int]:
    """Template ids exactly as the 0.19.1 collator stored them (lines 110-123).

    A string is encoded with ``tokenizer.encode(template, add_special_tokens=False)``, i.e. *alone*, without the
    text before it; anything else is passed through unchanged (a tuple stays a tuple and will never match).

    >>> encode_template(None, [7, 8])
    [7, 8]
    """
    if isinstance(template, str):
        return tokenizer.encode(template, add_special_tokens=False)
    return template


def find_template_matches(labels: Sequence[int], template_ids: Sequence[int]) -> list[int]:
    """Start positions where ``template_ids`` occurs in ``labels``, as the collator searched (overlaps included).

    TRL 0.19.1: candidates are the positions equal to ``template_ids[0]`` (``IndexError`` when empty), kept when
    ``template_ids == labels[idx:idx + n]`` as lists (a tuple template never compares equal).

    >>> find_template_matches([1, 7, 7, 7, 2], [7, 7])
    [1, 2]
    """
    first = template_ids[0]
    n = len(template_ids)
    window = list(labels)
    return [idx for idx, token in enumerate(window) if token == first and template_ids == window[idx : idx + n]]


def _not_found_warning(kind: str, template: Any, instance: str) -> str:
    # Same text as lines 154-156 / 181-183 / 196-198 (the collator's UserWarning).
    return f"Could not find {kind} key `{template}` in the following instance: {instance}. {_NOT_FOUND_TAIL}"


def legacy_completion_only_labels(
    input_ids: list[int],
    response_template_ids: list[int],
    instruction_template_ids: list[int] | None = None,
    pad_token_id: int | None = None,
    ignore_index: int = -100,
    *,
    response_template: str | list[int] | None = None,
    instruction_template: str | list[int] | None = None,
    decode: Callable[[list[int]], str] | None = None,
    eos_token_id: int | None = None,
) -> LegacyResult:
    """Labels that TRL 0.19.1's ``DataCollatorForCompletionOnlyLM`` produced for one (possibly padded) row.

    The keyword-only arguments only shape the warning texts, as the collator wrote them: the template as the
    user gave it (string or ids; defaults to the ids), ``decode`` for the instance text (defaults to
    ``str(input_ids)``), and ``eos_token_id`` for the construction-time pad == eos warning (lines 125-132).

    >>> legacy_completion_only_labels([1, 7, 8, 21, 2], [7, 8], pad_token_id=2).labels
    [-100, -100, -100, 21, -100]
    """
    n = len(input_ids)
    # Parent collator (mlm=False): labels = input_ids.clone(); labels[labels == pad_token_id] = -100 -- BEFORE
    # the template search, with a literal -100. With pad == eos the EOS is therefore never trained.
    labels = list(input_ids)
    pad_positions = []
    if pad_token_id is not None:
        for i, token in enumerate(labels):
            if token == pad_token_id:
                labels[i] = PARENT_PAD_LABEL
                pad_positions.append(i)

    result = LegacyResult(labels=labels, mode="single" if instruction_template_ids is None else "multi_turn")
    instance = decode(list(input_ids)) if decode is not None else str(list(input_ids))
    response_shown = response_template if response_template is not None else response_template_ids
    instruction_shown = instruction_template if instruction_template is not None else instruction_template_ids

    def mask(start: int, end: int | None, reason: str) -> None:
        # Python slice semantics == torch slice semantics here (indices are never negative).
        stop = n if end is None else min(end, n)
        for i in range(start, stop):
            labels[i] = ignore_index
        if start < stop:
            result.masked_spans.append((start, stop, reason))

    # Lines 125-132: warned once at construction, when an instruction template is set and pad == eos (the
    # collator also warns when both are None; here eos_token_id=None means "not asked").
    if instruction_shown and eos_token_id is not None and pad_token_id == eos_token_id:
        result.warnings.append(PAD_EQUALS_EOS_WARNING)

    if instruction_template_ids is None:
        # Single-template mode (lines 140-164).
        starts = find_template_matches(labels, response_template_ids)
        result.response_starts = starts
        result.response_ends = [s + len(response_template_ids) for s in starts]
        result.response_found = bool(starts)
        if not starts:
            result.warnings.append(_not_found_warning("response", response_shown, instance))
            mask(0, None, "response template not found: whole example ignored")
        else:
            # TRL 0.19.1: the loop overwrites the start at every match, so the LAST occurrence wins.
            result.chosen_response_start = starts[-1]
            mask(0, starts[-1] + len(response_template_ids), "up to the end of the last response template")
    else:
        # Multi-turn mode (lines 166-218).
        starts = find_template_matches(labels, response_template_ids)
        result.response_starts = starts
        response_ends = [s + len(response_template_ids) for s in starts]  # ends, not starts (line 177)
        result.response_ends = response_ends
        result.response_found = bool(response_ends)
        if not response_ends:
            result.warnings.append(_not_found_warning("response", response_shown, instance))
            mask(0, None, "response template not found: whole example ignored")

        # TRL 0.19.1: searched in the labels as they are NOW, so after a missing response masked the row the
        # instruction is not found either.
        human = find_template_matches(labels, instruction_template_ids)
        result.instruction_starts = list(human)
        result.instruction_found = bool(human)
        if not human:
            result.warnings.append(_not_found_warning("instruction", instruction_shown, instance))
            mask(0, None, "instruction template not found: whole example ignored")

        # TRL 0.19.1 compares the first instruction START with the first response END (strictly greater).
        if human and response_ends and human[0] > response_ends[0]:
            human = [0] + human
            result.instruction_zero_prepended = True

        # Positional pairing; zip drops the surplus of the longer list.
        result.pairs = list(zip(human, response_ends))
        for idx, (start, end) in enumerate(result.pairs):
            if idx != 0:
                mask(start, end, "instruction through response template")
            else:
                mask(0, end, "up to the end of the first response template")

        if len(response_ends) < len(human):
            mask(human[-1], None, "from the last instruction on (fewer responses than instructions)")

    result.pad_masked = [i for i in pad_positions if not _covered(result.masked_spans, i)]
    return result


def _covered(spans: list[tuple[int, int, str]], i: int) -> bool:
    """Whether position ``i`` lies in one of the half-open ``spans``.

    >>> _covered([(0, 3, "why")], 2)
    True
    """
    return any(start <= i < end for start, end, _ in spans)


def find_template_in_context(
    tokenizer: Any, template: str, texts: list[str], add_special_tokens: bool = True
) -> dict[str, Any]:
    """How ``template`` tokenizes alone (as the collator encoded it) versus inside each text.

    Only texts containing ``template`` as text are tokenized (one batch call with offsets; needs a fast
    tokenizer). For every occurrence, ``in_context_ids`` are the ids of the tokens whose character span overlaps
    it. ``alone_ids_found`` says whether the alone ids occur in that text's ids at all (what the collator needs).
    ``ambiguous`` is true when some occurrence tokenizes differently from the alone ids; ``in_context_variants``
    lists the distinct in-context id lists (first seen first), each with whether it differs from the alone ids.

    >>> info = find_template_in_context(llama_tok, "### Assistant:", ["Q\\n\\n### Assistant: A"])  # doctest: +SKIP
    >>> info["alone_ids"], info["in_context_variants"]  # doctest: +SKIP
    ([774, 21631, 28747], [{'ids': [27332, 21631, 28747], 'count': 1, 'same_as_alone': False}])
    """
    alone_ids = list(tokenizer.encode(template, add_special_tokens=False))
    containing = [(i, text) for i, text in enumerate(texts) if template and template in text]
    occurrences: list[dict[str, Any]] = []
    found_per_text: dict[int, bool] = {}
    if containing:
        encoded = tokenizer(
            [text for _, text in containing], add_special_tokens=add_special_tokens, return_offsets_mapping=True
        )
        for (text_index, text), ids, offsets in zip(containing, encoded["input_ids"], encoded["offset_mapping"]):
            ids = list(ids)
            found = bool(alone_ids) and _contains(ids, alone_ids)
            found_per_text[text_index] = found
            for char_start in _char_occurrences(text, template):
                char_end = char_start + len(template)
                covering = [k for k, (s, e) in enumerate(offsets) if s < char_end and e > char_start and e > s]
                in_context = [ids[k] for k in covering]
                occurrences.append(
                    {
                        "text_index": text_index,
                        "char_start": char_start,
                        "char_end": char_end,
                        "token_start": covering[0] if covering else None,
                        "in_context_ids": in_context,
                        "in_context_tokens": tokenizer.convert_ids_to_tokens(in_context),
                        # the tokens cover exactly the template's characters (no token straddles a boundary)
                        "aligned": bool(covering)
                        and offsets[covering[0]][0] >= char_start
                        and offsets[covering[-1]][1] <= char_end,
                        "same_as_alone": in_context == alone_ids,
                        "alone_ids_found": found,
                    }
                )
    variants: list[dict[str, Any]] = []
    for occ in occurrences:
        for variant in variants:
            if variant["ids"] == occ["in_context_ids"]:
                variant["count"] += 1
                break
        else:
            variants.append({"ids": occ["in_context_ids"], "count": 1, "same_as_alone": occ["same_as_alone"]})
    return {
        "template": template,
        "alone_ids": alone_ids,
        "alone_tokens": tokenizer.convert_ids_to_tokens(alone_ids),
        "texts_containing": [i for i, _ in containing],
        "texts_with_alone_ids": [i for i, found in found_per_text.items() if found],
        "occurrences": occurrences,
        "in_context_variants": variants,
        "ambiguous": any(not occ["same_as_alone"] for occ in occurrences),
    }


def _contains(haystack: list[int], needle: list[int]) -> bool:
    """Whether ``needle`` occurs contiguously in ``haystack``.

    >>> _contains([1, 2, 3], [2, 3])
    True
    """
    n = len(needle)
    first = needle[0]
    return any(haystack[i : i + n] == needle for i, t in enumerate(haystack) if t == first)


def _char_occurrences(text: str, sub: str) -> list[int]:
    """Start offsets of every (overlapping) occurrence of ``sub`` in ``text``.

    >>> _char_occurrences("aaa", "aa")
    [0, 1]
    """
    out, i = [], text.find(sub)
    while i != -1:
        out.append(i)
        i = text.find(sub, i + 1)
    return out
