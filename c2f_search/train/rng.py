"""Each run owns its random streams: nothing seeds the process-wide RNGs, so two runs in one
process draw exactly what they would draw in two processes."""

from __future__ import annotations

from contextlib import contextmanager

import torch


class RunRNG:
    """The torch RNG state of one run (CPU, plus the run's CUDA device). ``active()`` installs it
    around the run's own work and hands the process-wide state back unchanged afterwards;
    libraries that draw from the global generator (torchaudio's SpecAugment, timm's init,
    mixup) then draw from this run's stream."""

    def __init__(self, seed: int, device: torch.device):
        self.device = device
        self.cpu = torch.Generator().manual_seed(seed).get_state()
        self.cuda = torch.Generator(device).manual_seed(seed).get_state() if device.type == "cuda" else None

    @contextmanager
    def active(self):
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            try:
                yield
            finally:
                self.cpu = torch.get_rng_state()
                if self.cuda is not None:
                    self.cuda = torch.cuda.get_rng_state(self.device)

    def state_dict(self) -> dict:
        return {"cpu": self.cpu.clone(), **({"cuda": self.cuda.clone()} if self.cuda is not None else {})}

    def load_state_dict(self, s: dict) -> None:
        self.cpu = s["cpu"].clone()
        if self.cuda is not None and "cuda" in s:
            self.cuda = s["cuda"].clone()
