"""Writing files safely: an output appears complete or not at all, and never replaces an input.

Every file AMIF writes (fused images and volumes, key files, model packages, reports, figures) is
written through `atomic_output`: the writer gets a path with the output's own name inside a new
hidden folder beside the output (`.amif-tmp-XXXXXXXX`), so writers that pick the format from the
name, or that write a second file beside the first (.mhd/.zraw, .nhdr/.raw.gz, .hdr/.img, a
package's weights), work unchanged. Only when the writer has finished are the files flushed to
disk and renamed into place with `os.replace` (the named file last), with SIGINT and SIGTERM held
back during the renames. A write that fails or is interrupted (a full disk, a file-size limit, a
signal) removes the hidden folder and leaves whatever was at the output's path as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import AMIFError

TMP_PREFIX = ".amif-tmp-"


def shown(path) -> str:
    """A path as text that can always be printed (undecodable bytes of a file name become U+FFFD)."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        return text.decode("utf-8", "replace")
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def os_error_message(e: OSError) -> str:
    """One line for an OSError: 'NAME: reason' (e.g. 'out.nrrd: No space left on device')."""
    reason = e.strerror or str(e) or e.__class__.__name__
    return f"{shown(e.filename)}: {reason}" if e.filename is not None else reason


def same_file(a, b) -> bool:
    """Do paths `a` and `b` name one file, after symlinks and `..` (or as two hard links of it)?"""
    try:
        if os.path.realpath(a) == os.path.realpath(b):
            return True
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except (OSError, ValueError):  # ValueError: a NUL in a path, which names no file
        return False


def refuse_input_as_output(out, inputs) -> None:
    """An AMIFError if `out` is one of `inputs` (None entries skipped): checked before any work."""
    for p in inputs:
        if p is not None and same_file(out, p):
            raise AMIFError(f"The output {shown(out)} is the input {shown(p)}: refusing to overwrite an input.")


def check_output(path) -> None:
    """An AMIFError unless a file with `path`'s name can be created in its folder: the folder exists and
    is writable and the name is valid there (length, characters). Probed in a hidden temporary folder,
    so nothing at `path` is touched; meant to run before long work."""
    path = Path(path)
    where = shown(path)
    try:
        if path.is_dir():
            raise AMIFError(f"The output {where} is a folder: give a file name.")
        folder = path.parent
        if not folder.is_dir():
            raise AMIFError(f"The output folder {shown(folder)} does not exist.")
    except OSError as e:  # e.g. a name too long to look up
        raise AMIFError(f"Cannot write {where}: {e.strerror or e}.") from None
    try:
        tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=folder)
    except OSError as e:
        raise AMIFError(f"Cannot write in the folder {shown(folder)}: {e.strerror or e}.") from None
    try:
        os.close(os.open(os.path.join(tmp, path.name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as e:
        raise AMIFError(f"Cannot write {where}: {e.strerror or e}.") from None
    except (UnicodeError, ValueError):
        raise AMIFError(f"Cannot write {where}: the file name cannot be encoded for this file system.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM are delivered after the block, not during it (where the OS allows it)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _fsync(path: str, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:
            return  # some systems cannot open a folder for syncing
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path, replace: bool = True) -> Iterator[Path]:
    """Yield the path to write `path` at: `path`'s name in a new hidden folder beside it. Files the block
    writes into that folder (the output and any companions) are renamed into `path`'s folder when it
    ends without an exception, `path` last. On any exception (KeyboardInterrupt included) the folder
    is removed and the exception goes on; the file at `path`, if any, is left as it was.
    `replace=False`: an existing `path` is never replaced (FileExistsError), even by a race."""
    path = Path(path)
    folder = path.parent
    try:
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=folder))
    except OSError as e:  # name the folder, not the temporary name
        raise OSError(e.errno, e.strerror, str(folder)) from None
    try:
        try:
            yield tmp / path.name
        except OSError as e:  # name the output, not the temporary file the writer was at
            if e.filename is None or not str(e.filename).startswith(str(tmp)):
                raise
            raise OSError(e.errno, e.strerror, str(folder / Path(e.filename).name)) from None
        names = sorted(os.listdir(tmp), key=lambda n: n == path.name)  # the named file last
        if path.name not in names:
            raise OSError(errno.ENOENT, "the writer wrote no file", str(path))
        for n in names:
            _fsync(str(tmp / n))
        with _signals_held():
            for n in names:
                if n == path.name and not replace:
                    _place_new(tmp / n, path)
                else:
                    os.replace(tmp / n, folder / n)
            _fsync(str(folder), directory=True)
    finally:
        with _signals_held():
            shutil.rmtree(tmp, ignore_errors=True)


def _place_new(src: Path, dst: Path) -> None:
    """Rename src to dst unless dst exists (FileExistsError): a hard link is atomic, where one can be made."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "exists already", str(dst)) from None
    except OSError:  # no hard links on this file system
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "exists already", str(dst)) from None
        os.replace(src, dst)
    else:
        os.unlink(src)


def write_text(path, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (see atomic_output); returns `path`."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return path


def write_bytes(path, data: bytes) -> Path:
    """Write `data` to `path` atomically (see atomic_output); returns `path`."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return path
