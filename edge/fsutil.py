"""File helpers: nothing is left half-written (temporary name in the same folder, then rename), places to write
checked before a run writes anything, stale temporaries of a killed run found again, write failures as one line.

The temporary name of ``NAME`` is ``.NAME.XXXXXXXX<suffix>`` beside it (``tempfile.mkstemp``'s eight random
characters): a process killed between creating and renaming it leaves that hidden file behind, and
:func:`remove_stale_temporaries` removes it at the next start in that folder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import EdgesegError

MIN_FREE_MB = 64  # a run needs this much free space to start: a few minutes of a 640x480 overlay recording
# (mp4v, about 0.3 MB/s at 10-30 FPS) and hours of the JSON log (about 40 MB an hour at 30 FPS)
RESERVE_MB = 8  # a running run stops (disk full, exit 4) when less than this is left: room for the summary line


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp", dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp_path, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- parts of an output


def part_path(path: str | os.PathLike, part: int, digits: int = 3) -> Path:
    """Part 1 is ``path``; part N >= 2 has ``-NNN`` (``digits`` wide) before the suffix (``.ome.tif`` kept whole):
    ``nuclei-002.csv``, ``overlay-000002.mp4``."""
    path = Path(path)
    if part == 1:
        return path
    base, suffix = split_suffix(path.name)
    return path.with_name(f"{base}-{part:0{digits}d}{suffix}")


def split_suffix(name: str) -> tuple[str, str]:
    """``("labels", ".ome.tif")``, ``("overlay", ".mp4")``, ``("ctc", "")``."""
    for suffix in (".ome.tiff", ".ome.tif", *([Path(name).suffix] if Path(name).suffix else [])):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    return name, ""


def part_number(path: str | os.PathLike, name: str) -> int | None:
    """Which part of ``path`` a file named ``name`` is (1 for ``path`` itself), or None if it is none of them."""
    base, suffix = split_suffix(Path(path).name)
    if name == Path(path).name:
        return 1
    m = re.fullmatch(re.escape(base) + r"-(\d{3,})" + re.escape(suffix), name)
    return int(m.group(1)) if m and int(m.group(1)) >= 2 else None


# --------------------------------------------------------------------------- before a run writes anything


def check_writable(folder: str | os.PathLike, what: str = "--out", min_free_mb: float = MIN_FREE_MB) -> None:
    """One-line errors (exit 2) when ``folder`` cannot be created or written, or its disk has less than
    ``min_free_mb`` free. Creates nothing: the nearest existing folder above it is probed with a hidden file that
    is removed at once."""
    folder = Path(folder).absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise EdgesegError(f"cannot write to {folder}: {existing} is a file, not a folder",
                           f"give {what} a folder that is not inside a file")
    try:
        _probe_write(existing)
    except OSError as exc:
        raise EdgesegError(f"cannot write to {folder}: {existing} is not writable ({exc.strerror or exc})",
                           f"give {what} a writable folder") from None
    free_mb = shutil.disk_usage(existing).free / 2**20
    if free_mb < min_free_mb:
        raise EdgesegError(f"only {free_mb:.1f} MB free on the disk of {folder}",
                           f"free some space (at least {min_free_mb:g} MB) or give {what} a folder on another disk")


def _probe_write(folder: Path) -> None:
    fd, probe = tempfile.mkstemp(prefix=".edgeseg-probe.", dir=folder)
    os.close(fd)
    os.unlink(probe)


def remove_stale_temporaries(targets: Iterable[str | os.PathLike]) -> int:
    """Remove the temporary files (and folders) that :func:`atomic_path` / ``mkstemp`` / ``mkdtemp`` made for
    ``targets`` or their parts (:func:`part_path`) and a killed process left behind; returns how many."""
    removed = 0
    for target in targets:
        target = Path(target)
        if not target.parent.is_dir():
            continue
        base, suffix = split_suffix(target.name)
        stale = re.compile(r"\." + re.escape(base) + r"(-\d+)?" + re.escape(suffix)
                           + r"\.[a-z0-9_]{8}(\.[A-Za-z0-9.]+)?")
        for p in target.parent.iterdir():
            if not stale.fullmatch(p.name):
                continue
            with contextlib.suppress(OSError):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                removed += 1
    return removed


# --------------------------------------------------------------------------- a write that failed mid-run


class WriteFailed(EdgesegError):
    """A file of a running run could not be written (disk full, I/O error): the run stops (exit code 4) and keeps
    what was complete."""

    exit_code = 4

    def __init__(self, problem: str, fix: str | None = None, disk_full: bool = False):
        super().__init__(problem, fix)
        self.disk_full = disk_full

    @property
    def stopped(self) -> str:
        """The summary's ``stopped``: ``disk_full`` or ``write_failed``."""
        return "disk_full" if self.disk_full else "write_failed"


DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def write_failed(path: str | os.PathLike, exc: OSError) -> WriteFailed:
    """The one-line error for ``exc`` raised while writing ``path``."""
    full = exc.errno in DISK_FULL
    what = "disk full" if full else "write failed"
    return WriteFailed(f"{what} while writing {path} ({exc.strerror or exc})",
                       "free space on that disk or give --out another one (what was complete is kept)" if full
                       else "check the disk (dmesg) or give --out another one (what was complete is kept)",
                       disk_full=full)
