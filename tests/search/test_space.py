from pathlib import Path

import optuna
import pytest

from c2f_search.schedule import parse_schedule
from c2f_search.search.space import SpaceError, find_space, load_space


def _sampled(space: str, n: int, epochs: int = 6):
    """(trial, config, schedule) of `n` random draws from a shipped space, each told a fixed result."""
    fn = load_space(space).define_by_run(epochs)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(n):
        t = study.ask()
        cfg = fn(t)
        yield t, cfg, parse_schedule(cfg["schedule"])
        study.tell(t, [0.5, 1.0])


def test_default_space_samples_valid_variable_length_schedules():
    seen = set()
    for _t, cfg, s in _sampled("default", 60):
        assert abs(s.total_epochs - 6) < 0.01 and s.phases[-1].epochs > 0
        assert all(p.C in (8, 4, 2, 1) for p in s.phases)
        assert 5e-5 <= cfg["lr"] <= 4e-4
        seen.add(len(s.phases))
    assert seen == {1, 2, 3, 4}


def test_paper_grid_has_the_16_schedules_and_rescales():
    sp = load_space("paper")
    assert sp.is_grid and len(sp.grid()) == 16
    assert "fshift:4x5,1x15" in sp.grid() and "patch-pi:4x3,2x3,1x14" in sp.grid()
    small = sp.grid(4)
    assert "fshift:4x1,1x3" in small and all(abs(parse_schedule(s).total_epochs - 4) < 1e-6 for s in small)


@pytest.mark.parametrize(
    "text, key",
    [
        ("epochs: 4\nspace: {method: [fshift], lrr: [1]}\n", "space.lrr"),
        ("epochs: 4\nspace: {method: [fsift]}\n", "space.method"),
        ("epochs: 4\nspace: {C_values: [4, 1]}\n", "space.C_values"),
        ("epochs: 4\nspace: {lr: {low: 1, high: 0.1}}\n", "space.lr"),
        ("epochs: 0\nspace: {}\n", "epochs"),
        ("epochs: 4\nschedules: [fshift:2x1,4x1]\n", "schedules"),
        ("epochs: 4\nspace: {}\nresources: {gpus: 1}\n", "resources"),
        ("epochs: 4\nspace: {}\nresources: {gpu: all}\n", "resources"),
        ("epochs: 4\nspace: {}\nresources: {cpu: auto}\n", "resources"),
        ("epochs: 4\nmodle: ast-tiny\nspace: {}\n", "modle"),
    ],
)
def test_bad_space_file_names_the_key(tmp_path, text, key):
    f = tmp_path / "s.yaml"
    f.write_text(text)
    with pytest.raises(SpaceError) as e:
        load_space(str(f))
    assert f"key '{key}'" in str(e.value) and str(f) in str(e.value)


def test_table1_has_the_five_rows_each_with_its_model_and_lr():
    sp = load_space("table1")
    assert sp.grid() == [
        "cnn14 none:1x5",
        "cnn14 avgpool:2x5,coarse-only",
        "ast-base none:1x5",
        "ast-base avgpool:2x5,coarse-only",
        "ast-base avgpool:2x1,1x4",
    ]
    fn = sp.define_by_run(10)

    class Pick:  # a trial that picks the grid entry given
        def __init__(self, label):
            self.label = label

        def suggest_categorical(self, name, choices):
            assert name == "schedule" and self.label in choices
            return self.label

    seen = {}
    for label in sp.grid(10):
        cfg = fn(Pick(label))
        seen[(cfg["model"], cfg["schedule"])] = cfg.get("lr", sp.fixed["lr"])
    assert seen == {
        ("cnn14", "none:1x10"): 1e-3,
        ("cnn14", "avgpool:2x10,coarse-only"): 1e-3,
        ("ast-base", "none:1x10"): 1e-5,
        ("ast-base", "avgpool:2x10,coarse-only"): 1e-5,
        ("ast-base", "avgpool:2x2,1x8"): 1e-5,
    }


