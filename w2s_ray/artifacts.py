"""Content-addressed artifact store on any ``pyarrow.fs`` filesystem.

A stage's artifact lives under ``<root>/objects/<key>/`` where ``key`` hashes
the stage's full effective config, the keys of its inputs and the data
version, so a change to any of them is a new artifact and an unchanged stage
is found again and reloaded (never re-run, never silently half-loaded).

Commit protocol: files are staged and checksummed, and ``manifest.json`` is
the commit record. On a local filesystem the staged directory is renamed into
place (atomic); on object stores the manifest is written last (and deleted
first when a broken artifact is replaced), so a reader that finds a manifest
finds every file it lists. A manifest whose files are missing, truncated or
fail their sha256 is treated as absent and reported; on remote stores the
checksums are streamed once per store object and manifest, and a download to
the local cache is checked against them as it is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
STAMP_MIN_AGE_S = 2.0  # see ArtifactStore._stamp
VERIFIED = ".verified"  # a local artifact's verification stamp (see ArtifactStore._verify); not in its manifest
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
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):  # fullmatch: `$` lets a trailing newline by
        raise ValueError(f"invalid artifact key {key!r}")
    return key


def check_rel(rel: str) -> str:
    """A file name inside an artifact (from a manifest or a caller): relative, no ``..``."""
    if not rel or rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in rel.split("/")):
        raise ValueError(f"invalid artifact file name {rel!r}")
    return rel


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stream_sha256(fs: pafs.FileSystem, path: str, sink: Any = None) -> str:
    """sha256 of a file on any pyarrow filesystem, read in 1 MiB chunks (copied to ``sink`` if given)."""
    h = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            if sink is not None:
                sink.write(chunk)
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
    def from_json(cls, text: str) -> Manifest:
        d = json.loads(text)
        return cls(key=d["key"], files=d["files"], meta=d.get("meta", {}), created=d["created"])


@dataclass
class Build:
    """An artifact being built by ``ArtifactStore.building``: write under ``dir``, set ``meta``.

    ``manifest`` is filled in once the block has committed.
    """

    dir: Path
    meta: dict[str, Any] | None = None
    manifest: Manifest | None = None


def resolve_fs(uri: str, filesystem: pafs.FileSystem | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) of a local path or any URI ``pyarrow.fs`` knows."""
    if filesystem is not None:  # the URI's path is a path inside the given filesystem
        path = uri.split("://", 1)[1].split("?", 1)[0] if "://" in uri else uri
        if isinstance(filesystem, pafs.LocalFileSystem):
            return filesystem, str(Path(path).expanduser().resolve())
        return filesystem, path.rstrip("/") or "/"
    if "://" in uri:
        fs, root = pafs.FileSystem.from_uri(uri)
        return fs, root.rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


