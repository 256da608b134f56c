"""A run's numeric precision (fp32, tf32, bf16, fp16) and the peak FLOP/s of known devices, for MFU.

``auto`` resolves at run time: bf16 on a CUDA device that has it, fp16 (with a GradScaler) on an
older one, fp32 on the CPU. TF32 is a CUDA matmul mode; on the CPU it is plain fp32.
"""

from __future__ import annotations

import re
from contextlib import contextmanager, nullcontext

import torch

from ..errors import ConfigError

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}

# Dense peak TFLOP/s (fp32 on CUDA cores, tf32, bf16 = fp16 on tensor cores) from NVIDIA's datasheets,
# whose tensor figures "with sparsity" are halved here. First match on the CUDA device name wins.
PEAK_TFLOPS = [
    (r"H200 NVL", 60.0, 417.5, 835.5),
    (r"H200", 67.0, 494.7, 989.4),  # SXM
    (r"H100 NVL", 60.0, 417.5, 835.5),
    (r"H100 PCIe", 51.0, 378.0, 756.5),
    (r"H100", 67.0, 494.7, 989.4),  # SXM (80GB HBM3)
    (r"A100", 19.5, 156.0, 312.0),
    (r"A10G", 31.2, 62.5, 125.0),  # AWS publishes no A10G tensor figures: the A10 datasheet's
    (r"A10\b", 31.2, 62.5, 125.0),
    (r"L40S", 91.6, 183.0, 362.1),
    (r"L4\b", 30.3, 60.0, 121.0),
]


def resolve_device(device="auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda was asked for, but no CUDA device is visible; use cpu or auto")
    return torch.device(device)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU): a clock read after it measures that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_precision(name: str, device: torch.device) -> str:
    if device.type != "cuda":
        return "fp32" if name in ("auto", "tf32") else name
    if name == "auto":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return name


def autocast(precision: str, device: torch.device):
    """The forward's autocast: bf16 or fp16, or a disabled one."""
    dtype = AUTOCAST.get(precision)
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


# The TF32 switches of CUDA matmuls and cuDNN convolutions (and RNNs), in torch's fp32_precision API: once
# anything sets that API, reading the legacy ``allow_tf32`` flags raises, so nothing here reads them.
TF32_SWITCHES = (torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn)


@contextmanager
def tf32_mode(on: bool):
    """Allow TF32 (``tf32``) or forbid it (``ieee``) for CUDA matmuls and cuDNN, restored afterwards: the
    settings are process-wide. Needs no GPU, so the CPU tests reach it."""
    old = tuple(s.fp32_precision for s in TF32_SWITCHES)
    for s in TF32_SWITCHES:
        s.fp32_precision = "tf32" if on else "ieee"
    try:
        yield
    finally:
        for s, value in zip(TF32_SWITCHES, old):
            s.fp32_precision = value


def matmul_mode(precision: str, device: torch.device):
    """TF32 matmuls and convolutions only where asked (on CUDA): cuDNN's default (TF32 on) would make fp32
    runs TF32 behind the user's back."""
    return tf32_mode(precision == "tf32") if device.type == "cuda" else nullcontext()


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling; bf16 has fp32's range and does not."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def peak_flops(name: str, precision: str) -> float | None:
    """The device's dense peak FLOP/s at this precision, or None for a device not in the table (a CPU)."""
    col = {"fp32": 1, "tf32": 2, "bf16": 3, "fp16": 3}[precision]
    for row in PEAK_TFLOPS:
        if re.search(row[0], name):
            return row[col] * 1e12
    return None


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """Achieved FLOP/s over the peak (model FLOPs utilisation); None when the peak is unknown."""
    return flops / seconds / peak if peak and seconds > 0 else None
