"""GPU-only paths checked on a machine without a GPU (issue 18): no host traffic in the step's input
pipeline (on the meta device, standing in for a GPU), the TF32 settings (reachable without CUDA), the device
a Ray trial picks, the prefetcher's stream path (torch.cpu's no-op streams), fused Adam under a GradScaler,
the recompile-limit warning, and a search's default GPUs on a Ray cluster with a fake GPU."""

import unittest.mock as unittest_mock

import numpy as np
import pytest
import torch

from c2f_search.compress import get_method, list_methods
from c2f_search.data.frontend import add_noise, normalize, spec_augment
from c2f_search.data.prefetch import Prefetcher, host_batches
from c2f_search.objectives.supervised import ClassificationLoss
from c2f_search.train.precision import TF32_SWITCHES, matmul_mode
from c2f_search.train.step import TrainStep, adam, allow_recompiles

from ..host_traffic import HostTraffic

DEVICE = torch.device("meta")  # not the CPU: a tensor made on, or copied from, the host shows up


def _old_add_noise(x, time_scale=1):
    """add_noise as it was before issue 18: shifts drawn on the host and copied to the device."""
    B = x.shape[0]
    x = x + torch.rand_like(x) * torch.rand(B, 1, 1, device=x.device) / 10
    shifts = torch.randint(-10, 10, (B,)).div(time_scale, rounding_mode="floor")
    T = x.shape[-1]
    idx = (torch.arange(T, device=x.device) - shifts.to(x.device)[:, None]) % T
    return x.gather(-1, idx[:, None].expand_as(x))


def test_the_checker_catches_the_old_add_noise():
    with HostTraffic() as h:
        _old_add_noise(torch.empty(4, 64, 256, device=DEVICE), 2)
    assert any("randint" in e for e in h.events) and any("_to_copy" in e for e in h.events)
    with HostTraffic() as h, pytest.raises(RuntimeError):
        torch.ones(2, device=DEVICE).sum().item()  # and a read-back, whatever the device
    assert h.events == ["aten._local_scalar_dense.default: reads a device value back to the host"]


