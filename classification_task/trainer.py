"""`transformers.Trainer` with the answer-token loss and the rotating balanced sampler."""

from __future__ import annotations

import numpy as np
import torch
from transformers import Trainer

from classification_task.loss import answer_loss
from classification_task.metrics import binary_metrics
from classification_task.model import answer_logits, p_nodule_from_logits
from classification_task.sampler import RotatingBalancedSampler


class NoduleTrainer(Trainer):
    """Trainer whose loss is weighted CE over the two answer logits.

    Everything else (accumulation, mixed precision, checkpoints, resume,
    multi-GPU) is the stock Trainer.
    """

    def __init__(self, *args, answer_ids: list[int], pos_weight: float, focal_gamma: float,
                 sampler: str = "balanced", sampler_seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.answer_ids = answer_ids
        self.pos_weight = pos_weight
        self.focal_gamma = focal_gamma
        self.sampler_kind = sampler
        self.sampler_seed = sampler_seed
        # Our loss is a per-batch mean, so the Trainer must divide it by the
        # number of accumulation steps itself.
        self.model_accepts_loss_kwargs = False

    def _get_train_sampler(self, train_dataset=None):
        if self.sampler_kind == "balanced":
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            return RotatingBalancedSampler(dataset.labels, seed=self.sampler_seed)
        return super()._get_train_sampler(train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = answer_logits(model, inputs, self.answer_ids)
        loss = answer_loss(logits, inputs["labels"], self.pos_weight, self.focal_gamma)
        return (loss, logits) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            logits = answer_logits(model, inputs, self.answer_ids)
            loss = answer_loss(logits, inputs["labels"], self.pos_weight, self.focal_gamma)
        if prediction_loss_only:
            return loss.detach(), None, None
        return loss.detach(), logits.detach().float(), inputs["labels"]


def compute_metrics(eval_prediction) -> dict:
    """Full classification metrics at threshold 0.5 from the two answer logits."""
    p_nodule = p_nodule_from_logits(eval_prediction.predictions)
    labels = np.asarray(eval_prediction.label_ids)
    return binary_metrics(labels, p_nodule, threshold=0.5)
