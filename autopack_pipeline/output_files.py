"""Writing the files a user asked for: whole or not at all, with the modes a user expects.

- Atomic: the content goes to a temporary file next to the target, then ``os.replace`` moves it into
  place, so a reader (or a crash) never sees half a file.
- Modes: a new file gets what the umask gives (0644 under umask 022), as a shell redirect would; a
  file written over keeps its mode. ``tempfile.mkstemp`` cannot be used for this: it always creates
  0600, which is why the temporary file is opened here with mode 0666 and the kernel applies the umask.
- Special files: a symbolic link, FIFO, device node, socket or directory where the file should go is
  refused with its name. Replacing it would silently break what the user set up, and opening a FIFO
  would hang the command.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

_SPECIAL_KINDS = (
    (stat.S_ISLNK, "symbolic link"),
    (stat.S_ISFIFO, "FIFO (named pipe)"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISDIR, "directory"),
)


class OutputPathError(ValueError):
    """A path the user named cannot take the file; the message names the path and why."""


def check_output_path(path: Path) -> int | None:
    """The permission bits of the regular file at ``path``, ``None`` when nothing is there yet.

    Raises :class:`OutputPathError` when something other than a regular file is there (never
    following a symbolic link) or when a parent of ``path`` is not a directory.
    """
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise OutputPathError(f"cannot write {path}: a parent of it is not a directory") from None
    for is_kind, kind in _SPECIAL_KINDS:
        if is_kind(status.st_mode):
            raise OutputPathError(f"refusing to write {path}: it is a {kind}, not a regular file")
    return stat.S_IMODE(status.st_mode)


def ensure_directory(path: Path) -> None:
    """Create ``path`` (and its parents) unless it is a directory already; a file in the way is an
    :class:`OutputPathError` naming it."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputPathError(f"cannot use {path} as a directory: it, or a parent of it, is not a directory") from None


def check_appendable(path: Path) -> None:
    """Make sure ``path`` can be appended to (a regular file, or creatable), creating it if missing.

    For files written line by line over a run (the ``--record`` file): a problem shows before the
    run starts, not at its first answer.
    """
    path = Path(path)
    check_output_path(path)
    ensure_directory(path.parent)
    with path.open("a", encoding="utf-8"):
        pass


def _create_temporary(target: Path) -> tuple[int, Path]:
    for _ in range(100):
        candidate = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name next to {target}")


class AtomicFile:
    """A file written in full before it replaces ``path``: write to :attr:`handle`, then
    :meth:`commit` (or :meth:`discard`). As a context manager it commits unless an exception escapes.

    The target is checked, and its directory created, when the object is made, so a bad path fails
    before any work is done.
    """

    def __init__(self, path: Path, *, text: bool = False, encoding: str | None = None,
                 newline: str | None = None) -> None:
        self.path = Path(path)
        check_output_path(self.path)
        ensure_directory(self.path.parent)
        try:
            fd, self._temporary = _create_temporary(self.path)
        except OSError as exc:  # the error would name the temporary file; the user named the target
            raise OutputPathError(f"cannot write {self.path}: {exc.strerror}") from None
        self.handle: IO[Any] = os.fdopen(fd, "w" if text else "wb", encoding=encoding, newline=newline)

    @property
    def temporary_path(self) -> Path:
        """The file being written, for a writer that needs a path rather than :attr:`handle` (SQLite's
        backup); it is what :meth:`commit` moves into place."""
        return self._temporary

    def commit(self) -> None:
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            # Checked again at the last moment: what is at the path now decides the mode kept.
            existing_mode = check_output_path(self.path)
            if existing_mode is not None:
                os.fchmod(self.handle.fileno(), existing_mode)
            self.handle.close()
            os.replace(self._temporary, self.path)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        self.handle.close()
        self._temporary.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def write_atomic_with(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Have ``write`` fill the file at ``path`` (binary), atomically, keeping an existing file's mode."""
    with AtomicFile(path) as target:
        write(target.handle)


def write_atomic_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, keeping an existing file's mode."""
    write_atomic_with(path, lambda handle: handle.write(text.encode("utf-8")))
