"""Writing files so that an interrupted run leaves nothing half-written: write beside, then rename.

``os.replace`` within one directory (one file system) is atomic: a reader sees the old file or the
new one, never a mixture. The one atomic-write helper of the package; folders of files use
``staging_dir`` + ``publish_dir``.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_bytes", "staging_dir", "publish_dir", "write_then_rename"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the body succeeds it is renamed onto ``path``.

    On an exception the temporary file is removed and ``path`` keeps its old content (or stays absent).
    The parent folder is created if needed.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def staging_dir(final: Path) -> Path:
    """A new empty folder beside ``final`` (same file system, so renaming it into place is atomic)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a run folder is an ordinary one
    return tmp


def publish_dir(tmp: Path, final: Path, keep_existing: Callable[[Path], bool] | None = None) -> Path:
    """Rename the finished folder ``tmp`` to ``final``, replacing whatever ``final`` holds.

    Readers see the old folder or the new one, never a mixture. ``keep_existing(final)`` True means
    another process has published an equivalent folder first: keep theirs, drop ``tmp``.
    """
    if final.exists():
        if keep_existing is not None and keep_existing(final):
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        old = final.with_name(f".{final.name}.{os.getpid()}.old")
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(old, final)  # put the old folder back rather than leave none
            raise
        shutil.rmtree(old, ignore_errors=True)
        return final
    try:
        os.rename(tmp, final)
    except OSError:
        if keep_existing is not None and final.exists() and keep_existing(final):  # published in between
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise
    return final


def write_then_rename(final: Path, write: Callable[[Path], T], *, tmp: Path | None = None,
                       keep_existing: Callable[[Path], bool] | None = None) -> T:
    """``write(tmp)`` into a new folder beside ``final``, then rename it to ``final`` (``publish_dir``).

    If ``write`` fails or is interrupted (any exception, KeyboardInterrupt included) the temporary
    folder is deleted and ``final`` is left exactly as it was.
    """
    tmp = staging_dir(final) if tmp is None else tmp
    try:
        result = write(tmp)
        publish_dir(tmp, final, keep_existing)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
