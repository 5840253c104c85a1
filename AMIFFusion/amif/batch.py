"""`amif fuse-batch`: many subjects fused with one model load, in one process.

Subjects come from a CSV file or from a folder of subject folders (`find_subjects`):

- CSV: a header row, then one row per subject with the columns `subject`, `a`, `b` and optionally `key`
  (an .amifkey; empty: the batch's --key, if any) and `output` (a file name inside the output folder;
  empty: SUBJECT plus the batch's format). Relative input and key paths are taken from the CSV's folder.
- a folder: each subfolder (hidden ones left out) is a subject named after it. Inside it, A is the one
  entry (a file, or a DICOM series folder) whose name matches `pattern_a` (default `mri*`), B the one
  matching `pattern_b`, or, without `pattern_b`, the one other entry. Names match without regard to
  case; hidden entries and AMIF's own outputs (*.amif.json sidecars) are left out. A subject folder
  where this does not give exactly one A and one B is a failed subject, not a failed batch.

`run_batch` fuses each subject with the function it is given: `amif fuse-batch` gives it amif.cli's
fuse_files (the `fuse` command's code path) on one loaded model package; a subject's AMIFError or
OSError is recorded in its row and the batch goes on.
The rows are written as a CSV summary (SUMMARY_NAME) in the output folder, atomically.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import AMIFError
from .files import os_error_message, refuse_input_as_output, shown, write_text

SUMMARY_NAME = "amif-batch-summary.csv"
SUMMARY_COLUMNS = ("subject", "state", "verdict", "score", "seconds", "output", "error")
DEFAULT_PATTERN_A = "mri*"
CSV_COLUMNS = ("subject", "a", "b")


@dataclass(frozen=True)
class Subject:
    name: str
    a: Path | None = None
    b: Path | None = None
    key: Path | None = None
    output: str = ""  # a file name in the output folder; "": the subject's name plus the batch's format
    problem: str = ""  # why the subject cannot be fused (found while listing): it fails, the batch goes on


def _check_name(name: str, where: str) -> str:
    name = name.strip()
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise AMIFError(f"{where}: {shown(name)!r} is not a usable subject or output name (empty, or a path).")
    return name


def read_csv(path) -> list[Subject]:
    """The subjects of a CSV file (see the module's notes); a missing column, an empty or duplicate subject
    name, or a row without A or B is an AMIFError naming the row."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise AMIFError(f"{shown(path.name)} is not a UTF-8 text (CSV) file.") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [c.strip().lower() for c in (reader.fieldnames or [])]
    rows = list(reader)
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise AMIFError(
            f"{shown(path.name)} needs a header row with the columns subject, a, b (and optionally "
            f"key, output); missing: {', '.join(missing)}."
        )
    base = path.parent
    subjects = []
    for n, row in enumerate(rows, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        where = f"{shown(path.name)}, row {n}"
        name = _check_name(row["subject"], where)
        if not row["a"] or not row["b"]:
            raise AMIFError(f"{where}: subject {shown(name)} needs both a and b.")
        output = _check_name(row["output"], where) if row.get("output") else ""
        key = base / row["key"] if row.get("key") else None
        subjects.append(Subject(name, base / row["a"], base / row["b"], key, output))
    if not subjects:
        raise AMIFError(f"{shown(path.name)} lists no subjects.")
    return _unique(subjects)


def _unique(subjects: list[Subject]) -> list[Subject]:
    seen = set()
    for s in subjects:
        if s.name in seen:
            raise AMIFError(f"The subject {shown(s.name)} is listed twice: subject names name the outputs.")
        seen.add(s.name)
    return subjects


def _entries(folder: Path) -> list[Path]:
    """A folder's entries in name order, hidden ones and AMIF's metadata sidecars left out."""
    return sorted(
        p for p in folder.iterdir() if not p.name.startswith(".") and not p.name.lower().endswith(".amif.json")
    )


def find_subjects(folder, pattern_a: str = DEFAULT_PATTERN_A, pattern_b: str | None = None) -> list[Subject]:
    """The subjects of a folder of subject folders (see the module's notes), in name order. A folder
    without subfolders is an AMIFError; a subject folder without exactly one A and one B is a Subject
    with its `problem` set."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AMIFError(f"{shown(folder)} is neither a CSV file nor a folder of subject folders.")
    subjects = []
    for sub in _entries(folder):
        if not sub.is_dir():
            continue
        entries = _entries(sub)
        match_a = [p for p in entries if fnmatch.fnmatch(p.name.lower(), pattern_a.lower())]
        rest = [p for p in entries if p not in match_a]
        match_b = [p for p in rest if fnmatch.fnmatch(p.name.lower(), pattern_b.lower())] if pattern_b else rest
        if len(match_a) != 1 or len(match_b) != 1:
            found = ", ".join(shown(p.name) for p in entries) or "nothing"
            rule_b = f"one matching {pattern_b!r}" if pattern_b else "one other entry"
            problem = f"needs one entry matching {pattern_a!r} (A) and {rule_b} (B); it holds {found}"
            subjects.append(Subject(sub.name, problem=problem))
        else:
            subjects.append(Subject(sub.name, match_a[0], match_b[0]))
    if not subjects:
        raise AMIFError(f"The folder {shown(folder)} holds no subject folders.")
    return subjects


def list_subjects(source, pattern_a: str = DEFAULT_PATTERN_A, pattern_b: str | None = None) -> list[Subject]:
    """`read_csv` for a .csv file, else `find_subjects` for a folder."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        return read_csv(source)
    if source.is_file():
        raise AMIFError(f"{shown(source.name)}: give a .csv file or a folder of subject folders.")
    return find_subjects(source, pattern_a, pattern_b)


def prepare_output(subjects: list[Subject], out_dir) -> Path:
    """Create out_dir (if missing) and return the summary's path there; an AMIFError if it is an input."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = out_dir / SUMMARY_NAME
    refuse_input_as_output(summary, [p for s in subjects for p in (s.a, s.b, s.key)])
    return summary


def run_batch(
    subjects: list[Subject], out_dir, fuse, fmt: str = ".nrrd", key=None, progress: bool = True
) -> list[dict]:
    """Fuse every subject into out_dir with `fuse(a, b, out, key)` (amif.cli's fuse_files on one loaded model
    package; it returns the output's AMIF_* metadata); returns one row per subject (SUMMARY_COLUMNS; state
    "ok" or "failed") and writes them to out_dir/SUMMARY_NAME (prepare_output). A subject's AMIFError or
    OSError fails that subject only, with its message in the row's "error"; the batch goes on."""
    summary = prepare_output(subjects, out_dir)
    rows = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(subjects), desc="fuse-batch", unit="subject")
    try:
        for s in subjects:
            out = Path(out_dir) / (s.output or s.name + fmt)
            t = time.perf_counter()
            row = {"subject": s.name, "state": "failed", "verdict": "", "score": "", "output": "", "error": ""}
            try:
                if s.problem:
                    raise AMIFError(s.problem)
                meta = fuse(s.a, s.b, out, s.key or key)
                row.update(state="ok", verdict=meta["AMIF_watermark"], score=meta["AMIF_score"], output=str(out))
            except (AMIFError, OSError) as e:
                row["error"] = str(e) if isinstance(e, AMIFError) else os_error_message(e)
            row["seconds"] = f"{time.perf_counter() - t:.1f}"
            rows.append(row)
            if bar:
                bar.update(1)
    finally:
        if bar:
            bar.close()
    write_summary(summary, rows)
    return rows


def write_summary(path, rows: list[dict]) -> None:
    """The rows as a CSV file (SUMMARY_COLUMNS), written atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, SUMMARY_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def summary_table(rows: list[dict]) -> str:
    """The rows as an aligned text table: subject, state, verdict, seconds, output or error."""
    table = [("subject", "state", "verdict", "seconds", "output or error")]
    table += [
        (
            r["subject"],
            r["state"],
            f"{r['verdict']} {r['score']}".strip(),
            r["seconds"],
            r["output"] if r["state"] == "ok" else r["error"],
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4] for row in table)
