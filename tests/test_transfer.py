import pytest
import torch
import torch.nn.functional as F

from c2f_search import Phase, transfer_weights
from c2f_search.compress.patch import resize_kernel
from c2f_search.transfer import build_for_phase

KW = {"num_classes": 5, "depth": 2}


@pytest.mark.parametrize("method, C", [("fshift", 4), ("avgpool", 2), ("patch-pi", 4), ("patch-bl", 2)])
def test_transition_keeps_every_parameter(method, C):
    torch.manual_seed(0)
    m = build_for_phase("ast-tiny", KW, method, C, 64, 256)
    new = transfer_weights(m, Phase(C, 1), Phase(1, 1), method, 64, 256)
    old_sd, new_sd = m.state_dict(), new.state_dict()
    assert set(old_sd) == set(new_sd)
    assert new.token_grid == (4, 16)
    changed = {"vit.pos_embed", "vit.patch_embed.proj.weight"}
    for k in old_sd:
        if k not in changed:
            assert torch.equal(old_sd[k], new_sd[k]), k
    assert new(torch.randn(2, 64, 256)).shape == (2, 5)
    # prefix (cls) position embedding is carried as it is
    assert torch.equal(old_sd["vit.pos_embed"][:, :1], new_sd["vit.pos_embed"][:, :1])


def test_pos_embed_is_bilinear_along_time_and_shapes_follow_grid():
    m = build_for_phase("ast-tiny", {**KW, "dist_token": True}, "fshift", 4, 64, 256)
    assert m.token_grid == (4, 4) and m.vit.pos_embed.shape == (1, 2 + 16, 192)
    new = transfer_weights(m, Phase(4, 1), Phase(2, 1), "fshift", 64, 256)
    assert new.token_grid == (4, 8) and new.vit.pos_embed.shape == (1, 2 + 32, 192)
    old = m.vit.pos_embed[:, 2:].reshape(1, 4, 4, 192).permute(0, 3, 1, 2)
    ref = F.interpolate(old, size=(4, 8), mode="bilinear", align_corners=False).permute(0, 2, 3, 1).reshape(1, 32, 192)
    assert torch.allclose(new.vit.pos_embed[:, 2:], ref, atol=1e-6)


def test_pi_resize_preserves_tokens_of_an_upsampled_patch():
    torch.manual_seed(0)
    w = torch.randn(192, 1, 16, 16)
    patch = torch.randn(3, 1, 16, 16)
    big_w = resize_kernel(w, (16, 32), "pi")
    big_patch = F.interpolate(patch, size=(16, 32), mode="bilinear", align_corners=False)
    tok = torch.einsum("dchw,bchw->bd", w, patch)
    tok_big = torch.einsum("dchw,bchw->bd", big_w, big_patch)
    assert torch.allclose(tok, tok_big, rtol=1e-3, atol=1e-3)
    # a plain bilinear kernel resize does not: tokens scale by about C
    bl = torch.einsum("dchw,bchw->bd", resize_kernel(w, (16, 32), "bl"), big_patch)
    assert not torch.allclose(tok, bl, rtol=1e-2, atol=1e-2)


def test_init_from_a_local_deit_checkpoint(tmp_path):
    import timm
    src = timm.create_model("deit_tiny_patch16_224", pretrained=False)  # random weights, built locally
    torch.save(src.state_dict(), tmp_path / "deit.pth")
    m = build_for_phase("ast-tiny", {"num_classes": 5, "init": str(tmp_path / "deit.pth")}, "fshift", 2, 64, 256)
    assert torch.allclose(m.vit.patch_embed.proj.weight, src.patch_embed.proj.weight.sum(1, keepdim=True))
    assert torch.equal(m.vit.blocks[3].mlp.fc1.weight, src.blocks[3].mlp.fc1.weight)
    assert torch.equal(m.vit.pos_embed[:, :1], src.pos_embed[:, :1])  # cls position kept
    assert m.vit.pos_embed.shape == (1, 1 + 4 * 8, 192)
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_for_phase("ast-tiny", {"num_classes": 5, "init": str(tmp_path / "missing.pth")}, "none", 1, 64, 256)
