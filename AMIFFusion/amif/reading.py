"""Bounded reads of small files (key files, model manifests): the size is capped and only regular files are read.

A path can name anything: a folder, a named pipe (reading it waits for a writer), a device such as
/dev/zero (endless), a huge or sparse file. `read_small_file` opens without blocking, refuses what is
not a regular file and what is larger than the cap, and never reads more than cap + 1 bytes, so a
file that grows meanwhile, or one that reports a wrong size (/proc), cannot make it read more.
"""

from __future__ import annotations

import os
import stat

from .errors import AMIFError

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_small_file(path, limit: int, what: str) -> bytes:
    """The bytes of the regular file at `path` (symbolic links followed), at most `limit` of them.

    Every problem is an AMIFError starting with `what` (e.g. "Key file lab.amifkey"): "... does not
    exist.", "... is not a regular file (a named pipe).", "... is too large: N bytes; ... is at most
    `limit` bytes." or "... cannot be read: <OSError class>.". Opening never waits (O_NONBLOCK: a
    named pipe without a writer is refused at once), and at most limit + 1 bytes are ever read."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise AMIFError(f"{what} does not exist.") from None
    except IsADirectoryError:  # Windows cannot open a folder as a file
        raise AMIFError(f"{what} is not a regular file (a folder).") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        raise AMIFError(f"{what} cannot be read: {e.__class__.__name__}.") from None
    try:
        try:
            st = os.fstat(fd)
        except OSError as e:
            raise AMIFError(f"{what} cannot be read: {e.__class__.__name__}.") from None
        mode, size = st.st_mode, st.st_size
        if not stat.S_ISREG(mode):
            kind = next((k for test, k in _KINDS if test(mode)), "a special file")
            raise AMIFError(f"{what} is not a regular file ({kind}).")
        too_large = f"{what} is too large: over {limit} bytes, the most such a file can have."
        if size > limit:
            raise AMIFError(too_large)
        chunks, got = [], 0
        while got <= limit:
            try:
                chunk = os.read(fd, limit + 1 - got)
            except OSError as e:
                raise AMIFError(f"{what} cannot be read: {e.__class__.__name__}.") from None
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got > limit:  # it grew after fstat, or reported a wrong size
            raise AMIFError(too_large)
        return b"".join(chunks)
    finally:
        os.close(fd)
