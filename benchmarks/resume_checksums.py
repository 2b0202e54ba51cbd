"""Resume cost of a store full of checkpoints: every byte re-hashed on each look, against verified once.

A resumed sweep asks the store whether each stage is committed: the driver
once, a trial again before training, a consumer again. Before, a local store
re-read and re-hashed every file of the artifact on each look; now a
verification leaves a stamp (manifest + each file's size and mtime) and a look
whose stamp matches reads no file. Both are measured here side by side on the
same store of synthetic checkpoints (``--gb`` in all, ``--per`` GB each): the
"before" passes delete the stamps first, which is exactly the old behaviour.

    .venv/bin/python benchmarks/resume_checksums.py --gb 5     # ~3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (environment + sys.path)

from w2s_ray.artifacts import VERIFIED, ArtifactStore

LOOKS = 3  # driver, trial, consumer


def build(store: ArtifactStore, scratch: Path, gb: float, per: float) -> list[str]:
    """Commit ``gb / per`` artifacts of one ``per``-GB file each, aged so their stamps apply."""
    keys, chunk = [], os.urandom(1 << 20)
    for i in range(max(1, round(gb / per))):
        src = scratch / f"src{i}"
        (src / "model").mkdir(parents=True)
        with open(src / "model" / "weights.safetensors", "wb") as f:
            for _ in range(int(per * 1024)):
                f.write(chunk)
        key = f"train-{i:024d}"
        store.commit(key, src, {"stage": f"synthetic checkpoint {i}"})
        shutil.rmtree(src)
        keys.append(key)
    old = time.time() - 600
    for p in Path(store.root).rglob("*"):
        if p.is_file():
            os.utime(p, (old, old))
    return keys


def forget(store: ArtifactStore, keys: list[str]) -> None:
    for key in keys:
        Path(store.path(key, VERIFIED)).unlink(missing_ok=True)


def looks(store: ArtifactStore, keys: list[str], stamps: bool) -> float:
    """Seconds for LOOKS passes of exists() over every key; without ``stamps`` each pass starts with none
    (the old behaviour: every look re-hashes)."""
    t0 = time.perf_counter()
    for _ in range(LOOKS):
        if not stamps:
            forget(store, keys)
        assert all(store.exists(k) for k in keys)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gb", type=float, default=5.0, help="checkpoint bytes in the store (GB)")
    p.add_argument("--per", type=float, default=1.0, help="GB per checkpoint")
    p.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    a = p.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="w2s-resume-", dir=a.dir))
    try:
        store = ArtifactStore(str(scratch / "store"))
        t0 = time.perf_counter()
        keys = build(store, scratch, a.gb, a.per)
        print(f"store: {len(keys)} checkpoint(s), {a.gb:g} GB, built in {time.perf_counter() - t0:.1f}s")
        before = looks(store, keys, stamps=False)
        forget(store, keys)
        after_first = looks(store, keys, stamps=True)  # the first look verifies and stamps, the others trust
        after = looks(store, keys, stamps=True)  # a later resume: every look trusted
        print(f"{LOOKS} looks per checkpoint (driver, trial, consumer):")
        print(f"  before (re-hash on every look):        {before:8.2f}s")
        print(f"  after, first resume (hash once, stamp): {after_first:8.2f}s  ({before / after_first:.1f}x faster)")
        print(f"  after, later resumes (stamps match):    {after:8.2f}s  ({before / max(after, 1e-9):.0f}x faster)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
