"""The localizer's losses, its epoch sampler and `transformers.Trainer` with peak-based evaluation.

Loss per batch: the focal heatmap loss over keypointed and negative images
(negatives have all-zero targets) plus `weak_weight` x the multiple-instance
loss on the heatmap maximum of weak positives (towards 1) and negatives
(towards 0). Evaluation decodes each image's candidate peaks into original
pixels inside the model loop, so only (max_points x 3) numbers per image
travel back, and scores them with this folder's own metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Sampler
from transformers import Trainer

from localization_task.common.unreadable import UnreadableImages
from localization_task.heatmap.evaluate import f1_and_counts, split_peaks, tune_min_confidence
from localization_task.heatmap.peaks import peaks_tensor
from localization_task.split import KEYPOINTED, NEGATIVE, WEAK


def focal_heatmap_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0
) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss on sigmoid(logits), summed, per positive cell.

    Positives are the cells where target == 1 (one per keypoint, see
    `gaussian_heatmap`); the (1 - target)^beta factor forgives confident
    predictions next to a keypoint. The sum is divided by the number of
    positives in the batch, at least 1, so all-zero targets (negative images)
    contribute their negative term only.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape.")
    logits, target = logits.float(), target.float()
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    prob = log_p.exp()
    positive = target >= 1.0
    pos_term = (1.0 - prob) ** alpha * log_p
    neg_term = (1.0 - target) ** beta * prob**alpha * log_not_p
    loss_sum = -torch.where(positive, pos_term, neg_term).sum()
    return loss_sum / positive.sum().clamp(min=1)


def weak_image_loss(logits: torch.Tensor, image_labels: torch.Tensor) -> torch.Tensor:
    """Multiple-instance loss: BCE of each image's maximum heatmap logit towards its image label.

    For images with an image label but no keypoints: a nodule image (label 1)
    must have some confident cell, a negative one (label 0) none. An empty
    batch gives a zero that still carries the graph.
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    max_logits = logits.float().flatten(1).amax(dim=1)
    labels = image_labels.to(max_logits).reshape(-1)
    return F.binary_cross_entropy_with_logits(max_logits, labels)


# --- decoding ---------------------------------------------------------------


def heatmap_loss(logits: torch.Tensor, batch: dict, weak_weight: float) -> torch.Tensor:
    """Focal loss on keypointed + negative images, plus the weighted weak (image-label) loss."""
    kind = batch["kind"]
    dense = (kind == KEYPOINTED) | (kind == NEGATIVE)
    loss = focal_heatmap_loss(logits[dense], batch["target"][dense]) if dense.any() else logits.sum() * 0.0
    weak = (kind == WEAK) | (kind == NEGATIVE)
    if weak_weight > 0 and weak.any():
        loss = loss + weak_weight * weak_image_loss(logits[weak], batch["image_label"][weak])
    return loss


