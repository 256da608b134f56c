"""HTS-AT, CNN14 and SSAST: shapes, phase transitions that lose no parameter, FLOPs that follow the
token or frame ratio, methods a family refuses."""

import pytest
import torch
import torch.nn.functional as F

from c2f_search import Geometry, Run, TrainConfig, eval_flops, train_flops, transfer_weights
from c2f_search.compress import get_method
from c2f_search.errors import ConfigError, ScheduleError
from c2f_search.models import get_family
from c2f_search.models.flops import masked_patch_flops
from c2f_search.models.phase import build_for_phase
from c2f_search.objectives.masked_patch import cluster_masks
from c2f_search.validate import validate

FULL = Geometry(64, 256)


def _carry(model, method, C, full=FULL):
    return transfer_weights(model, get_method(method).geometry(C, full), method)


# ----------------------------------------------------------------------------------------- HTS-AT
def test_htsat_folds_time_into_the_image_and_a_compressed_input_has_fewer_tokens():
    from c2f_search.models.htsat import HTSAT

    x = torch.arange(2 * 64 * 1024, dtype=torch.float32).reshape(2, 64, 1024)
    img = HTSAT.fold(x)
    assert img.shape == (2, 1, 256, 256)  # 4 chunks of 256 frames stacked along frequency, as HTS-AT
    for r in range(4):
        assert torch.equal(img[:, 0, r * 64 : (r + 1) * 64], x[:, :, r * 256 : (r + 1) * 256])
    full = build_for_phase("htsat", {"num_classes": 527}, "none", 1, Geometry(64, 1024), device="meta")
    half = build_for_phase("htsat", {"num_classes": 527}, "fshift", 2, Geometry(64, 1024), device="meta")
    assert full.swin.patch_embed.img_size == (256, 256) and full.token_grid == (64, 64)
    assert half.swin.patch_embed.img_size == (256, 128) and half.token_grid == (64, 32)  # not stretched back
    assert full.head.kernel_size == (2, 3)  # HTS-AT's token-semantic head: Conv2d(768, classes, (2, 3))
    assert [len(s.blocks) for s in full.swin.layers] == [2, 2, 6, 2] and full.swin.embed_dim == 96
    assert full.swin.layers[0].blocks[0].window_size == (8, 8)
    m = build_for_phase("htsat-tiny", {"num_classes": 5, "depth": 1}, "fshift", 2, FULL)
    assert m(torch.randn(3, 64, 128)).shape == (3, 5)


@pytest.mark.filterwarnings("ignore::UserWarning")  # timm's interpolator, called here directly
@pytest.mark.parametrize("method, C", [("fshift", 4), ("avgpool", 2), ("patch-pi", 2), ("patch-bl", 4)])
def test_htsat_transition_keeps_every_parameter(method, C):
    from timm.layers import resize_rel_pos_bias_table

    torch.manual_seed(0)
    m = build_for_phase("htsat-tiny", {"num_classes": 5}, method, C, FULL)
    new = _carry(m, method, 1)
    old_sd, new_sd = m.state_dict(), new.state_dict()
    assert set(old_sd) == set(new_sd)  # loaded strictly: nothing lost, nothing new
    moved = 0
    for k, v in old_sd.items():
        if k.endswith("relative_position_bias_table") and v.shape != new_sd[k].shape:
            attn_old, attn_new = m.get_submodule(k.rpartition(".")[0]), new.get_submodule(k.rpartition(".")[0])
            want = resize_rel_pos_bias_table(
                v,
                new_window_size=attn_new.window_size,
                old_window_size=attn_old.window_size,
                new_bias_shape=new_sd[k].shape,
            )
            assert torch.allclose(new_sd[k], want) and torch.isfinite(new_sd[k]).all()
            moved += 1
        elif k == "swin.patch_embed.proj.weight" and C > 1 and method.startswith("patch"):
            assert torch.allclose(new_sd[k], get_method(method).resize_kernel(v, (4, 4)))
        else:
            assert torch.equal(v, new_sd[k]), k
    assert moved > 0  # the coarse phase clipped windows to its narrower grid: their tables were resampled
    assert new.token_grid == (64, 16) and not any(p.is_meta for p in new.parameters())
    assert not any(b.is_meta for b in new.buffers())  # Swin's masks and index tables rebuilt
    assert new(torch.randn(2, 64, 256)).shape == (2, 5)


