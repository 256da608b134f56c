"""A plain PyTorch loop that trains a coarse-to-fine schedule with c2f_search.CoarseToFine (docs/own_loop.md).

    python examples/own_loop.py --schedule avgpool:2x1,1x1
    python examples/own_loop.py --schedule best.json   # a file written by c2f-search export

Data: the built-in synthetic events set, read in the order `c2f-search train` reads it (epoch_order), so with
augmentation off both train on the same batches. Your own loop keeps its own data, loss and optimizer."""

import argparse

import torch
import torch.nn.functional as F

from c2f_search import CoarseToFine, Data, Geometry, build_for_phase, epoch_order, parse_schedule, read_schedule_file
from c2f_search.data.frontend import normalize

p = argparse.ArgumentParser()
p.add_argument("--schedule", default="avgpool:2x1,1x1", help="a schedule text or an exported .json/.yaml file")
p.add_argument("--data", help="default: the exported file's, else builtin:events?train=40&val=20&seed=3")
p.add_argument("--batch-size", type=int, help="default: the exported file's, else 8")
p.add_argument("--lr", type=float, help="default: the exported file's, else 3e-4")
p.add_argument("--warmup-steps", type=int, help="default: the exported file's, else 2")
p.add_argument("--seed", type=int, help="default: the exported file's, else 0")


def train(a) -> tuple[list[float], torch.nn.Module]:
    """The training loss of every step, and the trained model."""
    exported = a.schedule.endswith((".json", ".yaml", ".yml"))
    f = read_schedule_file(a.schedule) if exported else None
    hp, schedule = (f.hyperparameters, f.schedule) if f else ({}, parse_schedule(a.schedule))
    data = Data.from_specs(a.data or (f and f.source.get("data")) or "builtin:events?train=40&val=20&seed=3")
    B, lr = a.batch_size or hp.get("batch_size", 8), a.lr or hp.get("lr", 3e-4)
    warmup, seed = a.warmup_steps or hp.get("warmup_steps", 2), hp.get("seed", 0) if a.seed is None else a.seed
    fe = data.fe
    n_train = len(data.features("train", fe.frame_shift_ms, fe.target_length).kept)
    steps_per_epoch = n_train // B  # full batches only, as c2f-search trains
    full, first = Geometry(fe.num_mel_bins, fe.target_length), schedule.phases[0]
    model_name, kwargs = (f.model, f.model_kwargs) if f else ("ast-tiny", {"depth": 1})
    torch.manual_seed(seed)  # the model starts where `c2f-search train --seed` starts it: at the first phase
    model = build_for_phase(model_name, {"num_classes": data.num_classes, **kwargs}, first.method, first.C, full)

    def optimizer(m):  # Adam with a linear warmup, fresh at every phase (the paper resets both); fused, as in
        # c2f-search's step, so the oracle agrees to the bit (the default Adam rounds differently)
        wd = hp.get("weight_decay", 5e-7)
        opt = torch.optim.Adam(m.parameters(), lr=lr, weight_decay=wd, betas=(0.95, 0.999), fused=True)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))

    c2f = CoarseToFine(f or schedule, model, steps_per_epoch, full=full, optimizer_factory=optimizer)
    losses = []
    while not c2f.done:
        epoch, b = divmod(c2f.index, steps_per_epoch)
        step = c2f.step()  # at a transition: c2f.model moved, c2f.optimizer fresh
        feats = data.features("train", step.frame_shift_ms, step.feature_length)  # fshift: its own features
        idx = epoch_order(seed, epoch, n_train)[b * B : (b + 1) * B].numpy()
        x, n_frames = feats.batch(idx)
        y = data.targets("train", feats)[idx]
        x = normalize(step.transform(x.float(), n_frames), data.mean, data.std)
        keep = step.keep_index(B, x.device)  # token dropping: the tokens this step keeps, else None
        logits = step.model(x) if keep is None else step.model(x, keep=keep)
        loss = F.binary_cross_entropy_with_logits(logits, y) if data.multilabel else F.cross_entropy(logits, y)
        c2f.optimizer.zero_grad()
        loss.backward()
        c2f.optimizer.step()
        c2f.lr_scheduler.step()
        losses.append(loss.item())
    return losses, c2f.model


if __name__ == "__main__":
    losses, _ = train(p.parse_args())
    print(f"trained {len(losses)} steps; loss {losses[0]:.4f} -> {losses[-1]:.4f}")
