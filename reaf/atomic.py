"""The one atomic writer: every output (checkpoints, JSON, CSV, caches, plots, vocab) lands whole or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TEMP_GLOB = ".*.reaf-*.tmp"  # what a killed writer leaves behind; remove_stale_temps finds them by it
_UMASK = os.umask(0)
os.umask(_UMASK)


class OutputError(OSError):
    """An output could not be written (disk full, read-only filesystem, no permission): the fault of where it goes,
    never of an input. Its message names the output path and the system's cause; `errno` is kept."""

    def __str__(self) -> str:
        return f"{self.filename}: cannot write it: {self.strerror} (errno {self.errno})"


def _open(path: Path, mode: str = "wb"):
    """The one place an output is opened for writing (a Python file: a full disk raises OSError(ENOSPC) here, where
    torch's own file writer would say only 'unexpected pos')."""
    return open(path, mode)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in `path`'s folder; when the block succeeds it is flushed to disk, renamed onto `path` and
    the folder synced (mode from the umask), else it is removed. Readers never see a partial file. Any OSError on
    the way (ENOSPC, EROFS, EACCES, ...) is raised as OutputError naming `path`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.reaf-", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
        _fsync(path.parent)
    except OutputError:
        raise
    except OSError as err:
        raise OutputError(err.errno, err.strerror or str(err), str(path)) from err
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_output(path) as tmp, _open(tmp) as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(obj: Any, path: str | os.PathLike, **dump_kwargs: Any) -> None:
    write_text(path, json.dumps(obj, **dump_kwargs))


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_output(path) as tmp, _open(tmp) as f:
        torch.save(obj, f)


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """dst becomes the same file as src (a hard link, or a copy where links are unsupported), atomically."""
    with atomic_output(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
