"""``rows`` and ``data``: a dataset's rows, and one seed's A / B / test (/ val) dealt from them.

Both run in a driver thread (pyarrow, seconds) and never need Ray.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from w2s_ray.config import SplitConfig
from w2s_ray.data import DatasetSpec, fingerprint
from w2s_ray.stages.base import Meta, Stage, StageContext, StageKind, register

SPLIT_ROWS = {"A": "n_weak", "B": "n_strong", "test": "n_test", "val": "n_val"}  # split -> its size field


@dataclass(frozen=True)
class RowsParams:
    dataset: str
    source: str
    version: str
    sizes: dict[str, Any]
    cell: int | None = None  # an isolated cell's own copy (see plan._isolated)


@dataclass(frozen=True)
class DataParams:
    split: dict[str, Any]
    cell: int | None = None


def rows_stage(ds: DatasetSpec, split: SplitConfig) -> Stage:
    """The dataset's test rows and the pool A, B and val are dealt from: the same for every seed."""
    sizes = {k: v for k, v in split.effective().items() if k != "seed"}
    params = {"dataset": ds.name, "source": ds.source, "version": fingerprint(ds), "sizes": sizes}
    return ROWS.make(f"rows of {ds.name}", params, {}, "rows")


def data_stage(rows: Stage, split: SplitConfig) -> Stage:
    """A / B / test (/ val) for one seed, dealt from ``rows``."""
    return DATA.make(f"data {rows.params['dataset']} seed {split.seed}", {"split": split.effective()},
                     {"rows": rows.key}, "data")


def _dealt(sizes: dict[str, Any]) -> dict[str, int]:
    return {name: int(sizes.get(size, 0) or 0) for name, size in SPLIT_ROWS.items()}


def run_rows(stage: Stage, ctx: StageContext) -> Meta:
    """Build a rows artifact (test rows and the pool) from the dataset the stage was planned from."""
    from w2s_ray.config import SplitSizes
    from w2s_ray.data import build_rows_artifact, resolve_dataset

    t0 = time.perf_counter()
    source = stage.params["source"]
    spec = resolve_dataset(source.partition(":")[2] if source.startswith("file:") else stage.params["dataset"])
    with ctx.store.building(stage.key) as build:
        meta = build_rows_artifact(spec, SplitSizes(**stage.params["sizes"]), build.dir)
        build.meta = meta = {"stage": stage.name, "params": stage.params, **meta,
                             "seconds": time.perf_counter() - t0}
    return meta


def run_data(stage: Stage, ctx: StageContext) -> Meta:
    """Deal one seed's A / B / test (/ val) parquet files from a rows artifact."""
    import pandas as pd

    from w2s_ray.data import ROWS_FILE, build_data_artifact

    t0 = time.perf_counter()
    store, rows_key = ctx.store, stage.inputs["rows"]
    rows = pd.read_parquet(store.path(rows_key, ROWS_FILE), filesystem=store.fs)
    column = store.manifest(rows_key, verify=False).meta.get("input_column", "text")
    with store.building(stage.key) as build:
        meta = build_data_artifact(rows, SplitConfig(**stage.params["split"]), build.dir, column)
        build.meta = meta = {"stage": stage.name, "params": stage.params, "inputs": stage.inputs, **meta,
                             "seconds": time.perf_counter() - t0}
    return meta


def counted(stage: Stage, meta: Meta) -> str:
    """"N rows": a progress line for a stage that writes rows."""
    rows = meta.get("rows")
    return f"{sum(rows.values()) if isinstance(rows, dict) else rows} rows"


ROWS = register(StageKind(
    "rows", "a dataset's test rows and the pool every seed deals from (driver thread)", RowsParams, run_rows,
    counted, uses_ray=False, deals=lambda s: _dealt(s.params["sizes"])))
DATA = register(StageKind(
    "data", "one seed's A / B / test (/ val) parquet files (driver thread)", DataParams, run_data, counted,
    uses_ray=False, deals=lambda s: _dealt(s.params["split"])))
