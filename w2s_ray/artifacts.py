"""Content-addressed artifact store on any ``pyarrow.fs`` filesystem.

A stage's artifact lives under ``<root>/objects/<key>/`` where ``key`` hashes
the stage's full effective config, the keys of its inputs and the data
version, so a change to any of them is a new artifact and an unchanged stage
is found again and reloaded (never re-run, never silently half-loaded).

Commit protocol: files are staged and checksummed, and ``manifest.json`` is
the commit record. On a local filesystem the staged directory is renamed into
place (atomic); on object stores the manifest is written last, so a reader
that finds a manifest finds every file it lists. A manifest whose files are
missing or fail their checksum is treated as absent and reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
_KEY_RE = re.compile(r"^[a-z]+-[0-9a-f]{24}$")


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, floats as repr."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def stage_key(kind: str, params: dict[str, Any], inputs: dict[str, str]) -> str:
    """The content address of a stage: its kind, effective params and inputs."""
    payload = {"kind": kind, "schema": SCHEMA_VERSION, "params": params, "inputs": inputs}
    digest = hashlib.sha256(canonical_json(payload).encode()).hexdigest()
    return f"{kind}-{digest[:24]}"


def check_key(key: str) -> str:
    """Keys become path components: refuse anything that could escape the root."""
    if not _KEY_RE.match(key):
        raise ValueError(f"invalid artifact key {key!r}")
    return key


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Manifest:
    key: str
    files: dict[str, dict[str, Any]]
    meta: dict[str, Any]
    created: float

    def to_json(self) -> str:
        return json.dumps(
            {"key": self.key, "files": self.files, "meta": self.meta, "created": self.created},
            indent=1,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        d = json.loads(text)
        return cls(key=d["key"], files=d["files"], meta=d.get("meta", {}), created=d["created"])


def _resolve_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        fs, root = pafs.FileSystem.from_uri(uri)
        return fs, root.rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


class ArtifactStore:
    """Keyed, verified, atomically committed stage outputs."""

    def __init__(self, uri: str):
        # Ray workers run in other directories: a relative local path must not travel as such
        self.uri = uri if "://" in uri else str(Path(uri).expanduser().resolve())
        self.fs, self.root = _resolve_fs(uri)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    # -- addressing -------------------------------------------------------
    def path(self, key: str, *parts: str) -> str:
        return "/".join([self.root, "objects", check_key(key), *parts])

    def data_uri(self, key: str, *parts: str) -> str:
        """A path Ray Data and pyarrow can read on every node (URI if remote)."""
        p = self.path(key, *parts)
        if self.is_local:
            return p
        scheme = self.uri.split("://", 1)[0]
        return f"{scheme}://{p}"

    # -- reading ----------------------------------------------------------
    def manifest(self, key: str, verify: bool = True) -> Manifest | None:
        """The committed manifest, or None if absent or (with verify) damaged."""
        try:
            with self.fs.open_input_stream(self.path(key, MANIFEST)) as f:
                m = Manifest.from_json(f.read().decode())
        except (FileNotFoundError, OSError):
            return None
        except (ValueError, KeyError):
            log.warning("artifact %s: unreadable manifest; it will be recomputed", key)
            return None
        if verify and not self._verify(key, m):
            return None
        return m

    def exists(self, key: str) -> bool:
        return self.manifest(key) is not None

    def _verify(self, key: str, m: Manifest) -> bool:
        for rel, info in m.files.items():
            p = self.path(key, rel)
            try:
                size = self.fs.get_file_info(p).size
            except OSError:
                size = None
            if size != info["size"]:
                log.warning("artifact %s: %s is missing or truncated; it will be recomputed", key, rel)
                return False
            if self.is_local and file_sha256(Path(p)) != info["sha256"]:
                log.warning("artifact %s: %s fails its checksum; it will be recomputed", key, rel)
                return False
        return True

    def local_dir(self, key: str) -> Path:
        """A local directory holding the artifact (downloaded once if remote)."""
        if self.is_local:
            return Path(self.path(key))
        cache = Path(tempfile.gettempdir()) / "w2s-ray-cache" / key
        if not (cache / MANIFEST).exists():
            tmp = cache.with_name(f"{key}.{uuid.uuid4().hex}")
            pafs.copy_files(self.path(key), str(tmp), source_filesystem=self.fs,
                            destination_filesystem=pafs.LocalFileSystem())
            os.replace(tmp, cache) if not cache.exists() else shutil.rmtree(tmp)
        return cache

    def read_json(self, key: str, name: str) -> Any:
        with self.fs.open_input_stream(self.path(key, name)) as f:
            return json.loads(f.read().decode())

    # -- writing ----------------------------------------------------------
    def commit(self, key: str, src: Path, meta: dict[str, Any], exclude: tuple[str, ...] = ()) -> Manifest:
        """Checksum ``src``'s files and publish them under ``key`` atomically."""
        check_key(key)
        files = {
            p.relative_to(src).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(src.rglob("*"))
            if p.is_file() and p.name != MANIFEST and p.relative_to(src).parts[0] not in exclude
        }
        manifest = Manifest(key=key, files=files, meta=meta, created=time.time())
        if self.is_local:
            self._commit_local(key, src, manifest)
        else:
            self._commit_remote(key, src, manifest)
        self._record(manifest)
        return manifest

    def _record(self, manifest: Manifest) -> None:
        """One ledger file per commit: the audit trail of work done (a stage built twice shows twice).

        Separate files, not an appended log, so it works on object stores and
        under concurrent writers.
        """
        entry = {"key": manifest.key, "created": manifest.created, "stage": manifest.meta.get("stage"),
                 "seconds": manifest.meta.get("seconds")}
        base = f"{self.root}/ledger"
        self.fs.create_dir(base, recursive=True)
        with self.fs.open_output_stream(f"{base}/{manifest.key}.{uuid.uuid4().hex[:12]}.json") as f:
            f.write(json.dumps(entry).encode())

    def ledger(self) -> list[dict[str, Any]]:
        """Every commit ever made to this store, oldest first."""
        infos = self.fs.get_file_info(pafs.FileSelector(f"{self.root}/ledger", allow_not_found=True))
        entries = []
        for info in infos:
            if info.is_file and info.path.endswith(".json"):
                with self.fs.open_input_stream(info.path) as f:
                    entries.append(json.loads(f.read().decode()))
        return sorted(entries, key=lambda e: e["created"])

    def _commit_local(self, key: str, src: Path, manifest: Manifest) -> None:
        final = Path(self.path(key))
        staging = Path(self.root) / "tmp" / f"{key}.{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        for rel in manifest.files:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, staging / rel)
        (staging / MANIFEST).write_text(manifest.to_json())
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            if self.manifest(key) is not None:  # a concurrent writer won; same content
                shutil.rmtree(staging)
                return
            graveyard = final.with_name(f"{key}.broken.{uuid.uuid4().hex}")
            os.replace(final, graveyard)
            shutil.rmtree(graveyard, ignore_errors=True)
        os.replace(staging, final)

    def _commit_remote(self, key: str, src: Path, manifest: Manifest) -> None:
        base = self.path(key)
        self.fs.delete_dir_contents(base, missing_dir_ok=True)
        for rel in manifest.files:
            self.fs.create_dir(f"{base}/{rel}".rsplit("/", 1)[0], recursive=True)
            with open(src / rel, "rb") as fin, self.fs.open_output_stream(f"{base}/{rel}") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        with self.fs.open_output_stream(f"{base}/{MANIFEST}") as fout:  # the commit record, last
            fout.write(manifest.to_json().encode())

    def staging_dir(self) -> Path:
        """A private local scratch directory for building an artifact."""
        base = Path(self.root) / "tmp" if self.is_local else Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="build-", dir=base))