class ArtifactStore:
    """Keyed, verified, atomically committed stage outputs.

    ``uri`` is a local path, ``file://`` URI or any URI ``pyarrow.fs`` knows
    (``s3://bucket/prefix``, ``gs://…``, ``hdfs://host:port/path``). Pass
    ``filesystem`` to use an already-built ``pyarrow.fs.FileSystem`` (for
    instance an fsspec one through ``PyFileSystem(FSSpecHandler(...))``);
    ``uri`` is then the root path inside it. Such a store cannot be re-opened
    from ``store.uri`` alone, so it is for use in one process (Ray workers
    re-open stores by URI).
    """

    def __init__(self, uri: str, filesystem: pafs.FileSystem | None = None):
        # Ray workers run in other directories: a relative local path must not travel as such
        local_path = "://" not in uri and (filesystem is None or isinstance(filesystem, pafs.LocalFileSystem))
        self.uri = str(Path(uri).expanduser().resolve()) if local_path else uri
        self.fs, self.root = resolve_fs(uri, filesystem)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)
        self._verified: set[str] = set()  # remote manifests whose checksums this object has streamed

    # -- addressing -------------------------------------------------------
    def path(self, key: str, *parts: str) -> str:
        return "/".join([self.root, "objects", check_key(key), *(check_rel(p) for p in parts)])

    def data_uri(self, key: str, *parts: str) -> str:
        """A path Ray Data and pyarrow can read on every node (URI if remote).

        The store URI's authority and query (``hdfs://host:port``,
        ``s3://b/p?endpoint_override=…``) are kept.
        """
        p = self.path(key, *parts)
        if self.is_local or "://" not in self.uri:
            return p
        base, _, query = self.uri.partition("?")
        return f"{base.rstrip('/')}{p[len(self.root):]}" + (f"?{query}" if query else "")

    # -- reading ----------------------------------------------------------
    def manifest(self, key: str, verify: bool = True) -> Manifest | None:
        """The committed manifest, or None if absent or (with verify) damaged.

        An invalid key raises ValueError (it is never looked up).
        """
        loaded = self._load_manifest(key)
        if loaded is None:
            return None
        m, text = loaded
        if verify and not self._verify(key, m, text):
            return None
        return m

    def _load_manifest(self, key: str) -> tuple[Manifest, str] | None:
        """The manifest and its exact text, or None if absent or unreadable (not verified)."""
        path = self.path(key, MANIFEST)
        try:
            with self.fs.open_input_stream(path) as f:
                raw = f.read()
        except (FileNotFoundError, OSError):
            return None
        try:
            text = raw.decode()  # a flipped byte can make it invalid UTF-8: damaged, not fatal
            m = Manifest.from_json(text)
            if m.key != key or not isinstance(m.files, dict):
                raise ValueError("manifest of another artifact")
            for rel, info in m.files.items():
                check_rel(rel)
                info["size"], info["sha256"]
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("artifact %s: unreadable manifest; it will be recomputed", key)
            return None
        return m, text

    def exists(self, key: str) -> bool:
        return self.manifest(key) is not None

    def _stamp(self, key: str, m: Manifest, text: str) -> str | None:
        """What a local artifact's verification vouches for: its manifest and each file's size and mtime.

        None while a file is younger than :data:`STAMP_MIN_AGE_S`: a rewrite within the file system's
        timestamp tick would keep the mtime, so such a file is verified in full until it is older.
        """
        h, now = hashlib.sha256(text.encode()), time.time_ns()
        for rel in sorted(m.files):
            st = os.stat(self.path(key, rel))
            if now - st.st_mtime_ns < STAMP_MIN_AGE_S * 1e9:
                return None
            h.update(f"\0{rel}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        return h.hexdigest()

    def _trusted(self, key: str, m: Manifest, text: str) -> bool:
        """A local artifact verified before and untouched since (same stamp): no need to re-read every byte."""
        try:
            stamp = self._stamp(key, m, text)
            return stamp is not None and Path(self.path(key, VERIFIED)).read_text() == stamp
        except OSError:  # no record yet, or a file is gone (then full verification says which)
            return False

    def _record_verified(self, key: str, m: Manifest, text: str) -> None:
        try:
            stamp = self._stamp(key, m, text)
            if stamp is None:
                return
            record = Path(self.path(key, VERIFIED))
            tmp = record.with_name(f"{VERIFIED}.{uuid.uuid4().hex}")
            tmp.write_text(stamp)
            tmp.replace(record)
        except OSError:  # a read-only store: verify in full next time
            pass

    def _verify(self, key: str, m: Manifest, text: str) -> bool:
        """Sizes, then sha256, once: locally a stamp of sizes and mtimes records it; remotely, once per
        manifest per store object (streamed)."""
        memo = hashlib.sha256(text.encode()).hexdigest()
        if not self.is_local and memo in self._verified:
            return True
        if self.is_local and self._trusted(key, m, text):
            return True
        for rel, info in m.files.items():
            try:
                size = self.fs.get_file_info(self.path(key, rel)).size
            except OSError:
                size = None
            if size != info["size"]:
                log.warning("artifact %s: %s is missing or truncated; it will be recomputed", key, rel)
                return False
        for rel, info in m.files.items():  # sizes first: a missing file is found without reading the rest
            p = self.path(key, rel)
            try:
                digest = file_sha256(Path(p)) if self.is_local else _stream_sha256(self.fs, p)
            except OSError:
                digest = None
            if digest != info["sha256"]:
                log.warning("artifact %s: %s fails its checksum; it will be recomputed", key, rel)
                return False
        if not self.is_local:
            self._verified.add(memo)
        else:
            self._record_verified(key, m, text)
        return True

    def local_dir(self, key: str) -> Path:
        """A local directory holding the artifact (downloaded once per manifest if remote).

        The cache is keyed by store and manifest, so two stores (or a recommit)
        never share a copy, and every downloaded file is checked against the
        manifest's sha256 as it is written. Raises FileNotFoundError when the
        artifact is not committed, OSError when it changed during the download.
        """
        if self.is_local:
            return Path(self.path(key))
        loaded = self._load_manifest(key)
        if loaded is None:
            raise FileNotFoundError(f"artifact {key} is not committed in {self.uri}")
        m, text = loaded
        tag = hashlib.sha256(f"{self.uri}\0{text}".encode()).hexdigest()[:16]
        cache = Path(tempfile.gettempdir()) / "w2s-ray-cache" / f"{key}-{tag}"
        if (cache / MANIFEST).exists():
            return cache
        tmp = cache.with_name(f"{cache.name}.{uuid.uuid4().hex}.part")
        try:
            for rel, info in m.files.items():
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                with open(tmp / rel, "wb") as out:
                    digest = _stream_sha256(self.fs, self.path(key, rel), sink=out)
                if digest != info["sha256"]:
                    raise OSError(f"artifact {key}: {rel} does not match its manifest (changed during download?)")
            (tmp / MANIFEST).write_text(text)
            try:
                os.replace(tmp, cache)
            except OSError:  # another process put the same copy in place first
                if not (cache / MANIFEST).exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cache

    # -- writing ----------------------------------------------------------
    def commit(self, key: str, src: Path, meta: dict[str, Any], exclude: tuple[str, ...] = ()) -> Manifest:
        """Checksum ``src``'s files and publish them under ``key`` atomically."""
        check_key(key)
        files = {
            p.relative_to(src).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(src.rglob("*"))
            if p.is_file() and p.name not in (MANIFEST, VERIFIED) and p.relative_to(src).parts[0] not in exclude
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
        name = f"{base}/{manifest.key}.{uuid.uuid4().hex[:12]}.json"
        if self.is_local:  # rename into place: a reader polling the ledger never sees half an entry
            tmp = f"{base}/.{uuid.uuid4().hex}.tmp"
            with self.fs.open_output_stream(tmp) as f:
                f.write(json.dumps(entry).encode())
            self.fs.move(tmp, name)
        else:  # one object, which object stores publish whole
            with self.fs.open_output_stream(name) as f:
                f.write(json.dumps(entry).encode())

    def ledger(self) -> list[dict[str, Any]]:
        """Every commit ever made to this store, oldest first (unreadable entries are skipped, with a warning)."""
        infos = self.fs.get_file_info(pafs.FileSelector(f"{self.root}/ledger", allow_not_found=True))
        entries = []
        for info in infos:
            if info.is_file and info.path.endswith(".json"):
                try:
                    with self.fs.open_input_stream(info.path) as f:
                        entry = json.loads(f.read().decode())
                    entry["key"], entry["created"]
                except (OSError, ValueError, KeyError, TypeError):
                    log.warning("artifact store %s: unreadable ledger entry %s skipped", self.uri, info.path)
                    continue
                entries.append(entry)
        return sorted(entries, key=lambda e: e["created"])

    def _commit_local(self, key: str, src: Path, manifest: Manifest) -> None:
        final = Path(self.path(key))
        staging = Path(self.root) / "tmp" / f"{key}.{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        for rel in manifest.files:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, staging / rel)
        text = manifest.to_json()
        (staging / MANIFEST).write_text(text)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            if self.manifest(key) is not None:  # a concurrent writer won; same content
                shutil.rmtree(staging)
                return
            graveyard = final.with_name(f"{key}.broken.{uuid.uuid4().hex}")
            os.replace(final, graveyard)
            shutil.rmtree(graveyard, ignore_errors=True)
        os.replace(staging, final)
        self._record_verified(key, manifest, text)  # checksummed from the source just now

    def _commit_remote(self, key: str, src: Path, manifest: Manifest) -> None:
        base = self.path(key)
        if self.manifest(key) is not None:  # a concurrent writer won; same content: leave it for its readers
            return
        with contextlib.suppress(OSError):  # the commit record goes first: no reader trusts a directory being replaced
            self.fs.delete_file(f"{base}/{MANIFEST}")
        self.fs.delete_dir_contents(base, missing_dir_ok=True)
        for rel in manifest.files:
            self.fs.create_dir(f"{base}/{rel}".rsplit("/", 1)[0], recursive=True)
            with open(src / rel, "rb") as fin, self.fs.open_output_stream(f"{base}/{rel}") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        with self.fs.open_output_stream(f"{base}/{MANIFEST}") as fout:  # the commit record, last
            fout.write(manifest.to_json().encode())

    @contextlib.contextmanager
    def building(self, key: str, exclude: tuple[str, ...] = ()) -> Iterator[Build]:
        """A fresh staging folder for ``key``'s files; committed with ``build.meta`` when the block ends normally.

        On an exception nothing is committed; the staging folder is always
        removed, so a failed stage leaves nothing half-written. A block that
        ends without setting ``meta`` is a bug: it raises and commits nothing.
        """
        check_key(key)  # before the stage's work, not after it
        build = Build(self.staging_dir())
        try:
            yield build
            if build.meta is None:
                raise RuntimeError(f"artifact {key}: the build ended without setting its meta; nothing committed")
            build.manifest = self.commit(key, build.dir, build.meta, exclude)
        finally:
            shutil.rmtree(build.dir, ignore_errors=True)

    def staging_dir(self) -> Path:
        """A private local scratch directory for building an artifact."""
        base = Path(self.root) / "tmp" if self.is_local else Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="build-", dir=base))
