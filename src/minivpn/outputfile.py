"""Opening a file minivpn writes (a pcap capture, a demo's files) without being tricked.

A capture holds decrypted traffic, so a careless ``open(path, "wb")`` has two problems:

* if *path* is a **symbolic link**, the link is followed: whoever could make the link (in a
  shared directory such as ``/tmp``) chooses which file root truncates and overwrites;
* the new file gets mode 0666 filtered by the umask, usually **0644**: anyone on the machine
  may read the traffic.

:func:`open_output` opens with ``O_NOFOLLOW`` (a symbolic link as the last component is
refused with a clear message), ``O_CREAT`` with mode 0600, and without ``O_TRUNC``: the file
is checked first (a regular file with a second hard link, which could be someone else's file,
is refused), then made 0600 and truncated.  A FIFO or a character device (``mkfifo``, a pipe
to Wireshark) is written as it is.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

from minivpn.errors import MinivpnError

__all__ = ["OutputFileError", "open_output"]


class OutputFileError(MinivpnError):
    """An output file cannot, or must not, be opened."""


def open_output(
    path: str | os.PathLike[str], what: str = "file", *, append: bool = False
) -> BinaryIO:
    """Open *path* to write *what* (``"capture"``): a private file, never through a symlink.

    With *append* (a log file), what the file holds is kept and writes go to its end.

    Raises:
        OutputFileError: *path* is a symbolic link, a file with other hard links, or cannot
            be opened (the reason is given).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_APPEND if append else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last component is a symbolic link
            raise OutputFileError(
                f"refusing to write the {what} to {os.fspath(path)}: it is a symbolic link "
                "(give the real path, or remove the link)"
            ) from None
        raise OutputFileError(
            f"cannot write the {what} to {os.fspath(path)}: {exc.strerror}"
        ) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode):
            if info.st_nlink > 1:
                raise OutputFileError(
                    f"refusing to write the {what} to {os.fspath(path)}: it has "
                    f"{info.st_nlink - 1} other hard link(s), so it may be another file"
                )
            os.fchmod(fd, 0o600)
            if not append:
                os.ftruncate(fd, 0)
        return open(fd, "ab" if append else "wb")  # the caller closes it
    except BaseException:
        os.close(fd)
        raise