def test_htsat_forward_flops_match_the_formula_window_attention_included():
    m = build_for_phase("htsat-tiny", {"num_classes": 10, "depth": 1}, "none", 1, FULL, device="meta")
    K = 10

    def block(N, d, area):  # qkv, proj, MLP; q@k and attn@v over each token's window
        return 2 * N * d * 3 * d + 2 * N * d * d + 2 * N * d * 8 * d + 4 * N * area * d

    N0, d0, N1, d1 = 64 * 16, 32, 32 * 8, 64  # stage grids 64x16 and 32x8, windows 8x8
    attention = 4 * N0 * 64 * d0 + 4 * N1 * 64 * d1
    expected = (
        2 * N0 * d0 * 16 + block(N0, d0, 64) + 2 * N1 * 4 * d0 * d1 + block(N1, d1, 64) + 2 * K * d1 * 8 * 3 * 32
    )  # patch conv, stages, patch merging, head Conv2d(64, 10, (8, 3)) x 32
    assert eval_flops(m) == expected and attention > 0.15 * expected


def test_htsat_trains_coarse_to_fine_and_resumes(tiny_data):
    cfg = TrainConfig(
        "fshift:2x1,1x1", model="htsat-tiny", model_kwargs={"depth": 1}, batch_size=8, lr=1e-3, warmup_steps=0
    )
    run = Run(cfg, tiny_data, "cpu")
    it = run.records()
    first = next(it)
    assert first["C"] == 2 and run.model.token_grid == (64, 8)
    state = run.state_dict()
    rest = list(it)
    resumed = Run(cfg, tiny_data, "cpu", state=state)  # rebuilt from a state: buffers are not in it
    assert [r["val_metric"] for r in resumed.records()] == [r["val_metric"] for r in rest]


# ------------------------------------------------------------------------------------------ CNN14
def test_cnn14_is_panns_size_and_its_flops_are_its_convolutions():
    m = build_for_phase("cnn14", {"num_classes": 527}, "none", 1, Geometry(64, 1024), device="meta")
    assert abs(sum(p.numel() for p in m.parameters()) / 1e6 - 80.75) < 0.01  # PANNs: 80.8M
    widths, (T, Fm), expected = (1, 64, 128, 256, 512, 1024, 2048), (1024, 64), 0
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        expected += 2 * 9 * (a * b + b * b) * T * Fm
        if i < 5:
            T, Fm = T // 2, Fm // 2
    expected += 2 * 2048 * 2048 + 2 * 2048 * 527
    assert eval_flops(m) == expected


@pytest.mark.parametrize("method, C", [("avgpool", 2), ("maxpool", 4), ("fshift", 2)])
def test_cnn14_transition_is_a_plain_copy(method, C):
    m = build_for_phase("cnn14-tiny", {"num_classes": 5}, method, C, FULL)
    new = _carry(m, method, 1)
    assert all(torch.equal(v, new.state_dict()[k]) for k, v in m.state_dict().items())
    assert new.geometry == FULL and new(torch.randn(2, 64, 256)).shape == (2, 5)


def test_cnn14_refuses_the_patch_methods(tiny_data):
    for method in ("patch-pi", "patch-bl"):
        with pytest.raises(ScheduleError, match=f"cnn14-tiny .*does not support .*{method}.*avgpool"):
            Run(TrainConfig(f"{method}:2x1,1x1", model="cnn14-tiny"), tiny_data, "cpu")
    with pytest.raises(ConfigError, match="depth: cnn14-tiny does not take this setting"):
        validate(TrainConfig("none:1x1", model="cnn14-tiny", model_kwargs={"depth": 2}))


# -------------------------------------------------------------------------------- every family
@pytest.mark.parametrize(
    "name, mel, frames",
    [
        ("htsat", 64, 1024),
        ("cnn14", 64, 1024),
        ("ast-base", 128, 1024),
        ("ssast-base", 128, 1024),
        ("htsat-tiny", 64, 256),
    ],
)
def test_flops_across_C_follow_the_token_or_frame_ratio(name, mel, frames):
    full = Geometry(mel, frames)
    f1, f2, f4 = (
        train_flops(build_for_phase(name, {"num_classes": 10}, "fshift", C, full, device="meta")) for C in (1, 2, 4)
    )
    if name.startswith("cnn14"):  # convolutions: linear in frames
        assert f2 / f1 == pytest.approx(1 / 2, abs=0.002) and f4 / f1 == pytest.approx(1 / 4, abs=0.002)
    else:  # linear layers follow the tokens; attention over fewer tokens (or clipped windows) costs less still
        for ratio, C in ((f2 / f1, 2), (f4 / f1, 4)):
            assert 0.85 / C < ratio <= 1 / C + 1e-3, (name, C, ratio)


