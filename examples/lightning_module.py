"""A LightningModule trained coarse to fine by c2f_search's Lightning callback (pip install 'c2f-search[lightning]').

    python examples/lightning_module.py --schedule tpatchout:2x1,1x1

The module keeps its model in `self.model`; the callback moves it at a transition, rebuilds the optimizer
through configure_optimizers, and hands training_step the step (`self.c2f_step`) that transforms the batch and
draws a token-dropping phase's kept tokens. Data: the built-in synthetic events set in the order
`c2f-search train` reads it, so with augmentation off the two train on the same batches."""

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from c2f_search import Data, Geometry, build_for_phase, epoch_order, parse_schedule
from c2f_search.data.frontend import normalize
from c2f_search.lightning_callback import CoarseToFineCallback

p = argparse.ArgumentParser()
p.add_argument("--schedule", default="avgpool:2x1,1x1")
p.add_argument("--data", default="builtin:events?train=40&val=20&seed=3")
p.add_argument("--batch-size", type=int, default=8)
p.add_argument("--lr", type=float, default=3e-4)
p.add_argument("--warmup-steps", type=int, default=2)
p.add_argument("--seed", type=int, default=0)


class Clips(Dataset):
    """Full-resolution training clips: (raw fbank, real frames, targets)."""

    def __init__(self, data):
        fe = data.fe
        self.feats = data.features("train", fe.frame_shift_ms, fe.target_length)
        self.targets = data.targets("train", self.feats)

    def __len__(self):
        return len(self.feats.kept)

    def __getitem__(self, i):
        x, n = self.feats.batch([i])
        return x[0].float(), n[0], self.targets[i]


class EpochOrder:
    """Batches in the order c2f-search train draws them, full batches only."""

    def __init__(self, n, batch, seed):
        self.n, self.batch, self.seed, self.epoch = n, batch, seed, 0

    def __iter__(self):
        order = epoch_order(self.seed, self.epoch, self.n).tolist()
        self.epoch += 1
        return (order[k : k + self.batch] for k in range(0, self.n - self.batch + 1, self.batch))

    def __len__(self):
        return self.n // self.batch


class Tagger(L.LightningModule):
    def __init__(self, model, mean, std, multilabel, lr, warmup_steps):
        super().__init__()
        self.model, self.norm, self.multilabel = model, (mean, std), multilabel
        self.lr, self.warmup_steps, self.losses = lr, warmup_steps, []

    def training_step(self, batch, batch_idx):
        x, n_frames, y = batch
        step = self.c2f_step  # set by the callback before every batch
        x = normalize(step.transform(x, n_frames), *self.norm)
        keep = step.keep_index(x.shape[0], x.device)
        logits = self.model(x) if keep is None else self.model(x, keep=keep)
        loss = F.binary_cross_entropy_with_logits(logits, y) if self.multilabel else F.cross_entropy(logits, y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):  # called again by the callback at every transition
        opt = torch.optim.Adam(self.model.parameters(), lr=self.lr, weight_decay=5e-7, betas=(0.95, 0.999), fused=True)
        warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / self.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}


def train(a, **trainer_kw):
    """The trained module (its `losses`: the loss of every step)."""
    data, schedule = Data.from_specs(a.data), parse_schedule(a.schedule)
    clips = Clips(data)
    first, full = schedule.phases[0], Geometry(data.fe.num_mel_bins, data.fe.target_length)
    torch.manual_seed(a.seed)  # the model starts where `c2f-search train --seed` starts it: at the first phase
    model = build_for_phase("ast-tiny", {"num_classes": data.num_classes, "depth": 1}, first.method, first.C, full)
    module = Tagger(model, data.mean, data.std, data.multilabel, a.lr, a.warmup_steps)
    # a generator of its own: a DataLoader otherwise draws its seed from the global one the keep indices use
    loader = DataLoader(clips, batch_sampler=EpochOrder(len(clips), a.batch_size, a.seed), generator=torch.Generator())
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=int(schedule.total_epochs + 1),  # the callback stops at the schedule's end
        callbacks=[CoarseToFineCallback(schedule, attr="model", full=full)],
        **{"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, **trainer_kw},
    )
    trainer.fit(module, loader)
    return module


if __name__ == "__main__":
    m = train(p.parse_args())
    print(f"trained {len(m.losses)} steps; loss {m.losses[0]:.4f} -> {m.losses[-1]:.4f}")
