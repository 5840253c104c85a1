"""`amif fuse-batch` (CSV and folder modes, one model load, failures per subject, summary) and --threads."""

import csv

import numpy as np
import pytest
import SimpleITK as sitk

from amif.cli import main


def _volume(path, seed, size=(32, 32, 3)):
    rng = np.random.default_rng(seed)
    img = sitk.GetImageFromArray(rng.random(size[::-1], dtype=np.float32) * 100)
    sitk.WriteImage(img, str(path))
    return path


@pytest.fixture
def loads(monkeypatch):
    """Counts amif.package.load_package calls."""
    import amif.package

    calls = []
    real = amif.package.load_package

    def counted(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(amif.package, "load_package", counted)
    return calls


def _summary(folder):
    with open(folder / "amif-batch-summary.csv", newline="", encoding="utf-8") as f:
        return {r["subject"]: r for r in csv.DictReader(f)}


def test_csv_batch_one_bad_subject_does_not_stop_the_others(tmp_path, tiny_package, loads, capsys):
    _, _, d = tiny_package
    for s in ("s1", "s2", "s3"):
        _volume(tmp_path / f"{s}-mri.nrrd", 1)
        _volume(tmp_path / f"{s}-pet.nrrd", 2)
    (tmp_path / "s2-pet.nrrd").write_bytes(b"not a volume")
    (tmp_path / "subjects.csv").write_text(
        "subject,a,b,output\n"
        "s1,s1-mri.nrrd,s1-pet.nrrd,\n"
        "s2,s2-mri.nrrd,s2-pet.nrrd,\n"
        "s3,s3-mri.nrrd,s3-pet.nrrd,s3-fused.nii.gz\n"
    )
    out = tmp_path / "out"
    rc = main(["fuse-batch", str(tmp_path / "subjects.csv"), "-o", str(out), "-m", str(d / "tiny"), "-q"])
    assert rc == 2
    assert len(loads) == 1  # the model loaded once for the whole batch
    rows = _summary(out)
    assert [rows[s]["state"] for s in ("s1", "s2", "s3")] == ["ok", "failed", "ok"]
    assert "s2-pet.nrrd" in rows["s2"]["error"] and rows["s2"]["output"] == ""
    assert float(rows["s1"]["seconds"]) >= 0
    assert rows["s3"]["output"].endswith("s3-fused.nii.gz")
    assert (out / "s1.nrrd").exists() and (out / "s3-fused.nii.gz").exists() and not (out / "s2.nrrd").exists()
    fused = sitk.ReadImage(str(out / "s1.nrrd"))
    assert rows["s1"]["verdict"] == fused.GetMetaData("AMIF_watermark")
    assert rows["s1"]["score"] == fused.GetMetaData("AMIF_score")
    captured = capsys.readouterr()
    assert "s2" in captured.out and "failed" in captured.out  # the table
    assert "1 of 3 subjects failed" in captured.err


def test_folder_batch_naming_rule_and_exit_code(tmp_path, tiny_package, loads):
    pkg, key, d = tiny_package
    subjects = tmp_path / "subjects"
    for i, s in enumerate(("alice", "bob")):
        (subjects / s).mkdir(parents=True)
        _volume(subjects / s / "MRI_T1.nrrd", i)
        _volume(subjects / s / "pet.nrrd", i + 10)
    out = tmp_path / "out"
    args = ["fuse-batch", str(subjects), "-o", str(out), "-m", str(d / "tiny"), "-k", str(key), "-q"]
    assert main(args) == 0
    rows = _summary(out)
    assert set(rows) == {"alice", "bob"} and all(r["state"] == "ok" for r in rows.values())
    for s in ("alice", "bob"):  # the owner's key, for every subject
        assert sitk.ReadImage(str(out / f"{s}.nrrd")).GetMetaData("AMIF_key_state") == "match"
    assert len(loads) == 1
    # a subject folder with two candidates for B fails alone; --pattern-b picks one
    _volume(subjects / "bob" / "ct.nrrd", 3)
    assert main(args + ["--format", "mha"]) == 2
    rows = _summary(out)
    assert rows["alice"]["state"] == "ok" and rows["bob"]["state"] == "failed"
    assert "ct.nrrd" in rows["bob"]["error"] and (out / "alice.mha").exists()
    assert main(args + ["--pattern-b", "pet*"]) == 0


def test_batch_never_overwrites_an_input(tmp_path, tiny_package):
    _, _, d = tiny_package
    out = tmp_path / "out"
    out.mkdir()
    a = _volume(out / "a.nrrd", 1)
    _volume(tmp_path / "b.nrrd", 2)
    before = a.read_bytes()
    (tmp_path / "list.csv").write_text("subject,a,b,output\nx,out/a.nrrd,b.nrrd,a.nrrd\n")
    assert main(["fuse-batch", str(tmp_path / "list.csv"), "-o", str(out), "-m", str(d / "tiny"), "-q"]) == 2
    assert a.read_bytes() == before
    assert "refusing to overwrite an input" in _summary(out)["x"]["error"]


def test_bad_subject_lists_are_one_error(tmp_path, capsys):
    (tmp_path / "bad.csv").write_text("name,a,b\nx,a.nrrd,b.nrrd\n")
    assert main(["fuse-batch", str(tmp_path / "bad.csv"), "-o", str(tmp_path / "o"), "-q"]) == 2
    assert "missing: subject" in capsys.readouterr().err
    (tmp_path / "dup.csv").write_text("subject,a,b\nx,a.nrrd,b.nrrd\nx,c.nrrd,d.nrrd\n")
    assert main(["fuse-batch", str(tmp_path / "dup.csv"), "-o", str(tmp_path / "o"), "-q"]) == 2
    assert "listed twice" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["fuse-batch", str(tmp_path / "empty"), "-o", str(tmp_path / "o"), "-q"]) == 2
    assert "no subject folders" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["fuse", "fuse-batch"])
def test_threads_option_sets_torch_threads(tmp_path, tiny_package, command):
    import torch

    from amif.cli import DEFAULT_THREADS, build_parser

    _, _, d = tiny_package
    a, b = _volume(tmp_path / "mri.nrrd", 1), _volume(tmp_path / "pet.nrrd", 2)
    old = torch.get_num_threads()
    try:
        if command == "fuse":
            args = ["fuse", str(a), str(b), "-o", str(tmp_path / "f.nrrd")]
        else:
            (tmp_path / "l.csv").write_text(f"subject,a,b\ns,{a},{b}\n")
            args = ["fuse-batch", str(tmp_path / "l.csv"), "-o", str(tmp_path / "o")]
        for n in (2, 1):
            assert main(args + ["-m", str(d / "tiny"), "-q", "--threads", str(n)]) == 0
            assert torch.get_num_threads() == n
        assert build_parser().parse_args(args).threads is None  # DEFAULT_THREADS, documented in --help
        assert DEFAULT_THREADS >= 1
        with pytest.raises(SystemExit):
            build_parser().parse_args(args + ["--threads", "0"])
    finally:
        torch.set_num_threads(old)
