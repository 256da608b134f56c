import pytest
import torch
import torch.nn.functional as F

from c2f_search import Geometry, transfer_weights
from c2f_search.compress import get_method
from c2f_search.errors import C2FError
from c2f_search.models import get_family
from c2f_search.models.phase import build_for_phase

KW = {"num_classes": 5, "depth": 2}
FULL = Geometry(64, 256)


def _carry(model, method, C):
    return transfer_weights(model, get_method(method).geometry(C, FULL), method)


@pytest.mark.parametrize("method, C", [("fshift", 4), ("avgpool", 2), ("patch-pi", 4), ("patch-bl", 2)])
def test_transition_keeps_every_parameter(method, C):
    torch.manual_seed(0)
    m = build_for_phase("ast-tiny", KW, method, C, FULL)
    new = _carry(m, method, 1)
    old_sd, new_sd = m.state_dict(), new.state_dict()
    assert set(old_sd) == set(new_sd)
    assert new.token_grid == (4, 16) and new.geometry == FULL
    changed = {"vit.pos_embed", "vit.patch_embed.proj.weight"}
    for k in old_sd:
        if k not in changed:
            assert torch.equal(old_sd[k], new_sd[k]), k
    assert new(torch.randn(2, 64, 256)).shape == (2, 5)
    # prefix (cls) position embedding is carried as it is
    assert torch.equal(old_sd["vit.pos_embed"][:, :1], new_sd["vit.pos_embed"][:, :1])
    assert not any(p.is_meta for p in new.parameters())


def test_pos_embed_is_bilinear_along_time_and_shapes_follow_grid():
    m = build_for_phase("ast-tiny", {**KW, "dist_token": True}, "fshift", 4, FULL)
    assert m.token_grid == (4, 4) and m.vit.pos_embed.shape == (1, 2 + 16, 192)
    new = _carry(m, "fshift", 2)
    assert new.token_grid == (4, 8) and new.vit.pos_embed.shape == (1, 2 + 32, 192)
    old = m.vit.pos_embed[:, 2:].reshape(1, 4, 4, 192).permute(0, 3, 1, 2)
    ref = F.interpolate(old, size=(4, 8), mode="bilinear", align_corners=False).permute(0, 2, 3, 1).reshape(1, 32, 192)
    assert torch.allclose(new.vit.pos_embed[:, 2:], ref, atol=1e-6)


def test_patch_methods_move_the_kernel_their_own_way():
    torch.manual_seed(0)
    m = build_for_phase("ast-tiny", KW, "patch-pi", 2, FULL)
    w = m.vit.patch_embed.proj.weight
    assert w.shape[-2:] == (16, 32)
    pi = _carry(m, "patch-pi", 1).vit.patch_embed.proj.weight
    bl = _carry(m, "patch-bl", 1).vit.patch_embed.proj.weight
    assert torch.allclose(pi, get_method("patch-pi").resize_kernel(w, (16, 16)))
    assert torch.allclose(bl, F.interpolate(w, size=(16, 16), mode="bilinear", align_corners=False))
    assert not torch.allclose(pi, bl)


def test_pi_resize_preserves_tokens_of_an_upsampled_patch():
    torch.manual_seed(0)
    w = torch.randn(192, 1, 16, 16)
    patch = torch.randn(3, 1, 16, 16)
    big_w = get_method("patch-pi").resize_kernel(w, (16, 32))
    big_patch = F.interpolate(patch, size=(16, 32), mode="bilinear", align_corners=False)
    tok = torch.einsum("dchw,bchw->bd", w, patch)
    tok_big = torch.einsum("dchw,bchw->bd", big_w, big_patch)
    assert torch.allclose(tok, tok_big, rtol=1e-3, atol=1e-3)
    # a plain bilinear kernel resize does not: tokens scale by about C
    bl = torch.einsum("dchw,bchw->bd", get_method("patch-bl").resize_kernel(w, (16, 32)), big_patch)
    assert not torch.allclose(tok, bl, rtol=1e-2, atol=1e-2)


