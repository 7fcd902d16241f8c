"""Writing files and folders safely: whole or not at all, one writer per folder.

* A file is written to a hidden temporary file in its destination folder, flushed to the disk
  (``fsync``), renamed over the final name (``os.replace``, atomic within a file system) and the
  folder is flushed too, so after a kill or a power loss the name holds the old content or the
  new, never a part (:func:`atomic_output`, :func:`write_text`, :func:`write_json`, ...).
* A folder is built under a hidden temporary name, flushed, and swapped in: the old folder is
  renamed away, the new one renamed in, then the old one deleted, so the final name is never
  deleted before its replacement is complete (:func:`atomic_folder`, :func:`replace_folder`).
* One process at a time writes a folder (:func:`folder_lock`): a second one gets
  "FOLDER is in use by process N" as an :class:`~mimaface.errors.InputError`.
* A full disk is one clear line (:func:`write_error`), never a library's traceback.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mimaface.errors import InputError, one_line

LOCK_NAME = ".lock"
#: Some writers lose the errno of a full disk (torch.save: "unexpected pos", np.save: "N requested and
#: M written"); a failed write with less than this free on the file system is reported as a full disk.
NEARLY_FULL_BYTES = 1 << 20
_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_SPACE_MESSAGES = ("No space left on device", "os error 28", "Disk quota exceeded")


# ----------------------------------------------------------------------------------------- files


def create_temp(path: str | os.PathLike) -> Path:
    """Create an empty hidden file beside ``path`` (same folder, so ``os.replace`` is atomic)."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise InputError(f"{path}: cannot write, folder {folder} does not exist")
    tmp = folder / f".{path.stem}.{secrets.token_hex(4)}.part{path.suffix}"
    try:
        with open(tmp, "xb"):
            pass
    except OSError as err:
        if out_of_space(err, folder):
            raise write_error(path, err) from err
        raise InputError(f"{path}: cannot write in folder {folder} ({err.strerror or err})") from err
    return tmp


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path``; it becomes ``path`` (fsync, ``os.replace``,
    fsync of the folder) only if the ``with`` block succeeds, and is deleted otherwise, so no
    half-written file ever exists under the final name. A full disk is an InputError."""
    path = Path(path)
    tmp = create_temp(path)
    try:
        yield tmp
        replace_file(tmp, path)
    except Exception as exc:
        error = _full_disk_error(path, exc)  # measured before the cleanup frees the space
        tmp.unlink(missing_ok=True)
        if error is None:
            raise
        raise error from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 2) -> None:
    """Write ``value`` as JSON (and a final newline) to ``path`` atomically."""
    write_text(path, json.dumps(value, indent=indent) + "\n")


def read_json_object(path: str | os.PathLike, what: str, *, error: type[InputError] = InputError,
                     hint: str = "") -> dict:
    """The JSON object in ``path``, or one ``error`` line: unreadable, or not ``what`` (not an object),
    each followed by ``hint``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise error(f"{path}: unreadable ({one_line(exc)}){hint}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: not {what} (expected a JSON object){hint}")
    return data


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` of ``arrays`` to ``path`` atomically. The archive is built in memory:
    numpy leaves its zip file open when a write fails (a full disk), and that file then complains
    on stderr when it is collected."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_bytes(path, buffer.getbuffer())


def replace_file(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make the complete file ``tmp`` the file ``path``: fsync it, rename it, fsync the folder."""
    tmp, path = Path(tmp), Path(path)
    try:
        fsync(tmp)
        os.replace(tmp, path)
        fsync(path.parent)
    except OSError as exc:
        raise write_error(path, exc) from exc


# --------------------------------------------------------------------------------------- folders


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, *, replace: bool = True,
                  failure: Callable[[Path, Exception], InputError | None] | None = None) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``path``; when the ``with`` block succeeds it replaces
    ``path`` (:func:`replace_folder`), otherwise it is deleted and ``path`` is left as it was.

    ``replace=False``: a folder already at ``path`` is never replaced (the final rename fails).
    ``failure(path, exc)``: the error raised for an exception of the block or the swap, None to raise
    that exception as it is (default: one line for a full disk), called before the cleanup frees space."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"{path}: cannot write, folder {path.parent} does not exist")
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.part"
    try:
        tmp.mkdir()
    except OSError as exc:
        raise write_error(path, exc) from exc
    try:
        yield tmp
        if replace:
            replace_folder(tmp, path)
        else:
            fsync_tree(tmp)
            os.rename(tmp, path)  # not os.replace: fails where a folder is already
            fsync(path.parent)
    except Exception as exc:
        error = (failure or _full_disk_error)(path, exc)
        shutil.rmtree(tmp, ignore_errors=True)
        if error is None:
            raise
        raise error from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_folder(new: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make the complete folder ``new`` (a sibling of ``path``) the folder ``path``: flush every file
    in it, rename an existing ``path`` away, rename ``new`` in, flush the parent, delete the old one."""
    new, path = Path(new), Path(path)
    try:
        fsync_tree(new)
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.{secrets.token_hex(4)}.old"
            os.replace(path, old)
        try:
            os.replace(new, path)
        except OSError:
            if old is not None:
                os.replace(old, path)  # put the old one back
            raise
        fsync(path.parent)
    except OSError as exc:
        raise write_error(path, exc) from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file and folder under ``folder`` (and ``folder`` itself), deepest first."""
    folder = Path(folder)
    for root, dirs, names in os.walk(folder, topdown=False):
        for name in names:
            fsync(Path(root) / name)
        for name in dirs:
            fsync(Path(root) / name)
    fsync(folder)


def fsync(path: str | os.PathLike) -> None:
    """Flush a file, or a folder's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):  # folders on some file systems cannot be fsynced
            raise
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------- errors


def out_of_space(exc: BaseException, folder: str | os.PathLike) -> bool:
    """Whether ``exc``, raised while writing into ``folder``, comes from a full disk or quota."""
    if isinstance(exc, OSError) and exc.errno in _SPACE_ERRNOS:
        return True
    if any(text in str(exc) for text in _SPACE_MESSAGES):
        return True
    try:
        return shutil.disk_usage(folder).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def _full_disk_error(path: Path, exc: Exception) -> InputError | None:
    """:func:`write_error` when ``exc`` (raised while writing ``path``) comes from a full disk, else None."""
    if isinstance(exc, InputError) or not out_of_space(exc, path.parent):
        return None
    return write_error(path, exc)


def write_error(path: str | os.PathLike, exc: BaseException) -> InputError:
    """One line for a failed write of ``path``: a full disk says so and how much is free (call it
    before a cleanup frees space: some writers lose the errno, and the free space tells)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if out_of_space(exc, folder):
        try:
            free = f", {shutil.disk_usage(folder).free / 2**20:.1f} MiB free there"
        except OSError:
            free = ""
        return InputError(f"{path}: could not write it: no space left on the device{free}")
    return InputError(f"{path}: could not write it ({one_line(exc) or type(exc).__name__})")


# ----------------------------------------------------------------------------------------- locks


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold ``FOLDER/.lock`` (created with the folder if needed) for the ``with`` block, so only one
    process writes the folder; another gets "FOLDER is in use by process N" (InputError).

    The lock is ``fcntl.flock``: the system releases it when its process ends, however it ends, so a
    killed run never leaves the folder locked. The file holds the owner's PID for the message and is
    deleted on release (re-checked after locking, so a file deleted meanwhile is never trusted).
    Processes forked inside the block share the lock; a nested lock on the same folder in one
    process is refused like a second process would be.
    """
    import fcntl

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{folder}: cannot create the folder ({exc.strerror or exc})") from exc
    path = folder / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"{folder}: cannot write in the folder ({exc.strerror or exc})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise InputError(f"{folder} is in use by process {owner}; wait for it to finish or use another "
                             "folder") from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            break
        os.close(fd)  # the previous owner deleted the file between our open and our lock: take a new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)  # before closing: nobody can lock a file that is about to go
        os.close(fd)
