"""Pretrained inits without Ray: the recorded file and its hash, Hugging Face AST folders (both key layouts,
logits equal after the import), which models of a search an init fits, and a recipe under a space."""

import json

import pytest
import torch

from c2f_search.geometry import Geometry
from c2f_search.models import create_model, get_family
from c2f_search.models.pretrained import InitError, InitFile, cache_info, clear_cache

from ..cli.helpers import TRAIN, cli


@pytest.fixture(scope="module")
def pre(tmp_path_factory):
    """A c2f-search checkpoint of ast-tiny at depth 1 (two epochs of the tiny data)."""
    out = tmp_path_factory.mktemp("pre") / "run"
    from c2f_search.cli import main

    assert main([*TRAIN, "--schedule", "none:1x1", "--out", str(out)]) == 0
    return out / "checkpoints" / "final.pt"


def test_an_init_is_recorded_by_hash_and_a_changed_file_is_refused(tmp_path):
    f = tmp_path / "w.pt"
    f.write_bytes(b"first")
    init = InitFile.describe(str(f))
    assert (init.uri, init.size) == (str(f.resolve()), 5)
    assert init.sha256 == "a7937b64b8caa58f03721bb6bacf5c78cb235febe0e70b1b84cd99541461a08e"
    clear_cache()
    assert init.local() == str(f.resolve()) and cache_info() == {init.uri: init.sha256}
    f.write_bytes(b"other")  # same size, another content: read again and refused
    with pytest.raises(InitError, match=r"w\.pt is not the file the search recorded .* --init"):
        init.local()
    f.unlink()
    with pytest.raises(InitError, match=r"cannot read the init .*w\.pt"):
        init.local()
    with pytest.raises(InitError, match=r"--init .*nothing\.pt: cannot read it"):
        InitFile.describe(str(tmp_path / "nothing.pt"))


