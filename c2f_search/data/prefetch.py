"""Batches from a feature source to the device, in the order asked for.

``host_batches`` is the plain path: (features, frame counts, targets) per list of indices, on the
CPU. ``Prefetcher`` runs that path in a background thread, a few batches ahead: on CUDA the store's
rows are gathered straight into reused pinned buffers (``PinnedRing``: one host copy, not a gather and
then a pin) and copied on a side stream, so the copy overlaps the step before it. Everything
random (SpecAugment, mixup) happens later on the device, in the run's own RNG stream, so the
thread changes nothing but when the batches arrive.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

import numpy as np
import torch

_END = object()


def host_batches(feats, targets: torch.Tensor, index_batches: Iterable, out=None) -> Iterator[tuple]:
    """(x, n_frames, y) CPU tensors per index batch, in order; x in the store's dtype, gathered into
    the arrays `out(shape, dtype)` gives (a ``PinnedRing``) where given."""
    index_batches = list(index_batches)
    gathered = feats.batches(index_batches, out) if out else feats.batches(index_batches)
    for idx, (x, n) in zip(index_batches, gathered):
        yield x, n, targets[torch.as_tensor(idx, dtype=torch.long)]


class PinnedRing:
    """`size` host buffers per shape, handed out in turn to gather batches into. A buffer is handed out
    again only once the copy that read it has finished (``release`` gives that copy's event), so the
    loader writes over nothing still on its way to the device. Pinned on CUDA (plain memory elsewhere,
    for tests)."""

    def __init__(self, size: int, pin: bool):
        self.size, self.pin = size, pin
        self.buffers: dict[tuple, list] = {}  # (shape, dtype) -> [[array, event or None], ...]
        self.turn: dict[tuple, int] = {}
        self.last = None
        self.allocated = 0

    def __call__(self, shape, dtype):
        key = (tuple(shape), str(dtype))
        ring = self.buffers.setdefault(key, [])
        k = self.turn.get(key, 0)
        self.turn[key] = (k + 1) % self.size
        if k == len(ring):  # the first turns fill the ring
            t = torch.from_numpy(np.empty(shape, dtype))
            ring.append([(t.pin_memory() if self.pin else t).numpy(), None])
            self.allocated += 1
        entry = ring[k]
        if entry[1] is not None:
            entry[1].synchronize()  # the copy of this buffer's last batch has finished
        self.last = entry
        return entry[0]

    def release(self, event) -> None:
        """The copy of the buffer handed out last is queued; `event` marks its end."""
        if self.last is not None:
            self.last[1], self.last = event, None


class Prefetcher:
    """Iterate the batches of `batches` on `device`, gathered `depth` ahead by a background thread.
    A failure in the thread is raised here, at the batch it hit; ``close()`` (or leaving the
    ``with`` block) stops the thread early."""

    def __init__(
        self,
        batches: Iterable[tuple],
        device: torch.device,
        depth: int = 4,
        side_stream: bool | None = None,
        ring: PinnedRing | None = None,
    ):
        """`side_stream` (default: on CUDA) copies on a side stream and hands each batch over behind an
        event; on the CPU it runs the same steps with torch.cpu's no-op streams and events (tests).
        `ring`: the buffers `batches` gathers into; each copy's event is handed back to it."""
        self.ring = ring
        self.device = device
        self.cuda = device.type == "cuda"
        self.streams = torch.cuda if self.cuda else torch.cpu
        side_stream = self.cuda if side_stream is None else side_stream
        self.stream = (torch.cuda.Stream(device) if self.cuda else torch.cpu.Stream()) if side_stream else None
        self.q: queue.Queue = queue.Queue(depth)
        self.stop = threading.Event()
        self.done = False
        self.thread = threading.Thread(target=self._fill, args=(batches,), daemon=True, name="c2f-prefetch")
        self.thread.start()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, batches) -> None:
        try:
            for b in batches:
                event = None
                if self.stream is not None:
                    with self.streams.stream(self.stream):
                        b = tuple(
                            (t.pin_memory() if self.cuda and not t.is_pinned() else t).to(
                                self.device, non_blocking=True
                            )
                            for t in b
                        )
                        event = self.streams.Event()
                        event.record(self.stream)
                    if self.ring is not None:
                        self.ring.release(event)
                if not self._put((b, event)):
                    return
            self._put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(e)

    def __iter__(self):
        return self

    def __next__(self) -> tuple:
        if self.done:
            raise StopIteration
        item = self.q.get()
        if item is _END:
            self.done = True
            self.thread.join()
            raise StopIteration
        if isinstance(item, BaseException):
            self.done = True
            self.close()
            raise item
        b, event = item
        if event is not None:  # the step's stream waits for the copy, and owns the memory from now on
            cur = self.streams.current_stream(self.device)
            cur.wait_event(event)
            for t in b:
                if self.cuda:  # CPU tensors have no stream to record
                    t.record_stream(cur)
        return b

    def close(self) -> None:
        self.stop.set()
        self.thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
