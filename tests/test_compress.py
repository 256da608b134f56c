import torch
import torch.nn.functional as F

from c2f_search import compress
from c2f_search.compress import get_method, list_methods
from c2f_search.compress._pool import pool_time
from c2f_search.geometry import Geometry
from c2f_search.frontend import FrontEnd, fbank, fit_length


def test_pool_equals_pooling_each_clip_before_padding():
    torch.manual_seed(0)
    T, C = 32, 4
    lengths = [32, 30, 17, 5]
    raw = [torch.randn(8, n) - 5 for n in lengths]  # negative like log-mel, so padding zeros would win a max
    batch = torch.stack([F.pad(r, (0, T - r.shape[1])) for r in raw])
    n = torch.tensor(lengths)
    for mode, ref_fn in (("avg", F.avg_pool1d), ("max", F.max_pool1d)):
        out = pool_time(batch, n, C, mode)
        assert out.shape == (4, 8, T // C)
        for b, r in enumerate(raw):
            ref = ref_fn(r[None], C, C, ceil_mode=True)[0]
            k = ref.shape[1]
            assert torch.allclose(out[b, :, :k], ref, atol=1e-6), (mode, b)
            assert (out[b, :, k:] == 0).all()


def test_compress_dispatch_only_changes_pool_inputs():
    x, n = torch.randn(2, 4, 16), torch.tensor([16, 16])
    assert compress("fshift", 2, x, n) is x
    assert compress("patch-pi", 4, x, n) is x
    assert compress("maxpool", 2, x, n).shape == (2, 4, 8)


def test_fshift_frames_match_ast_counts():
    fe = FrontEnd()
    wav = torch.randn(1, 160000)  # 10 s at 16 kHz
    assert [fbank(wav, fe, 10.0 * C).shape[0] for C in (1, 2, 4)] == [998, 499, 250]
    x, n = fit_length(fbank(wav, fe), 1024)
    assert x.shape == (1024, 128) and n == 998 and (x[998:] == 0).all()


def test_geometry_per_method():
    full = Geometry(128, 1024)
    assert get_method("fshift").geometry(4, full) == Geometry(128, 256)
    assert get_method("avgpool").geometry(2, full) == Geometry(128, 512)
    assert get_method("patch-bl").geometry(4, full) == Geometry(128, 1024, time_stretch=4)
    assert get_method("none").geometry(1, full) == full


def test_method_contract_per_method():
    assert list_methods() == ["avgpool", "fshift", "maxpool", "none", "patch-bl", "patch-pi"]
    fs, ap, pb = get_method("fshift"), get_method("avgpool"), get_method("patch-pi")
    assert (fs.frame_shift(10.0, 4), fs.feature_length(1024, 4), fs.time_mask_scale(4)) == (40.0, 256, 4)
    assert (ap.frame_shift(10.0, 4), ap.feature_length(1024, 4), ap.time_mask_scale(4)) == (10.0, 1024, 4)
    assert (pb.frame_shift(10.0, 4), pb.feature_length(1024, 4), pb.time_mask_scale(4)) == (10.0, 1024, 1)
    from c2f_search.geometry import Capability
    assert pb.needs == {Capability.STRETCHED_PATCH} and fs.needs == ap.needs == {Capability.SHORTER_INPUT}
    assert get_method("none").needs == frozenset()
    assert not get_method("none").compresses and fs.compresses
