"""The one policy for every file a command writes (checkpoint, training state, metrics, figure).

- **Refuse before working**: ``check_outputs`` refuses an output that is one of the command's
  inputs (even with ``force``), two outputs that are the same file, a missing directory, a
  directory, and an existing file without ``force`` — before any expensive work is done.
- **Create exclusively**: without ``force`` a file is published with ``os.link`` from a
  complete temp file, which fails if the name exists, so of two commands writing the same new
  path at once exactly one succeeds; the other gets "exists; pass --force".
- **Write atomically and durably**: a temp file beside the target, flushed and fsynced, then
  renamed (or linked) into place and the directory fsynced; a failure leaves no temp file and
  the old file, if any, untouched.
- **Probe before long work**: ``probe_directory`` writes and fsyncs a small file in the output
  directory and checks the free space against an estimate, so a read-only directory, a missing
  permission or a full disk is reported before an epoch of training, not after.

Refusals are ``OutputError`` (exit 2, bad input); an operating-system failure while writing is
``WriteError`` (exit 1, a runtime failure).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from ..base.limits import format_bytes
from ..errors import OutputError, WriteError


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when ``a`` and ``b`` name the same file (same path, symlink or hard link)."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(outputs: Iterable[str | Path], *, inputs: Iterable[str | Path | None] = (),
                  force: bool = False) -> None:
    """Refuse what writing ``outputs`` would refuse, before any work is done."""
    outs = [Path(o) for o in outputs]
    ins = [Path(i) for i in inputs if i is not None]
    for i, out in enumerate(outs):
        for p in ins:
            if same_file(out, p):
                raise OutputError(f"refusing to overwrite the input '{p}'; "
                                  f"choose another output path")
        for other in outs[:i]:
            if same_file(out, other):
                raise OutputError(f"'{out}' is named for two outputs of this command; "
                                  f"choose different paths")
        if not out.parent.is_dir():
            raise OutputError(f"output directory '{out.parent}' does not exist")
        if out.is_dir():
            raise OutputError(f"output '{out}' is a directory")
        if (out.exists() or out.is_symlink()) and not force:
            raise OutputError(f"'{out}' exists; pass --force to overwrite")


def write_file(path: str | Path, write: Callable[[IO[bytes]], Any], *, force: bool = False,
               inputs: Iterable[str | Path | None] = ()) -> str:
    """Write ``path`` through ``write(fileobj)`` under the policy; return its sha256."""
    path = Path(path)
    check_outputs([path], inputs=inputs, force=force)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise WriteError(f"cannot write '{path}': {_reason(exc)}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        digest = sha256(tmp)
        _publish(Path(tmp), path, force)
    except OSError as exc:
        raise WriteError(f"cannot write '{path}': {_reason(exc)}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _sync_dir(path.parent)
    return digest


def write_text(path: str | Path, text: str, **kw: Any) -> str:
    """``write_file`` for text (UTF-8)."""
    return write_file(path, lambda f: f.write(text.encode()), **kw)


def append_line(path: str | Path, line: str) -> None:
    """Append one line to a log this command owns (metrics), flushed to disk."""
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line.rstrip("\n") + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise WriteError(f"cannot write '{path}': {_reason(exc)}") from None


def probe_directory(directory: str | Path, need_bytes: int = 0) -> None:
    """Fail now (``WriteError``) if ``directory`` cannot take a file, or has less than
    ``need_bytes`` free (plus 10% and 16 MiB of margin)."""
    d = Path(directory)
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".netmorph-probe.", suffix=".tmp")
    except OSError as exc:
        raise WriteError(f"cannot write in '{d}': {_reason(exc)}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise WriteError(f"cannot write in '{d}': {_reason(exc)}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    free = shutil.disk_usage(d).free
    need = int(need_bytes * 1.1) + (16 << 20) if need_bytes else 0
    if free < need:
        raise WriteError(f"not enough space in '{d}': {format_bytes(free)} free, this run "
                         f"writes about {format_bytes(need)}")


@contextlib.contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold ``PATH.lock`` for a command that writes ``path`` over a long time (training):
    a second command on the same ``path`` fails at once instead of interleaving its files.
    An advisory ``flock``, released by the OS if the process dies (no stale locks); the
    file is removed on exit. Where ``fcntl`` does not exist (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock = Path(f"{path}.lock")
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as exc:
            raise WriteError(f"cannot write '{lock}': {_reason(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutputError(f"another netmorph command is writing '{path}' (it holds "
                              f"'{lock}'); wait for it or choose another output") from None
        try:  # the holder before us may have removed the file we locked: lock the new one
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _publish(tmp: Path, path: Path, force: bool) -> None:
    """Put the complete ``tmp`` at ``path``: a rename with ``force``, else a hard link,
    which fails if ``path`` exists, so concurrent writers cannot both succeed."""
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputError(f"'{path}' exists; pass --force to overwrite") from None
    except OSError as exc:  # a file system without hard links: claim the name, then rename
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV,
                             errno.EMLINK):
            raise
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            raise OutputError(f"'{path}' exists; pass --force to overwrite") from None
        os.replace(tmp, path)


def _sync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # make the rename durable where the OS allows it
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; done once per process
    os.umask(mask)
    return mask
