"""Dataset registry, formatting to ``{id, text, label, group}``, and splits.

Every dataset becomes binary rows with a stable ``id`` (a hash of the text),
a ``label`` in {0, 1} and a ``group`` (rows that share a question share a
group and always land in the same split). Splits are deterministic:

* ``test``: drawn with a seed-independent salt, so every seed of a sweep is
  measured on the same ground-truth rows;
* ``A`` (weak model's GT training) and ``B`` (weak labels, student and
  ceiling training): drawn from the rest with the experiment's seed.

Sources: ``bigbench:<task>`` (task.json files from the BIG-bench sdist,
offline), ``hf:<path>`` (Hugging Face ``datasets``, needs the hub) and local
files (``.parquet``, ``.csv``, ``.jsonl`` with ``text`` and ``label``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pandas as pd

from w2s_ray.config import ConfigError, SplitConfig

SPLITS = ("A", "B", "test")
FILE_SUFFIXES = (".parquet", ".csv", ".jsonl")

Example = dict[str, Any]
Formatter = Callable[[Iterable[Example]], Iterator[dict[str, Any]]]


def text_id(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _unit_hash(salt: str, value: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}:{value}".encode()).digest()[:8], "big")


# -- formatters: source examples → {text, label, group?} --------------------------


def bigbench_binary(positive: str, negative: str) -> Formatter:
    """Keep examples whose true target is ``positive`` or ``negative``."""

    def fmt(examples: Iterable[Example]) -> Iterator[dict[str, Any]]:
        for ex in examples:
            true = [k for k, v in ex["target_scores"].items() if v]
            if true == [positive]:
                yield {"text": ex["input"].strip(), "label": 1}
            elif true == [negative]:
                yield {"text": ex["input"].strip(), "label": 0}

    return fmt


def bigbench_choice_pairs(examples: Iterable[Example]) -> Iterator[dict[str, Any]]:
    """Multiple choice → (question, answer) pairs: the right answer and one wrong.

    The wrong answer is picked by a hash, so the rows are stable; both rows of
    a question share its group and stay in one split (they leak otherwise).
    """
    for ex in examples:
        question = ex["input"].strip()
        right = [k for k, v in ex["target_scores"].items() if v]
        wrong = sorted(k for k, v in ex["target_scores"].items() if not v)
        if len(right) != 1 or not wrong:
            continue
        pick = wrong[_unit_hash("wrong", question) % len(wrong)]
        group = text_id(question)
        yield {"text": f"{question}\nAnswer: {right[0]}", "label": 1, "group": group}
        yield {"text": f"{question}\nAnswer: {pick}", "label": 0, "group": group}


def hf_columns(text: str | tuple[str, ...], label: str, sep: str = " ") -> Formatter:
    """Hub rows whose text is one or more columns joined by ``sep``."""
    cols = (text,) if isinstance(text, str) else text

    def fmt(examples: Iterable[Example]) -> Iterator[dict[str, Any]]:
        for ex in examples:
            yield {"text": sep.join(str(ex[c]).strip() for c in cols), "label": int(ex[label])}

    return fmt


def boolq(examples: Iterable[Example]) -> Iterator[dict[str, Any]]:
    for ex in examples:
        yield {"text": f"Passage: {ex['passage']}\nQuestion: {ex['question']}?", "label": int(bool(ex["answer"]))}


# -- the registry --------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    source: str  # "bigbench:<task>", "hf:<path>[#<config>]" or "file:<abs path>"
    formatter: Formatter | None = field(compare=False, repr=False, default=None)  # None: a local file
    max_len: int = 128
    hf_split: str = "train"
    description: str = ""


REGISTRY: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec("multiemo-sentences", "bigbench:multiemo/all_sentence_en", bigbench_binary("positive", "negative"),
                    max_len=64, description="MultiEmo English sentences, positive vs negative (BIG-bench)"),
        DatasetSpec("multiemo-texts", "bigbench:multiemo/all_text_en", bigbench_binary("positive", "negative"),
                    max_len=256, description="MultiEmo English reviews, positive vs negative (BIG-bench)"),
        DatasetSpec("fever", "bigbench:fact_checker/fever", bigbench_binary("true", "false"),
                    max_len=64, description="FEVER claims, true vs false, no evidence (BIG-bench)"),
        DatasetSpec("strategyqa", "bigbench:strategyqa", bigbench_binary("Yes", "No"),
                    max_len=64, description="StrategyQA yes/no questions (BIG-bench)"),
        DatasetSpec("social-iqa", "bigbench:social_iqa", bigbench_choice_pairs,
                    max_len=128, description="Social IQa (context+question, answer) pairs, split by question"),
        DatasetSpec("amazon_polarity", "hf:amazon_polarity", hf_columns(("title", "content"), "label"),
                    max_len=256, description="Amazon review polarity (hub)"),
        DatasetSpec("sst2", "hf:stanfordnlp/sst2", hf_columns("sentence", "label"),
                    max_len=64, description="SST-2 sentences (hub)"),
        DatasetSpec("boolq", "hf:google/boolq", boolq, max_len=512, description="BoolQ (hub)"),
    ]
}


def resolve_dataset(value: str) -> DatasetSpec:
    """A registry name or a local data file → spec (ConfigError otherwise)."""
    if value in REGISTRY:
        return REGISTRY[value]
    path = Path(value).expanduser()
    if path.suffix in FILE_SUFFIXES:
        if not path.is_file():
            raise ConfigError("dataset", f"data file {value!r} does not exist")
        return DatasetSpec(path.stem, f"file:{path.resolve()}", description="local file")
    raise ConfigError(
        "dataset",
        f"unknown dataset {value!r}; allowed: {', '.join(REGISTRY)}, or a local "
        f"{'/'.join(FILE_SUFFIXES)} file with text and label columns",
    )


# -- loading -----------------------------------------------------------------------


def fingerprint(spec: DatasetSpec) -> str:
    """The data version: a hash of the source file(s), or the hub id."""
    kind, _, ref = spec.source.partition(":")
    if kind == "bigbench":
        from w2s_ray.offline import bigbench_task_path

        return _file_digest(bigbench_task_path(ref))
    if kind == "file":
        return _file_digest(Path(ref))
    return spec.source


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _source_rows(spec: DatasetSpec) -> Iterator[dict[str, Any]]:
    kind, _, ref = spec.source.partition(":")
    if kind == "bigbench":
        from w2s_ray.offline import bigbench_task_path

        examples = json.loads(bigbench_task_path(ref).read_text())["examples"]
        return spec.formatter(examples)
    if kind == "hf":
        import datasets

        path, _, config = ref.partition("#")
        ds = datasets.load_dataset(path, config or None, split=spec.hf_split)
        return spec.formatter(ds)
    if kind == "file":
        return _file_rows(Path(ref))
    raise ValueError(f"unknown dataset source {spec.source!r}")


def _file_rows(path: Path) -> Iterator[dict[str, Any]]:
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
    elif path.suffix == ".csv":
        df = pd.read_csv(path)
    else:
        df = pd.read_json(path, lines=True)
    missing = {"text", "label"} - set(df.columns)
    if missing:
        raise ConfigError("dataset", f"{path} lacks column(s) {sorted(missing)}; needs text and label")
    bad = ~df["label"].isin([0, 1])
    if bad.any():
        raise ConfigError("dataset", f"{path}: label must be 0 or 1, found {df['label'][bad].iloc[0]!r}")
    cols = [c for c in ("text", "label", "group") if c in df.columns]
    return iter(df[cols].to_dict("records"))


def load_rows(spec: DatasetSpec) -> pd.DataFrame:
    """All rows as a frame ``id, text, label, group``, deduplicated by text.

    A text that appears with both labels is dropped (it cannot be learned);
    repeats with one label are kept once.
    """
    df = pd.DataFrame(list(_source_rows(spec)), columns=["text", "label", "group"])
    df["text"] = df["text"].astype(str)
    df["label"] = df["label"].astype("int64")
    df.insert(0, "id", df["text"].map(text_id))
    df["group"] = df["group"].where(df["group"].notna(), df["id"]).astype(str)
    conflicted = df.groupby("id")["label"].transform("nunique") > 1
    return df[~conflicted].drop_duplicates("id").reset_index(drop=True)


def split_rows(df: pd.DataFrame, split: SplitConfig, dataset: str = "dataset") -> dict[str, pd.DataFrame]:
    """Disjoint, group-aware A / B / test splits (see the module docstring)."""
    need = split.n_test + split.n_weak + split.n_strong
    if need > len(df):
        raise ConfigError(
            "split", f"{dataset} has {len(df)} rows; n_test + n_weak + n_strong = {need} do not fit"
        )
    groups = df.groupby("group", sort=False).size()
    test_order = sorted(groups.index, key=lambda g: _unit_hash("test", g))
    test_groups = _take(test_order, groups, split.n_test)
    rest = [g for g in sorted(groups.index, key=lambda g: _unit_hash(f"seed{split.seed}", g)) if g not in test_groups]
    a_groups = _take(rest, groups, split.n_weak)
    b_groups = _take([g for g in rest if g not in a_groups], groups, split.n_strong)
    out = {}
    for name, chosen in zip(SPLITS, (a_groups, b_groups, test_groups)):
        part = df[df["group"].isin(chosen)]
        out[name] = part.sort_values("id", kind="mergesort").reset_index(drop=True)
    return out


def _take(order: list[str], sizes: pd.Series, n_rows: int) -> set[str]:
    chosen: set[str] = set()
    total = 0
    for g in order:
        if total >= n_rows:
            break
        chosen.add(g)
        total += int(sizes[g])
    return chosen


def registry_rows() -> list[dict[str, Any]]:
    return [{"name": s.name, "source": s.source, "max_len": s.max_len, "description": s.description}
            for s in REGISTRY.values()]


def build_data_artifact(spec: DatasetSpec, split: SplitConfig, out: Path) -> dict[str, Any]:
    """Write ``A.parquet``, ``B.parquet``, ``test.parquet`` into ``out``; → manifest meta."""
    parts = split_rows(load_rows(spec), split, spec.name)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        part.to_parquet(out / f"{name}.parquet", index=False)
    return {
        "rows": {k: len(v) for k, v in parts.items()},
        "pos_frac": {k: float(v["label"].mean()) for k, v in parts.items()},
    }
