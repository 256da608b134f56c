"""Every user mistake through the command line: exit code 2, one line on stderr naming the flag,
file or key, no traceback, and nothing written for a run that never started."""

import contextlib
import hashlib
import json
import os

import pytest
import torch

from ..conftest import TINY_DATA, craft_search
from .helpers import TRAIN, S, cli


def _files(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*")) if path.exists() else None


def _space(tmp_path, body):
    f = tmp_path / "space.yaml"
    f.write_text(body)
    return str(f)


@pytest.fixture
def bad(tmp_path):
    """Files the cases point at."""
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    torch.save({"foo": torch.zeros(2)}, tmp_path / "other.pt")
    missing_wav = tmp_path / "d" / "train.json"
    missing_wav.parent.mkdir()
    (tmp_path / "d" / "class_labels_indices.csv").write_text("index,mid,display_name\n0,/m/a,a\n")
    missing_wav.write_text(json.dumps({"data": [{"wav": str(tmp_path / "gone.wav"), "labels": "/m/a"}]}))
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    for name, labels, datafile in [  # labels CSVs and datafiles that cannot be read as they are
        ("dupmid", b"0,/m/a,a\n1,/m/b,b\n2,/m/a,c\n", None),
        ("nonint", b"0,/m/a,a\none,/m/b,b\n", None),
        ("latin", "0,/m/a,caf\u00e9\n".encode("latin-1"), None),
        ("latinjson", b"0,/m/a,a\n", b'{"data": [\n{"wav": "caf\xe9.wav", "labels": "/m/a"}]}'),
    ]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "class_labels_indices.csv").write_bytes(b"index,mid,display_name\n" + labels)
        (tmp_path / name / "train.json").write_bytes(datafile or b'{"data": [{"wav": "a.wav", "labels": "/m/a"}]}')
    run = tmp_path / "trainrun"  # a train folder whose config.json is not an object
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"step": torch.zeros(1)}, run / "checkpoints" / "last.pt")
    (run / "config.json").write_text("[]")
    (tmp_path / "nulljson").mkdir()
    (tmp_path / "nulljson" / "search.json").write_text("null")
    craft_search(tmp_path / "crafted")
    (craft_search(tmp_path / "badconfirm") / "confirm.parquet").write_bytes(b"")
    (craft_search(tmp_path / "baddb") / "optuna.db").write_bytes(b"SQLite format 3\x00" + bytes(4000))
    lost = tmp_path / "nostudy"  # a search whose Optuna study was deleted
    (lost / "search").mkdir(parents=True)
    (lost / "search" / "tuner.pkl").write_bytes(b"x")
    (lost / "search.json").write_text(
        json.dumps(
            {
                "space": "default",
                "out": str(lost),
                "data": {"train": "x"},
                "tuner_sha256": hashlib.sha256(b"x").hexdigest(),
            }
        )
    )
    for name, done in (("found", True), ("nobase", False)):  # searches a confirm --target reads, as written
        _with_settings(craft_search(tmp_path / name, baseline_done=done))
    (tmp_path / "found" / "confirm" / "plain").mkdir(parents=True)  # not a target's folder
    (craft_search(tmp_path / "badtarget") / "confirm" / "t").mkdir(parents=True)
    (tmp_path / "badtarget" / "confirm" / "t" / "target.json").write_text("{}")
    (tmp_path / "badtarget" / "confirm" / "t" / "confirm.parquet").write_bytes(b"PAR1")
    _search_folder(tmp_path / "s", flags={"space": "demo", "data": TINY_DATA, "depth": 1}, trials=2)
    _search_folder(tmp_path / "old", flags={})
    return tmp_path


def _with_settings(d):
    """search.json beside a crafted search: the demo space on the tiny data."""
    from dataclasses import asdict

    from c2f_search.settings import DataSettings, SearchSettings

    data = DataSettings(TINY_DATA, None, None, "auto", False, [0.0, 1.0], None, None, None).resolved()
    (d / "search.json").write_text(
        json.dumps(asdict(SearchSettings(space="demo", out=str(d), data=data, model_kwargs={"depth": 1})))
    )


