"""A collator file (--collator), written the way teams write them: a DataCollatorForCompletionOnlyLM-style class that
pads a batch and masks everything up to the end of the LAST "<|im_start|>assistant\n" in each row, so only the final
assistant answer is trained. MaskLens calls make_collator(tokenizer) once and shows the labels it returns.
"""

import torch


class LastAnswerCollator:
    def __init__(self, tokenizer, response_template="<|im_start|>assistant\n"):
        self.tokenizer = tokenizer
        self.response_ids = tokenizer.encode(response_template, add_special_tokens=False)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def __call__(self, features):
        longest = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), longest), dtype=torch.long)
        for row, f in enumerate(features):
            ids = torch.tensor(f["input_ids"], dtype=torch.long)
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        labels = input_ids.clone()
        labels[attention_mask == 0] = -100  # padding, by the mask: pad == eos must not hide the real EOS
        n = len(self.response_ids)
        for row in range(len(features)):
            ids = input_ids[row].tolist()
            starts = [i for i in range(len(ids) - n + 1) if ids[i:i + n] == self.response_ids]
            end = starts[-1] + n if starts else len(ids)  # no response template: nothing trained
            labels[row, :end] = -100
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def make_collator(tokenizer):
    return LastAnswerCollator(tokenizer)