def test_init_from_a_local_deit_checkpoint(tmp_path):
    import timm

    src = timm.create_model("deit_tiny_patch16_224", pretrained=False)  # random weights, built locally
    torch.save(src.state_dict(), tmp_path / "deit.pth")
    m = build_for_phase("ast-tiny", {"num_classes": 5}, "fshift", 2, FULL)
    get_family(m).load_init(m, tmp_path / "deit.pth")
    assert torch.allclose(m.vit.patch_embed.proj.weight, src.patch_embed.proj.weight.sum(1, keepdim=True))
    assert torch.equal(m.vit.blocks[3].mlp.fc1.weight, src.blocks[3].mlp.fc1.weight)
    assert torch.equal(m.vit.pos_embed[:, :1], src.pos_embed[:, :1])  # cls position kept
    assert m.vit.pos_embed.shape == (1, 1 + 4 * 8, 192)
    with pytest.raises(C2FError, match="no such checkpoint file"):
        get_family(m).load_init(m, tmp_path / "missing.pth")


def test_init_from_a_c2f_checkpoint_of_another_geometry(tmp_path):
    from c2f_search import save_checkpoint

    src = build_for_phase("ast-tiny", {"num_classes": 7, "depth": 2}, "patch-pi", 2, Geometry(64, 128))
    save_checkpoint(
        {
            "model": src.state_dict(),
            "model_name": "ast-tiny",
            "model_kwargs": src.model_kwargs,
            "geometry": src.geometry.as_dict(),
        },
        tmp_path / "final.pt",
    )
    m = build_for_phase("ast-tiny", {"num_classes": 5, "depth": 2}, "none", 1, FULL)  # other classes, grid, patch
    head_before = m.head[1].weight.clone()
    get_family(m).load_init(m, tmp_path / "final.pt")
    assert torch.equal(m.vit.blocks[1].attn.qkv.weight, src.vit.blocks[1].attn.qkv.weight)
    assert torch.allclose(
        m.vit.patch_embed.proj.weight, get_method("patch-pi").resize_kernel(src.vit.patch_embed.proj.weight, (16, 16))
    )
    ref = (
        F.interpolate(
            src.vit.pos_embed[:, 1:].reshape(1, 4, 4, 192).permute(0, 3, 1, 2),
            size=(4, 16),
            mode="bilinear",
            align_corners=False,
        )
        .permute(0, 2, 3, 1)
        .reshape(1, 64, 192)
    )
    assert torch.allclose(m.vit.pos_embed[:, 1:], ref, atol=1e-6)
    assert torch.equal(m.head[0].weight, src.head[0].weight) and torch.equal(m.head[1].weight, head_before)
    wide = build_for_phase("ast-small", {"num_classes": 5, "depth": 2}, "none", 1, FULL)
    with pytest.raises(C2FError, match="does not fit ast-small"):
        get_family(wide).load_init(wide, tmp_path / "final.pt")


def test_init_from_the_official_ast_format(tmp_path):
    """module.v.* keys, 2 prefix tokens, a 12 x 101 grid (128 mel, 1024 frames, stride 10), 527 classes."""
    torch.manual_seed(0)
    ref = build_for_phase(
        "ast-tiny", {"num_classes": 527, "depth": 1, "dist_token": True}, "none", 1, Geometry(128, 1024)
    )
    sd = {f"module.v.{k[4:]}": v for k, v in ref.state_dict().items() if k.startswith("vit.")}
    sd["module.v.pos_embed"] = torch.randn(1, 2 + 12 * 101, 192)
    sd.update({f"module.mlp_head.{k[5:]}": v for k, v in ref.state_dict().items() if k.startswith("head.")})
    torch.save(sd, tmp_path / "audioset_10_10_0.4593.pth")
    m = build_for_phase("ast-tiny", {"num_classes": 10, "depth": 1}, "fshift", 2, Geometry(128, 512))
    get_family(m).load_init(m, tmp_path / "audioset_10_10_0.4593.pth")
    body = sd["module.v.pos_embed"][:, 2:].reshape(1, 12, 101, 192).permute(0, 3, 1, 2)
    want = (
        F.interpolate(body, size=(8, 16), mode="bilinear", align_corners=False).permute(0, 2, 3, 1).reshape(1, 128, 192)
    )
    assert torch.allclose(m.vit.pos_embed[:, 1:], want, atol=1e-5)
    assert torch.equal(m.vit.pos_embed[:, :1], sd["module.v.pos_embed"][:, :1])  # the cls position
    assert torch.equal(m.vit.blocks[0].mlp.fc2.weight, sd["module.v.blocks.0.mlp.fc2.weight"])
    assert torch.equal(m.head[0].bias, sd["module.mlp_head.0.bias"])  # LayerNorm kept, 527-way Linear not
