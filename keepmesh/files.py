"""Reading a file a user named (a config, key, root, policy, topology): never blocks on
opening it, never reads without end.

Why one helper: `open()` of a FIFO waits until something opens it for writing, so a
FIFO given as `--config`, `--key`, `--root`, `--policy` or a topology hung the command
forever; `Path.read_bytes()` of /dev/zero reads until memory runs out. Here the file is
opened non-blocking: a FIFO or pipe that something writes to (`<(...)`, a shell pipe)
is read to its end as before, one with no writer is an OSError saying so, and at most
`limit + 1` bytes are read, so the caller refuses anything longer than `limit` in its
own words. Used by the agent, the CLI and the simulator's file loaders alike.
"""

from __future__ import annotations

import errno
import os
import stat


class NoWriter(OSError):
    """The path is a FIFO that nothing had open for writing: reading it would wait forever."""


class NotRegular(OSError):
    """A FIFO, socket or device where only a regular file is accepted."""


def read_at_most(path: str | os.PathLike[str], limit: int, *,
                 regular_only: bool = False) -> bytes:
    """Up to `limit + 1` bytes of the file at `path` (more than `limit` means too large).

    OSError (with strerror) when it cannot be read: missing, a directory, a FIFO with no
    writer (NoWriter), a socket. ValueError for a path with a NUL byte, as open() does.
    `regular_only`: anything but a regular file is NotRegular (files a workload names:
    they travel sealed, so a pipe there is a mistake, not a feature). The checks are on
    the open descriptor, so a file swapped after them is still the one checked.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory, not a file")
        if regular_only and not stat.S_ISREG(mode):
            raise NotRegular(errno.EINVAL, "not a regular file (a FIFO, socket or device)")
        first = b""
        if stat.S_ISFIFO(mode):
            try:  # non-blocking: b"" now means no writer (POSIX end of file)
                first = os.read(fd, limit + 1)
            except BlockingIOError:  # a writer that has not written yet: wait for it
                pass
            else:
                if not first:
                    raise NoWriter(errno.ENXIO, "a FIFO with nothing writing to it")
        os.set_blocking(fd, True)
        chunks, got = [first], len(first)
        while got <= limit:
            chunk = os.read(fd, limit + 1 - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


__all__ = ["NoWriter", "NotRegular", "read_at_most"]
