# pyright: basic
"""Opening files that come from anywhere: regular files only, size-bounded, never blocking.

``open_regular`` opens with ``O_NONBLOCK`` and checks ``fstat`` on the open descriptor, so a FIFO,
a device or a socket is refused before a single byte is read (and a FIFO with no writer cannot hang
the command). ``check_output_target`` is the matching rule for files a command writes. Standard
library only: the device runtime imports it.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import BinaryIO

from edgekit.errors import EdgekitError


class NotRegularFile(EdgekitError):
    """A path that must be a regular file is missing, a folder, FIFO, device or socket, or too large.
    ``reason`` is the short form ("file not found", "a FIFO (named pipe)", "too large (...)")."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_regular(path: str | os.PathLike, what: str = "file") -> BinaryIO:
    """Open ``path`` for reading in binary mode; :class:`NotRegularFile` unless it is a regular file."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise NotRegularFile(f"{what} not found: {path}", "file not found") from exc
    except IsADirectoryError as exc:
        raise NotRegularFile(f"{what} {path} is a folder, not a file", "a folder") from exc
    except OSError as exc:
        reason = f"cannot open ({exc.strerror or exc})"
        raise NotRegularFile(f"cannot open {what} {path}: {exc.strerror or exc}", reason) from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"{what} {path} is {_kind(mode)}, not a regular file", _kind(mode))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return io.FileIO(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def read_regular_bytes(path: str | os.PathLike, max_bytes: int, what: str = "file",
                       error: type[Exception] = NotRegularFile) -> bytes:
    """All bytes of a regular file no larger than ``max_bytes`` (checked before reading). A refusal
    is raised as :class:`NotRegularFile`, or as ``error`` with the same message (the caller's own
    error class: ``SignatureError``, ``DataError``...)."""
    try:
        return _read_bounded(path, max_bytes, what)
    except NotRegularFile as exc:
        if error is NotRegularFile:
            raise
        raise error(str(exc)) from exc


def _read_bounded(path: str | os.PathLike, max_bytes: int, what: str) -> bytes:
    try:
        return _read_open(path, max_bytes, what)
    except OSError as exc:  # EIO from a failing card or a dropped mount: this file's refusal, not the run's
        raise NotRegularFile(f"cannot read {what} {path}: {exc.strerror or exc}",
                             f"cannot read ({exc.strerror or exc})") from exc


def _read_open(path: str | os.PathLike, max_bytes: int, what: str) -> bytes:
    with open_regular(path, what) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise NotRegularFile(f"{what} {path} is too large ({size} bytes > {max_bytes})",
                                 f"too large ({size} bytes > {max_bytes})")
        # read(n) allocates n bytes up front: ask for the file's size (+1 to notice growth), not the
        # bound, or every 4 MB photo costs a 256 MB allocation
        chunks = [f.read(size + 1)]
        total = len(chunks[0])
        while total > size and total <= max_bytes and (more := f.read(min(1 << 20, max_bytes + 1 - total))):
            chunks.append(more)  # the file grew while being read: keep going, still bounded
            total += len(more)
        data = b"".join(chunks) if len(chunks) > 1 else chunks[0]
    if len(data) > max_bytes:
        raise NotRegularFile(f"{what} {path} is too large (> {max_bytes} bytes)",
                             f"too large (> {max_bytes} bytes)")
    return data


def read_text_argument(path: str | os.PathLike, max_bytes: int, what: str = "file") -> str:
    """A small text file given on the command line (a label list, a field list, a split): a regular
    file of at most ``max_bytes``, UTF-8 (a BOM allowed); one clear error otherwise."""
    data = read_regular_bytes(path, max_bytes, what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EdgekitError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def is_regular(path: str | os.PathLike) -> bool:
    """Whether ``path`` (following symlinks) is a regular file, without opening it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def check_output_target(path: str | os.PathLike, force: bool = False) -> Path:
    """Refuse to write ``path`` when it is a symlink, FIFO, device, folder or anything not a regular
    file, or an existing file without ``force``; also when its folder is missing or not writable."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise EdgekitError(f"cannot write {path}: {exc.strerror or exc}") from exc
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise EdgekitError(f"refusing to write {path}: it is a symbolic link")
        if not stat.S_ISREG(st.st_mode):
            raise EdgekitError(f"refusing to write {path}: it is {_kind(st.st_mode)}")
        if not force:
            raise EdgekitError(f"{path} already exists (use --force to overwrite it)")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise EdgekitError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgekitError(f"cannot write {path}: folder {parent} is not writable")
    return path


def check_replaceable(out: Path, replace: bool, marker: str, what: str,
                      error: type[EdgekitError] = EdgekitError, source: Path | None = None) -> None:
    """Refuse the output folder ``out`` when it exists, unless ``replace`` and it is an empty folder or
    ``what`` written before (it holds ``marker``): --replace never deletes a folder of anything else.
    ``source``: the folder ``out`` is made from, which ``out`` must not be (--replace would put the new
    folder in its place: a signed bundle and its Keras model gone)."""
    if source is not None and Path(out).resolve() == Path(source).resolve():
        raise error(f"refusing to write {out}: it is {source}, the folder it is made from; choose another")
    if not os.path.lexists(out):
        return
    if not replace:
        raise error(f"{out} already exists; pass --replace to overwrite it")
    if out.is_symlink() or not out.is_dir():
        raise error(f"refusing to replace {out}: it is not a folder")
    if not (out / marker).is_file() and any(out.iterdir()):
        raise error(f"refusing to replace {out}: it holds files but no {marker}, so it is not {what}; "
                    "remove it yourself or choose another folder")


def replace_dir(tmp: Path, out: Path) -> None:
    """Put the finished folder ``tmp`` at ``out``: a previous ``out`` is moved aside first and
    removed only once the new one is in place, so a reader sees the old folder or the new one."""
    import shutil

    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
