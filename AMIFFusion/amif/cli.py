"""`amif` command line: demo, fuse, fuse-batch, keygen, info, verify, and the subcommands that installed plugins add
(the research package adds train, average, evaluate and attack)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from .errors import AMIFError, Cancelled
from .files import atomic_output, check_output, refuse_input_as_output, shown
from .volumes import itk_path

IMAGE_2D = (".png", ".jpg", ".jpeg")
# Volume formats SimpleITK writes a fused (float or colour) volume in. The first ones keep every AMIF_*
# key in the file; NIfTI and Analyze keep a summary in their 80-character description; for all but
# the first ones the full metadata goes into a sidecar OUT.amif.json as well.
METADATA_VOLUMES = (".nrrd", ".nhdr", ".mha", ".mhd", ".h5", ".hdf5")
NOTES_VOLUMES = (".nii", ".nii.gz", ".hdr", ".img")
VOLUMES = METADATA_VOLUMES + NOTES_VOLUMES + (".tif", ".tiff", ".vtk", ".gipl", ".gipl.gz", ".mnc")
SIDECAR = ".amif.json"


def _model(path):
    from .package import bundled_model_path, load_package

    return load_package(path or bundled_model_path())


def output_suffix(path) -> str:
    """The format part of a file name, lower case: '.nii.gz' for 'a.NII.GZ', '.png' for 'x.png'."""
    name = Path(path).name.lower()
    known = [s for s in VOLUMES + IMAGE_2D if name.endswith(s) and len(name) > len(s)]
    return max(known, key=len) if known else Path(name).suffix


def sidecar_path(out) -> Path:
    """Where an output's metadata goes when its format cannot hold it: OUT.amif.json beside it."""
    out = Path(out)
    return out.with_name(out.name + SIDECAR)


def _write_2d(path: Path, arr: np.ndarray, meta: dict) -> None:
    from PIL import Image, PngImagePlugin

    img = Image.fromarray(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8))
    if path.suffix.lower() == ".png":
        info = PngImagePlugin.PngInfo()
        for k, v in meta.items():
            info.add_text(k, v)
        img.save(path, pnginfo=info)
    else:
        img.save(path, quality=95, comment=json.dumps(meta).encode())


def _write_volume(path: Path, image, meta: dict) -> bool:
    """Write a fused volume at `path` (a temporary path of atomic_output) with its metadata: in the file
    where the format holds it, else (also) in a sidecar beside it. Returns whether a sidecar was written."""
    import hashlib

    import SimpleITK as sitk

    kind = output_suffix(path)
    if kind in NOTES_VOLUMES:  # the header's description: 80 characters, so a summary
        image.SetMetaData(
            "ITK_FileNotes",
            f"AMIF {meta['AMIF_watermark']} key {meta['AMIF_key_state']} "
            f"{meta['AMIF_key_id']} model {meta['AMIF_model_id']}"[:79],
        )
    sitk.WriteImage(image, str(path), useCompression=True)
    if kind in METADATA_VOLUMES:
        return False
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    doc = {"format": "amif-output-metadata", "version": 1, "output": path.name, "output_sha256": h.hexdigest(), **meta}
    sidecar_path(path).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return True


def _check_input(path, is_2d: bool) -> None:
    """Inputs are checked before any work, so that a folder or a missing file is one message (no ITK noise)."""
    p = Path(path)
    what = f"Cannot read image {shown(p.name)}" if is_2d else f"Cannot read {shown(p.name)} as an image volume"
    if p.is_dir() and is_2d:  # a volume input may be a folder: a DICOM series (amif.volumes)
        raise AMIFError(f"{what}: it is a folder.")
    if not p.exists():
        raise AMIFError(f"{what}: it does not exist.")


def _read_volume(path: str, series=None, frame=None):
    """amif.volumes.read_volume: a volume file, a DICOM series folder, a frame of a 4D image or an .mgz."""
    from .volumes import read_volume

    itk_path(path, "volume")
    return read_volume(path, series, frame)


