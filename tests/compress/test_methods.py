import torch
import torch.nn.functional as F

from c2f_search import compress
from c2f_search.compress import get_method, list_methods
from c2f_search.compress._pool import pool_time
from c2f_search.data.frontend import FrontEnd, fbank, fit_length
from c2f_search.geometry import Geometry


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
    assert list_methods() == [
        "avgpool",
        "fpatchout",
        "fshift",
        "maxpool",
        "none",
        "patch-bl",
        "patch-pi",
        "patchout",
        "tpatchout",
    ]
    fs, ap, pb = get_method("fshift"), get_method("avgpool"), get_method("patch-pi")
    assert (fs.frame_shift(10.0, 4), fs.feature_length(1024, 4), fs.time_mask_scale(4)) == (40.0, 256, 4)
    assert (ap.frame_shift(10.0, 4), ap.feature_length(1024, 4), ap.time_mask_scale(4)) == (10.0, 1024, 4)
    assert (pb.frame_shift(10.0, 4), pb.feature_length(1024, 4), pb.time_mask_scale(4)) == (10.0, 1024, 1)
    from c2f_search.geometry import Capability

    assert pb.needs == {Capability.STRETCHED_PATCH} and fs.needs == ap.needs == {Capability.SHORTER_INPUT}
    assert get_method("none").needs == frozenset()
    assert not get_method("none").compresses and fs.compresses


def _grid(idx, f, t):
    """A (B, f, t) boolean mask of the kept tokens of flat indices `idx` (B, K)."""
    mask = torch.zeros(idx.shape[0], f * t, dtype=torch.bool)
    mask.scatter_(1, idx, True)
    return mask.view(-1, f, t)


def test_structured_patchout_keeps_whole_columns_and_rows():
    f, t, B = 4, 16, 64
    torch.manual_seed(0)
    cols = get_method("tpatchout").keep_index(3, (f, t), B, "cpu")
    rows = get_method("fpatchout").keep_index(2, (f, t), B, "cpu")
    assert cols.shape == (B, f * 5) and rows.shape == (B, 2 * t)  # 16/3 -> 5 columns, 4/2 -> 2 rows
    kept_cols, kept_rows = _grid(cols, f, t), _grid(rows, f, t)
    # a column is kept in every frequency row or in none; a row in every time column or in none
    assert (kept_cols.all(1) == kept_cols.any(1)).all() and (kept_cols.any(1).sum(1) == 5).all()
    assert (kept_rows.all(2) == kept_rows.any(2)).all() and (kept_rows.any(2).sum(1) == 2).all()
    assert len({tuple(r.tolist()) for r in kept_cols.any(1)}) > 1  # drawn per clip
    # indices are distinct and sorted, so each clip gathers every kept token once
    for idx in (cols, rows, get_method("patchout").keep_index(4, (f, t), B, "cpu")):
        assert (idx.diff(dim=1) > 0).all()


def test_patchout_counts_round_and_say_how():
    tp, fp, po = get_method("tpatchout"), get_method("fpatchout"), get_method("patchout")
    assert [tp.kept_tokens(C, (4, 16)) for C in (1, 2, 3, 4, 32)] == [64, 32, 20, 16, 4]
    assert [fp.kept_tokens(C, (4, 16)) for C in (2, 3, 8, 16)] == [32, 16, 16, 16]  # 4/3 -> 1, 4/8 = 0.5 -> 1
    assert po.kept_tokens(3, (8, 64)) == 171 and po.keep_index(3, (8, 64), 2, "cpu").shape == (2, 171)
    assert tp.keep_index(1, (4, 16), 2, "cpu") is None  # C = 1: every token
    assert "keeps 5 of 16 time columns (16/3 = 5.333, rounded to 5)" in tp.describe_keep(3, (4, 16))
    assert "keeps 1 of 4 frequency rows (4/16 = 0.25, at least 1)" in fp.describe_keep(16, (4, 16))
    for m in (tp, fp, po):  # the input and the token grid stay at full resolution
        assert m.geometry(4, Geometry(64, 256)) == Geometry(64, 256) and m.drops_tokens
        assert m.transform(x := torch.randn(2, 64, 256), torch.tensor([256, 256]), 4) is x
        assert (m.frame_shift(10.0, 4), m.feature_length(256, 4), m.time_mask_scale(4)) == (10.0, 256, 1)


def test_keep_draws_come_from_the_installed_generator():
    tp = get_method("tpatchout")
    with torch.random.fork_rng():
        torch.manual_seed(5)
        a = tp.keep_index(2, (4, 16), 8, "cpu")
        torch.manual_seed(5)
        b = tp.keep_index(2, (4, 16), 8, "cpu")
    assert torch.equal(a, b)