class MixedEpochSampler(Sampler[int]):
    """Every keypointed image each epoch, plus the next slices of weak positives and negatives.

    Slices are non-overlapping chunks of one seeded permutation per kind, so
    successive epochs walk through every weak positive and every negative. The
    order inside an epoch depends only on (seed, epoch): a resumed run sees the
    same images in the same order.
    """

    def __init__(self, kinds: Sequence[int], weak_per_keypointed: float = 1.0,
                 negatives_per_keypointed: float = 1.0, seed: int = 0,
                 on_epoch: Callable[[int], None] | None = None):
        kinds = np.asarray(kinds)
        self.on_epoch = on_epoch  # e.g. the dataset's set_epoch: its augmentations follow the epoch
        self.keypointed = np.flatnonzero(kinds == KEYPOINTED)
        if len(self.keypointed) == 0:
            raise ValueError("the training split has no image with keypoints; the localizer needs some.")
        self.seed, self.epoch = seed, 0
        self.pools = {}
        for kind, ratio in ((WEAK, weak_per_keypointed), (NEGATIVE, negatives_per_keypointed)):
            members = np.flatnonzero(kinds == kind)
            chunk = min(len(members), round(ratio * len(self.keypointed)))
            order = np.random.default_rng([seed, kind]).permutation(members)
            self.pools[kind] = (order, chunk)

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer before each epoch, in every process.

        The dataset hears of the epoch from here: once accelerate shards the
        batches over several processes, its own set_epoch no longer reaches
        the dataset, whose augmentations would then repeat every epoch.
        """
        self.epoch = epoch
        if self.on_epoch is not None:
            self.on_epoch(epoch)

    def slice_for_epoch(self, kind: int, epoch: int) -> np.ndarray:
        order, chunk = self.pools[kind]
        if chunk == 0:
            return order[:0]
        positions = np.arange(epoch * chunk, (epoch + 1) * chunk) % len(order)
        return order[positions]

    def __len__(self) -> int:
        return len(self.keypointed) + sum(chunk for _, chunk in self.pools.values())

    def __iter__(self) -> Iterator[int]:
        indices = np.concatenate([self.keypointed, *(self.slice_for_epoch(k, self.epoch) for k in self.pools)])
        return iter(np.random.default_rng([self.seed, 1000 + self.epoch]).permutation(indices).tolist())


class HeatmapTrainer(Trainer):
    """Stock Trainer (accumulation, mixed precision, checkpoints, resume, multi-GPU) with our loss."""

    def __init__(self, *args, weak_weight: float, weak_per_keypointed: float, negatives_per_keypointed: float,
                 max_points: int, sampler_seed: int = 0, unreadable: UnreadableImages | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.unreadable = unreadable  # records what the collator left out, over every process
        self.weak_weight = weak_weight
        self.mix = (weak_per_keypointed, negatives_per_keypointed)
        self.max_points = max_points
        self.sampler_seed = sampler_seed
        self.model_accepts_loss_kwargs = False  # our loss is a batch mean: the Trainer scales it

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return MixedEpochSampler(dataset.kinds, *self.mix, seed=self.sampler_seed, on_epoch=dataset.set_epoch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.record_unreadable(inputs, self.train_dataset)
        if len(inputs["index"]) == 0:  # every image of the batch was unreadable
            loss = sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
            return (loss, None) if return_outputs else loss
        logits = model(inputs["pixel_values"])
        loss = heatmap_loss(logits, inputs, self.weak_weight)
        return (loss, logits) if return_outputs else loss

    def record_unreadable(self, inputs: dict, dataset) -> None:
        """The images the batch skipped, by file name, gathered from every process (each takes this step
        together), so that each counts every unreadable image once against the limit and all stop together."""
        if self.unreadable is not None:
            skipped = [(dataset.file_names[int(index)], reason) for index, reason in inputs.get("skipped", [])]
            self.unreadable.record_from_all_processes(skipped)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        self.record_unreadable(inputs, self.eval_dataset)
        inputs = self._prepare_inputs(inputs)
        if len(inputs["index"]) == 0:  # unreadable images only: nothing to score
            device = self.args.device
            zero = torch.zeros((), device=device)
            if prediction_loss_only:
                return zero, None, None
            no_peaks, no_boxes = torch.zeros(0, self.max_points, 3, device=device), torch.zeros(0, 5, device=device)
            return zero, (no_peaks, no_boxes), inputs["index"]
        with torch.no_grad():
            logits = model(inputs["pixel_values"])
            loss = heatmap_loss(logits, inputs, self.weak_weight).detach()
        if prediction_loss_only:
            return loss, None, None
        stride = self.accelerator.unwrap_model(model).config.stride
        peaks = peaks_tensor(logits, inputs["box"], stride, self.max_points)
        return loss, (peaks, inputs["box"].float()), inputs["index"]


def metrics_function(frame: pd.DataFrame, tolerant_frac: float, tight_frac: float):
    """`compute_metrics` for the Trainer: F1 and count accuracy at the best validation threshold.

    Each evaluation tunes the confidence threshold on the evaluated split (the
    final one is tuned the same way), so checkpoints are compared at their
    best operating point rather than at an arbitrary fixed one.
    """
    def compute_metrics(eval_prediction) -> dict:
        peaks, boxes = eval_prediction.predictions
        split = split_peaks(frame, np.asarray(peaks), np.asarray(boxes), np.asarray(eval_prediction.label_ids))
        tuned = tune_min_confidence(split, tolerant_frac)
        best = tuned["at_min_confidence_f1"]
        tight = f1_and_counts(split, tuned["min_confidence_f1"], tight_frac)["f1"]
        return {"f1_tolerant": best["f1"], "f1_tight": tight, "count_accuracy": best["count_accuracy"],
                "count_accuracy_with_nodules": best["count_accuracy_with_nodules"],
                "count_accuracy_without_nodules": best["count_accuracy_without_nodules"],
                "min_confidence": tuned["min_confidence_f1"]}

    return compute_metrics
