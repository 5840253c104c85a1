"""Writing files safely (amif.files and the CLI around it), on real files and real processes: an output
that is an input is refused before any work and the input stays byte-identical; a write that fails
(a file-size limit standing in for a full disk) or is interrupted (SIGTERM, SIGINT sent to a child
`amif fuse` in the middle of its write) leaves the previous output byte-identical and no temporary
files; two runs writing one path leave one complete output; bad output names, folders and OS errors
are one `amif: error:` line with exit 2, found before the model is loaded; formats that cannot hold
AMIF's metadata get a sidecar JSON."""

import hashlib
import json
import locale
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

import amif.cli
from amif.cli import main
from conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "AMIFFusion")}


def _volumes(tmp_path: Path):
    rng = np.random.default_rng(0)
    for name in ("a.nrrd", "b.nrrd"):
        sitk.WriteImage(sitk.GetImageFromArray(rng.random((4, 32, 32)).astype(np.float32)), str(tmp_path / name))
    return tmp_path / "a.nrrd", tmp_path / "b.nrrd"


def _pngs(tmp_path: Path):
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((48, 40)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    Image.fromarray((rng.random((48, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / "b.png")
    return tmp_path / "a.png", tmp_path / "b.png"


INPUTS = {"volume": (_volumes, ".nrrd"), "png": (_pngs, ".png")}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if "amif-tmp" in p.name or p.name.endswith(".tmp")]


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("amif: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def model_loads(monkeypatch):
    """Records every model package the CLI loads (so a test can see that a refusal came before any work)."""
    calls = []
    real = amif.cli._model

    def spy(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(amif.cli, "_model", spy)
    return calls


@pytest.mark.parametrize("spelling", ["same", "symlink", "dotdot"])
@pytest.mark.parametrize("kind", list(INPUTS))
def test_output_that_is_an_input_is_refused_before_work(tiny_package, tmp_path, capsys, model_loads, kind, spelling):
    _, _, d = tiny_package
    make, _ = INPUTS[kind]
    a, b = make(tmp_path)
    before = _sha(a)
    if spelling == "same":
        out = a
    elif spelling == "symlink":
        out = tmp_path / ("link" + a.suffix)
        out.symlink_to(a)
    else:
        (tmp_path / "sub").mkdir()
        out = tmp_path / "sub" / ".." / a.name
    assert main(["fuse", str(a), str(b), "-o", str(out), "-m", str(d / "tiny"), "-q"]) == 2
    _one_error_line(capsys.readouterr().err)
    assert _sha(a) == before and model_loads == [] and _leftovers(tmp_path) == []


@pytest.mark.parametrize("kind,out", [("volume", "f.xyz"), ("volume", "f.png"), ("png", "f.nrrd"), ("png", "f")])
def test_bad_output_format_is_refused_before_the_model_loads(tiny_package, tmp_path, capsys, model_loads, kind, out):
    _, _, d = tiny_package
    a, b = INPUTS[kind][0](tmp_path)
    assert main(["fuse", str(a), str(b), "-o", str(tmp_path / out), "-m", str(d / "tiny"), "-q"]) == 2
    _one_error_line(capsys.readouterr().err)
    assert model_loads == [] and not (tmp_path / out).exists() and _leftovers(tmp_path) == []


def test_empty_key_path_is_an_error(tiny_package, tmp_path, capsys, model_loads):
    _, _, d = tiny_package
    a, b = _pngs(tmp_path)
    out = tmp_path / "f.png"
    assert main(["fuse", str(a), str(b), "-o", str(out), "-k", "", "-m", str(d / "tiny")]) == 2
    assert "-k" in _one_error_line(capsys.readouterr().err)
    assert not out.exists() and model_loads == []


def test_directory_input_is_one_line_without_library_noise(tiny_package, tmp_path, capfd, model_loads):
    _, _, d = tiny_package
    _, b = _volumes(tmp_path)
    (tmp_path / "series").mkdir()
    out = tmp_path / "f.nrrd"
    capfd.readouterr()
    assert main(["fuse", str(tmp_path / "series"), str(b), "-o", str(out), "-m", str(d / "tiny"), "-q"]) == 2
    err = capfd.readouterr().err  # the file descriptor: C libraries print there, not through sys.stderr
    _one_error_line(err)
    assert "HDF5" not in err and not out.exists() and model_loads == []


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nothing can be created in: chmod 555, or (as root, whom modes do not stop) a read-only tmpfs."""
    d = tmp_path / "readonly"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("running as root and cannot mount a read-only tmpfs")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


@pytest.mark.parametrize(
    "cmd,where",
    [
        (c, w)
        for c in ("fuse", "keygen", "demo")
        for w in ("missing-folder", "readonly-folder", "name-too-long", "under-a-file")
        if (c, w) != ("demo", "missing-folder")
    ],
)  # demo makes its folder
def test_os_errors_are_one_line_before_any_work(tiny_package, tmp_path, capsys, model_loads, request, cmd, where):
    _, _, d = tiny_package
    a, b = _volumes(tmp_path)
    (tmp_path / "plain").write_text("x")
    folder = {
        "missing-folder": tmp_path / "missing",
        "name-too-long": tmp_path,
        "under-a-file": tmp_path / "plain",
        "readonly-folder": request.getfixturevalue("readonly_dir") if where == "readonly-folder" else None,
    }[where]
    name = "x" * 300 if where == "name-too-long" else "out"
    out = folder / (name + {"fuse": ".nrrd", "keygen": ".amifkey", "demo": ""}[cmd])
    args = {
        "fuse": ["fuse", str(a), str(b), "-o", str(out), "-m", str(d / "tiny"), "-q"],
        "keygen": ["keygen", "--model-id", "m", "--licensee", "L", "-o", str(out)],
        "demo": ["demo", "-o", str(out), "-m", str(d / "tiny"), "-q"],
    }[cmd]
    listing = sorted(p.name for p in tmp_path.iterdir())
    assert main(args) == 2
    _one_error_line(capsys.readouterr().err)
    assert model_loads == [] and sorted(p.name for p in tmp_path.iterdir()) == listing


def test_undecodable_output_name_is_one_line(tiny_package, tmp_path):
    """SimpleITK cannot take a name that is not UTF-8 (its C++ aborted the process); a PNG can have one."""
    _, _, d = tiny_package
    a, b = _volumes(tmp_path)
    out = os.fsencode(tmp_path) + b"/\xff.nrrd"
    p = subprocess.run(
        [sys.executable, "-m", "amif", "fuse", str(a), str(b), "-o", out, "-m", str(d / "tiny"), "-q"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert p.returncode == 2, p.stderr
    _one_error_line(p.stderr)
    assert not os.path.exists(out) and _leftovers(tmp_path) == []


def _limited(limit: int):
    def apply():  # a full disk, as the writer sees it: writes past `limit` bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _existing_output(tiny_package, tmp_path, kind):
    """Inputs of `kind` and an output already fused from them (no key): (a, b, out, key, model folder)."""
    _, key, d = tiny_package
    make, suffix = INPUTS[kind]
    a, b = make(tmp_path)
    out = tmp_path / ("f" + suffix)
    assert main(["fuse", str(a), str(b), "-o", str(out), "-m", str(d / "tiny"), "-q"]) == 0
    return a, b, out, key, d


@pytest.mark.parametrize("kind", list(INPUTS))
def test_a_failed_write_leaves_the_existing_output(tiny_package, tmp_path, kind):
    a, b, out, key, d = _existing_output(tiny_package, tmp_path, kind)
    before = _sha(out)
    limit = out.stat().st_size // 2
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "amif",
            "fuse",
            str(a),
            str(b),
            "-o",
            str(out),
            "-k",
            str(key),
            "-m",
            str(d / "tiny"),
            "-q",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        preexec_fn=_limited(limit),
        timeout=300,
    )
    assert p.returncode == 2, p.stderr
    _one_error_line(p.stderr)
    assert _sha(out) == before and _leftovers(tmp_path) == []


def test_keygen_under_a_full_disk_writes_nothing(tmp_path):
    out = tmp_path / "k.amifkey"
    p = subprocess.run(
        [sys.executable, "-m", "amif", "keygen", "--model-id", "m", "--licensee", "L", "-o", str(out)],
        capture_output=True,
        text=True,
        env=ENV,
        preexec_fn=_limited(64),
        timeout=300,
    )
    assert p.returncode == 2, p.stderr
    _one_error_line(p.stderr)
    assert sorted(tmp_path.iterdir()) == []


# A child `amif` whose writers (SimpleITK's WriteImage, PIL's save) write the real bytes slowly: the first
# half, then (mode "signal") a line on stdout and a pause for the parent's signal, or (modes "A" and "B")
# a handshake through files in STAGE so that B's first half lands after A's and A's second half last.
CHILD = r"""
import io, signal, sys, time
from pathlib import Path

stage, mode, argv = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)


def wait_for(name):
    for _ in range(6000):
        if (stage / name).exists():
            return
        time.sleep(0.01)


def slow_copy(data, path):
    if mode == "B":
        wait_for("A1")
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        if mode == "signal":
            print("WRITING", flush=True)
            time.sleep(120)
        (stage / (mode + "1")).write_text("")
        if mode == "A":
            wait_for("B2")
        f.write(data[len(data) // 2:])
    (stage / (mode + "2")).write_text("")


def staged(name):
    (stage / mode).mkdir(exist_ok=True)
    return stage / mode / name


import SimpleITK as sitk

real_write = sitk.WriteImage


def write_image(image, path, *args, **kwargs):
    full = staged(Path(path).name)
    real_write(image, str(full), *args, **kwargs)
    slow_copy(full.read_bytes(), path)


sitk.WriteImage = write_image
from PIL import Image

real_save = Image.Image.save


def save(self, fp, *args, **kwargs):
    buf = io.BytesIO()
    real_save(self, buf, *args, format=Image.registered_extensions()[Path(fp).suffix.lower()], **kwargs)
    staged(Path(fp).name).write_bytes(buf.getvalue())
    slow_copy(buf.getvalue(), fp)


Image.Image.save = save
from amif.cli import main

sys.exit(main(argv))
"""


def _child(tmp_path: Path, mode: str, args: list[str], **kw) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    stage = tmp_path / "stage"
    stage.mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, str(script), str(stage), mode, *args],
        env=ENV,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("kind", list(INPUTS))
def test_a_signal_during_the_write_leaves_the_old_output(tiny_package, tmp_path, kind, sig):
    a, b, out, key, d = _existing_output(tiny_package, tmp_path, kind)
    before = _sha(out)
    proc = _child(
        tmp_path, "signal", ["fuse", str(a), str(b), "-o", str(out), "-k", str(key), "-m", str(d / "tiny"), "-q"]
    )
    try:
        assert proc.stdout.readline().strip() == "WRITING", proc.stderr.read()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode in (130, 143), (proc.returncode, err)
    assert "cancelled" in err and out.name in err and "Traceback" not in err
    assert _sha(out) == before and _leftovers(tmp_path) == []


def test_two_writers_of_one_path_leave_one_complete_output(tiny_package, tmp_path):
    _, key, d = tiny_package
    a, b = _volumes(tmp_path)
    out = tmp_path / "f.nrrd"
    args = ["fuse", str(a), str(b), "-o", str(out), "-m", str(d / "tiny"), "-q"]
    first = _child(tmp_path, "A", [*args, "-k", str(key)])
    second = _child(tmp_path, "B", args)
    assert first.wait(timeout=300) == 0 and second.wait(timeout=300) == 0
    complete = {_sha(tmp_path / "stage" / m / out.name) for m in ("A", "B")}
    assert len(complete) == 2 and _sha(out) in complete
    assert sitk.ReadImage(str(out)).GetMetaData("AMIF_key_state") in ("match", "none")
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".nii.gz", ".tif", ".vtk", ".hdr"])
def test_formats_without_metadata_get_a_sidecar(tiny_package, tmp_path, capsys, suffix):
    """The sidecar holds what an NRRD of the same fusion holds in its header, and the output's hash."""
    _, key, d = tiny_package
    a, b = _volumes(tmp_path)
    out, nrrd = tmp_path / ("f" + suffix), tmp_path / "ref.nrrd"
    for o in (out, nrrd):
        assert main(["fuse", str(a), str(b), "-o", str(o), "-k", str(key), "-m", str(d / "tiny"), "-q"]) == 0
    side = tmp_path / (out.name + ".amif.json")
    assert side.name in capsys.readouterr().out
    doc = json.loads(side.read_text())
    ref = sitk.ReadImage(str(nrrd))
    amif_keys = [k for k in ref.GetMetaDataKeys() if k.startswith("AMIF_")]
    assert len(amif_keys) >= 5 and {k: doc[k] for k in amif_keys} == {k: ref.GetMetaData(k) for k in amif_keys}
    assert doc["AMIF_key_state"] == "match" and doc["output_sha256"] == _sha(out)
    assert not (tmp_path / (nrrd.name + ".amif.json")).exists()  # NRRD holds it itself
    saved = locale.setlocale(locale.LC_ALL)
    try:  # SimpleITK's VTK reader sets the C library's locale to "C", and a later test would read text as ASCII
        assert sitk.ReadImage(str(out)).GetSize() == (32, 32, 4)
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    if suffix in (".nii.gz", ".hdr"):  # the header's description holds a summary too
        r = sitk.ImageFileReader()
        r.SetFileName(str(out))
        r.ReadImageInformation()
        assert "AMIF" in r.GetMetaData("descrip") and "match" in r.GetMetaData("descrip")


def test_average_refuses_to_overwrite_one_of_its_packages(tiny_package, tmp_path, capsys):
    import torch

    from amif.package import save_package

    pkg, _, _ = tiny_package
    m = pkg.manifest
    net = type(pkg.net)(pkg.net.cfg)
    net.load_state_dict(pkg.net.state_dict())
    for name, step in (("one", 0.0), ("two", 0.01)):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(step)
        save_package(
            tmp_path / name,
            net,
            model_id=m["model_id"],
            key_id=m["key_id"],
            identifier=m["identifier"],
            verify=m["verify"],
        )
    before = {p.name: _sha(p) for p in tmp_path.iterdir()}
    assert main(["average", str(tmp_path / "one"), str(tmp_path / "two"), "-o", str(tmp_path / "one.json")]) == 2
    _one_error_line(capsys.readouterr().err)
    assert {p.name: _sha(p) for p in tmp_path.iterdir()} == before


def test_atomic_output_keeps_the_old_file_on_failure_and_moves_companions(tmp_path):
    from amif.files import atomic_output

    out = tmp_path / "v.mhd"
    out.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_output(out) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert out.read_text() == "old" and _leftovers(tmp_path) == []
    with atomic_output(out) as tmp:
        tmp.write_text("new")
        tmp.with_name("v.zraw").write_text("data")
    assert out.read_text() == "new" and (tmp_path / "v.zraw").read_text() == "data" and _leftovers(tmp_path) == []
    with pytest.raises(FileExistsError), atomic_output(out, replace=False) as tmp:
        tmp.write_text("newer")
    assert out.read_text() == "new" and _leftovers(tmp_path) == []