class _RunsCode:
    """A crafted tuner.pkl: unpickling it creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _search_folder(d, flags, trials=None, tuner_sha256=None):
    """A search folder as c2f-search leaves it, as far as --resume reads it before anything runs; here
    its tuner.pkl is a crafted one, and search.json says it was written elsewhere."""
    import pickle
    from dataclasses import asdict

    from c2f_search.settings import SearchSettings

    (d / "search").mkdir(parents=True)
    (d / "search" / "tuner.pkl").write_bytes(pickle.dumps(_RunsCode(d / "pwned")))
    st = SearchSettings(
        space="demo",
        out="/elsewhere/s",
        data={"train": "/elsewhere/train.json"},
        trials=trials,
        flags=flags,
        tuner_sha256=tuner_sha256,
    )
    (d / "search.json").write_text(json.dumps(asdict(st)))


CASES = [  # (args, phrase in the one stderr line); {t} is the test's folder
    (TRAIN + S + ["--lr", "-1"], "--lr"),
    (TRAIN + S + ["--lr", "0"], "--lr"),
    (TRAIN + S + ["--lr", "nan"], "--lr"),
    (TRAIN + S + ["--batch-size", "0"], "--batch-size"),
    (TRAIN + S + ["--depth", "0"], "--depth"),
    (TRAIN + S + ["--depth", "-1"], "--depth"),
    (TRAIN + S + ["--target-length", "0"], "--target-length"),
    (TRAIN + S + ["--target-length", "100"], "--target-length: 100 frames is not a multiple of 16"),
    (TRAIN + S + ["--target-length", "272"], "C=2 does not divide the 17 time tokens"),
    (TRAIN + S + ["--num-mel-bins", "8"], "--num-mel-bins: 8 is fewer than the 16"),
    (TRAIN + S + ["--metric-target", "2"], "--metric-target"),
    (TRAIN + S + ["--metric-target", "-1"], "--metric-target"),
    (TRAIN + S + ["--mixup", "1.5"], "--mixup"),
    (TRAIN + S + ["--warmup-steps", "-5"], "--warmup-steps"),
    (TRAIN + S + ["--norm", "loud"], "--norm"),
    (TRAIN + S + ["--precision", "fp64"], "--precision: invalid choice: 'fp64'"),
    (TRAIN + S + ["--features", "fp8"], "--features: invalid choice: 'fp8'"),
    (TRAIN + S + ["--stream-workers", "0"], "--stream-workers"),
    (TRAIN + S + ["--batch-size", "41"], "--batch-size: 41 is more than the 40 training clips"),
    (TRAIN + ["--schedule", "fshift:2xnan,1x1"], "epochs 'nan' is not a number"),
    (TRAIN + ["--schedule", "fshift:2x1,4x1"], "strictly decrease"),
    (TRAIN + ["--schedule", "fshift:3x1,1x1"], "does not divide"),
    (TRAIN + ["--schedule", "avgpool:2x1"], "coarse-only"),
    (TRAIN + S + ["--init", "{t}/notes.txt"], "notes.txt: cannot be read"),
    (TRAIN + S + ["--init", "{t}/other.pt"], "other.pt: not a c2f-search checkpoint"),
    (TRAIN + S + ["--init", "{t}/nope.pth"], "nope.pth: no such checkpoint file"),
    (TRAIN + S + ["--out", "{t}/a_file"], "--out {t}/a_file: is a file"),
    (TRAIN + S + ["--out", "/proc/c2f-x"], "--out /proc/c2f-x: cannot write there"),
    (
        ["train", "--data", "{t}/d/train.json", "--no-progress"] + S,
        "gone.wav: file not found; fix the 'wav' path in the datafile (listed in {t}/d/train.json",
    ),
    (["train", "--data", "{t}/missing.json"] + S, "datafile not found"),
    (["train", "--data", TINY_DATA], "--schedule is required"),
    (["train"] + S, "--data is required"),
    (["train", "--out", "{t}/nothing", "--resume"], "last.pt not found"),
    (
        ["train", "--data", TINY_DATA, "--model", "cnn14-tiny", "--schedule", "patch-pi:2x1,1x1", "--no-progress"],
        "cnn14-tiny (cnn14) does not support the compression method 'patch-pi'",
    ),
    (TRAIN + S + ["--model", "cnn14-tiny"], "--depth: cnn14-tiny does not take this setting"),
    (TRAIN + S + ["--weight-averaging", "best:3"], "--weight-averaging: 'best:3'"),
    (TRAIN + ["--model", "htsat", "--schedule", "fshift:4x1,1x1"], "C=4 does not divide the 2 time tokens"),
    # token dropping needs a family that can drop tokens, and an objective that trains with it
    (
        TRAIN + ["--model", "htsat-tiny", "--schedule", "avgpool:4x1,tpatchout:2x1,1x1"],
        "htsat-tiny (htsat) does not support the compression method 'tpatchout': it needs dropping tokens",
    ),
    (
        ["train", "--data", TINY_DATA, "--model", "cnn14-tiny", "--schedule", "patchout:2x1,1x1", "--no-progress"],
        "cnn14-tiny (cnn14) does not support the compression method 'patchout'",
    ),
    (
        [
            "pretrain",
            "--data",
            TINY_DATA,
            "--depth",
            "1",
            "--no-progress",
            "--schedule",
            "fshift:4x1,fpatchout:2x1,1x1",
        ],
        "phase 2 ('fpatchout:2x1'): the masked-patch objective cannot train with dropped tokens",
    ),
    (TRAIN + ["--schedule", "avgpool:4x1,tpatchout:1x1"], "phase 2 ('tpatchout:1x1'): C=1 is full resolution"),
    (
        ["flops", "--model", "htsat", "--schedule", "fpatchout:2x1,1x1"],
        "htsat (htsat) does not support the compression method 'fpatchout'",
    ),
    (["pretrain", "--data", TINY_DATA, "--model", "ast-tiny", "--no-progress"] + S, "ast-tiny cannot be pretrained"),
    (
        ["pretrain", "--data", TINY_DATA, "--mask-patches", "65", "--depth", "1", "--no-progress"] + S,
        "--mask-patches: 65 is more than the 64 patches",
    ),
    (["pretrain", "--data", "{t}/a_file", "--no-progress"] + S, "a_file"),
    (["pareto", "{t}", "--out", "{t}/x.txt"], "x.txt: use a file name ending in .parquet"),
    (["pareto", "{t}", "--ref", "0,-5"], "--ref"),
    (["pareto", "{t}"], "no search results"),
    (["search", "--data", TINY_DATA, "--trials", "0"], "--trials"),
    (["search", "--data", TINY_DATA, "--epochs", "0"], "--epochs"),
    (["search", "--data", TINY_DATA, "--epochs", "-1"], "--epochs"),
    (["search", "--data", TINY_DATA, "--gpus-per-trial", "-1"], "--gpus-per-trial"),
    (
        ["search", "--data", TINY_DATA, "--space", "@epochs: 2\nspace: {{}}\nresources: {{gpu: all}}\n"],
        "key 'resources'",
    ),
    (["search", "--data", TINY_DATA, "--space", "{t}/nope.yaml"], "no such search-space file"),
    (
        ["search", "--data", TINY_DATA, "--space", "@epochs: 2\nspace: {{}}\nfixed: {{batch_size: 0}}\n"],
        "key 'fixed.batch_size'",
    ),
    (["search", "--data", TINY_DATA, "--space", "@epochs: 2\nspace: {{lr: [0.1, -1.0]}}\n"], "key 'space.lr'"),
    (
        ["search", "--data", TINY_DATA, "--space", "@epochs: 2\nspace: {{precision: [bf16, fp32]}}\n"],
        "key 'space.precision': can be fixed (fixed.precision) but not searched",
    ),
    (
        ["search", "--data", TINY_DATA, "--space", "@epochs: 2\nspace: {{}}\nfixed: {{precision: fp8}}\n"],
        "key 'fixed.precision': must be one of auto, fp32, tf32, bf16, fp16",
    ),
    (
        [
            "search",
            "--data",
            TINY_DATA,
            "--space",
            "@epochs: 2\nspace: {{C_values: [3], coarse_phases: {{low: 0, high: 1}}}}\n",
        ],
        "key 'space.C_values'",
    ),
    (["search", "--data", TINY_DATA, "--space", "@epochs: 2\nmetric_target: 1.5\nspace: {{}}\n"], "metric_target"),
    # settings that would fail inside every trial: refused against the data, before Ray starts
    (
        ["search", "--data", TINY_DATA, "--space", "@epochs: 1\nspace: {{}}\nfixed: {{batch_size: 128}}\n"],
        "key 'fixed.batch_size' (ast-tiny): 128 is more than the 40 training clips",
    ),
    (
        [
            "search",
            "--data",
            TINY_DATA,
            "--space",
            "@epochs: 1\nspace: {{batch_size: {{low: 8, high: 64, int: true}}}}\n",
        ],
        "key 'space.batch_size' (ast-tiny): 64 is more than the 40 training clips",
    ),
    (
        [
            "search",
            "--data",
            TINY_DATA,
            "--space",
            "@epochs: 1\nschedules: [{{schedule: 'none:1x1', fixed: {{batch_size: 50}}}}]\n",
        ],
        "key 'schedules.fixed.batch_size' (ast-tiny): 50 is more than the 40 training clips",
    ),
    (
        [
            "search",
            "--data",
            TINY_DATA,
            "--space",
            "@epochs: 1\nobjective: masked-patch\nmodel: ssast-tiny\n"
            "schedules: ['none:1x1']\nfixed: {{batch_size: 8, mask_patches: 65}}\n",
        ],
        "key 'fixed.mask_patches' (ssast-tiny): 65 is more than the 64 patches",
    ),
    (
        [
            "search",
            "--data",
            TINY_DATA,
            "--space",
            "@epochs: 1\nobjective: masked-patch\nmodel: [ssast-tiny, ast-tiny]\n"
            "schedules: ['none:1x1']\nfixed: {{batch_size: 8}}\n",
        ],
        "key 'model' (ast-tiny): ast-tiny cannot be pretrained",
    ),
    (TRAIN + S + ["--seed", "99999999999999999999999"], "--seed: '99999999999999999999999' is not an integer in"),
    (["search", "--data", TINY_DATA, "--seed", "99999999999999999999999"], "--seed"),
    (
        ["search", "--data", TINY_DATA, "--space", "@epochs: 1\nspace: {{}}\nfixed: {{seed: 4294967296}}\n"],
        "key 'fixed.seed': must be at most 4294967295",
    ),
    # files that cannot be read or written
    (["search", "--data", TINY_DATA, "--space", "{t}/binary.yaml"], "binary.yaml: line 2: byte 0x80 is not UTF-8"),
    (
        ["search", "--data", TINY_DATA, "--space", "@epochs: 2\nspace:\n  lr: [0.001]\n  lr: [5.0]\n"],
        "line 4: key 'lr' is given twice in one mapping (first on line 3)",
    ),
    (
        ["train", "--data", "{t}/dupmid/train.json", "--no-progress"] + S,
        "class_labels_indices.csv: line 4: mid '/m/a' is already the class on line 2",
    ),
    (["train", "--data", "{t}/nonint/train.json", "--no-progress"] + S, "line 3: index 'one' is not an integer"),
    (
        ["train", "--data", "{t}/latin/train.json", "--no-progress"] + S,
        "class_labels_indices.csv: line 2: byte 0xe9 is not UTF-8",
    ),
    (
        ["train", "--data", "{t}/latinjson/train.json", "--no-progress"] + S,
        "train.json: line 2: byte 0xe9 is not UTF-8",
    ),
    (["train", "--out", "{t}/trainrun", "--resume"], "trainrun/config.json: must be a JSON object, not []"),
    (["pareto", "{t}/nulljson"], "search.json: must be a JSON object, not null"),
    (["search", "--out", "{t}/nulljson", "--resume"], "search.json: must be a JSON object, not null"),
    (["search", "--out", "{t}/nostudy", "--resume"], "nostudy/optuna.db: not found"),
    (["pareto", "{t}/baddb"], "baddb/optuna.db: cannot be read as the search's Optuna study"),
    (["report", "{t}/badconfirm"], "badconfirm/confirm.parquet: cannot be read"),
    (["report", "{t}/badtarget"], "badtarget/confirm/t/confirm.parquet: cannot be read"),
    (["report", "{t}/crafted", "--out", "/proc/c2f-report.html"], "/proc/c2f-report.html: cannot write it"),
    (["pareto", "{t}/crafted", "--out", "/proc/c2f-front.parquet"], "/proc/c2f-front.parquet: cannot write it"),
    (["confirm", "{t}/trainrun"], "is not the folder of a search (it holds a 'c2f-search train' run)"),
    (["flops", "--seconds", "1e9"], "--seconds 1e+09: 100000000000 frames is more than 8640000"),
    (["pareto", "{t}", "--ref", "0,inf"], "--ref '0,inf': METRIC must be in [0, 1] and GFLOPS a finite number"),
    (TRAIN + S + ["--out", ""], "argument --out: an empty name"),
    (["search", "--data", TINY_DATA, "--out", ""], "argument --out: an empty name"),
    (TRAIN + S + ["--out", "{t}/dangling"], "dangling is a symbolic link to {t}/nowhere, which does not exist"),
    (["search", "--data", TINY_DATA, "--out", "{t}/dangling"], "which does not exist"),
    # a resume continues the search as it was started: a contradicting flag is refused by name
    (
        ["search", "--resume", "--out", "{t}/s", "--space", "paper"],
        "--space paper: the search in {t}/s was started with --space demo; drop the flag",
    ),
    (
        ["search", "--resume", "--out", "{t}/s", "--epochs", "2"],
        "--epochs 2.0: the search in {t}/s was started without it",
    ),
    (
        ["search", "--resume", "--out", "{t}/s", "--scheduler", "asha"],
        "--scheduler asha: the search in {t}/s was started with --scheduler fifo",
    ),
    (
        ["search", "--resume", "--out", "{t}/s", "--trials", "1"],
        "--trials 1: the search in {t}/s was started with 2 trials; a resume may raise that number, not lower it",
    ),
    # Ray unpickles DIR/search/tuner.pkl: one c2f-search did not write (no hash recorded) is refused
    (["search", "--resume", "--out", "{t}/old"], "search.json: records no hash of"),
    (["confirm", "{t}/nothing"], "{t}/nothing: no such search folder"),
    # confirm --target: refused before anything is written, with the target's data checked as a search's
    (["confirm", "{t}/found", "--target", "t", "--model", "ast-huge"], "--model: invalid choice: 'ast-huge'"),
    (["confirm", "{t}/found", "--target", "t", "--data", "{t}/missing.json"], "datafile not found"),
    (["confirm", "{t}/found", "--target", "t", "--data", "{t}/d/train.json"], "gone.wav: file not found"),
    (
        ["confirm", "{t}/found", "--target", "t", "--epochs-factor", "0"],
        "--epochs-factor: '0' is not a finite number > 0",
    ),
    (
        ["confirm", "{t}/found", "--target", "t", "--epochs-factor", "-2"],
        "--epochs-factor: '-2' is not a finite number > 0",
    ),
    (["confirm", "{t}/found", "--target", "t", "--epochs", "0"], "--epochs: '0' is not a finite number > 0"),
    (
        ["confirm", "{t}/found", "--target", "t", "--epochs", "4", "--epochs-factor", "2"],
        "--epochs-factor: not allowed with argument --epochs",
    ),
    (["confirm", "{t}/nobase", "--target", "t", "--depth", "2"], "confirm needs a finished baseline trial"),
    (["confirm", "{t}/found", "--depth", "2"], "--depth: changes the setting, so it needs --target NAME"),
    (["confirm", "{t}/found", "--target", "a/b"], "--target 'a/b': name it with letters"),
    (["confirm", "{t}/found", "--target", "plain"], "exists and is not a target's folder"),
    (
        ["confirm", "{t}/found", "--target", "t", "--model", "cnn14-tiny", "--depth", "2"],
        "--depth: cnn14-tiny does not take this setting",
    ),
    (
        ["confirm", "{t}/found", "--target", "t", "--recipe", "esc50"],
        "confirm --target t: key 'fixed.batch_size' (ast-base): 48 is more than the 40 training clips",
    ),
]


@pytest.mark.parametrize("args, phrase", CASES, ids=[" ".join(a[:1] + [p]) for a, p in CASES])
def test_user_mistake_is_one_line(args, phrase, bad, capsys, monkeypatch):
    monkeypatch.chdir(bad)
    out = bad / "run"
    args = [a.replace("{t}", str(bad)).replace("{{", "{").replace("}}", "}") for a in args]
    args = [_space(bad, a[1:]) if a.startswith("@") else a for a in args]
    if args[0] in ("train", "pretrain", "search") and "--out" not in args:
        args += ["--out", str(out)]
    before = _files(bad)
    rc, lines = cli(args, capsys)
    assert rc == 2, lines
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert phrase.replace("{t}", str(bad)) in lines[0], lines
    assert not out.exists()
    assert _files(bad) == before  # nothing written anywhere for a run that never started


def test_a_crafted_tuner_file_is_refused_before_it_is_unpickled(tmp_path, capsys):
    import hashlib

    d = tmp_path / "s"
    _search_folder(d, flags={}, tuner_sha256=hashlib.sha256(b"the file c2f-search wrote").hexdigest())
    rc, lines = cli(["search", "--resume", "--out", str(d)], capsys)
    assert rc == 2 and len(lines) == 1 and "tuner.pkl: not the file c2f-search wrote" in lines[0], lines
    assert not (d / "pwned").exists()


def test_a_grid_mistake_is_caught_before_any_feature_is_extracted(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("C2F_CACHE", str(cache))
    rc, lines = cli(TRAIN + ["--schedule", "fshift:3x1,1x1", "--out", str(tmp_path / "run")], capsys)
    assert rc == 2 and len(lines) == 1 and "C=3 does not divide" in lines[0], lines
    assert not list(cache.rglob("fbank-*")) and not (tmp_path / "run").exists()  # no feature store


def test_cache_env_pointing_at_a_file(bad, capsys, monkeypatch):
    monkeypatch.setenv("C2F_CACHE", str(bad / "a_file"))
    rc, lines = cli(TRAIN + S + ["--out", str(bad / "run")], capsys)
    assert rc == 2 and len(lines) == 1 and "C2F_CACHE" in lines[0] and "is a file" in lines[0], lines


def test_every_error_pickles_to_an_equal_one():
    """Ray carries a trial's error to the driver by pickling it: every C2FError must come back whole."""
    import inspect
    import pickle

    from c2f_search import errors

    def subclasses(cls):
        return [cls] + [s for c in cls.__subclasses__() for s in subclasses(c)]

    classes = subclasses(errors.C2FError)
    assert {errors.ConfigError, errors.AudioError, errors.WriteError} <= set(classes)
    for cls in classes:
        try:
            n = len([p for p in inspect.signature(cls).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD])
        except ValueError:  # Exception's own __init__: one message
            n = 1
        e = cls(*[f"arg{k}: with spaces" for k in range(max(n, 1))])
        back = pickle.loads(pickle.dumps(e))
        assert (type(back), back.args, str(back), vars(back)) == (type(e), e.args, str(e), vars(e)), cls


