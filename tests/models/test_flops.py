from c2f_search import train_flops
from c2f_search.geometry import Geometry
from c2f_search.models.phase import build_for_phase


def _flops(T, depth=2, d_model="ast-tiny"):
    return train_flops(build_for_phase(d_model, {"num_classes": 10, "depth": depth}, "none", 1, Geometry(64, T)))


def test_attention_term_is_counted():
    # 4 freq tokens x 2 or 4 time tokens (+1 cls): N = 9 and 17
    d, L = 192, 2
    n1, n2 = 4 * 2 + 1, 4 * 4 + 1
    diff = _flops(64) - _flops(32)
    # forward per layer: 24 N d^2 (linear) + 4 N^2 d (attention); backward = 2x forward
    linear = 3 * L * 24 * d * d * (n2 - n1)
    attn = 3 * L * 4 * d * (n2**2 - n1**2)
    patch = 2 * (2 * 16 * 16 * d * (16 - 8))  # conv: forward + weight grad (the input needs no grad)
    assert abs(diff - (linear + attn + patch)) / diff < 0.01
    assert diff - linear - patch > 0.9 * attn  # without attention the count would miss this


def test_matches_measured_vit_base_counts():
    for T, g in ((1024, 290.9), (512, 138.5), (256, 67.7)):
        f = (
            train_flops(build_for_phase("ast-base", {"num_classes": 527}, "none", 1, Geometry(128, T), device="meta"))
            / 1e9
        )
        assert abs(f - g) < 0.1, (T, f)


def test_a_patchout_step_counts_the_kept_tokens():
    """ast-tiny, depth 2, 64 mel x 64 frames: a 4 x 4 grid (16 patches + 1 cls)."""
    from c2f_search.compress import get_method
    from c2f_search.models.flops import kept_tokens

    d, L = 192, 2
    full = build_for_phase("ast-tiny", {"num_classes": 10, "depth": L}, "tpatchout", 2, Geometry(64, 64), device="meta")
    K = kept_tokens(full, get_method("tpatchout"), 2)
    assert K == 8  # 2 of the 4 time columns, every row
    n, n_kept = 16 + 1, K + 1
    # every linear layer and the attention of each block see the kept tokens: per block and token 24 d^2,
    # per block 4 N^2 d forward; backward twice the forward
    analytic = 3 * L * (24 * d * d * (n - n_kept) + 4 * d * (n**2 - n_kept**2))
    assert train_flops(full) - train_flops(full, K) == analytic
    # the patch embedding still sees every patch, the encoder K tokens: a model whose grid has K tokens,
    # plus the convolution over the dropped patches (forward + weight grad)
    small = build_for_phase("ast-tiny", {"num_classes": 10, "depth": L}, "none", 1, Geometry(64, 32), device="meta")
    assert train_flops(full, K) == train_flops(small) + 2 * (2 * 16 * 16 * d * (16 - 8))
    # C = 1 of a token-dropping method is the full model
    assert kept_tokens(full, get_method("tpatchout"), 1) is None
