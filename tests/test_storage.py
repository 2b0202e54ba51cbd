"""The artifact store on shared storage: any ``pyarrow.fs`` filesystem, not only a local disk.

The remote commit path (files first, ``manifest.json`` last) runs on a real
non-local pyarrow filesystem: fsspec's in-memory filesystem behind
``pyarrow.fs.PyFileSystem(FSSpecHandler(...))``, wrapped so the test can watch
every write and play a concurrent reader at each step. Local paths and
``file://`` URIs must be the same store.
"""

from __future__ import annotations

import json
import logging
import tempfile
import uuid
from pathlib import Path

import fsspec
import pyarrow.fs as pafs
import pytest

from w2s_ray.artifacts import MANIFEST, ArtifactStore

KEY = "train-" + "ab" * 12
OTHER = "infer-" + "cd" * 12
FILES = {"a.txt": b"alpha", "sub/b.bin": b"\x00\x01" * 100, "model/backbone/config.json": b'{"x": 1}'}


class SpyHandler(pafs.FSSpecHandler):
    """An fsspec handler that logs mutations and calls ``hook`` before each one."""

    def __init__(self, fs):
        super().__init__(fs)
        self.events: list[tuple[str, str]] = []
        self.reads: list[str] = []
        self.hook = lambda op, path: None

    def _event(self, op: str, path: str) -> None:
        self.hook(op, path)
        self.events.append((op, path))

    def open_output_stream(self, path, metadata):
        self._event("write", path)
        return super().open_output_stream(path, metadata)

    def delete_file(self, path):
        self._event("delete", path)
        return super().delete_file(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._event("delete_contents", path)
        return super().delete_dir_contents(path, missing_dir_ok)

    def open_input_stream(self, path):
        self.reads.append(path)
        return super().open_input_stream(path)


@pytest.fixture
def memfs():
    """A fresh root on fsspec's (process-global) memory filesystem, as a non-local pyarrow filesystem."""
    mem = fsspec.filesystem("memory")
    root = f"/w2s-{uuid.uuid4().hex[:8]}/store"
    spy = SpyHandler(mem)
    fs = pafs.PyFileSystem(spy)
    yield fs, spy, root
    if mem.exists(root.rsplit("/", 1)[0]):
        mem.rm(root.rsplit("/", 1)[0], recursive=True)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """local_dir() downloads remote artifacts under the temp dir: keep them out of the real /tmp."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "systmp"))
    (tmp_path / "systmp").mkdir()


def _src(base: Path, files: dict[str, bytes] = FILES) -> Path:
    src = base / f"src-{uuid.uuid4().hex[:6]}"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    return src


def _put(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as f:
        f.write(data)


def _get(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def _store(kind: str, tmp_path: Path, memfs) -> ArtifactStore:
    if kind == "memory":
        fs, _, root = memfs
        return ArtifactStore(root, filesystem=fs)
    if kind == "file-uri":
        return ArtifactStore((tmp_path / "store").as_uri())
    return ArtifactStore(str(tmp_path / "store"))


KINDS = ["memory", "local-path", "file-uri"]


# -- the same contract on every filesystem ----------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_commit_reload_and_ledger(kind, tmp_path, memfs):
    store = _store(kind, tmp_path, memfs)
    assert store.is_local == (kind != "memory")
    assert not store.exists(KEY) and store.ledger() == []
    src = _src(tmp_path)
    (src / "train_state.pt").write_bytes(b"optimizer state")
    m = store.commit(KEY, src, {"stage": "weak", "seconds": 1.5}, exclude=("train_state.pt",))
    assert set(m.files) == set(FILES)
    again = store.manifest(KEY)
    assert again == m and again.meta == {"stage": "weak", "seconds": 1.5}
    for rel, data in FILES.items():
        assert _get(store.fs, store.path(KEY, rel)) == data
        assert (store.local_dir(KEY) / rel).read_bytes() == data
    assert not store.fs.get_file_info(store.path(KEY, "train_state.pt")).is_file
    store.commit(OTHER, _src(tmp_path, {"data/part-0.parquet": b"rows"}), {"stage": "labels"})
    ledger = store.ledger()
    assert [e["key"] for e in ledger] == [KEY, OTHER]  # oldest first
    assert [e["stage"] for e in ledger] == ["weak", "labels"] and ledger[0]["seconds"] == 1.5
    assert ledger[0]["created"] == m.created


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "local-path"])  # local: test_reliability's catalogue
@pytest.mark.parametrize("damage", ["truncated", "missing", "same-size", "manifest"])
def test_damaged_artifact_is_absent_with_a_warning_naming_it(kind, damage, tmp_path, memfs, caplog):
    store = _store(kind, tmp_path, memfs)
    store.commit(KEY, _src(tmp_path), {})
    target = store.path(KEY, "sub/b.bin")
    if damage == "truncated":
        _put(store.fs, target, FILES["sub/b.bin"][:-1])
    elif damage == "missing":
        store.fs.delete_file(target)
    elif damage == "same-size":
        _put(store.fs, target, b"\x01\x01" * 100)
    else:
        _put(store.fs, store.path(KEY, MANIFEST), b'{"key": "' + KEY.encode() + b'", "files": {')
    fresh = ArtifactStore(store.uri, filesystem=store.fs)  # no verification memo from an earlier look
    with caplog.at_level(logging.WARNING, logger="w2s_ray.artifacts"):
        assert fresh.manifest(KEY) is None and not fresh.exists(KEY)
    expected = {"truncated": "missing or truncated", "missing": "missing or truncated",
                "same-size": "fails its checksum", "manifest": "unreadable manifest"}[damage]
    assert any(KEY in r.getMessage() and expected in r.getMessage() for r in caplog.records), caplog.text
    if damage != "manifest":
        assert fresh.manifest(KEY, verify=False) is not None  # the record is there, its files are not right
    fresh.commit(KEY, _src(tmp_path), {"again": True})  # recomputing replaces the broken copy
    assert fresh.manifest(KEY).meta == {"again": True}
    assert _get(fresh.fs, target) == FILES["sub/b.bin"]
    assert [e["key"] for e in fresh.ledger()] == [KEY, KEY]  # built twice, recorded twice


BAD_KEYS = ["../x", "..", ".", "", "/etc/passwd", "a/b", "train-../../etc", f"{KEY}/../../x", f"../{KEY}", f"/{KEY}",
            f"{KEY}/", f"{KEY}\\..\\x", "~", "~/x", "TRAIN-" + "ab" * 12, "train-" + "ab" * 11, f"{KEY}\x00",
            "train-" + "g" * 24, "train-" + "a" * 23 + "/"]
BAD_NAMES = ["../x", "..", ".", "", "/etc/passwd", "a/../../b", "a//b", "a/./b", "a\\..\\b", "sub/..",
             "../" + KEY + "/manifest.json", "../../escape", "/abs"]


@pytest.mark.parametrize("kind", KINDS)
def test_keys_and_names_that_could_escape_the_root_are_refused(kind, tmp_path, memfs, caplog):
    store = _store(kind, tmp_path, memfs)
    src = _src(tmp_path)
    for bad in BAD_KEYS:
        for call in (lambda k: store.path(k), lambda k: store.data_uri(k), store.manifest, store.exists,
                     store.local_dir, lambda k: store.commit(k, src, {})):
            with pytest.raises(ValueError):
                call(bad)
    for bad_part in BAD_NAMES:
        with pytest.raises(ValueError):
            store.path(KEY, bad_part)
        with pytest.raises(ValueError):
            store.data_uri(KEY, "ok", bad_part)
    assert store.ledger() == []  # nothing was written
    # a manifest that names a file outside its artifact is damaged, never followed
    store.fs.create_dir(store.path(KEY), recursive=True)
    evil = {"key": KEY, "created": 1.0, "meta": {}, "files": {"../../../../outside": {"size": 1, "sha256": "0"}}}
    _put(store.fs, store.path(KEY, MANIFEST), json.dumps(evil).encode())
    with caplog.at_level(logging.WARNING, logger="w2s_ray.artifacts"):
        assert store.manifest(KEY, verify=False) is None
    assert f"artifact {KEY}: unreadable manifest" in caplog.text
    # nor is a manifest copied from another artifact
    other = dict(evil, key=OTHER, files={})
    _put(store.fs, store.path(KEY, MANIFEST), json.dumps(other).encode())
    assert store.manifest(KEY) is None


def test_local_path_and_file_uri_are_the_same_store(tmp_path, caplog):
    by_path = ArtifactStore(str(tmp_path / "store"))
    by_uri = ArtifactStore((tmp_path / "store").as_uri())
    assert by_uri.uri.startswith("file://") and by_path.uri == str((tmp_path / "store").resolve())
    assert by_path.is_local and by_uri.is_local and Path(by_path.root) == Path(by_uri.root)
    by_path.commit(KEY, _src(tmp_path), {"by": "path"})
    by_uri.commit(OTHER, _src(tmp_path), {"by": "uri"})
    for s in (by_path, by_uri):
        assert s.manifest(KEY).meta == {"by": "path"} and s.manifest(OTHER).meta == {"by": "uri"}
        assert s.data_uri(KEY, "a.txt") == by_path.path(KEY, "a.txt")  # a plain path for Ray Data on every node
        assert s.local_dir(OTHER) == Path(by_path.path(OTHER))  # no copy
        assert [e["key"] for e in s.ledger()] == [KEY, OTHER]
    assert not any((tmp_path / "store" / "tmp").iterdir())  # both committed by rename from staging
    assert not [p for p in (tmp_path / "store" / "ledger").iterdir() if not p.name.endswith(".json")]
    Path(by_path.path(KEY, "a.txt")).write_text("ALPHA")  # same size, other bytes: both see it
    assert not by_uri.exists(KEY) and not by_path.exists(KEY)
    assert "fails its checksum" in caplog.text
    # a relative path is anchored where the store was opened (Ray workers run elsewhere)
    assert Path(ArtifactStore("rel/store").uri).is_absolute()


# -- the remote commit path ----------------------------------------------------------


def test_remote_manifest_is_written_last_and_a_reader_never_sees_it_early(tmp_path, memfs):
    fs, spy, root = memfs
    writer = ArtifactStore(root, filesystem=fs)
    reader = ArtifactStore(root, filesystem=fs)
    base = writer.path(KEY)
    seen = []

    def reader_looks(op: str, path: str) -> None:
        """At every mutation of the artifact, a concurrent reader: a manifest it finds lists only complete files."""
        if not path.startswith(base):
            return
        loaded = reader._load_manifest(KEY)
        if loaded is None:
            seen.append("none")
            return
        m, _ = loaded
        complete = all(fs.get_file_info(reader.path(KEY, rel)).size == info["size"] for rel, info in m.files.items())
        seen.append("complete" if complete else f"INCOMPLETE at {op} {path}")

    spy.hook = reader_looks
    writer.commit(KEY, _src(tmp_path), {"n": 1})
    spy.hook = lambda op, path: None
    writes = [p for op, p in spy.events if op == "write" and p.startswith(base)]
    assert writes[-1] == f"{base}/{MANIFEST}" and writes.count(f"{base}/{MANIFEST}") == 1
    assert sorted(writes[:-1]) == sorted(f"{base}/{rel}" for rel in FILES)
    assert seen and set(seen) == {"none"}  # nothing was published before the manifest
    assert reader.manifest(KEY) is not None

    # replacing a broken copy: the old manifest goes first, the new one last
    _put(fs, writer.path(KEY, "sub/b.bin"), b"\x00")
    spy.events.clear()
    seen.clear()
    spy.hook = reader_looks
    writer.commit(KEY, _src(tmp_path), {"n": 2})
    spy.hook = lambda op, path: None
    assert seen[0].startswith("INCOMPLETE at delete")  # the copy broken on purpose, before any change
    assert set(seen[1:]) == {"none"}, seen  # its manifest went first: no reader trusts a half-replaced copy
    mutations = [(op, p) for op, p in spy.events if p.startswith(base)]
    assert mutations[0] == ("delete", f"{base}/{MANIFEST}")
    assert mutations[-1] == ("write", f"{base}/{MANIFEST}")
    assert reader.manifest(KEY).meta == {"n": 2}


def test_remote_commit_keeps_a_valid_artifact_that_a_concurrent_writer_published(tmp_path, memfs):
    fs, spy, root = memfs
    first, second = ArtifactStore(root, filesystem=fs), ArtifactStore(root, filesystem=fs)
    m1 = first.commit(KEY, _src(tmp_path), {"writer": 1})
    spy.events.clear()
    second.commit(KEY, _src(tmp_path), {"writer": 2})  # same key: same content by construction
    assert not [e for e in spy.events if e[1].startswith(first.path(KEY))]  # readers' files were left alone
    assert first.manifest(KEY) == m1
    assert len(first.ledger()) == 2  # the work was done twice, and the ledger says so


def test_remote_checksums_are_streamed_once_per_store_object(tmp_path, memfs):
    fs, spy, root = memfs
    ArtifactStore(root, filesystem=fs).commit(KEY, _src(tmp_path), {})
    store = ArtifactStore(root, filesystem=fs)
    data_files = {store.path(KEY, rel) for rel in FILES}
    spy.reads.clear()
    assert store.exists(KEY)
    assert data_files <= set(spy.reads)  # the first look reads every byte
    spy.reads.clear()
    assert store.exists(KEY) and store.exists(KEY)
    assert set(spy.reads) == {store.path(KEY, MANIFEST)}  # later looks: the manifest and sizes only
    _put(fs, store.path(KEY, "a.txt"), b"ALPHA")  # damage after verification: a new store object sees it
    assert not ArtifactStore(root, filesystem=fs).exists(KEY)


def test_remote_local_dir_downloads_once_verified_and_per_store(tmp_path, memfs, caplog):
    fs, _, root = memfs
    store = ArtifactStore(root, filesystem=fs)
    store.commit(KEY, _src(tmp_path), {})
    d = store.local_dir(KEY)
    assert d.is_relative_to(tempfile.gettempdir())
    assert {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()} == set(FILES) | {MANIFEST}
    assert store.local_dir(KEY) == d  # cached
    assert not [p for p in d.parent.iterdir() if p.name.endswith(".part")]
    # another store holding the same key (same config, other root) never shares the copy
    other = ArtifactStore(root + "-other", filesystem=fs)
    other.commit(KEY, _src(tmp_path, {**FILES, "a.txt": b"other"}), {})
    assert (other.local_dir(KEY) / "a.txt").read_bytes() == b"other"
    assert (store.local_dir(KEY) / "a.txt").read_bytes() == b"alpha"
    # a file that no longer matches the manifest is never handed out
    third = ArtifactStore(root + "-third", filesystem=fs)
    third.commit(KEY, _src(tmp_path), {})
    _put(fs, third.path(KEY, "a.txt"), b"ALPHA")
    with pytest.raises(OSError, match="does not match its manifest"):
        third.local_dir(KEY)
    assert not [p for p in d.parent.iterdir() if p.name.endswith(".part")]
    with pytest.raises(FileNotFoundError):
        store.local_dir(OTHER)


def test_ledger_skips_an_unreadable_entry(tmp_path, memfs, caplog):
    fs, _, root = memfs
    store = ArtifactStore(root, filesystem=fs)
    store.commit(KEY, _src(tmp_path), {"stage": "weak"})
    _put(fs, f"{root}/ledger/{KEY}.broken.json", b'{"key": "trai')  # a writer died mid-entry
    with caplog.at_level(logging.WARNING, logger="w2s_ray.artifacts"):
        assert [e["key"] for e in store.ledger()] == [KEY]
    assert "unreadable ledger entry" in caplog.text


def test_remote_data_uri_keeps_the_store_uri_authority_and_query():
    uri = "s3://bucket/prefix?region=us-east-1&endpoint_override=127.0.0.1:1"  # built offline, never contacted
    store = ArtifactStore(uri)
    assert not store.is_local and store.root == "bucket/prefix" and store.uri == uri
    data = store.data_uri(KEY, "test.parquet")
    assert data == f"s3://bucket/prefix/objects/{KEY}/test.parquet?region=us-east-1&endpoint_override=127.0.0.1:1"
    fs, path = pafs.FileSystem.from_uri(data)
    assert fs.type_name == "s3" and path == store.path(KEY, "test.parquet")
    plain = ArtifactStore("s3://bucket/prefix/?region=us-east-1&endpoint_override=127.0.0.1:1")
    assert plain.data_uri(KEY, "data") == f"s3://bucket/prefix/objects/{KEY}/data?region=us-east-1" \
                                          "&endpoint_override=127.0.0.1:1"