@pytest.mark.parametrize("method", list_methods())
def test_the_steps_input_pipeline_with_noise_makes_no_host_traffic(method):
    """What Run does to every training batch on the device: the method's transform, SpecAugment,
    normalization and AST's noise (the speechcommands recipe)."""
    x = torch.empty(8, 64, 256, device=DEVICE)
    n = torch.full((8,), 256, dtype=torch.int32, device=DEVICE)
    m = get_method(method)
    for C in (1, 2, 4):
        with HostTraffic() as h:
            y = m.transform(x, n, C)
            y = add_noise(normalize(spec_augment(y, 24, 48 // m.time_mask_scale(C)), -4.0, 4.5), m.time_mask_scale(C))
        assert h.events == [], (method, C)
        assert y.device == DEVICE


@pytest.mark.parametrize("method", ["tpatchout", "fpatchout", "patchout"])
def test_token_dropping_draws_and_gathers_with_no_host_traffic(method):
    """The kept tokens are drawn per batch on the device and gathered in the forward: no host sync, and one
    static shape per phase."""
    from c2f_search.geometry import Geometry
    from c2f_search.models.phase import build_for_phase

    model = build_for_phase("ast-tiny", {"num_classes": 10, "depth": 1}, method, 2, Geometry(64, 256), device="meta")
    x = torch.empty(8, 64, 256, device=DEVICE)
    shapes = set()
    for _ in range(3):
        with HostTraffic() as h:
            keep = get_method(method).keep_index(2, model.token_grid, 8, DEVICE)
            logits = model(x, keep=keep)
        assert h.events == [], method
        shapes.add(tuple(keep.shape))
    assert keep.device == DEVICE and len(shapes) == 1 and logits.shape == (8, 10)


def test_add_noise_draws_on_the_cpu_what_it_drew_before():
    x = torch.randn(6, 16, 40)
    for scale in (1, 2, 4):
        torch.manual_seed(scale)
        old = _old_add_noise(x, scale)
        torch.manual_seed(scale)
        assert torch.equal(add_noise(x, scale), old)


@pytest.fixture
def tf32_restored():
    before = tuple(s.fp32_precision for s in TF32_SWITCHES)
    yield before
    for s, v in zip(TF32_SWITCHES, before):
        s.fp32_precision = v


def test_tf32_settings_use_the_new_api_and_are_restored(tf32_restored):
    cuda = torch.device("cuda")  # matmul_mode sets process-wide switches: no GPU needed to reach its CUDA branch
    # another library has set the new API: from here on torch refuses reads of the legacy flag
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    with pytest.raises(RuntimeError, match="legacy and new APIs"):
        _ = torch.backends.cuda.matmul.allow_tf32
    before = tuple(s.fp32_precision for s in TF32_SWITCHES)
    for precision, want in (("fp32", "ieee"), ("tf32", "tf32"), ("bf16", "ieee")):
        with matmul_mode(precision, cuda):
            assert tuple(s.fp32_precision for s in TF32_SWITCHES) == (want,) * 3, precision
        assert tuple(s.fp32_precision for s in TF32_SWITCHES) == before
    with matmul_mode("fp32", torch.device("cpu")):  # the CPU: untouched
        assert tuple(s.fp32_precision for s in TF32_SWITCHES) == before


def test_prefetcher_side_stream_path_with_cpu_streams(tiny_data, monkeypatch):
    """The CUDA path's order of work, with torch.cpu's no-op streams and events: every batch is copied under
    the side stream, its event recorded there, and waited on by the consumer's stream before it is handed
    over. (Pinning and record_stream need CUDA: the GPU benchmark runs them.)"""
    log = []
    record, wait = torch.cpu.Event.record, torch.cpu.Stream.wait_event
    monkeypatch.setattr(
        torch.cpu.Event, "record", lambda e, stream=None: log.append(("record", e, stream)) or record(e, stream)
    )
    monkeypatch.setattr(torch.cpu.Stream, "wait_event", lambda s, e: log.append(("wait", e, s)) or wait(s, e))
    feats = tiny_data.features("train", 20.0, 128)
    targets = tiny_data.targets("train", feats)
    order = list(np.array_split(np.arange(len(feats.kept)), 5))
    plain = list(host_batches(feats, targets, order))
    got = []
    with Prefetcher(host_batches(feats, targets, order), torch.device("cpu"), side_stream=True) as p:
        for b in p:
            got.append(b)
            waits = [e for kind, e, _ in log if kind == "wait"]
            assert len(waits) == len(got)  # this batch's event was waited on before it came out
    records = [(e, s) for kind, e, s in log if kind == "record"]
    assert [e for e, _ in records] == [e for kind, e, _ in log if kind == "wait"]
    assert {s for _, s in records} == {p.stream} and p.stream is not torch.cpu.current_stream()
    assert all(torch.equal(u, v) for a, b in zip(plain, got) for u, v in zip(a, b)) and len(got) == 5


def test_rows_are_gathered_into_reused_buffers_freed_by_their_copy(tiny_data):
    """Issue 18's loader: one host copy per batch, into a ring of buffers, each handed out again only
    after the event of the copy that read it (CPU stand-ins for pinned memory, streams and events)."""
    from c2f_search.data.prefetch import PinnedRing

    feats = tiny_data.features("train", 10.0, 256)
    targets = tiny_data.targets("train", feats)
    order = [np.arange(k, k + 4) for k in range(0, 36, 4)]  # 9 batches of 4
    plain = list(host_batches(feats, targets, order))
    ring = PinnedRing(3, pin=False)
    synced = []
    real = torch.cpu.Event.synchronize
    got = []
    with unittest_mock.patch.object(torch.cpu.Event, "synchronize", lambda e: synced.append(e) or real(e)):
        with Prefetcher(
            host_batches(feats, targets, order, ring), torch.device("cpu"), depth=1, side_stream=True, ring=ring
        ) as p:
            got = [tuple(t.clone() for t in b) for b in p]
    assert all(torch.equal(u, v) for a, b in zip(plain, got) for u, v in zip(a, b)) and len(got) == 9
    assert ring.allocated == 3 and len(synced) == 9 - 3  # every reuse waited for its buffer's last copy


def test_fused_adam_under_a_grad_scaler_skips_an_overflowing_step():
    """fp16 with a GradScaler and fused Adam: an inf gradient leaves every weight as it was and halves the
    scale, on the device (no host check); the next finite step trains."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5))
    cpu = torch.device("cpu")
    opt = adam(model.parameters(), 1e-2, 0.0, (0.9, 0.999), cpu)
    assert opt.defaults["fused"]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    step = TrainStep(model, ClassificationLoss(False), "fp16", cpu, False, scaler)
    x, y = torch.randn(4, 8, 8), torch.tensor([0, 1, 2, 3])
    before = [p.detach().clone() for p in model.parameters()]
    bad = x.clone()
    bad[0, 0, 0] = float("inf")
    step(bad, y, opt)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert scaler.get_scale() == 2.0**9
    loss = step(x, y, opt)
    assert torch.isfinite(loss) and not torch.equal(before[1], model[1].weight)
    assert scaler.get_scale() == 2.0**9  # growth waits 2000 good steps


def test_falling_back_to_eager_is_said_in_one_line(capfd):
    allow_recompiles()
    g = torch.compile(lambda x: x * 2 + 1, backend="eager", dynamic=False)
    with torch._dynamo.config.patch(recompile_limit=2):
        for n in range(2, 7):
            assert torch.equal(g(torch.ones(n)), torch.full((n,), 3.0))
    err = [line for line in capfd.readouterr().err.splitlines() if "recompile" in line]
    assert len(err) == 1 and err[0].startswith("c2f-search: torch.compile reached recompile_limit=2 for '<lambda>'")
    assert "its new shapes run eagerly" in err[0]


def test_allow_recompiles_only_raises_the_limits():
    import torch._dynamo.config as dc

    with dc.patch(recompile_limit=8, accumulated_recompile_limit=256):
        allow_recompiles(300)
        assert (dc.recompile_limit, dc.accumulated_recompile_limit) == (300, 300)
        allow_recompiles(64)
        assert dc.recompile_limit == 300


def test_ssast_masks_are_drawn_on_the_device_without_host_traffic():
    """SSAST pretraining's per-step masks (MaskedPatch.extra): clusters drawn with torch ops on the device."""
    from c2f_search.objectives.masked_patch import cluster_masks

    with HostTraffic() as h:
        m = cluster_masks((8, 32), 200, 16, DEVICE)
    assert h.events == [] and m.shape == (16, 200) and m.device == DEVICE


def test_ssast_masks_come_in_clusters_and_take_exactly_n_distinct_patches():
    from c2f_search.objectives.masked_patch import cluster_masks

    g = torch.Generator().manual_seed(0)
    f, t, n = 12, 101, 300
    masks = cluster_masks((f, t), n, 8, "cpu", g)
    assert all(len(set(r.tolist())) == n and r.tolist() == sorted(r.tolist()) for r in masks)

    def neighbours(rows):  # masked 4-neighbours per masked patch: ~0.8 at random, ~3 in 3x3 to 5x5 clusters
        out = []
        for r in rows:
            s = set(r.tolist())
            out.append(
                sum(
                    (i // t + a) * t + i % t + b in s
                    for i in s
                    for a, b in ((0, 1), (1, 0), (0, -1), (-1, 0))
                    if 0 <= i // t + a < f and 0 <= i % t + b < t
                )
                / len(s)
            )
        return sum(out) / len(out)

    random = torch.stack([torch.randperm(f * t, generator=g)[:n] for _ in range(8)])
    assert neighbours(masks) > 2.5 > 1.2 > neighbours(random)
    assert cluster_masks((4, 4), 16, 2, "cpu", g).tolist() == [list(range(16))] * 2  # every patch
