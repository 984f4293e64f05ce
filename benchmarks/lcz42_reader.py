"""Patches per second and peak RSS of reading an So2Sat LCZ42 file: geofuse vs the notebook.

A file in the LCZ42 layout (sen1 N x 32 x 32 x 8, sen2 N x 32 x 32 x 10, label N x 17, float64,
contiguous like the official files) of ``--gb`` GB is generated in a temporary folder (deleted
afterwards) and read by each method in its own subprocess, so that every peak RSS
(``VmHWM``; ``ru_maxrss`` elsewhere) is the method's own:

- notebook: ``np.array(f['sen1'])``, ``np.array(f['sen2'])``, ``np.array(f['label'])``, as the
  So2Sat LCZ42 notebook does (everything in memory; the real training file is ~50 GB);
- geofuse stream: :func:`geofuse.data.datasets.so2sat_lcz42.iter_chunks` over every patch
  (float32 channels-first blocks of all 18 bands, each consumed and dropped), the chunk size
  given by ``--max-memory-mb`` (default 512); peak RSS should not grow with the file size;
- geofuse PatchSet (``--patchset``): :func:`load_so2sat_lcz42` building the whole float32
  PatchSet (what ``geofuse extract`` keeps), for reference: its memory is the kept patches.

The file is read right after it is written, so it sits in the page cache for every method
(reading speed, not disk speed, is compared). Target (issue #11): the stream's peak RSS under
1 GB whatever the file size.

Run: ``.venv/bin/python benchmarks/lcz42_reader.py [--gb 3] [--dir /tmp] [--patchset]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

PATCH_BYTES = 32 * 32 * (8 + 10) * 8 + 17 * 8  # float64 sen1 + sen2 + label of one patch


def _peak_mb() -> float:
    """This process's peak RSS: VmHWM (Linux; unlike ru_maxrss it does not carry the parent's
    peak across exec), else ru_maxrss."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _worker(method: str, path: Path, max_memory_mb: int) -> dict[str, float]:
    """Read ``path`` with ``method`` in this process; seconds, patches and peak RSS."""
    if method != "notebook":  # imported before the clock starts; the notebook needs only h5py
        from geofuse.data.datasets.so2sat_lcz42 import (
            MODALITIES,
            chunk_patches,
            iter_chunks,
            load_so2sat_lcz42,
        )
    start_mb = _peak_mb()
    t0 = time.perf_counter()
    if method == "notebook":
        with h5py.File(path, "r") as f:
            sen1, sen2, label = (np.array(f[k]) for k in ("sen1", "sen2", "label"))
        n = len(sen1)
        checksum = float(sen2[:, 0, 0, 0].sum() + label.sum())
    elif method == "stream":
        n, checksum = 0, 0.0
        with h5py.File(path, "r") as f:
            index = np.arange(f["label"].shape[0])
            for _, block in iter_chunks(f, MODALITIES, index, chunk_patches(max_memory_mb)):
                n += len(block)
                checksum += float(block[:, 8, 0, 0].sum())
    else:
        p = load_so2sat_lcz42(path, max_memory_mb=10**6)
        n, checksum = len(p), float(p.x[:, 8, 0, 0].sum())
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "patches": n, "peak_mb": _peak_mb(), "start_mb": start_mb,
            "checksum": checksum}


def _run(method: str, path: Path, max_memory_mb: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--worker", method, "--path", str(path),
                          "--max-memory-mb", str(max_memory_mb)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gb", type=float, default=3.0, help="file size to generate (GB)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write it (default /tmp)")
    ap.add_argument("--max-memory-mb", type=int, default=512, help="geofuse's memory budget")
    ap.add_argument("--patchset", action="store_true", help="also build the whole PatchSet")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.path, args.max_memory_mb)))
        return
    from geofuse.data.datasets.so2sat_lcz42 import chunk_patches, write_synthetic_lcz42

    n = max(1, int(args.gb * 1e9 / PATCH_BYTES))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "lcz42.h5"
        t0 = time.perf_counter()
        write_synthetic_lcz42(path, n, classes=tuple(range(17)), chunk=1024)
        size_gb = path.stat().st_size / 1e9
        print(f"generated {n:,} patches, {size_gb:.2f} GB in {time.perf_counter() - t0:.0f} s; "
              f"geofuse chunk: {chunk_patches(args.max_memory_mb)} patches "
              f"(max_memory_mb {args.max_memory_mb})")
        methods = ["notebook", "stream"] + (["patchset"] if args.patchset else [])
        results = {m: _run(m, path, args.max_memory_mb) for m in methods}
    names = {"notebook": "notebook: np.array(f[key]) x3 (all in memory)",
             "stream": "geofuse iter_chunks (float32, channels first)",
             "patchset": "geofuse load_so2sat_lcz42 (whole float32 PatchSet)"}
    print(f"\n{'method':<52} {'patches/s':>10} {'seconds':>8} {'RSS before MB':>14} "
          f"{'peak RSS MB':>12}")
    for m, r in results.items():
        print(f"{names[m]:<52} {r['patches'] / r['seconds']:>10,.0f} {r['seconds']:>8.2f} "
              f"{r['start_mb']:>14,.0f} {r['peak_mb']:>12,.0f}")
    nb, st = results["notebook"], results["stream"]
    speed = (st["patches"] / st["seconds"]) / (nb["patches"] / nb["seconds"])
    print(f"\nfile {size_gb:.2f} GB: geofuse stream / notebook: {speed:.2f}x patches/s, "
          f"peak RSS {st['peak_mb']:,.0f} MB vs {nb['peak_mb']:,.0f} MB "
          f"({nb['peak_mb'] / st['peak_mb']:.1f}x less); target stream peak < 1,024 MB: "
          f"{'met' if st['peak_mb'] < 1024 else 'MISSED'}")


if __name__ == "__main__":
    main()
