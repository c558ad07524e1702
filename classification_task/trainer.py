"""`transformers.Trainer` with the answer-token loss, the class-balancing samplers and the batches of
readable images."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Sampler, WeightedRandomSampler
from transformers import Trainer

from classification_task.metrics import binary_metrics
from classification_task.model import PromptCollator, answer_logits, p_nodule_from_logits


def answer_loss(
    logits: torch.Tensor, labels: torch.Tensor, pos_weight: float = 20.0, focal_gamma: float = 0.0
) -> torch.Tensor:
    """Class-weighted cross-entropy (optionally focal) over the two answer logits.

    A weighted mean over the batch, like `F.cross_entropy(weight=[1, pos_weight])`.
    With focal_gamma > 0 each term is scaled by (1 - p_true) ** gamma, which
    down-weights the many easy negatives.
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)
    log_p_true = log_probs.gather(1, labels[:, None]).squeeze(1)
    weights = torch.where(labels == 1, pos_weight, 1.0).to(log_p_true)
    per_item = -log_p_true
    if focal_gamma > 0:
        per_item = per_item * (1 - log_p_true.exp()) ** focal_gamma
    return (weights * per_item).sum() / weights.sum()


class RotatingBalancedSampler(Sampler[int]):
    """Rotating balanced epochs: every positive each epoch, a fresh slice of the negatives.

    With 4.5 % positives, plain sampling shows the model few nodules; balancing
    by throwing negatives away wastes data. Here each epoch is all positives plus
    an equal number of negatives taken as the next non-overlapping chunk of one
    seeded permutation of all negatives, so successive epochs walk through every
    negative.
    """

    def __init__(self, labels: Sequence[int], seed: int = 0):
        labels = np.asarray(labels)
        self.positives = np.flatnonzero(labels == 1)
        self.negatives = np.flatnonzero(labels == 0)
        if len(self.positives) == 0 or len(self.negatives) == 0:
            raise ValueError("the balanced sampler needs both positive and negative training images.")
        self.seed = seed
        self.epoch = 0
        self.chunk = min(len(self.positives), len(self.negatives))
        self.negative_order = np.random.default_rng(seed).permutation(self.negatives)

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer before each epoch; the epoch alone decides the order."""
        self.epoch = epoch

    def negatives_for_epoch(self, epoch: int) -> np.ndarray:
        start = epoch * self.chunk
        positions = np.arange(start, start + self.chunk) % len(self.negative_order)
        return self.negative_order[positions]

    def __len__(self) -> int:
        return len(self.positives) + self.chunk

    def __iter__(self) -> Iterator[int]:
        indices = np.concatenate([self.positives, self.negatives_for_epoch(self.epoch)])
        order = np.random.default_rng([self.seed, self.epoch]).permutation(indices)
        return iter(order.tolist())


def epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit seed from the training seed and the epoch, so a resumed run redraws the same epoch."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class ClassWeightedSampler(WeightedRandomSampler):
    """torch's WeightedRandomSampler, each image weighted by 1 / (images of its class).

    An epoch draws as many images as the data set holds, with replacement: about
    half positives, each positive drawn many times, some negatives not at all.
    The draw is seeded from the seed and the epoch (`set_epoch`, called by the
    Trainer), so a run resumed mid-epoch skips exactly the batches it had seen.
    """

    def __init__(self, labels: Sequence[int], seed: int = 0):
        labels = np.asarray(labels, dtype=np.int64)
        class_counts = np.bincount(labels, minlength=2)
        if labels.size == 0 or class_counts.min() == 0:
            raise ValueError("the weighted sampler needs both positive and negative training images.")
        weights = torch.as_tensor(1.0 / class_counts[labels], dtype=torch.float64)
        super().__init__(weights, num_samples=labels.size, replacement=True)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        self.generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return super().__iter__()


class ReadableBatchCollator:
    """PromptCollator over the readable items; the others go on as `unreadable` (file_name, error) pairs.

    A batch whose images are all unreadable holds only `labels` (empty) and `unreadable`; the trainer
    records the pairs (common/unreadable.py).
    """

    def __init__(self, processor, collate=None):
        # `collate`: another batcher of readable items (the encoder classifier's EncoderCollator).
        self.prompts = collate or PromptCollator(processor)

    def __call__(self, items: list[dict]) -> dict:
        readable = [item for item in items if item["image"] is not None]
        batch = self.prompts(readable) if readable else {"labels": torch.zeros(0, dtype=torch.long)}
        batch["unreadable"] = [(item["file_name"], item["error"]) for item in items if item["image"] is None]
        return batch


class NoduleTrainer(Trainer):
    """Trainer whose loss is weighted CE over the two (No Finding, Nodule) logits.

    Everything else (accumulation, mixed precision, checkpoints, resume,
    multi-GPU) is the stock Trainer.
    """

    def __init__(self, *args, answer_ids: list[int] | None, pos_weight: float, focal_gamma: float,
                 sampler: str = "balanced", sampler_seed: int = 0, unreadable=None, logits_fn=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.unreadable = unreadable  # UnreadableImages: records what the collator left out
        self.answer_ids = answer_ids
        # (model, inputs) -> (No Finding, Nodule) logits: MedGemma's answer letters unless told otherwise
        # (the encoder classifier's head, see classifiers.logits_function).
        self.logits_fn = logits_fn or partial(answer_logits, answer_ids=answer_ids)
        self.pos_weight = pos_weight
        self.focal_gamma = focal_gamma
        self.sampler_kind = sampler
        self.sampler_seed = sampler_seed
        # Our loss is a per-batch mean, so the Trainer must divide it by the
        # number of accumulation steps itself.
        self.model_accepts_loss_kwargs = False

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.sampler_kind == "balanced":
            return RotatingBalancedSampler(dataset.labels, seed=self.sampler_seed)
        if self.sampler_kind == "weighted":
            return ClassWeightedSampler(dataset.labels, seed=self.sampler_seed)
        return super()._get_train_sampler(train_dataset)

    def readable_inputs(self, inputs: dict) -> dict | None:
        """The batch without its `unreadable` list (recorded here); None when no image was readable.

        With several processes each reads its own part of the batch: the lists of
        all are gathered (every process takes this step together), so each process
        counts every unreadable image once against the limit, and all stop together.
        """
        inputs = dict(inputs)
        skipped = inputs.pop("unreadable", [])
        if self.unreadable is not None:
            self.unreadable.record_from_all_processes(skipped)
        return inputs if "pixel_values" in inputs else None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = self.readable_inputs(inputs)
        if inputs is None:  # a zero that still reaches every trainable weight, so backward runs as usual
            loss = sum(param.sum() for param in model.parameters() if param.requires_grad) * 0.0
            return (loss, None) if return_outputs else loss
        logits = self.logits_fn(model, inputs)
        loss = answer_loss(logits, inputs["labels"], self.pos_weight, self.focal_gamma)
        return (loss, logits) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self.readable_inputs(self._prepare_inputs(inputs))
        if inputs is None:
            return None, None, None
        with torch.no_grad():
            logits = self.logits_fn(model, inputs)
            loss = answer_loss(logits, inputs["labels"], self.pos_weight, self.focal_gamma)
        if prediction_loss_only:
            return loss.detach(), None, None
        return loss.detach(), logits.detach().float(), inputs["labels"]


def compute_metrics(eval_prediction, beta: float | None = None) -> dict:
    """Full classification metrics at threshold 0.5 from the two answer logits
    (with `f_beta` when `beta` is given: bind it with functools.partial)."""
    p_nodule = p_nodule_from_logits(eval_prediction.predictions)
    labels = np.asarray(eval_prediction.label_ids)
    return binary_metrics(labels, p_nodule, threshold=0.5, beta=beta)


def best_checkpoint(state, metric: str) -> dict:
    """Step and validation value of the checkpoint load_best_model_at_end kept, from a TrainerState.

    `step` and `value` are None when no evaluation ever improved on the start
    (an AUC that stayed undefined on a one-class validation split).
    """
    step = state.best_global_step
    if step is None and state.best_model_checkpoint:  # older trainer states name only the folder
        step = int(Path(state.best_model_checkpoint).name.rsplit("-", 1)[-1])
    return {"step": step, "metric": metric, "value": state.best_metric if step is not None else None}
