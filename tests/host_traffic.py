"""A checker for code that must not make the host wait: run it on a tensor of another device (the meta
device stands in for a GPU on a CPU machine) inside ``HostTraffic`` and read ``events``.

It records every op that touches a CPU tensor (a tensor made on the host, e.g. a random draw without
``device=``, or one copied to the device from pageable memory), every op that reads a device value back
(``.item()``, ``nonzero``, ``masked_select``), and every call of ``torch.cuda.synchronize``. On CUDA each of
these blocks the host or puts a copy on the step's path."""

from __future__ import annotations

from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
READ_BACK = {
    aten._local_scalar_dense.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten.is_nonzero.default,
}


class HostTraffic(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.events: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in READ_BACK:  # recorded before the call: a meta tensor has no value to read
            self.events.append(f"{func}: reads a device value back to the host")
        out = func(*args, **kwargs)
        on_host = [
            t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor) and t.device.type == "cpu"
        ]
        if on_host:
            self.events.append(f"{func}: touches a CPU tensor of shape {tuple(on_host[0].shape)}")
        return out

    def __enter__(self):
        real = torch.cuda.synchronize

        def counted(*a, **k):
            self.events.append("torch.cuda.synchronize")
            return real(*a, **k)

        self._patch = mock.patch.object(torch.cuda, "synchronize", counted)
        self._patch.start()
        return super().__enter__()

    def __exit__(self, *exc):
        self._patch.stop()
        return super().__exit__(*exc)
