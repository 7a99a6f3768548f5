"""The one way outputs reach the disk: checked names, an exclusive lock per output, atomic writes, and disk
errors as one line.

Why each piece:
- `check_out`: an existing output is refused without `--overwrite`, and with it only a file or folder this
  project wrote (the caller says how to recognise one) is replaced; a foreign folder is never deleted.
- `lock`: `OUT.lock` beside the output, an `fcntl.flock` held for the whole run and taken before any partial
  is opened, so a second run on the same output is refused in one line and touches nothing. The kernel drops
  the lock when its holder dies (SIGKILL included), so a lock file left behind is stale by construction; the
  holder's pid is written in it for the message.
- `atomic_write`: a write under a temporary name beside the output, fsynced, then renamed, so a reader sees
  the old file or the whole new one; the temporary name is removed on any failure.
- `writing`: ENOSPC, EDQUOT, EROFS, EACCES and EPERM become `UserError`s naming the path and what to do; any
  other OSError is a bug and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Callable

from research.errors import UserError

LOCK_SUFFIX = ".lock"
ADVICE = {
    errno.ENOSPC: "the disk is full; free some space and run the same command again",
    errno.EDQUOT: "the disk quota is used up; free some space and run the same command again",
    errno.EROFS: "the file system is read-only; write somewhere else",
    errno.EACCES: "permission denied; write somewhere you may write",
    errno.EPERM: "permission denied; write somewhere you may write",
}
# Libraries that wrap the C library's error (HDF5 through h5py) keep only its text.
_MESSAGES = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
             "Read-only file system": errno.EROFS, "Permission denied": errno.EACCES}


def error_code(err: BaseException) -> int | None:
    """The errno of a disk error, read from the exception or, for wrapped ones, from its text."""
    if isinstance(err, OSError) and err.errno in ADVICE:
        return err.errno
    text = str(err)
    return next((code for message, code in _MESSAGES.items() if message in text), None)


def disk_error(err: BaseException, path) -> UserError | None:
    """A one-line UserError for a full, read-only or forbidden disk; None for any other error."""
    code = error_code(err)
    return None if code is None else UserError(f"cannot write {path}: {ADVICE[code]}")


@contextlib.contextmanager
def writing(path):
    """Turns disk errors raised inside into one-line UserErrors naming `path`."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:  # h5py and orbax wrap the C library's error in RuntimeError or ValueError
        user = disk_error(err, path)
        if user is None:
            raise
        raise user from None


def check_out(out, overwrite: bool, ours: Callable[[Path], bool] | None = None, what: str = "output",
              folder: bool = False) -> Path:
    """`out` if it may be written: its folder exists, and an existing `out` is replaced only with `overwrite`
    and only when `ours(out)` says this project wrote it (any regular file when `ours` is None); a folder only
    when `folder` (an output that is one)."""
    out = Path(out)
    if not out.parent.is_dir():
        raise UserError(f"{out.parent} is not a folder")
    if not (out.exists() or out.is_symlink()):
        return out
    if out.is_dir() and not folder:
        raise UserError(f"{out} is a folder")
    if not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    if out.is_symlink() or (ours is None and not out.is_file()) or (ours is not None and not ours(out)):
        raise UserError(f"{out} exists and is not {what} written by research; --overwrite replaces only those, "
                        f"so move it away or choose another name")
    return out


def lock_path(out) -> Path:
    out = Path(out)
    return out.with_name(out.name + LOCK_SUFFIX)


@contextlib.contextmanager
def lock(out):
    """Holds `OUT.lock` exclusively for the body; UserError at once if another live run holds it."""
    path = lock_path(out)
    with writing(path):
        fd = _acquire(path, out)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # unlinked while still locked, so no one takes a file that is going away
        os.close(fd)


def _acquire(path: Path, out) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise UserError(f"{out} is being written by another run ({holder}, lock {path}); wait for it to "
                            f"finish, or write elsewhere") from None
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise UserError(f"cannot lock {path}: this file system does not support file locks "
                                f"({err.strerror}); write to a local disk") from None
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else the holder unlinked the file as we opened it: lock the new one
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
            return fd
        os.close(fd)


def _holder(fd: int) -> str:
    """Who holds the lock, as its file says ("pid N on HOST")."""
    text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    return text or "pid unknown"


def atomic_write(out, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` beside `out`, fsync, rename into place; the temporary file never outlives a failure."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out} is a folder; name a file to write")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        with writing(out):
            write(tmp)
            fsync(tmp)
            os.replace(tmp, out)
            fsync(out.parent)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return out


def fsync(path) -> None:
    """Flushes a file's (or a folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(out, text: str) -> Path:
    return atomic_write(out, lambda tmp: Path(tmp).write_text(text))


def write_json(out, payload, indent: int = 1, sort_keys: bool = True) -> Path:
    return write_text(out, json.dumps(payload, indent=indent, sort_keys=sort_keys) + "\n")


def temp_dir(out) -> Path:
    """A fresh folder beside `out`, for a folder output written whole before `replace_dir`."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    with writing(tmp):
        tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: Path, out: Path) -> None:
    """Swaps the finished folder `tmp` into place; the old `out` is removed only after the new one is there."""
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    with writing(out):
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        fsync(out.parent)
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()


@contextlib.contextmanager
def hdf5_file(path, mode: str, keep: bool = False, **kwargs):
    """`h5py.File(path, mode)` that is always closed, also after a failed write.

    After a write fails (a full disk), HDF5 may be unable to flush its metadata on close; a file it cannot close
    crashes the interpreter at exit. Such a file is emptied so that the close can finish (it is damaged
    anyway). A file kept for resuming (`keep`) is emptied only when it cannot be closed as it is."""
    import h5py

    with writing(path):  # disk errors from the body too, as one line
        f = h5py.File(path, mode, **kwargs)
        try:
            yield f
        except BaseException:
            _close_failed(f, path, keep)
            raise
        try:
            f.close()
        except BaseException:
            _close_failed(f, path, keep=False)
            raise


# Set once HDF5 failed to close a file: HDF5 1.14 can then crash when the interpreter shuts it down, so the CLI
# ends such a process with os._exit after printing its error.
hdf5_unclean = False


def _close_failed(f, path, keep: bool) -> None:
    global hdf5_unclean
    if not keep:
        _empty(path)
    try:
        f.close()
        return
    except Exception:
        hdf5_unclean = True
    _empty(path)
    with contextlib.suppress(Exception):
        f.close()


def _empty(path) -> None:
    with contextlib.suppress(OSError):
        os.truncate(path, 0)


def check_space(folder, need: int, out) -> None:
    """UserError unless `folder`'s disk has `need` bytes (and a MiB) to spare, before writing `out`."""
    free = free_bytes(folder)
    if free < need + (1 << 20):
        raise UserError(f"cannot write {out}: {ADVICE[errno.ENOSPC]} (it needs about {need / 2**20:.1f} MiB; "
                        f"{free / 2**20:.1f} MiB are free)")


def free_bytes(folder) -> int:
    """Bytes an unprivileged writer may still use in `folder`'s file system."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def available_memory() -> int:
    """The memory a new allocation can take: MemAvailable where /proc says, else the physical size."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 << 30
