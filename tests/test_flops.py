from c2f_search import train_flops
from c2f_search.geometry import Geometry
from c2f_search.transfer import build_for_phase


def _flops(T, depth=2, d_model="ast-tiny"):
    return train_flops(build_for_phase(d_model, {"num_classes": 10, "depth": depth}, "none", 1, Geometry(64, T)))


def test_attention_term_is_counted():
    # 4 freq tokens x 2 or 4 time tokens (+1 cls): N = 9 and 17
    d, L = 192, 2
    n1, n2 = 4 * 2 + 1, 4 * 4 + 1
    diff = _flops(64) - _flops(32)
    # forward per layer: 24 N d^2 (linear) + 4 N^2 d (attention); backward = 2x forward
    linear = 3 * L * 24 * d * d * (n2 - n1)
    attn = 3 * L * 4 * d * (n2 ** 2 - n1 ** 2)
    patch = 2 * (2 * 16 * 16 * d * (16 - 8))  # conv: forward + weight grad (the input needs no grad)
    assert abs(diff - (linear + attn + patch)) / diff < 0.01
    assert diff - linear - patch > 0.9 * attn  # without attention the count would miss this


def test_matches_measured_vit_base_counts():
    for T, g in ((1024, 290.9), (512, 138.5), (256, 67.7)):
        f = train_flops(build_for_phase("ast-base", {"num_classes": 527}, "none", 1, Geometry(128, T), device="meta")) / 1e9
        assert abs(f - g) < 0.1, (T, f)
