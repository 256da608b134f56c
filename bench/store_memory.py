"""Peak memory of building a fp32 feature store as the clip count grows (issue 19): the chunked writer
(`extract` now) against the writer before it (every clip in a list, `np.stack`, one Arrow table), side by
side in one run, the old one only at the sizes it survives on a 24 GiB machine.

Clips: 1 s of 16 kHz noise and a tone, 16 distinct WAV files listed over and over in the datafile (the
store has one row per entry); 128 mel x 176 frames (88 KiB per clip in fp32: 0.9 GB at 10k clips, 9 GB at
100k). Each build runs in a fresh process that reports its peak resident memory (VmHWM, which also counts
pages of a memory-mapped file it has touched) and its memory after imports; then the normalization stats
of the store (`norm_stats`), the peak after them and how much of it is the store's memory-mapped pages
(file-backed: page cache the kernel may drop, not memory the process allocated). The stores are deleted after
each build.
Usage: python bench/store_memory.py [--sizes 1000 10000 100000] [--old-sizes 1000 10000] [--dir DIR]
"""

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import soundfile as sf
import torch

from c2f_search.data.frontend import FrontEnd
from c2f_search.data.sets import load_datafile
from c2f_search.data.store import clip_fbank, extract, norm_stats
from c2f_search.files import atomic_write

MEL, FRAMES, FILES = 128, 176, 16


def make_datafiles(d: Path, sizes) -> dict[int, Path]:
    t = np.arange(16000) / 16000
    rng = np.random.default_rng(0)
    for i in range(FILES):
        y = 0.05 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t)
        sf.write(str(d / f"{i}.wav"), y.astype("float32"), 16000, subtype="PCM_16")
    (d / "class_labels_indices.csv").write_text("index,mid,display_name\n0,/m/a,a\n")
    out = {}
    for n in sizes:
        out[n] = d / f"train-{n}.json"
        out[n].write_text(
            json.dumps({"data": [{"wav": str(d / f"{i % FILES}.wav"), "labels": "/m/a"} for i in range(n)]})
        )
    return out


def status(field: str) -> int:
    """A /proc/self/status memory field, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def old_extract(clips, fe, path):
    """The writer before issue 19: a list of per-clip arrays, np.stack, one table, one write; the features
    stay in memory (what `extract` returned), and norm_stats took the real frames of all of them."""
    xs, ns = [], []
    for p in clips.paths:
        fb, n = clip_fbank(p, fe, fe.frame_shift_ms, FRAMES)
        xs.append(fb)
        ns.append(n)
    x, n_frames = np.stack(xs), np.array(ns, np.int32)
    col = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x[0].size)
    table = pa.table({"fbank": col, "n_frames": n_frames, "index": np.arange(len(x))})
    table = table.replace_schema_metadata({"bad": "[]", "shape": json.dumps([MEL, FRAMES]), "n": str(len(x))})

    def write(tmp):
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)

    atomic_write(path, write)
    return x, n_frames


def old_norm_stats(x, n_frames):
    mask = np.arange(x.shape[-1])[None, :] < n_frames[:, None]
    vals = x.transpose(0, 2, 1)[mask]
    return float(vals.mean()), float(vals.std())


def child(writer: str, datafile: Path, cache: Path) -> dict:
    torch.set_num_threads(1)
    fe = FrontEnd(num_mel_bins=MEL, target_length=FRAMES)
    clips = load_datafile(datafile, datafile.parent / "class_labels_indices.csv")
    out = {"rss_after_imports": status("VmRSS"), "rss_file_after_imports": status("RssFile")}
    t = time.perf_counter()
    if writer == "chunked":
        feats = extract(clips, fe, fe.frame_shift_ms, FRAMES, cache_dir=cache)
    else:
        x, n = old_extract(clips, fe, cache / "old.arrow")
    out["build_s"] = time.perf_counter() - t
    out["build_peak"] = status("VmHWM")
    (store,) = cache.iterdir()
    out["store_bytes"] = store.stat().st_size
    t = time.perf_counter()
    out["norm"] = norm_stats(feats) if writer == "chunked" else old_norm_stats(x, n)
    out["norm_s"] = time.perf_counter() - t
    out["norm_peak"], out["norm_file"] = status("VmHWM"), status("RssFile") - out["rss_file_after_imports"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument(
        "--old-sizes",
        type=int,
        nargs="*",
        default=[1000, 10000],
        help="sizes at which the old writer also runs (at 100k it needs about 27 GB)",
    )
    ap.add_argument("--dir", help="where the clips and stores go (default: a temporary folder)")
    ap.add_argument("--child", nargs=3, metavar=("WRITER", "DATAFILE", "CACHE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], Path(a.child[1]), Path(a.child[2]))))
        return
    root = Path(a.dir or tempfile.mkdtemp(prefix="store-memory-"))
    root.mkdir(parents=True, exist_ok=True)
    datafiles = make_datafiles(root, sorted(set(a.sizes) | set(a.old_sizes)))
    rows = []
    for n in sorted(set(a.sizes) | set(a.old_sizes)):
        for writer in ("chunked", "old"):
            if n not in (a.sizes if writer == "chunked" else a.old_sizes):
                continue
            cache = root / f"cache-{writer}-{n}"
            cache.mkdir()
            p = subprocess.run(
                [sys.executable, __file__, "--child", writer, str(datafiles[n]), str(cache)],
                capture_output=True,
                text=True,
            )
            shutil.rmtree(cache)
            r = json.loads(p.stdout) if p.returncode == 0 else {"rc": p.returncode, "err": p.stderr[-300:]}
            print(n, writer, r, file=sys.stderr, flush=True)
            rows.append((n, writer, r))
    gb = lambda b: f"{b / 1e9:.2f}"  # noqa: E731
    print(
        f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, pyarrow {pa.__version__}; "
        f"{MEL} mel x {FRAMES} frames fp32, 1 thread; GB = 10^9 bytes\n"
    )
    print(
        "| clips | writer | store GB | peak RSS build GB | RSS after imports GB | build s | "
        "peak RSS after norm_stats GB (of it file-backed, since imports) | norm_stats s | mean, std |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n, writer, r in rows:
        if "rc" in r:
            print(f"| {n} | {writer} | failed: rc {r['rc']} | | | | | | |")
            continue
        print(
            f"| {n} | {writer} | {gb(r['store_bytes'])} | {gb(r['build_peak'])} | {gb(r['rss_after_imports'])} | "
            f"{r['build_s']:.0f} | {gb(r['norm_peak'])} ({gb(r['norm_file'])}) | {r['norm_s']:.1f} | "
            f"{r['norm'][0]:.6f}, {r['norm'][1]:.6f} |"
        )
    both = {n: {w: r["norm"] for m, w, r in rows if m == n and "norm" in r} for n, _, _ in rows}
    for n, r in both.items():
        if len(r) == 2:
            print(
                f"\n{n} clips: norm_stats chunked - old: mean {r['chunked'][0] - r['old'][0]:+.2e}, "
                f"std {r['chunked'][1] - r['old'][1]:+.2e}"
            )
    if not a.dir:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