def fuse_files(
    a_path, b_path, out, model=None, key=None, progress=True, device="auto", series=None, frame=None, package=None
) -> dict:
    """Fuse two files (2D PNG/JPEG, or volumes: any file SimpleITK reads, a DICOM series folder, an .mgz
    with nibabel installed) into `out` on `device` ("auto", "cpu", "cuda", "cuda:N" or "mps"; one it
    cannot use is an AMIFError before anything is read). `series` (a SeriesInstanceUID) picks the series
    of the folder inputs that hold it, `frame` (N or "mean") the frame of 4D inputs
    (amif.volumes.read_volumes). `package`: the model package `model` names, already loaded (fuse-batch
    loads it once); None: loaded here. Returns a summary: the output's AMIF_* metadata, "device", the torch
    device the network ran on, and "sidecar", the path of OUT.amif.json where the output's format cannot
    hold the metadata (else None).

    Before any work: the inputs exist (as files; a volume input may be a folder), the output's format
    fits the inputs and can be written, its folder exists and is writable, and it is none of the inputs
    (after symlinks and `..`);
    anything else is an AMIFError. The output is written atomically (amif.files.atomic_output): a failed
    or interrupted write leaves an existing file at `out` as it was."""
    from .device import resolve_device
    from .fusion import fuse_images, fuse_volumes, output_metadata
    from .images import read_image
    from .package import package_paths

    device = resolve_device(device)
    if isinstance(key, str) and not key.strip():
        raise AMIFError("The key path is empty: give a key file or leave -k out.")
    out = Path(out)
    kind = output_suffix(out)
    is_2d = Path(a_path).suffix.lower() in IMAGE_2D and Path(b_path).suffix.lower() in IMAGE_2D
    for p in (a_path, b_path):
        _check_input(p, is_2d)
    if is_2d and kind not in IMAGE_2D:
        raise AMIFError("2D inputs give a 2D output: name it .png or .jpg.")
    if not is_2d and kind in IMAGE_2D:
        raise AMIFError("Volume inputs give a volume output: name it .nrrd, .nii.gz or .mha.")
    if not is_2d and kind not in VOLUMES:
        raise AMIFError(
            f"Cannot write {shown(out.name)}: not a volume format AMIF writes; name it " + ", ".join(VOLUMES) + "."
        )
    refuse_input_as_output(
        out,
        [
            a_path,
            b_path,
            key if isinstance(key, (str, os.PathLike)) else None,
            *(package_paths(model) if model else ()),
        ],
    )
    if not is_2d:
        for p, role in ((a_path, "input"), (b_path, "input"), (out, "output")):
            itk_path(p, role)
    check_output(out)
    if not is_2d and kind not in METADATA_VOLUMES:
        check_output(sidecar_path(out))
    if not is_2d:  # before the model loads: an input that cannot be read is the first error
        from .volumes import read_volumes

        a, b = read_volumes([a_path, b_path], series, frame)
    pkg = package or _model(model)
    if is_2d:
        r = fuse_images(read_image(a_path), read_image(b_path), pkg, key, device)
        meta = output_metadata(pkg, r.key, r.verdict)
        _write_output(out, lambda tmp: _write_2d(tmp, r.fused, meta))
        return {**meta, "device": r.device, "sidecar": None}

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=a.GetSize()[2] if a.GetDimension() == 3 else 0, desc="fuse", unit="slice")
    try:
        r = fuse_volumes(a, b, pkg, key, progress=(lambda d, n: bar.update(d - bar.n)) if bar else None, device=device)
    finally:
        if bar:
            bar.close()
    meta = output_metadata(pkg, r.key, r.verdict)
    sidecar = _write_output(out, lambda tmp: _write_volume(tmp, r.image, meta))
    return {**meta, "device": r.device, "sidecar": sidecar_path(out) if sidecar else None}


