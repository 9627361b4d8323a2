"""Per-token loss weights for TRL 1.16's SFTTrainer: the loss is sum(w * nll) / sum(w) over the global batch.

Rows carry `loss_weights` beside `input_ids` and `labels` (unshifted, like the labels: the weight of the token at
position i scales the loss of predicting that token from positions < i; position 0 is never predicted). A weight is 0
exactly where the label is -100. With every weight in {0, 1} the loss is TRL's own (the mean NLL over trained tokens);
with all weights 1 it is `full`'s.

How it plugs into TRL 1.16 (subclassing SFTTrainer and overriding `compute_loss` is TRL's recommended way;
`compute_loss_func` is deprecated):
- `WeightedDataCollator` is TRL's `DataCollatorForLanguageModeling` plus a `loss_weights` tensor padded with 0. In
  padding-free mode (bfd packing) the rows are concatenated like the ids, and the weight is zeroed where TRL sets the
  label to -100 (each packed sequence's first token, `position_ids == 0`).
- `WeightedSFTTrainer` keeps the column through dataset preparation (TRL's own preparation drops or does not truncate
  unknown columns: packing selects `input_ids` + `labels`), swaps in the collator, and normalises by the total weight
  of the whole optimizer step: `num_items_in_batch` is, as in transformers' Trainer, summed over the gradient
  accumulation micro-batches and gathered across processes, but it sums weights instead of counting labels. So
  accumulation and data parallelism give the gradient of one big batch, exactly as TRL's loss does for counts.
- The per-token log-probabilities come from TRL's fused LM head (`fused_lm_head=True`, the path SFTTrainer itself
  uses), so the full (batch, seq, vocab) logits are never built and weights in {0, 1} reproduce TRL's loss bit for
  bit. `loss_type="dft"` (Dynamic Fine-Tuning) multiplies each token's NLL by its probability (detached), as TRL does,
  and then by its weight: loss = sum(w * p * nll) / sum(w).
- Not supported with weights: sequence/context parallelism (pre-shifted `shift_labels`), `compute_loss_func`,
  label smoothing. Each raises.

This module imports only torch, transformers and trl: its source is the trainer snippet that exported scripts embed.

Example: WeightedSFTTrainer(model=m, args=SFTConfig(...), train_dataset=Dataset.from_dict({"input_ids": [[5, 6, 7]],
         "labels": [[5, 6, 7]], "loss_weights": [[0.1, 0.1, 1.0]]})) trains on 0.1 * nll(6) + 1.0 * nll(7) / 1.1.
"""

from dataclasses import dataclass

import torch
from trl import SFTTrainer
from trl.data_utils import pack_dataset
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

WEIGHTS = "loss_weights"


@dataclass
class WeightedDataCollator(DataCollatorForLanguageModeling):
    """TRL's collator, plus `loss_weights` (float32, padded with 0, 0 wherever the collated label is -100)."""

    def torch_call(self, examples):
        out = super().torch_call(examples)
        if WEIGHTS not in examples[0]:
            return out
        rows = [torch.as_tensor(e[WEIGHTS], dtype=torch.float32) for e in examples]
        if self.padding_free:
            rows = [torch.cat(rows)]
        labels = out["labels"]
        weights = torch.zeros(labels.shape, dtype=torch.float32)
        for i, w in enumerate(rows):
            weights[i, : len(w)] = w
        # padding, masked tokens and (padding-free) the first token of every packed sequence: TRL set their labels
        # to -100, so they are never predicted; their weights must not count in the total either
        out[WEIGHTS] = weights.masked_fill(labels == -100, 0.0)
        return out


def weighted_token_loss(log_probs, weights, total, dft: bool = False):
    """sum(w * nll) / total, with `log_probs` the per-token log-probabilities of the next-token labels (zero where
    the label is -100) and `weights` aligned with them (the collated weights without their first column).
    Example: log_probs [[-1., -2.]], weights [[0.5, 1.]], total 1.5 -> (0.5 + 2) / 1.5 = 1.667"""
    per_token = -log_probs
    if dft:  # DFT (https://huggingface.co/papers/2508.05629): scale by the token's own probability, no gradient
        per_token = per_token * log_probs.exp().detach()
    per_token = per_token * weights.to(per_token.dtype)
    total = torch.as_tensor(total, dtype=per_token.dtype, device=per_token.device)
    # a micro-batch whose weights are all 0 gives a finite, differentiable 0 (not 0 / 0)
    return per_token.sum() / torch.where(total > 0, total, torch.ones_like(total))


class WeightedSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss is sum(w * nll) / sum(w) when the dataset has a `loss_weights` column (see the module
    docstring); without that column it is SFTTrainer, unchanged."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        collator = self.data_collator
        if type(collator) is DataCollatorForLanguageModeling:
            self.data_collator = WeightedDataCollator(
                pad_token_id=collator.pad_token_id, padding_free=collator.padding_free,
                return_position_ids=collator.return_position_ids, pad_to_multiple_of=collator.pad_to_multiple_of,
                return_tensors=collator.return_tensors)
        elif not isinstance(collator, WeightedDataCollator):
            raise ValueError("WeightedSFTTrainer builds its own collator (TRL's, plus loss_weights): do not pass "
                             "data_collator.")
        dataset = self.train_dataset
        self.weighted = dataset is not None and WEIGHTS in (getattr(dataset, "column_names", None) or ())
        if self.weighted:
            if self.compute_loss_func is not None or self.label_smoother is not None:
                raise ValueError("loss_weights cannot be combined with compute_loss_func or label smoothing.")
            # compute_loss divides by the weight total of the whole optimizer step: Trainer must not divide by the
            # number of accumulation steps again (it would when the model takes no loss kwargs)
            self.loss_is_scaled_for_ga = True

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if WEIGHTS not in self._signature_columns:  # else remove_unused_columns drops the weights
            self._signature_columns = [*self._signature_columns, WEIGHTS]

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        columns = getattr(dataset, "column_names", None) or ()
        if WEIGHTS not in columns:
            return super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
        if "input_ids" not in columns or "labels" not in columns:
            raise ValueError("a dataset with loss_weights must be pre-tokenized: input_ids, labels, loss_weights.")
        # Pre-tokenized rows with labels: TRL's preparation would only truncate and pack. Rows come truncated to
        # max_length (MaskLens' prepare_examples, with the weights); packing is done here so the weights follow
        # their tokens (TRL's own packing keeps only input_ids + labels).
        if packing:
            if args.max_length is None:
                raise ValueError("When packing is enabled, `max_length` can't be `None`.")
            dataset = dataset.select_columns(["input_ids", "labels", WEIGHTS])
            if args.shuffle_dataset:
                dataset = dataset.shuffle(seed=args.seed)
            dataset = pack_dataset(dataset, args.max_length, args.packing_strategy, {})
        elif args.max_length is not None:
            longest = max((len(ids) for ids in dataset["input_ids"]), default=0)
            if longest > args.max_length:
                raise ValueError(f"a row has {longest} tokens, more than max_length={args.max_length}: truncate "
                                 "input_ids, labels and loss_weights together before training.")
        if args.shuffle_dataset:
            dataset = dataset.shuffle(seed=args.seed)
        return dataset

    def _get_num_items_in_batch(self, batch_samples, device):
        """The weight total of the optimizer step's micro-batches (transformers counts labels instead), summed over
        processes exactly as Trainer does for its count, so every micro-batch's loss shares one denominator."""
        if not batch_samples or WEIGHTS not in batch_samples[0]:
            return super()._get_num_items_in_batch(batch_samples, device)
        # position 0 is never predicted (the collator zeroed it in padding-free rows; here it is the row's first)
        total = sum(batch[WEIGHTS][..., 1:].to(torch.float64).sum() for batch in batch_samples)
        if self.args.average_tokens_across_devices:
            if self.args.world_size > 1:
                total = self.accelerator.gather(total.to(device)).sum()
        elif self.args.n_gpu > 1:
            total = total / self.args.n_gpu  # DataParallel, as Trainer approximates its count
        total = total.to(device)
        return total / (self.get_tp_size() * self.get_cp_size() * self.get_sp_size())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weights = inputs.pop(WEIGHTS, None)
        if weights is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        if "shift_labels" in inputs:
            raise ValueError("loss_weights are not supported with context or sequence parallelism.")
        mode = "train" if self.model.training else "eval"
        inputs["use_cache"] = False
        if self.aux_loss_enabled:
            inputs["output_router_logits"] = True
        outputs = model(**inputs, fused_lm_head=True)  # TRL's own forward: per-token log-probs, no full logits
        w = weights[:, 1:].to(outputs.log_probs.device)  # the weight of the token each position predicts
        total = w.to(torch.float64).sum() if num_items_in_batch is None else num_items_in_batch
        loss = weighted_token_loss(outputs.log_probs, w, total, dft=self.args.loss_type == "dft")
        # As SFTTrainer.compute_loss: the total counts every rank's weights and DDP averages the gradients
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        if self.aux_loss_enabled:
            steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss / steps
        self._log_token_metrics(mode, inputs, outputs)
        if return_outputs:
            with torch.no_grad():
                outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        return (loss, outputs) if return_outputs else loss

    def _log_token_metrics(self, mode, inputs, outputs):
        """SFTTrainer's entropy / token accuracy / token count metrics (over the tokens with a label)."""
        gather = self.accelerator.gather_for_metrics
        num_valid = gather(outputs.label_mask.sum()).sum()
        entropy_sum = gather(outputs.entropy.detach().sum()).sum()
        num_correct = gather(outputs.is_top1.sum()).sum()
        self._metrics[mode]["entropy"].append((entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((num_correct / num_valid).item() if num_valid > 0 else 0.0)
        if mode == "train":
            if "attention_mask" in inputs:
                n = gather(inputs["attention_mask"].sum()).sum().item()
            else:
                n = gather(torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)).sum()
                n = n.item()
            self._total_train_tokens += n // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        if self.aux_loss_enabled:
            self._metrics[mode]["aux_loss"].append(gather(outputs.aux_loss).mean().item())
