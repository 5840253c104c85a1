"""Speed and memory of a model package on N threads, against baselines measured in the same run.

Measures ms per 256x256 slice (batch 1 and the batch fuse_volumes uses), seconds and peak
resident memory for 256x256x128 and 512x512x300 volumes through `fuse_volumes` (each volume in
its own subprocess, so peaks do not mix), FLOPs per slice and the fraction of this machine's
measured float32 matmul peak (torch.mm, same threads) the network reaches; ratios against the
max rule and the Laplacian pyramid. Prints a Markdown table; --out writes it too.

When torch sees a CUDA GPU, a GPU line follows: the bundled sample fused through `fuse_volumes` on
the CPU and on the GPU in the same run, ms per slice on each, the speed-up and the largest absolute
difference between the two outputs; otherwise the line says it was skipped and why. --gpu-only
runs that comparison alone and prints it as JSON (device, ms_per_slice_cpu, ms_per_slice_gpu,
speedup, max_abs_diff, ...; with "skipped" and no timings when there is no GPU); it exits 0 either way.

    python tools/benchmark.py [-m MODEL] [--threads 2] [--quick] [--out FILE]
    python tools/benchmark.py --gpu-only [-m MODEL] [--threads 2]
    python tools/benchmark.py --threads-sweep [-m MODEL]     # ms per slice on 1, 2, ... threads, same run
    python tools/benchmark.py --memory 512x512x64 [-m MODEL]  # peak RSS of fuse_volumes on W x H x D
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "AMIFFusion"))

from amif.fusion import CPU_BATCH, SLICE_BYTES, choose_batch, fuse_volumes, slice_bytes  # noqa: E402
from amif.inference import run_network  # noqa: E402
from amif.network import flops_per_slice, parameter_count  # noqa: E402
from amif.package import bundled_model_path, load_package  # noqa: E402
from amif_research.baselines import laplacian_fusion, max_fusion  # noqa: E402

VOLUME_BATCH = CPU_BATCH  # what fuse_volumes uses on the CPU


def best_of(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_peak(n: int = 2048, repeat: int = 5) -> float:
    """FLOP/s of a float32 n x n torch.mm on the current threads (best of `repeat`)."""
    import torch

    x, y = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / best_of(lambda: torch.mm(x, y), repeat)


def volume_child(model: str, shape: str, threads: int) -> None:
    """Run in a subprocess: fuse one random volume of D x H x W and print seconds and peak RSS."""
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(threads)
    w, h, d = (int(s) for s in shape.split("x"))
    pkg = load_package(model)
    rng = np.random.default_rng(0)
    va = sitk.GetImageFromArray(rng.random((d, h, w), dtype=np.float32))
    vb = sitk.GetImageFromArray(rng.random((d, h, w), dtype=np.float32))
    rss_before = reset_peak_rss()  # so making the inputs' temporaries does not count
    t = time.perf_counter()
    fuse_volumes(va, vb, pkg, device="cpu")
    seconds = time.perf_counter() - t
    vol = sitk.GetArrayViewFromImage(va)
    t = time.perf_counter()
    np.maximum(vol, sitk.GetArrayViewFromImage(vb))
    t_max = time.perf_counter() - t
    print(
        json.dumps(
            {"seconds": seconds, "max_seconds": t_max, "peak_mib": peak_rss() / 1024, "before_mib": rss_before / 1024}
        )
    )


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> int:
    """Reset the process's resident high-water mark (Linux) and return the current RSS in KiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmRSS")
    except OSError:  # no /proc: the peak then includes making the inputs
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss() -> int:
    """Peak resident memory (KiB) since the last reset_peak_rss; ru_maxrss where /proc is absent."""
    try:
        return _status_kib("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def gpu_comparison(pkg, repeat: int = 3) -> dict:
    """The bundled sample fused by `fuse_volumes` (no key) on the CPU (current threads) and on the GPU:
    best-of-`repeat` ms per slice on each, the speed-up, the largest absolute difference of the two
    outputs, both verdicts, the batch the GPU ran and the measured peak CUDA memory per 256x256 slice
    (against the estimate amif.fusion.SLICE_BYTES). Without a CUDA GPU: {"device": "cpu", "skipped": why}."""
    import SimpleITK as sitk
    import torch

    from amif.device import describe_device, free_memory, resolve_device
    from amif.fusion import display_view
    from amif.sample import sample_volumes

    if not torch.cuda.is_available():
        why = (
            "this torch is built without CUDA"
            if torch.version.cuda is None
            else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA GPU"
        )
        return {"device": "cpu", "skipped": why}
    gpu = resolve_device("cuda")
    mri, pet = sample_volumes()
    n, h, w = display_view(mri)(sitk.GetArrayViewFromImage(mri)).shape  # slices as fuse_volumes cuts them
    runs = {}
    for dev in ("cpu", gpu):
        result = []
        seconds = best_of(lambda dev=dev, result=result: result.append(fuse_volumes(mri, pet, pkg, device=dev)), repeat)
        runs[str(dev)] = (seconds, result[-1])
    (t_cpu, r_cpu), (t_gpu, r_gpu) = runs["cpu"], runs[str(gpu)]
    diff = np.abs(sitk.GetArrayViewFromImage(r_cpu.image) - sitk.GetArrayViewFromImage(r_gpu.image)).max()
    probe = 8  # slices of 256x256 in one network call, for the peak memory per slice
    a = np.random.default_rng(0).random((probe, 256, 256), dtype=np.float32)
    code = np.zeros(pkg.net.cfg.key_bits, np.float32)
    run_network(pkg, a, a, code, gpu)  # the network's copy and cuDNN's set-up are not counted
    torch.cuda.synchronize(gpu)
    torch.cuda.reset_peak_memory_stats(gpu)
    base = torch.cuda.memory_allocated(gpu)
    run_network(pkg, a, a, code, gpu)
    peak = (torch.cuda.max_memory_allocated(gpu) - base) / probe
    return {
        "device": describe_device(gpu),
        "threads": torch.get_num_threads(),
        "slices": n,
        "ms_per_slice_cpu": 1000 * t_cpu / n,
        "ms_per_slice_gpu": 1000 * t_gpu / n,
        "speedup": t_cpu / t_gpu,
        "max_abs_diff": float(diff),
        "verdicts": [r_cpu.verdict.state, r_gpu.verdict.state],
        "gpu_batch": choose_batch(gpu, h, w, free_memory(gpu), slice_bytes(h, w, pkg.net.cfg)),
        "peak_bytes_per_256_slice": int(peak),
        "slice_bytes_estimate": SLICE_BYTES,
    }


def gpu_line(g: dict) -> str:
    if "skipped" in g:
        return f"GPU line skipped: {g['skipped']}."
    return (
        f"GPU ({g['device']}), bundled sample ({g['slices']} slices) through fuse_volumes: "
        f"{g['ms_per_slice_gpu']:.2f} ms per slice against {g['ms_per_slice_cpu']:.1f} ms on the CPU "
        f"({g['threads']} threads) in the same run, {g['speedup']:.0f}x; largest difference of the outputs "
        f"{g['max_abs_diff']:.1e}; peak CUDA memory {g['peak_bytes_per_256_slice'] / 2**20:.0f} MiB per "
        f"256x256 slice (estimate {g['slice_bytes_estimate'] / 2**20:.0f} MiB)."
    )


def threads_sweep(pkg, repeat: int = 5) -> dict:
    """ms per 256x256 slice (batch VOLUME_BATCH, best of `repeat`) on 1, 2, ... up to the machine's cores
    (at least 2), measured in one run and interleaved (1, 2, ..., 1, 2, ...) so that a load that comes and
    goes weighs on each alike; "ratio" is ms on 2 threads / ms on 1 (below 1: 2 threads are faster)."""
    import os

    import torch

    rng = np.random.default_rng(0)
    code = np.zeros(pkg.net.cfg.key_bits, np.float32)
    a, b = (rng.random((VOLUME_BATCH, 256, 256), dtype=np.float32) for _ in range(2))
    counts = list(range(1, max(2, os.cpu_count() or 1) + 1))
    best = {n: float("inf") for n in counts}
    old = torch.get_num_threads()
    try:
        for _ in range(repeat):
            for n in counts:
                torch.set_num_threads(n)
                best[n] = min(best[n], best_of(lambda: run_network(pkg, a, b, code), 1) / VOLUME_BATCH)
    finally:
        torch.set_num_threads(old)
    ms = {n: 1000 * t for n, t in best.items()}
    return {"cores": os.cpu_count(), "ms_per_slice": ms, "ratio": ms[2] / ms[1]}


def run_volume(model: str, shape: str, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", shape, "-m", model, "--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=str(bundled_model_path()))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="fewer repeats, a 256x256x32 volume only")
    ap.add_argument("--out", help="also write the Markdown table here")
    ap.add_argument("--json", help="also write the key figures here (for research/tools/make_report.py)")
    ap.add_argument("--gpu-only", action="store_true", help="only the CPU/GPU comparison, as JSON")
    ap.add_argument(
        "--threads-sweep",
        action="store_true",
        help="only ms per slice on 1, 2, ... threads in one run, as JSON (picks amif's default)",
    )
    ap.add_argument("--memory", metavar="WxHxD", help="only seconds and peak RSS of fuse_volumes on one volume")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        volume_child(args.model, args.child, args.threads)
        return
    if args.memory:
        print(json.dumps(run_volume(args.model, args.memory, args.threads)))
        return
    import torch

    torch.set_num_threads(args.threads)
    pkg = load_package(args.model)
    if args.threads_sweep:
        print(json.dumps(threads_sweep(pkg, 3 if args.quick else 5)))
        return
    if args.gpu_only:
        print(json.dumps(gpu_comparison(pkg), indent=1))
        return
    rng = np.random.default_rng(0)
    code = np.zeros(pkg.net.cfg.key_bits, np.float32)
    repeat = 2 if args.quick else 5
    flops = flops_per_slice(pkg.net)
    peak = matmul_peak(1024 if args.quick else 2048, repeat)
    a8 = rng.integers(0, 256, (256, 256)).astype(np.float64)
    b8 = rng.integers(0, 256, (256, 256)).astype(np.float64)
    t_max = best_of(lambda: max_fusion(a8, b8), 20)
    t_lap = best_of(lambda: laplacian_fusion(a8, b8), repeat)
    rows, figures = (
        [],
        {
            "parameters": parameter_count(pkg.net),
            "flops": flops,
            "threads": args.threads,
            "matmul_peak": peak,
            "max_ms": 1000 * t_max,
            "laplacian_ms": 1000 * t_lap,
            "volumes": {},
        },
    )
    for bs in (1, VOLUME_BATCH):
        a, b = rng.random((bs, 256, 256), dtype=np.float32), rng.random((bs, 256, 256), dtype=np.float32)
        t = best_of(lambda a=a, b=b: run_network(pkg, a, b, code), repeat) / bs
        figures[f"ms_batch{bs}"] = 1000 * t
        rows.append(
            (
                f"AMIF, batch {bs}",
                f"{1000 * t:.1f} ms",
                f"{t / t_max:,.0f}x",
                f"{t / t_lap:.1f}x",
                f"{flops / t / 1e9:.1f} GFLOP/s = {100 * flops / t / peak:.1f}% of matmul peak",
            )
        )
    rows += [
        ("max rule", f"{1000 * t_max:.3f} ms", "1x", "", ""),
        ("Laplacian pyramid (4 levels)", f"{1000 * t_lap:.2f} ms", f"{t_lap / t_max:,.0f}x", "1x", ""),
    ]
    lines = [
        f"Model `{pkg.model_id}`: {parameter_count(pkg.net):,} parameters, {flops / 1e9:.2f} GFLOP per "
        f"256x256 slice; {args.threads} threads; float32 torch.mm peak {peak / 1e9:.1f} GFLOP/s.",
        "",
        "| per 256x256 slice | time | vs max rule | vs Laplacian | throughput |",
        "|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [
        "",
        f"| volume via fuse_volumes (batch {VOLUME_BATCH}) | seconds | ms per slice | "
        "peak RSS (MiB) | RSS before fusing (MiB) | max rule (s) |",
        "|---|---|---|---|---|---|",
    ]
    for shape in ["256x256x32"] if args.quick else ["256x256x128", "512x512x300"]:
        r = figures["volumes"][shape] = run_volume(args.model, shape, args.threads)
        depth = int(shape.split("x")[2])
        lines.append(
            f"| {shape} | {r['seconds']:.1f} | {1000 * r['seconds'] / depth:.0f} | {r['peak_mib']:.0f} | "
            f"{r['before_mib']:.0f} | {r['max_seconds']:.3f} |"
        )
        print(lines[-1], flush=True)
    figures["gpu"] = gpu_comparison(pkg, repeat)
    lines += ["", gpu_line(figures["gpu"])]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
