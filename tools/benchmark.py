"""Speed of the bundled (or given) model on 2 threads, against the max rule measured in the same run.

Prints ms per 256x256 slice (batch 1 and 8), seconds per 256x256x128 volume through
`fuse_volumes`, the parameter count and FLOPs per slice.

    python tools/benchmark.py [-m MODEL] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "AMIFFusion"))

from amif.fusion import fuse_volumes, run_network  # noqa: E402
from amif.network import flops_per_slice, parameter_count  # noqa: E402
from amif.package import bundled_model_path, load_package  # noqa: E402


def best_of(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=str(bundled_model_path()))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(args.threads)
    pkg = load_package(args.model)
    rng = np.random.default_rng(0)
    code = np.zeros(256, np.float32)
    for bs in (1, 8):
        a, b = rng.random((bs, 256, 256), dtype=np.float32), rng.random((bs, 256, 256), dtype=np.float32)
        t_net = best_of(lambda a=a, b=b: run_network(pkg, a, b, code), 5) / bs
        t_max = best_of(lambda a=a, b=b: np.maximum(a, b), 5) / bs
        print(f"batch {bs}: {1000 * t_net:.1f} ms per 256x256 slice (max rule {1000 * t_max:.3f} ms, "
              f"ratio {t_net / t_max:.0f}x)")
    vol = rng.random((128, 256, 256), dtype=np.float32)
    va, vb = sitk.GetImageFromArray(vol), sitk.GetImageFromArray(vol[::-1].copy())
    t_vol = best_of(lambda: fuse_volumes(va, vb, pkg), 1)
    t_vmax = best_of(lambda: np.maximum(vol, vol[::-1]), 3)
    print(f"256x256x128 volume via fuse_volumes: {t_vol:.2f} s (max rule {t_vmax:.3f} s)")
    print(f"parameters: {parameter_count(pkg.net):,}; FLOPs per 256x256 slice: {flops_per_slice(pkg.net) / 1e9:.2f} G; "
          f"threads: {args.threads}")


if __name__ == "__main__":
    main()
