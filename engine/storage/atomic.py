"""Atomic file writes: write a temporary file beside the target, then rename it over the target.

A failed or interrupted write never leaves a half-written file where a good one was, and the result gets
the permissions an ordinary ``open(path, "w")`` would (mkstemp's files are private: 0600).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import FileAccessError, InvalidInput, OutputFolderError, TapdiffError


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def _writing(path: str | os.PathLike):
    """The block's OSErrors (no permission, a full disk, a folder that cannot be created) as one
    ``FileAccessError`` naming ``path``, the file or folder it writes."""
    try:
        yield
    except OSError as e:
        if isinstance(e, TapdiffError):
            raise
        raise FileAccessError(f"cannot write {path}: {e.strerror or e}") from e


def make_folder(folder: str | os.PathLike) -> Path:
    """``folder``, created with its parents if missing; a ``FileAccessError`` naming it if it cannot be."""
    folder = Path(folder)
    with _writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` to fill a temporary file, then move it to ``path``; returns ``path``. An OSError
    on the way (no permission, a full disk) is a ``FileAccessError`` naming ``path``."""
    path = Path(path)
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            write(tmp)
            os.chmod(tmp, _default_mode())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def check_output_folder(folder: str | os.PathLike) -> Path:
    """``folder`` if files can be written in it (it exists as a folder, or can be created); else an
    ``OutputFolderError`` naming why. Called before any work whose result goes there."""
    if not str(folder).strip():
        raise OutputFolderError("output folder is empty: name one (\".\" for the current folder)")
    folder = Path(folder)
    if folder.is_symlink() and not folder.exists():
        raise OutputFolderError(f"output folder {folder} is a link to {os.readlink(folder)}, which does not exist")
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"output folder {folder} is a file, not a folder")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputFolderError(f"output folder {folder} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputFolderError(f"output folder {folder} cannot be written: no write permission in {existing}")
    try:  # os.access passes root everywhere, and some folders (/proc, a read-only mount) refuse whoever asks
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=f"{STAGING_PREFIX}{os.getpid()}-"))
    except OSError as e:
        raise OutputFolderError(f"output folder {folder} cannot be written: {existing} refuses a new folder "
                                f"({e.strerror or e})") from e
    return folder


STAGING_PREFIX = ".tapdiff-staged-"  # then the writing process's id


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_orphaned_staging(folder: Path) -> list[Path]:
    """Remove the staging folders in ``folder`` whose writer is gone (killed before it could clean up: SIGKILL,
    a power cut); returns them. One whose writer still runs is left alone."""
    removed = []
    for p in folder.glob(f"{STAGING_PREFIX}*"):
        pid = p.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if p.is_dir() and not p.is_symlink() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def signals_deferred():
    """SIGINT and SIGTERM held back for the block and delivered when it ends, so that a short sequence of steps is
    done whole. Python runs signal handlers in the main thread whichever thread the signal reached, so the
    handlers are swapped for ones that only record the signal (a per-thread signal mask would not do: any other
    thread, such as a runtime's worker, can take it). Off the main thread, where handlers cannot be set, the
    block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(got):
            signal.raise_signal(s)  # now, to the handlers that were in place


class StagedFolder:
    """Files that appear in ``folder`` all together or not at all: ``write`` puts each into a temporary folder
    inside ``folder``; leaving the ``with`` block normally renames them all into place, leaving it by an
    exception removes them (``folder`` keeps what it held before either way)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = check_output_folder(folder)
        self.names: list[str] = []
        self._tmp: Path | None = None

    def __enter__(self) -> "StagedFolder":
        with _writing(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
            remove_orphaned_staging(self.folder)
            self._tmp = Path(tempfile.mkdtemp(dir=self.folder, prefix=f"{STAGING_PREFIX}{os.getpid()}-"))
        return self

    def write(self, name: str, data: bytes) -> Path:
        if Path(name).name != name or name.startswith("."):
            raise InvalidInput(f"file name {name!r} must be a plain name")
        with _writing(self.folder / name):
            (self._tmp / name).write_bytes(data)
            os.chmod(self._tmp / name, _default_mode())
        self.names.append(name)
        return self.folder / name

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                with signals_deferred():  # SIGINT or SIGTERM midway would leave some files in place, not all
                    for name in self.names:  # renames within one folder: they do not fail for want of space
                        os.replace(self._tmp / name, self.folder / name)
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

    @property
    def paths(self) -> list[Path]:
        return [self.folder / n for n in self.names]


def write_files_or_none(folder: str | os.PathLike, files: dict[str, bytes]) -> list[Path]:
    """Write every ``{name: bytes}`` into ``folder``, or none of them (see ``StagedFolder``)."""
    with StagedFolder(folder) as staged:
        for name, data in files.items():
            staged.write(name, data)
    return staged.paths
