import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from c2f_search.data import store
from c2f_search.data.frontend import FrontEnd
from c2f_search.data.sets import Data, DataError, load_datafile, load_folder, resolve
from c2f_search.data.store import clip_fbank, extract, norm_stats

from ..conftest import datafile, wav

FE = FrontEnd(num_mel_bins=32, target_length=64)


def test_datafile_multilabel_is_detected(tmp_path):
    w = wav(tmp_path / "a.wav")
    f, csv = datafile(tmp_path, [{"wav": w, "labels": "/m/a,/m/b"}, {"wav": w, "labels": "/m/b"}])
    cs = load_datafile(f, csv)
    assert cs.multilabel and cs.targets.tolist() == [[1, 1], [0, 1]]
    assert not load_datafile(f, csv, task="multi").targets.shape[1] != 2


def test_label_missing_from_csv_names_file_and_label(tmp_path):
    f, csv = datafile(tmp_path, [{"wav": wav(tmp_path / "a.wav"), "labels": "/m/zzz"}])
    with pytest.raises(DataError, match=r"train.json: entry 0 .*'/m/zzz' is not in .*class_labels_indices.csv"):
        load_datafile(f, csv)
    f2, _ = datafile(
        tmp_path,
        [{"wav": wav(tmp_path / "a.wav"), "labels": "/m/zzz"}, {"wav": wav(tmp_path / "b.wav"), "labels": "/m/a"}],
    )
    cs = load_datafile(f2, csv, skip_bad=True)
    assert len(cs) == 1 and cs.bad[0][1].startswith("label '/m/zzz'")


def test_empty_dataset_and_bad_json(tmp_path):
    f, csv = datafile(tmp_path, [])
    with pytest.raises(DataError, match="empty"):
        load_datafile(f, csv)
    f.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_datafile(f, csv)


def test_labels_csv_with_a_byte_order_mark_loads(tmp_path):
    """Excel saves UTF-8 CSVs with a byte-order mark; it is not part of the header."""
    f, csv = datafile(tmp_path, [{"wav": wav(tmp_path / "a.wav"), "labels": "/m/b"}])
    csv.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes())
    cs = load_datafile(f, csv)
    assert cs.classes == ["a", "b"] and cs.targets.tolist() == [[0, 1]]


@pytest.mark.parametrize(
    "rows, encoding, problem",
    [
        # a mid twice would make a class no clip is ever labelled with
        ("0,/m/a,a\n1,/m/b,b\n2,/m/a,c\n", "utf-8", r"line 4: mid '/m/a' is already the class on line 2"),
        ("0,/m/a,a\none,/m/b,b\n", "utf-8", r"line 3: index 'one' is not an integer"),
        ("0,/m/a,caf\u00e9\n", "latin-1", r"line 2: byte 0xe9 is not UTF-8; save the file as UTF-8 text"),
    ],
)
def test_bad_labels_csv_names_the_file_the_line_and_the_key(tmp_path, rows, encoding, problem):
    f, csv = datafile(tmp_path, [{"wav": wav(tmp_path / "a.wav"), "labels": "/m/a"}])
    csv.write_bytes(("index,mid,display_name\n" + rows).encode(encoding))
    with pytest.raises(DataError, match="class_labels_indices.csv: " + problem):
        load_datafile(f, csv)


def test_datafile_in_latin1_names_the_line(tmp_path):
    f, csv = datafile(tmp_path, [{"wav": wav(tmp_path / "a.wav"), "labels": "/m/a"}])
    f.write_bytes(b'{"data": [\n{"wav": "caf\xe9.wav", "labels": "/m/a"}]}')
    with pytest.raises(DataError, match=r"train.json: line 2: byte 0xe9 is not UTF-8"):
        load_datafile(f, csv)


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda p: p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage"), "cannot decode"),
        (lambda p: wav(p, n=0, value=np.zeros(0, "float32")), "zero-length"),
        (lambda p: wav(p, value=np.full(8000, np.nan, "float32")), "NaN"),
        (lambda p: None, "file not found"),
    ],
)
def test_bad_audio_is_named_or_skipped_and_reported(tmp_path, make, problem):
    bad = tmp_path / "bad.wav"
    make(bad)
    good = wav(tmp_path / "good.wav")
    f, csv = datafile(tmp_path, [{"wav": good, "labels": "/m/a"}, {"wav": str(bad), "labels": "/m/b"}])
    cs = load_datafile(f, csv)
    with pytest.raises(DataError, match=rf"bad.wav: .*{problem}.*--skip-bad"):
        extract(cs, FE, 10.0, 64)
    feats = extract(cs, FE, 10.0, 64, skip_bad=True)
    assert feats.kept.tolist() == [0] and feats.bad[0][0].endswith("bad.wav") and problem in feats.bad[0][1]