def test_pretraining_flops_follow_the_token_ratio():
    full = Geometry(128, 1024)
    fl = {
        C: masked_patch_flops(
            build_for_phase("ssast-base", {"num_classes": 1}, "fshift", C, full, device="meta"), round(400 / C), True
        )
        for C in (1, 2, 4)
    }
    assert 0.9 / 2 < fl[2] / fl[1] <= 1 / 2 and 0.9 / 4 < fl[4] / fl[1] <= 1 / 4
    assert fl[1] > train_flops(build_for_phase("ssast-base", {"num_classes": 1}, "none", 1, full, device="meta"))


# ------------------------------------------------------------------------------------------ SSAST
def test_ssast_targets_are_the_patches_in_token_order():
    m = build_for_phase("ssast-tiny", {"num_classes": 1, "depth": 1}, "none", 1, FULL)
    x = torch.randn(2, 64, 256)
    t = m.patch_targets(x)
    assert t.shape == (2, 4 * 16, 256)
    assert torch.equal(t[:, 1 * 16 + 5], x[:, 16:32, 80:96].reshape(2, -1))  # token (freq 1, time 5)
    stretched = build_for_phase("ssast-tiny", {"num_classes": 1, "depth": 1}, "patch-pi", 2, FULL)
    pooled = F.avg_pool2d(x.unsqueeze(1), (1, 2)).squeeze(1)  # a 16 x 32 patch, averaged to 16 x 16
    assert torch.allclose(stretched.patch_targets(x)[:, 3], pooled[:, 0:16, 48:64].reshape(2, -1))


def test_ssast_replaces_masked_patches_by_the_mask_embedding():
    torch.manual_seed(0)
    m = build_for_phase("ssast-tiny", {"num_classes": 1, "depth": 1}, "none", 1, FULL).eval()
    seen = {}
    m.vit.blocks[0].register_forward_pre_hook(lambda mod, args: seen.update(x=args[0]))
    idx = torch.tensor([[0, 5, 17], [3, 4, 60]])
    loss, acc = m.masked_patch_loss(torch.randn(2, 64, 256), idx)
    pos = m.vit.pos_embed[0, 2:]
    for b in range(2):
        assert torch.allclose(seen["x"][b, 2 + idx[b]], m.mask_embed[0] + pos[idx[b]], atol=1e-6)
        kept = [i for i in range(64) if i not in idx[b]]
        assert not torch.allclose(seen["x"][b, 2 + kept[0]], m.mask_embed[0, 0] + pos[kept[0]])
    assert torch.isfinite(loss) and 0 <= float(acc) <= 1


def test_mask_count_scales_with_the_tokens_where_ssast_could_never_finish():
    """128 mel x 1024 frames: 512 patches, SSAST masks 400. At C=2 there are 256: SSAST's loop would
    draw for ever; here the count scales to 200, and an impossible count is an error, not a hang."""
    from c2f_search.objectives.masked_patch import MaskedPatch

    full = Geometry(128, 1024)
    half = build_for_phase("ssast-base", {"num_classes": 1}, "fshift", 2, full, device="meta")
    assert half.token_grid == (8, 32)

    class _Data:  # what an objective reads of the data
        num_classes, multilabel = 1, False

    ob = MaskedPatch(TrainConfig("fshift:2x1,1x1", model="ssast-base", objective="masked-patch"), _Data(), full)
    assert ob.full_masked == 400 and ob.masked(half) == 200
    masks = cluster_masks(half.token_grid, 200, 4, "cpu", torch.Generator().manual_seed(0))
    assert masks.shape == (4, 200) and all(len(set(r.tolist())) == 200 for r in masks) and masks.max() < 256
    with pytest.raises(ConfigError, match="cannot mask 400 of the 256 patches"):
        cluster_masks(half.token_grid, 400, 1)


