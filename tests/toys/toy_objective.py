"""An objective defined outside the package: squared error between the softmax and the one-hot label
(Brier score), scored by accuracy."""

import torch.nn.functional as F

from c2f_search.models.flops import eval_flops, train_flops
from c2f_search.objectives import Objective, Scorer, register_objective


class _Brier(Scorer):
    def __init__(self, model):
        self.model, self.hits, self.loss, self.n = model, 0.0, 0.0, 0

    def add(self, x, y):
        p = self.model(x).float().softmax(-1)
        self.hits = self.hits + (p.argmax(-1) == y.argmax(-1)).double().sum()
        self.loss = self.loss + ((p - y) ** 2).sum(-1).double().sum()
        self.n += x.shape[0]

    def result(self):
        return float(self.hits) / self.n, float(self.loss) / self.n


@register_objective
class Brier(Objective):
    name, metric_name = "toy-brier", "accuracy"

    def forward_loss(self, model, x, y, extra):
        return ((F.softmax(model(x).float(), -1) - y) ** 2).sum(-1).mean()

    def train_flops(self, model):
        return train_flops(model)

    def eval_flops(self, model):
        return eval_flops(model)

    def scorer(self, model, C):
        return _Brier(model)