def test_truncated_flac_is_an_error(tmp_path):
    p = tmp_path / "t.flac"
    sf.write(str(p), np.random.default_rng(0).standard_normal(16000).astype("float32") * 0.1, 16000)
    p.write_bytes(p.read_bytes()[:200])
    f, csv = datafile(tmp_path, [{"wav": str(p), "labels": "/m/a"}])
    with pytest.raises(DataError, match="t.flac"):
        extract(load_datafile(f, csv), FE, 10.0, 64)


def test_folder_layout_and_resampling_and_stereo(tmp_path):
    for split in ("train", "test"):
        for c in ("dog", "rain"):
            (tmp_path / split / c).mkdir(parents=True)
            y = np.random.default_rng(1).standard_normal((22050, 2)).astype("float32") * 0.1
            sf.write(str(tmp_path / split / c / "x.flac"), y, 22050)
    tr = load_folder(tmp_path, "train")
    assert tr.classes == ["dog", "rain"] and not tr.multilabel
    feats = extract(tr, FE, 10.0, 64)
    assert feats.x.shape == (2, 32, 64) and feats.n_frames.tolist() == [64, 64]
    with pytest.raises(DataError, match="no such data set"):
        resolve(str(tmp_path / "nope"), "train")


def test_feature_cache_round_trips(tmp_path):
    w = wav(tmp_path / "a.wav")
    f, csv = datafile(tmp_path, [{"wav": w, "labels": "/m/a"}])
    cs = load_datafile(f, csv)
    a = extract(cs, FE, 10.0, 64, cache_dir=tmp_path / "cache")
    files = list((tmp_path / "cache").glob("fbank-*.arrow"))
    assert len(files) == 1
    b = extract(cs, FE, 10.0, 64, cache_dir=tmp_path / "cache")  # memory-mapped read
    assert np.array_equal(a.x, b.x) and a.n_frames.tolist() == b.n_frames.tolist()


def _clips(tmp_path, n=7, bad_at=3):
    """n clips of different content and length (some shorter than 64 frames), a NaN clip at `bad_at`."""
    entries = []
    for i in range(n + 1):
        y = np.random.default_rng(i).standard_normal(2000 + 1200 * i).astype("float32") * 0.1
        if i == bad_at:
            y[:] = np.nan
        entries.append({"wav": wav(tmp_path / f"c{i}.wav", value=y), "labels": "/m/a"})
    f, csv = datafile(tmp_path, entries)
    cs = load_datafile(f, csv)
    return cs, [i for i in range(n + 1) if i != bad_at]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_chunked_store_holds_each_clips_fbank(tmp_path, monkeypatch, dtype):
    monkeypatch.setattr(store, "STORE_CHUNK_BYTES", 2 * 32 * 64 * 4)  # 2 clips per chunk at fp32, 4 at fp16
    cs, good = _clips(tmp_path)
    cache = tmp_path / "cache"
    feats = extract(cs, FE, 10.0, 64, skip_bad=True, cache_dir=cache, dtype=dtype)
    expected = [clip_fbank(cs.paths[i], FE, 10.0, 64) for i in good]
    x = np.stack([fb.astype(dtype) for fb, _ in expected])
    n = [frames for _, frames in expected]
    (path,) = cache.glob("fbank-*.arrow")
    assert pa.ipc.open_file(str(path)).num_record_batches > 2  # several chunks, then the closing batch
    assert len(feats.x.chunks) > 1 and feats.x.dtype == dtype and len(set(n)) > 2
    for f in (
        feats,
        extract(cs, FE, 10.0, 64, skip_bad=True, cache_dir=cache, dtype=dtype),  # read back
        extract(cs, FE, 10.0, 64, skip_bad=True, dtype=dtype),
    ):  # no cache: chunks in memory
        assert f.kept.tolist() == good and f.n_frames.tolist() == n
        assert len(f.bad) == 1 and f.bad[0][0] == cs.paths[3] and "NaN" in f.bad[0][1]
        assert np.array_equal(np.asarray(f.x), x)
        rows = np.array([5, 0, 3, 6, 1])  # a batch across chunks, out of order
        assert np.array_equal(f.batch(rows)[0].numpy(), x[rows]) and f.batch(rows)[1].tolist() == [n[r] for r in rows]
    real = np.concatenate([fb.astype(dtype)[:, :k].astype(np.float64).ravel() for fb, k in expected])
    assert np.allclose(norm_stats(feats), (real.mean(), real.std()), rtol=1e-6, atol=0)