def test_pretraining_at_C2_runs_with_a_count_the_coarse_phase_cannot_hold(tiny_data):
    # 64 patches at full resolution, 50 masked; the C=2 phase has 32 patches and masks 25
    cfg = TrainConfig(
        "fshift:2x1,1x1",
        model="ssast-tiny",
        model_kwargs={"depth": 1},
        objective="masked-patch",
        mask_patches=50,
        batch_size=8,
        lr=1e-3,
        warmup_steps=0,
    )
    run = Run(cfg, tiny_data, "cpu")
    recs = []
    for rec in run.records():
        recs.append((rec["C"], run.objective.masked(run.model), rec["metric_name"], rec["val_metric"]))
    assert [r[:3] for r in recs] == [(2, 25, "masked_patch_accuracy"), (1, 50, "masked_patch_accuracy")]
    assert all(0 <= r[3] <= 1 for r in recs)
    with pytest.raises(ConfigError, match="mask_patches: 65 is more than the 64 patches"):
        Run(
            TrainConfig(
                "fshift:2x1,1x1",
                model="ssast-tiny",
                model_kwargs={"depth": 1},
                objective="masked-patch",
                mask_patches=65,
            ),
            tiny_data,
            "cpu",
        )
    with pytest.raises(ConfigError, match="ast-tiny cannot be pretrained"):
        Run(
            TrainConfig("none:1x1", model="ast-tiny", model_kwargs={"depth": 1}, objective="masked-patch"),
            tiny_data,
            "cpu",
        )


def test_an_ssast_encoder_starts_an_ast_and_an_ssast_model(tmp_path):
    src = build_for_phase("ssast-tiny", {"num_classes": 1, "depth": 2}, "fshift", 2, FULL)
    state = {
        "model": src.state_dict(),
        "model_name": "ssast-tiny",
        "model_kwargs": src.model_kwargs,
        "geometry": src.geometry.as_dict(),
    }
    for name, kw in (("ssast-tiny", {}), ("ast-tiny", {"dist_token": True})):
        m = build_for_phase(name, {"num_classes": 7, "depth": 2, **kw}, "none", 1, FULL)
        get_family(m).init_from_run(m, state, "final.pt")
        assert torch.equal(m.vit.blocks[1].mlp.fc1.weight, src.vit.blocks[1].mlp.fc1.weight)
        assert m.vit.pos_embed.shape == (1, 2 + 64, 192)
    cnn = build_for_phase("cnn14-tiny", {"num_classes": 7}, "none", 1, FULL)
    with pytest.raises(Exception, match="cannot start from"):
        get_family(cnn).init_from_run(cnn, state, "final.pt")


def test_the_distillation_token_moves_between_ssast_and_ast_at_init():
    """SSAST has DeiT's distillation token, a plain AST has not: --init drops it (and its position
    embedding) one way and starts it as the class token the other way, as from a DeiT file."""
    src = build_for_phase("ssast-tiny", {"num_classes": 1, "depth": 1}, "none", 1, FULL)
    state = {
        "model": src.state_dict(),
        "model_name": "ssast-tiny",
        "model_kwargs": src.model_kwargs,
        "geometry": src.geometry.as_dict(),
    }
    ast = build_for_phase("ast-tiny", {"num_classes": 7, "depth": 1}, "none", 1, FULL)
    get_family(ast).init_from_run(ast, state, "final.pt")
    assert not hasattr(ast.vit, "dist_token") and ast.vit.pos_embed.shape == (1, 1 + 64, 192)
    assert torch.equal(ast.vit.pos_embed[:, 0], src.vit.pos_embed[:, 0])  # the class token's
    assert torch.equal(ast.vit.pos_embed[:, 1:], src.vit.pos_embed[:, 2:])  # the patches' (same grid)
    assert torch.equal(ast.vit.cls_token, src.vit.cls_token)
    back = {
        "model": ast.state_dict(),
        "model_name": "ast-tiny",
        "model_kwargs": ast.model_kwargs,
        "geometry": ast.geometry.as_dict(),
    }
    deit = build_for_phase("ast-tiny", {"num_classes": 7, "depth": 1, "dist_token": True}, "none", 1, FULL)
    get_family(deit).init_from_run(deit, back, "final.pt")
    assert torch.equal(deit.vit.dist_token, ast.vit.cls_token)
    assert torch.equal(deit.vit.pos_embed[:, 1], ast.vit.pos_embed[:, 0])