def test_a_uri_init_is_copied_to_the_node_once_and_checked(tmp_path, monkeypatch, pre):
    """Through pyarrow's filesystems (file:// here; s3:// and gs:// take the same path): a copy under
    $C2F_CACHE/init/SHA256, read once per process while the source is unchanged."""
    monkeypatch.setenv("C2F_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "shared" / "init.pt"
    src.parent.mkdir()
    src.write_bytes(pre.read_bytes())
    init = InitFile.describe(f"file://{src}")
    clear_cache()
    local = init.local()
    assert local == str(tmp_path / "cache" / "init" / init.sha256 / "init.pt")
    assert open(local, "rb").read() == src.read_bytes()
    import c2f_search.models.pretrained as pretrained

    opened = []
    for name in ("_digest", "_fetch"):
        real = getattr(pretrained, name)
        monkeypatch.setattr(pretrained, name, lambda *a, real=real, name=name: opened.append(name) or real(*a))
    assert init.local() == local and opened == []  # the second trial in this process reads nothing
    m = create_model("ast-tiny", Geometry(64, 256), num_classes=10, depth=1)
    get_family(m).load_init(m, local)
    src.write_bytes(src.read_bytes() + b"changed")
    with pytest.raises(InitError, match="is not the file the search recorded"):
        init.local()


def _hf_folders(tmp_path, **over):
    """One tiny ASTForAudioClassification saved in transformers 4's key layout (save_pretrained) and in
    transformers 5's (its own state dict); its LayerNorm eps is timm's, so the logits can agree exactly."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file

    config = transformers.ASTConfig(
        **{
            "hidden_size": 192,
            "num_hidden_layers": 2,
            "num_attention_heads": 3,
            "intermediate_size": 768,
            "num_mel_bins": 32,
            "max_length": 64,
            "frequency_stride": 10,
            "time_stride": 10,
            "num_labels": 5,
            "layer_norm_eps": 1e-6,
            **over,
        }
    )
    torch.manual_seed(0)
    hf = transformers.ASTForAudioClassification(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    v4, v5 = tmp_path / "v4", tmp_path / "v5"
    hf.save_pretrained(v4)
    v5.mkdir()
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, v5 / "model.safetensors")
    (v5 / "config.json").write_text(json.dumps(config.to_dict()))
    return hf, v4, v5


def test_a_hugging_face_ast_folder_gives_the_same_logits_in_both_key_layouts(tmp_path):
    hf, v4, v5 = _hf_folders(tmp_path)
    keys = json.loads((v4 / "config.json").read_text())
    assert keys["model_type"] == "audio-spectrogram-transformer"
    from safetensors.torch import load_file

    assert any(".encoder.layer.0.attention.attention.query." in k for k in load_file(v4 / "model.safetensors"))
    assert any(".layers.0.attention.q_proj." in k for k in load_file(v5 / "model.safetensors"))
    x = torch.randn(3, 64, 32)  # (batch, frames, mel bins): Hugging Face's input
    with torch.no_grad():
        ref = hf(x).logits
        for folder in (v4, v5):
            m = create_model("ast-tiny", Geometry(32, 64), num_classes=5, depth=2, dist_token=True, stride=10).eval()
            get_family(m).load_init(m, str(folder))
            torch.testing.assert_close(m(x.transpose(1, 2)), ref, atol=1e-4, rtol=1e-4)
        # without a distillation token the token is dropped (as for a DeiT file): the encoder loads, the
        # head then reads the class token alone
        m = create_model("ast-tiny", Geometry(32, 64), num_classes=5, depth=2, stride=10).eval()
        get_family(m).load_init(m, str(v4))
        assert not torch.allclose(m(x.transpose(1, 2)), ref, atol=1e-3)


def test_train_starts_from_a_hugging_face_folder(tmp_path, capsys):
    """The tests' front end (64 mel bins x 256 frames) from an AST saved at 32 x 64: the position embeddings
    move to the model's grid, the classifier (5 classes, not 10) starts fresh."""
    _, v4, _ = _hf_folders(tmp_path)
    capsys.readouterr()
    out = tmp_path / "run"
    rc, err = cli(
        [*TRAIN, "--depth", "2", "--dist-token", "--schedule", "none:1x1", "--init", str(v4), "--out", str(out)], capsys
    )
    assert rc == 0, err
    assert json.loads((out / "config.json").read_text())["config"]["init"] == str(v4)


def test_a_hugging_face_folder_of_another_model_or_damaged_is_one_line(tmp_path, capsys):
    _, v4, _ = _hf_folders(tmp_path)
    capsys.readouterr()  # transformers' own progress bar
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    (bert / "model.safetensors").write_bytes((v4 / "model.safetensors").read_bytes())
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "config.json").write_text((v4 / "config.json").read_text())
    (cut / "model.safetensors").write_bytes((v4 / "model.safetensors").read_bytes()[:5000])
    for folder, says in [(bert, "of bert (BertModel), not an Audio Spectrogram"), (cut, "truncated or damaged")]:
        rc, err = cli([*TRAIN, "--schedule", "none:1x1", "--out", str(tmp_path / "o"), "--init", str(folder)], capsys)
        assert rc == 2 and len(err) == 1 and says in err[0], err


def test_an_init_fits_the_models_of_its_family_only(pre, tmp_path, capsys):
    from c2f_search.errors import SpaceError
    from c2f_search.search.runner import check_init
    from c2f_search.settings import DataSettings, SearchSettings

    def settings(**kw):
        return SearchSettings("s", "o", DataSettings("x"), init=InitFile.describe(str(pre)).to_dict(), **kw)

    s = settings(model_kwargs={"depth": 1})
    check_init(s, ["ast-tiny", "cnn14"], Geometry(64, 256), 10)
    assert s.init["models"] == ["ast-tiny"]
    assert "cnn14: its trials start from random weights" in capsys.readouterr().out
    with pytest.raises(SpaceError, match=r"ast-small: .* is \(.*192.*\) in the file, \(.*384.*\) in the model"):
        check_init(settings(model_kwargs={"depth": 1}), ["ast-small"], Geometry(64, 256), 10)
    with pytest.raises(SpaceError, match="initialises none of the models cnn14"):
        check_init(settings(), ["cnn14"], Geometry(64, 256), 10)
    # a timm-style safetensors file for AST: CNN14, of another family, starts from random weights
    from safetensors.torch import save_file

    vit = create_model("ast-tiny", Geometry(64, 256), num_classes=10, depth=1)
    f = tmp_path / "vit.safetensors"
    save_file({k.removeprefix("vit."): v.contiguous() for k, v in vit.state_dict().items() if k.startswith("vit.")}, f)
    s = SearchSettings("s", "o", DataSettings("x"), init=InitFile.describe(str(f)).to_dict(), model_kwargs={"depth": 1})
    check_init(s, ["ast-tiny", "cnn14"], Geometry(64, 256), 10)
    assert s.init["models"] == ["ast-tiny"]