def test_a_crash_mid_write_leaves_no_store_and_a_rerun_builds_it(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "STORE_CHUNK_BYTES", 2 * 32 * 64 * 4)
    cs, good = _clips(tmp_path, bad_at=-1)
    cache, seen = tmp_path / "cache", []

    def crash_at_fifth_clip(*args):  # fault injection: the process dies after 2 chunks were written
        seen.append([(f.name, f.stat().st_size) for f in cache.iterdir()])
        if len(seen) == 5:
            raise RuntimeError("injected crash")
        return clip_fbank(*args)

    monkeypatch.setattr(store, "clip_fbank", crash_at_fifth_clip)
    with pytest.raises(RuntimeError, match="injected crash"):
        extract(cs, FE, 10.0, 64, cache_dir=cache)
    ((tmp, size),) = seen[-1]
    assert tmp.startswith(".tmp-") and "~fbank-" in tmp and size >= 4 * 32 * 64 * 4  # chunks went to a temporary file
    assert list(cache.iterdir()) == []  # neither a store nor the temporary file is left
    monkeypatch.setattr(store, "clip_fbank", clip_fbank)
    feats = extract(cs, FE, 10.0, 64, cache_dir=cache)
    assert [f.name.startswith("fbank-") for f in cache.iterdir()] == [True]
    assert np.array_equal(np.asarray(feats.x), np.stack([clip_fbank(p, FE, 10.0, 64)[0] for p in cs.paths]))


def test_a_store_written_before_chunking_is_read(tmp_path):
    x = np.random.default_rng(0).standard_normal((3, 32, 64)).astype("float32")
    table = pa.table(
        {
            "fbank": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 32 * 64),
            "n_frames": np.array([64, 10, 3], np.int32),
            "index": np.array([0, 2, 3]),
        }
    )
    table = table.replace_schema_metadata({"bad": '[["b.wav", "NaN"]]', "shape": "[32, 64]", "n": "3"})
    with pa.OSFile(str(tmp_path / "old.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)  # the layout of stores before issue 19: one batch, metadata in the schema
    f = store._read_store(tmp_path / "old.arrow", 32, 64)
    assert np.array_equal(np.asarray(f.x), x) and f.kept.tolist() == [0, 2, 3] and f.bad == [("b.wav", "NaN")]
    real = x.transpose(0, 2, 1)[np.arange(64)[None, :] < np.array([64, 10, 3])[:, None]]
    assert norm_stats(f) == (float(real.mean()), float(real.std()))  # as before: its runs still resume


def test_builtin_events_is_deterministic_and_balanced(tiny_data):
    d2 = Data.from_specs("builtin:events?train=40&val=20&seed=3")
    assert d2.train.paths == tiny_data.train.paths
    assert tiny_data.num_classes == 10 and not tiny_data.multilabel
    assert tiny_data.train.targets.sum(0).tolist() == [4.0] * 10
    x = tiny_data.features("train", 10.0, 256).x
    assert x.shape == (40, 64, 256) and np.isfinite(x).all()
    with pytest.raises(ValueError, match="train=N"):
        Data.from_specs("builtin:events?tran=5")