@contextlib.contextmanager
def _read_only(path):
    """`path` read-only for this process: chmod for a user, a read-only bind mount for root (whom modes
    do not stop); skipped where neither works."""
    import subprocess

    if os.geteuid() != 0:
        os.chmod(path, 0o555)
        try:
            yield
        finally:
            os.chmod(path, 0o755)
        return
    for cmd in (["mount", "--bind", str(path), str(path)], ["mount", "-o", "remount,ro,bind", str(path)]):
        if subprocess.run(cmd, capture_output=True).returncode:
            subprocess.run(["umount", str(path)], capture_output=True)
            pytest.skip(f"cannot make {path} read-only here (no mount)")
    try:
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_read_only_cache_points_at_a_writable_one_or_no_cache(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    monkeypatch.setenv("C2F_CACHE", str(empty))
    with _read_only(empty):  # built-in data are generated into the cache: it must be writable
        rc, lines = cli(TRAIN + S + ["--out", str(tmp_path / "run")], capsys)
    assert rc == 2 and len(lines) == 1 and f"C2F_CACHE={empty}: cannot write builtin:events" in lines[0], lines
    assert "point $C2F_CACHE at another folder" in lines[0]
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("C2F_CACHE", str(cache))
    from c2f_search.data.builtin_events import materialize

    materialize(TINY_DATA)  # the clips are there, a feature store is not
    with _read_only(cache):
        rc, lines = cli(TRAIN + ["--schedule", "none:1x1", "--out", str(tmp_path / "run")], capsys)
    assert rc == 2 and len(lines) == 1 and "cannot write it" in lines[0] and "or pass --no-cache" in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_pareto_and_report_in_a_read_only_search_folder(tmp_path, capsys):
    d = craft_search(tmp_path / "s")
    before = _files(d)
    with _read_only(d):
        rc, lines = cli(["pareto", str(d)], capsys)
        assert rc == 2 and len(lines) == 1 and "copy the search folder to a writable place" in lines[0], lines
        rc, lines = cli(["report", str(d)], capsys)
        assert rc == 2 and len(lines) == 1 and f"{d}/report.html: cannot write it" in lines[0], lines
    assert _files(d) == before
    assert cli(["report", str(d), "--out", str(tmp_path / "r.html")], capsys)[0] == 0  # elsewhere it writes


@pytest.mark.slow
def test_a_search_whose_trials_all_fail_ends_with_the_first_error(tmp_path):
    """Every trial diverges (fault injection): the search ends with that error in one line, not with
    Ray's unpickling tracebacks or 'no results'; report says the same; a damaged tuner.pkl is one line."""
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "s"
    space = _space(tmp_path, "epochs: 1\nschedules: ['fshift:2x0.5,1x0.5']\nfixed: {batch_size: 8}\n")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "C2F_INJECT_NAN": "fshift:2x0.5,1x0.5"}
    cli = [sys.executable, "-m", "c2f_search.cli"]
    with open(tmp_path / "log", "w") as log:  # Ray's daemons inherit pipes and can hold them open
        rc = subprocess.run(
            cli
            + [
                "search",
                "--space",
                space,
                "--data",
                TINY_DATA,
                "--depth",
                "1",
                "--out",
                str(out),
                "--max-failures",
                "0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=600,
        ).returncode
    text = Path(tmp_path / "log").read_text()
    last = text.strip().splitlines()[-1]
    assert (
        rc == 2
        and "every trial of the search failed before its first report, the first with: loss is nan" in last
        and "--resume runs the failed trials again" in last
    ), text[-3000:]
    assert "TypeError" not in text and "FAILED: loss is nan" in text
    p = subprocess.run(cli + ["report", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2 and "the first with: loss is nan" in p.stderr and len(p.stderr.splitlines()) == 1
    (out / "search" / "tuner.pkl").write_bytes((out / "search" / "tuner.pkl").read_bytes()[:100])
    with open(tmp_path / "log2", "w") as log:
        rc = subprocess.run(
            cli + ["search", "--out", str(out), "--resume"], stdout=log, stderr=subprocess.STDOUT, env=env, timeout=600
        ).returncode
    last = Path(tmp_path / "log2").read_text().strip().splitlines()[-1]
    assert rc == 2 and "tuner.pkl: not the file c2f-search wrote" in last, last  # a truncated file: refused unread