def test_a_resume_takes_the_same_init_moved_and_keeps_its_recorded_place(pre, tmp_path):
    """The recorded uri is part of every trial's identity (a restored trial checks it): a moved file is read
    from its new place (read_from) while the uri stays."""
    from c2f_search.cli.search import resumed_settings
    from c2f_search.errors import C2FError
    from c2f_search.search.runner import check_init
    from c2f_search.settings import DataSettings, SearchSettings

    old = tmp_path / "old.pt"
    old.write_bytes(pre.read_bytes())
    out = tmp_path / "s"
    out.mkdir()
    SearchSettings(
        "demo", str(out), DataSettings("x"), init=InitFile.describe(str(old)).to_dict(), model_kwargs={"depth": 1}
    ).save()
    moved = tmp_path / "moved.pt"
    old.rename(moved)
    s = resumed_settings(out, {"init": str(moved)})
    assert s.init["uri"] == str(old) and s.init["read_from"] == str(moved)
    check_init(s, ["ast-tiny"], Geometry(64, 256), 10)  # reads the moved file
    assert s.init["uri"] == str(old) and s.init["models"] == ["ast-tiny"]
    from trainables import trial_config

    cfg = trial_config({"schedule": "none:1x1"}, {"model": "ast-tiny", "init": s.init})
    assert cfg.init == str(old)
    other = tmp_path / "other.pt"
    other.write_bytes(pre.read_bytes() + b"x")
    with pytest.raises(C2FError, match="from another init"):
        resumed_settings(out, {"init": str(other)})


def test_a_space_takes_an_init_and_a_recipe_and_the_flags_override_them(pre, tmp_path):
    from c2f_search.cli.search import search_settings
    from c2f_search.errors import SpaceError
    from c2f_search.search.space import load_space

    f = tmp_path / "space.yaml"
    f.write_text(f"epochs: 2\nrecipe: esc50\ninit: {pre}\nschedules: ['none:1x2']\nfixed: {{lr: 3.0e-4}}\n")
    sp = load_space(str(f))
    assert (sp.model, sp.recipe, sp.init) == ("ast-base", "esc50", str(pre))
    assert sp.fixed["lr"] == 3e-4 and sp.fixed["lr_gamma"] == 0.85 and sp.fixed["batch_size"] == 48
    assert load_space(str(f), "speechcommands").recipe == "speechcommands"
    s = search_settings({"space": str(f), "data": "builtin:events?train=40&val=20&seed=3"}, tmp_path / "o")
    assert s.recipe == "esc50" and s.model_kwargs == {"dist_token": True, "stride": 10}
    assert (s.data.target_length, s.data.num_mel_bins) == (512, 128)  # the recipe's front end
    assert s.init["sha256"] == InitFile.describe(str(pre)).sha256
    other = tmp_path / "other.pt"
    other.write_bytes(pre.read_bytes() + b"x")
    s = search_settings(
        {"space": str(f), "data": "builtin:events?train=40&val=20&seed=3", "init": str(other), "depth": 1},
        tmp_path / "o",
    )
    assert s.init["uri"] == str(other) and s.model_kwargs["depth"] == 1
    f.write_text("epochs: 2\nrecipe: nope\nschedules: ['none:1x2']\n")
    with pytest.raises(SpaceError, match="key 'recipe': nope: no such recipe"):
        load_space(str(f))


def test_an_init_replaced_between_its_check_and_its_load_is_named_as_changed(tmp_path):
    """A trial whose init fails to load hashes it again: a file being replaced (here cut short, as a copy in
    progress leaves it) is named as changed, not as damaged."""
    f = tmp_path / "init.pt"
    torch.save({"w": torch.zeros(64)}, f)
    init = InitFile.describe(str(f))
    assert init.local() == str(f)
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(InitError, match="is not the file the search recorded"):
        init.recheck()