def _write_output(out: Path, write):
    """Run `write(tmp)` on a temporary path and rename what it wrote into place (amif.files.atomic_output);
    on failure nothing at `out` changes and the failure is one AMIFError. Returns what `write` returns."""
    try:
        with atomic_output(out) as tmp:
            return write(tmp)
    except (OSError, RuntimeError, ValueError) as e:  # RuntimeError: SimpleITK (e.g. no writer for the extension)
        if isinstance(e, AMIFError):
            raise
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip()
        reason = reason.splitlines()[-1] if reason else e.__class__.__name__
        raise AMIFError(f"Cannot write {shown(out.name)}: {reason}") from None


# torch threads for fusion on the CPU: half the cores, at least 1. Threads that must wait for busy cores cost
# far more than they give (measured with tools/benchmark.py --threads-sweep; figures in docs/evaluation.md).
DEFAULT_THREADS = max(1, (os.cpu_count() or 2) // 2)
THREADS_HELP = (
    f"CPU threads for the network (default here: {DEFAULT_THREADS}, half the cores: on a busy "
    "machine more threads than free cores are several times slower)"
)


def set_threads(n: int | None) -> None:
    """torch.set_num_threads(n) (None: DEFAULT_THREADS)."""
    import torch

    torch.set_num_threads(DEFAULT_THREADS if n is None else n)


def _threads_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of threads, 1 or more")
    return n


def cmd_fuse(args) -> None:
    set_threads(args.threads)
    meta = fuse_files(
        args.a, args.b, args.output, args.model, args.key, not args.quiet, args.device, args.series, args.frame
    )
    print(
        f"wrote {shown(args.output)}: watermark {meta['AMIF_watermark']} (score {meta['AMIF_score']}), "
        f"key {meta['AMIF_key_state']} {meta['AMIF_key_id']}, fused on {meta['device']}"
    )
    if meta["sidecar"]:
        print(
            f"{output_suffix(args.output)} files cannot hold all of AMIF's metadata: "
            f"wrote it to {shown(meta['sidecar'])}"
        )


def cmd_fuse_batch(args) -> None:
    """Fuse every subject of a CSV or a folder of subject folders; the summary table is printed and
    written beside the outputs. Any failed subject: an AMIFError after the batch (exit code 2)."""
    from .batch import SUMMARY_NAME, list_subjects, prepare_output, run_batch, summary_table

    fmt = args.format if args.format.startswith(".") else "." + args.format
    if fmt.lower() not in VOLUMES + IMAGE_2D:
        raise AMIFError(f"--format {shown(args.format)}: give one of " + ", ".join(VOLUMES + IMAGE_2D) + ".")
    subjects = list_subjects(args.subjects, args.pattern_a, args.pattern_b)
    prepare_output(subjects, args.output)
    set_threads(args.threads)
    package = _model(args.model)  # once for the batch

    def fuse(a, b, out, key):
        return fuse_files(a, b, out, args.model, key, False, args.device, args.series, args.frame, package=package)

    rows = run_batch(subjects, args.output, fuse, fmt, args.key, not args.quiet)
    print(summary_table(rows))
    failed = sum(r["state"] != "ok" for r in rows)
    print(f"wrote {shown(Path(args.output) / SUMMARY_NAME)}: {len(rows) - failed} of {len(rows)} subjects fused")
    if failed:
        raise AMIFError(f"{failed} of {len(rows)} subjects failed (see the table above).")


def cmd_demo(args) -> None:
    """Fuse the bundled sample with and without the demo key; write both and a side-by-side PNG."""
    import SimpleITK as sitk

    from .fusion import display_array
    from .package import bundled_key_path
    from .sample import SHOW_DEPTH, sample_paths, sample_slices

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    a, b = sample_paths()
    keyed = fuse_files(a, b, out / "fused-keyed.nrrd", args.model, bundled_key_path(), not args.quiet, args.device)
    unkeyed = fuse_files(a, b, out / "fused-unkeyed.nrrd", args.model, None, not args.quiet, args.device)
    rows = list(sample_slices())
    for name in ("fused-keyed.nrrd", "fused-unkeyed.nrrd"):
        fused = display_array(sitk.ReadImage(str(out / name)))
        rows.append(fused[int(SHOW_DEPTH * fused.shape[0])])
    side = np.concatenate(rows, axis=1)
    _write_output(
        out / "demo-side-by-side.png",
        lambda tmp: _write_2d(tmp, side, {"AMIF_panels": "MRI | PET | keyed (demo key) | no key"}),
    )
    print(f"keyed:   watermark {keyed['AMIF_watermark']} (score {keyed['AMIF_score']})")
    print(f"no key:  watermark {unkeyed['AMIF_watermark']} (score {unkeyed['AMIF_score']})")
    print(
        f"wrote {shown(out)}/fused-keyed.nrrd, fused-unkeyed.nrrd, demo-side-by-side.png (fused on {keyed['device']})"
    )


def cmd_keygen(args) -> None:
    from .keys import generate_key, save_key

    key = generate_key(args.model_id, args.licensee)
    save_key(key, args.output)
    print(f"wrote {shown(args.output)}: model {key.model_id}, key id {key.key_id}, licensee {key.licensee}")


def cmd_info(args) -> None:
    pkg = _model(args.model)
    print(json.dumps(pkg.manifest, indent=2, ensure_ascii=False))
    from .network import flops_per_slice, parameter_count

    print(f"parameters: {parameter_count(pkg.net):,}")
    print(f"FLOPs per 256x256 slice: {flops_per_slice(pkg.net) / 1e9:.2f} G")


def cmd_verify(args) -> None:
    from .images import read_image
    from .intensity import unit_values
    from .verify import verify_image, verify_volume

    pkg = _model(args.model)
    is_2d = Path(args.image).suffix.lower() in IMAGE_2D
    if args.sources and not (is_2d and all(Path(s).suffix.lower() in IMAGE_2D for s in args.sources)):
        raise AMIFError("--sources works with 2D images (PNG/JPEG) only.")
    if args.key and not args.sources:
        raise AMIFError("--key (the trace check) needs --sources, the two images the image was fused from.")
    if is_2d:
        # the values as stored, mapped to [0, 1] by verify's robust normalisation (intensity.unit_values)
        image, sources = unit_values(read_image(args.image, unit=False), Path(args.image).name)[0], None
        if args.sources:
            from .color import luminance

            sources = [luminance(unit_values(read_image(s, unit=False), Path(s).name)[0]) for s in args.sources]
            if any(s.shape != image.shape[:2] for s in sources):
                raise AMIFError(f"The sources must have the image's size ({image.shape[1]}x{image.shape[0]}).")
        v = verify_image(image, pkg.identifier, pkg.threshold, sources, pkg.shift)
        if sources and (args.key or pkg.public_strength):
            from dataclasses import replace

            from .color import luminance
            from .trace import public_score, trace_check

            grey = luminance(image[..., :3]) if image.ndim == 3 else image
            a, b = (s[None] for s in sources)
            if pkg.public_strength:
                v = replace(v, texture=float(public_score(grey[None], a, b, pkg.model_id)[0]))
            if args.key:
                v = replace(v, trace=float(trace_check(pkg, args.key, grey[None], a, b)[0]))
    else:
        from .fusion import display_array

        arr = display_array(_read_volume(args.image))
        # verify_volume maps it to [0, 1] robustly: a fused output as it is, a few edited voxels cannot flip it
        v = verify_volume(arr[None] if arr.ndim == 2 else arr, pkg.identifier, pkg.threshold)
    print(f"{args.image}: {v}")
    sys.exit(1 if v.flagged else 0)


def _device_arg(text: str) -> str:
    """argparse type of --device: the spelling is checked here, availability when fusion starts."""
    from .device import check_device_name

    try:
        return check_device_name(text)
    except AMIFError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _frame_arg(text: str):
    """argparse type of --frame: a frame number (0 or more) or "mean"."""
    from .volumes import parse_frame

    try:
        return parse_frame(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a frame number (0, 1, ...) or mean") from None


DEVICE_HELP = "torch device to fuse on: auto (a GPU when torch sees one, else the CPU), cpu, cuda, cuda:N or mps"


COMMAND_PLUGINS = "amif.commands"  # entry-point group: functions that add subcommands to the parser


def _command_plugins():
    """The installed distributions' `amif.commands` entry points (each a function taking the
    subparsers object), in name order."""
    from importlib.metadata import entry_points

    try:
        eps = entry_points(group=COMMAND_PLUGINS)
    except TypeError:  # Python 3.9: a dict of groups
        eps = entry_points().get(COMMAND_PLUGINS, [])
    return sorted(eps, key=lambda ep: ep.name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="amif", description="Key-gated medical image fusion (AMIF).")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("demo", help="fuse the bundled sample with and without the demo key")
    s.add_argument("-o", "--output", default="amif-demo-output")
    s.add_argument("-m", "--model")
    s.add_argument("--device", type=_device_arg, default="auto", metavar="auto|cpu|cuda|mps", help=DEVICE_HELP)
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("fuse", help="fuse two registered images or volumes")
    s.add_argument("a", help="first image (MRI)")
    s.add_argument("b", help="second image (CT, PET or SPECT)")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("-k", "--key", help=".amifkey file (without it the output carries the identifier)")
    s.add_argument("-m", "--model", help="model package (default: the bundled demo model)")
    s.add_argument("--device", type=_device_arg, default="auto", metavar="auto|cpu|cuda|mps", help=DEVICE_HELP)
    s.add_argument(
        "--series",
        metavar="UID",
        help="for an input that is a DICOM folder: the SeriesInstanceUID of the series to read "
        "(default: the folder's first series)",
    )
    s.add_argument(
        "--frame",
        type=_frame_arg,
        metavar="N|mean",
        help="for a 4D input: frame N (from 0) or the mean of its frames (3D inputs ignore it)",
    )
    s.add_argument("--threads", type=_threads_arg, metavar="N", help=THREADS_HELP)
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_fuse)

    s = sub.add_parser(
        "fuse-batch",
        help="fuse many subjects with one model load (a CSV or a folder of subject folders)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fuse many subjects in one process: the model loads once. A subject that fails is reported "
        "and the others go on; a summary table is printed and written to OUTPUT/amif-batch-summary.csv"
        "; the exit code is 2 when any subject failed.",
        epilog="SUBJECTS is either\n"
        "  a CSV file with a header row and the columns subject,a,b[,key,output] (relative paths from\n"
        "  the CSV's folder; output: a file name in OUTPUT, default SUBJECT plus --format), or\n"
        "  a folder of subject folders: each subfolder is a subject named after it; A is its one entry\n"
        "  (file or DICOM folder) matching --pattern-a, B the one matching --pattern-b or, without it,\n"
        "  the one other entry (names match regardless of case; hidden entries are left out).\n"
        "Outputs: OUTPUT/SUBJECT.nrrd (or --format); an input is never overwritten.",
    )
    s.add_argument("subjects", metavar="SUBJECTS", help="a .csv file or a folder of subject folders")
    s.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="folder for the outputs and the summary")
    s.add_argument("--format", default=".nrrd", help="output format of each subject (default .nrrd)")
    s.add_argument(
        "--pattern-a",
        default="mri*",
        metavar="GLOB",
        help="folder mode: the name of A in each subject folder (default mri*)",
    )
    s.add_argument("--pattern-b", metavar="GLOB", help="folder mode: the name of B (default: the other entry)")
    s.add_argument("-k", "--key", help=".amifkey for every subject (a CSV's key column overrides it)")
    s.add_argument("-m", "--model", help="model package (default: the bundled demo model)")
    s.add_argument("--device", type=_device_arg, default="auto", metavar="auto|cpu|cuda|mps", help=DEVICE_HELP)
    s.add_argument("--series", metavar="UID", help="as for fuse")
    s.add_argument("--frame", type=_frame_arg, metavar="N|mean", help="as for fuse")
    s.add_argument("--threads", type=_threads_arg, metavar="N", help=THREADS_HELP)
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_fuse_batch)

    s = sub.add_parser("keygen", help="create a key file for a model id")
    s.add_argument("--model-id", required=True)
    s.add_argument("--licensee", required=True)
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=cmd_keygen)

    s = sub.add_parser("info", help="print a model package's manifest, parameters and FLOPs")
    s.add_argument("model", nargs="?")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser(
        "verify",
        help="does an image carry the identifier, show it wiped off or "
        "(with --sources) the model's mark shift or public texture, or (with --key too) its trace? "
        "(exit 1 if so)",
    )
    s.add_argument("image")
    s.add_argument("-m", "--model")
    s.add_argument(
        "--sources",
        nargs=2,
        metavar=("A", "B"),
        help="the two images it was fused from: also checks the model's mark shift and public "
        "texture, which follow the anatomy (2D images)",
    )
    s.add_argument(
        "--key",
        help="with --sources, the owner's .amifkey: also looks for the model's secret texture "
        "(trace channel), which students distilled from its unkeyed outputs carry",
    )
    s.set_defaults(func=cmd_verify)

    for ep in _command_plugins():  # e.g. train, evaluate and attack, when amif-research is installed
        ep.load()(sub)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that it ends as on Ctrl-C: temporary files removed."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _outputs(args) -> list[Path]:
    """The files a command writes, for the message when it is cancelled."""
    if args.cmd in ("fuse", "keygen"):
        return [Path(args.output)]
    if args.cmd == "demo":
        return [Path(args.output) / n for n in ("fused-keyed.nrrd", "fused-unkeyed.nrrd", "demo-side-by-side.png")]
    outputs = getattr(args, "outputs", None)  # a plugin command's own: a function of its arguments
    return list(outputs(args)) if outputs else []