def test_a_space_searches_the_model_and_checks_each(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(
        "epochs: 4\nmodel: [ast-tiny, htsat]\nspace: {method: [fshift], coarse_phases: {low: 1, high: 1},"
        " C_values: [2]}\n"
    )
    sp = load_space(str(f))
    assert sp.searches_model and {m for m, _, _ in sp.variants()} == {"ast-tiny", "htsat"}
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    models = set()
    for _ in range(12):
        t = study.ask()
        models.add(sp.define_by_run(4)(t)["model"])
        study.tell(t, [0.5, 1.0])
    assert models == {"ast-tiny", "htsat"}
    f.write_text("epochs: 4\nmodel: [ast-tiny, cnn14]\nspace: {method: [patch-pi]}\nfixed: {lr: 1.0e-4}\n")
    from c2f_search.search.runner import prepare_data
    from c2f_search.settings import SearchSettings

    with pytest.raises(SpaceError, match=r"cnn14 \(cnn14\) does not support the compression method 'patch-pi'"):
        prepare_data(SearchSettings(space=str(f), out=str(tmp_path), data={"train": "x"}), load_space(str(f)))


def test_a_model_setting_one_of_the_models_does_not_take_is_refused_before_any_trial(tmp_path):
    from c2f_search.search.runner import prepare_data
    from c2f_search.settings import SearchSettings

    with pytest.raises(SpaceError, match="--depth: cnn14 does not take this setting"):
        prepare_data(
            SearchSettings(space="table1", out=str(tmp_path), data={"train": "x"}, model_kwargs={"depth": 1}),
            load_space("table1"),
        )


def test_the_pretraining_space_reads_unlabelled_audio_and_resolves_its_fine_tune(tmp_path):
    from c2f_search.cli.search import search_settings

    from ..conftest import TINY_DATA

    shipped = Path(find_space("pretrain")).read_text()
    assert "builtin:events?train=600&val=200" in shipped
    f = tmp_path / "pretrain.yaml"  # the shipped space, with the tests' small data set to fine-tune on
    f.write_text(shipped.replace("builtin:events?train=600&val=200", TINY_DATA))
    st = search_settings({"space": str(f), "data": TINY_DATA}, tmp_path)
    sp = load_space("pretrain")
    assert sp.objective == "masked-patch" and sp.model == "ssast-tiny" and st.data.labelled is False
    assert st.finetune["schedule"] == "none:1x2" and st.finetune["fixed"]["batch_size"] == 16
    assert st.finetune["data"].train.endswith("train.json") and st.finetune["data"].labels.endswith(".csv")
    assert st.finetune["data"].labelled  # the fine-tune reads labels


def test_patchout_space_samples_patchout_alone_and_mixed_schedules():
    sp = load_space("patchout")
    labels = set()
    for t, _, s in _sampled("patchout", 80):
        assert abs(s.total_epochs - 6) < 0.01 and s.phases[-1].C == 1
        if len(s.phases) == 3:  # the second coarse phase takes later_method's draw
            assert s.phases[1].method == t.params["later_method"]
        labels.add(s.label)
    assert {"none", "tpatchout", "fpatchout", "patchout", "avgpool", "avgpool+tpatchout"} <= labels
    assert sp.max_C() == 4  # avgpool's C changes the grid
    # PBT: a member per (method, later method); lowering C past the first phase may switch the method
    pop = {str(s) for s in sp.population_schedules(6)}
    assert len(pop) == 12 and "avgpool:4xauto,tpatchout:2xauto,1x3" in pop and "tpatchout:4xauto,2xauto,1x3" in pop


@pytest.mark.parametrize(
    "text, key",
    [
        (
            "epochs: 4\nspace: {later_method: [tpatchout], coarse_phases: {low: 0, high: 1}, C_values: [2]}\n",
            "space.later_method",
        ),
        ("epochs: 4\nspace: {later_method: [tpachout]}\n", "space.later_method"),
        (
            "epochs: 4\nobjective: masked-patch\nmodel: ssast-tiny\nspace: {method: [fshift, patchout]}\n",
            "space.method",
        ),
        (
            "epochs: 4\nobjective: masked-patch\nmodel: ssast-tiny\nschedules: ['fshift:4x1,tpatchout:2x1,1x2']\n",
            "schedules",
        ),
    ],
)
def test_bad_mixed_space_names_the_key(tmp_path, text, key):
    f = tmp_path / "s.yaml"
    f.write_text(text)
    with pytest.raises(SpaceError) as e:
        load_space(str(f))
    assert f"key '{key}'" in str(e.value)
