"""Content addressing and the commit protocol of the artifact store."""

from pathlib import Path

import pytest

from w2s_ray.artifacts import ArtifactStore, stage_key
from w2s_ray.config import ExperimentConfig, LossConfig, SplitConfig, TrainOverrides
from w2s_ray.plan import plan_experiment


def _cell(**changes):
    cfg = ExperimentConfig("vader", "minilm-l6-1l", "minilm-l6",
                           split=SplitConfig(0, 50, 50, 50)).replace(**changes)
    return plan_experiment(cfg).cells[0]


def test_key_changes_with_any_param_or_input():
    base = stage_key("train", {"lr": 1e-4, "epochs": 2}, {"data": "data-" + "0" * 24})
    assert base == stage_key("train", {"epochs": 2, "lr": 1e-4}, {"data": "data-" + "0" * 24})
    assert base != stage_key("train", {"lr": 2e-4, "epochs": 2}, {"data": "data-" + "0" * 24})
    assert base != stage_key("train", {"lr": 1e-4, "epochs": 2}, {"data": "data-" + "1" * 24})
    assert base != stage_key("infer", {"lr": 1e-4, "epochs": 2}, {"data": "data-" + "0" * 24})


def test_weak_label_key_does_not_depend_on_student_loss():
    xent = _cell()
    logconf = _cell(loss=LossConfig("logconf", 0.75))
    assert xent.weak_labels == logconf.weak_labels
    assert xent.weak == logconf.weak and xent.ceiling == logconf.ceiling
    assert xent.student != logconf.student


def test_every_experiment_input_changes_the_student_key():
    base = _cell()
    variants = [
        _cell(weak="minilm-l6-2l"),
        _cell(strong="minilm-l3"),
        _cell(split=SplitConfig(1, 50, 50, 50)),
        _cell(split=SplitConfig(0, 51, 50, 50)),
        _cell(train=TrainOverrides(lr=3e-5)),
        _cell(train=TrainOverrides(epochs=3)),
        _cell(train=TrainOverrides(max_len=32)),
        _cell(loss=LossConfig("logconf", 0.5)),
    ]
    keys = {v.student for v in variants}
    assert base.student not in keys and len(keys) == len(variants)


def test_xent_key_ignores_alpha_but_logconf_does_not():
    assert _cell(loss=LossConfig("xent", 0.5)).student == _cell(loss=LossConfig("xent", 0.75)).student
    assert _cell(loss=LossConfig("logconf", 0.5)).student != _cell(loss=LossConfig("logconf", 0.75)).student


def _artifact(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.bin").write_bytes(b"\x00\x01" * 100)
    (src / "skip.pt").write_text("optimizer state")
    return src


def test_commit_then_reload_verified(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    key = "train-" + "ab" * 12
    assert not store.exists(key)
    store.commit(key, _artifact(tmp_path), {"seconds": 1.5}, exclude=("skip.pt",))
    m = store.manifest(key)
    assert m is not None and set(m.files) == {"a.txt", "sub/b.bin"} and m.meta["seconds"] == 1.5
    assert (store.local_dir(key) / "a.txt").read_text() == "alpha"
    assert not list((tmp_path / "store" / "tmp").iterdir())  # staging was renamed away


def test_directory_without_manifest_is_not_an_artifact(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    key = "infer-" + "ef" * 12
    Path(store.path(key)).mkdir(parents=True)
    (Path(store.path(key)) / "data.parquet").write_text("half written")
    assert not store.exists(key)


def _leftovers(store: ArtifactStore) -> list[Path]:
    """Staging folders still under the store's scratch directory."""
    return list((Path(store.root) / "tmp").iterdir())


def test_building_commits_files_and_meta(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    key = "infer-" + "12" * 12
    with store.building(key, exclude=("skip.pt",)) as build:
        (build.dir / "data").mkdir()
        (build.dir / "data" / "part-0.parquet").write_bytes(b"rows")
        (build.dir / "skip.pt").write_text("optimizer state")
        build.meta = {"stage": "labels", "rows": 1}
    assert store.exists(key) and build.manifest == store.manifest(key)
    assert set(build.manifest.files) == {"data/part-0.parquet"}
    assert build.manifest.meta == {"stage": "labels", "rows": 1}
    assert not _leftovers(store)


def test_failed_build_commits_nothing_and_cleans_up(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    key = "infer-" + "34" * 12
    with pytest.raises(KeyError), store.building(key) as build:
        (build.dir / "half.parquet").write_bytes(b"half written")
        build.meta = {"stage": "labels"}
        raise KeyError("stage failed")
    assert not store.exists(key) and not Path(store.path(key)).exists() and build.manifest is None
    assert not _leftovers(store)


def test_build_without_meta_raises_and_commits_nothing(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    key = "infer-" + "56" * 12
    with pytest.raises(RuntimeError, match="meta"), store.building(key) as build:
        (build.dir / "a.txt").write_text("alpha")
    assert not store.exists(key) and not Path(store.path(key)).exists()
    assert not _leftovers(store)


def _age(root: Path, seconds: float = 60.0) -> None:
    """Set every file's mtime ``seconds`` back (as if committed a while ago)."""
    import os
    import time

    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, (time.time() - seconds, time.time() - seconds))


def test_a_verified_local_artifact_is_not_hashed_again_until_a_file_changes(tmp_path, monkeypatch):
    import w2s_ray.artifacts as artifacts

    store = ArtifactStore(str(tmp_path / "store"))
    src = tmp_path / "src"
    (src / "model").mkdir(parents=True)
    (src / "model" / "weights.bin").write_bytes(b"\x01" * 4096)
    (src / "history.json").write_text("[]")
    store.commit("train-" + "a" * 24, src, {})
    key, obj = "train-" + "a" * 24, tmp_path / "store" / "objects" / ("train-" + "a" * 24)
    hashed: list[str] = []
    real = artifacts.file_sha256
    monkeypatch.setattr(artifacts, "file_sha256", lambda p: hashed.append(Path(p).name) or real(p))
    assert store.exists(key) and len(hashed) == 2  # files younger than the stamp's minimum age: in full
    _age(obj)
    hashed.clear()
    assert store.exists(key) and len(hashed) == 2  # verified in full once, stamped
    assert store.exists(key) and store.exists(key) and len(hashed) == 2  # then trusted
    (obj / "model" / "weights.bin").write_bytes(b"\x02" * 4096)  # same size, new content
    _age(obj, 30.0)
    assert not store.exists(key)  # the stamp no longer matches: verified in full, and the damage is found


def test_a_committed_artifact_copied_into_another_store_leaves_its_stamp_behind(tmp_path):
    """The stamp belongs to one store's copy: committing an artifact's directory elsewhere never lists it."""
    import os
    import time

    one, two = ArtifactStore(str(tmp_path / "one")), ArtifactStore(str(tmp_path / "two"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "rows.parquet").write_bytes(b"rows")
    key = "data-" + "b" * 24
    one.commit(key, src, {})
    old = time.time() - 60
    for p in (tmp_path / "one").rglob("*"):
        os.utime(p, (old, old))
    assert one.exists(key) and (Path(one.path(key)) / ".verified").is_file()
    two.commit(key, Path(one.path(key)), {})
    assert ".verified" not in two.manifest(key).files and two.exists(key)