def _stamp(path: Path):
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def _cancel_note(before: dict) -> str:
    """What a cancel left of each output: outputs are renamed into place complete (amif.files), so a
    changed file is a complete new one."""
    notes = []
    for path, old in before.items():
        new = _stamp(path)
        if new == old:
            notes.append(f"{shown(path)} was not written" if old is None else f"{shown(path)} was left as it was")
        else:
            notes.append(f"{shown(path)} was written completely before the cancel")
    return "".join(f"; {n}" for n in notes)


def main(argv=None) -> int:
    """Run one command; returns the exit code: 0, 1 (`verify`: flagged), 2 (an error: one `amif: error:`
    line, for bad input and for every failure of the operating system such as a full disk or a folder
    that cannot be written), 130 (Ctrl-C) or 143 (SIGTERM). Cancelled or terminated, the message says for
    each output whether it was left as it was or written completely; it is never left half written."""
    import signal
    import threading

    args = build_parser().parse_args(argv)
    old_term = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    before = {p: _stamp(p) for p in _outputs(args)}
    try:
        args.func(args)
        sys.stdout.flush()  # a reader that went away shows up here, not in the flush at exit
    except AMIFError as e:
        print(f"amif: error: {e}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt) as e:
        print(f"amif: cancelled{_cancel_note(before)}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except BrokenPipeError:  # the reader went away (`amif info | head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush does not fail again
        return 1
    except OSError as e:  # a missing or read-only folder, a full disk, a file-size limit, a name too long
        from .files import os_error_message

        print(f"amif: error: {os_error_message(e)}", file=sys.stderr)
        return 2
    except UnicodeError:  # a file name that cannot be encoded for the file system
        print(
            "amif: error: a file name cannot be encoded for this file system (undecodable characters)", file=sys.stderr
        )
        return 2
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    return 0


if __name__ == "__main__":
    sys.exit(main())
