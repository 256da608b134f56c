"""Supervised: CE or BCE on the labels (``classification_loss``); accuracy, or mAP for multi-label data.
It trains with token dropping: the kept indices come as the step's `extra` (``ClassificationLoss.forward_loss``
gathers them); evaluation sees every token."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_accuracy, multilabel_average_precision

from ..errors import ConfigError
from ..models.flops import eval_flops, train_flops
from .base import Objective, Scorer, register_objective


def classification_loss(logits, y, multilabel: bool) -> torch.Tensor:
    """BCE for multi-label targets, CE otherwise, in fp32."""
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, y) if multilabel else F.cross_entropy(logits, y)


class ClassificationLoss:
    """The supervised loss on a model's logits: BCE for multi-label targets, CE otherwise (in fp32). In a
    token-dropping phase `extra` holds the kept token indices, which the model's forward gathers."""

    def __init__(self, multilabel: bool):
        self.multilabel = multilabel

    def extra(self, model, x):
        return None

    def forward_loss(self, model, x, y, extra=None):
        return classification_loss(model(x) if extra is None else model(x, keep=extra), y, self.multilabel)


class _Logits(Scorer):
    def __init__(self, model, multilabel_loss: bool, multilabel_metric: bool):
        self.model, self.loss_bce, self.map = model, multilabel_loss, multilabel_metric
        self.logits, self.targets = [], []

    def add(self, x, y):
        self.logits.append(self.model(x).float())
        self.targets.append(y)

    def result(self):
        logits, y = torch.cat(self.logits).cpu(), torch.cat(self.targets).cpu()
        loss = float(classification_loss(logits, y, self.loss_bce))
        if self.map:
            return float(
                multilabel_average_precision(torch.sigmoid(logits), y.int(), num_labels=y.shape[1], average="macro")
            ), loss
        return float(multiclass_accuracy(logits, y.argmax(1), num_classes=y.shape[1], average="micro")), loss


@register_objective
class Supervised(ClassificationLoss, Objective):
    name, takes_token_drop = "supervised", True

    def __init__(self, cfg, data, full):
        Objective.__init__(self, cfg, data, full)
        ClassificationLoss.__init__(self, cfg.loss == "bce" or (cfg.loss == "auto" and data.multilabel))

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.mask_patches is not None:
            raise ConfigError(
                "mask_patches", "masks patches for SSAST pretraining only; drop it, or pretrain (masked-patch)"
            )

    @property
    def metric_name(self) -> str:
        return "mAP" if self.data.multilabel else "accuracy"

    def train_flops(self, model, kept: int | None = None) -> int:
        return train_flops(model, kept)

    def eval_flops(self, model) -> int:
        return eval_flops(model)

    def scorer(self, model, C):
        return _Logits(model, self.multilabel, self.data.multilabel)
