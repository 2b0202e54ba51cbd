"""Training ingest: how a Train worker gets its rows (train, validation, GT-test monitor).

Two routes, chosen per table by its size:

* **stream** (tables over ``IN_MEMORY_ROWS``): a Ray Data dataset handed to
  the ``TorchTrainer``; each worker iterates its ``streaming_split`` shard
  every epoch through Ray Data's local shuffle buffer.
* **memory** (smaller tables: text classification at this size is a few MB):
  each worker reads the parquet once, straight from the artifact store
  (local path or any ``pyarrow.fs`` URI), and shuffles it in process per
  epoch. Measured on 2 cores with 1000 rows: the streamed route spent
  9-15 s per training starting Ray Data's split coordinator and read tasks
  and ran the loop at ~0.8x the bare loop's samples/s; the memory route
  matches the bare loop.

The route never changes what a worker learns from: the same rows, ordered by
``id`` (memory) or in file order (stream; files are written id-sorted).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

IN_MEMORY_ROWS = 200_000  # a table with more rows streams through Ray Data every epoch
SHUFFLE_BUFFER = 4096

Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class Source:
    """A parquet table (file or folder) and the columns a worker needs from it."""

    uri: str
    columns: tuple[str, ...]
    rows: int

    @property
    def in_memory(self) -> bool:
        return self.rows <= IN_MEMORY_ROWS


def route(sources: dict[str, Source]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Split tables into in-memory sources (plain dicts for the loop config) and Ray Data datasets."""
    import ray.data

    memory = {name: {"uri": s.uri, "columns": list(s.columns)} for name, s in sources.items() if s.in_memory}
    if len(memory) < len(sources):
        ray.data.DataContext.get_current().execution_options.preserve_order = True
    return memory, {name: input_dataset(s) for name, s in sources.items() if not s.in_memory}


def input_dataset(source: Source) -> Any:
    """A Ray Data dataset of a table (a batch-inference job's input, or a streamed training table).

    A small table is read here and put in the object store, skipping the
    file-listing and read tasks that a job on files starts with (on 2 cores
    they were most of a small job's latency); a large one streams from its
    files. Rows keep the table's id order either way.
    """
    import ray.data

    if source.in_memory:
        return ray.data.from_arrow(read_table(source.uri, list(source.columns)))
    return ray.data.read_parquet(source.uri).select_columns(list(source.columns))


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch, on either route."""
    return seed * 1009 + epoch


def epoch_order(n_rows: int, seed: int, epoch: int) -> np.ndarray:
    """The row permutation of one epoch (memory route; the benchmarks' bare loop uses it too)."""
    return np.random.default_rng(epoch_seed(seed, epoch)).permutation(n_rows)


BUCKET_WINDOW = 50  # batches whose rows are sorted by length together


def length_bucketed(order: np.ndarray, lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """``order`` regrouped so each batch holds rows of similar length (less padding), still seeded-random.

    The shuffled rows are cut into windows of ``BUCKET_WINDOW`` batches; each
    window is sorted by length and cut into batches; then the batches of the
    epoch are shuffled, so long and short batches alternate at random.
    """
    window = BUCKET_WINDOW * batch_size
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng = np.random.default_rng(epoch_seed(seed, epoch) + 1)
    return np.concatenate([batches[i] for i in rng.permutation(len(batches))]) if batches else order


def read_table(uri: str, columns: list[str]) -> Any:
    """A parquet file or folder (local path or ``pyarrow.fs`` URI) as a pyarrow Table."""
    import pyarrow.parquet as pq

    from w2s_ray.artifacts import resolve_fs

    fs, path = resolve_fs(uri)
    return pq.read_table(path, filesystem=fs, columns=columns)


def read_rows(uri: str, columns: list[str]) -> Batch:
    """A whole table as numpy columns, ordered by ``id`` (a canonical order whatever the file layout)."""
    table = read_table(uri, sorted(set(columns) | {"id"})).sort_by("id")
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in columns}


class Ingest:
    """One worker's view of one named table, by the route the launcher chose.

    Memory route with several workers: each epoch's permutation is padded to
    a multiple of the world size (as ``DistributedSampler`` does) and dealt
    out by rank, so every rank runs the same number of steps.
    """

    def __init__(self, name: str, sources: dict[str, dict[str, Any]] | None, rank: int = 0, world: int = 1):
        self.name, self.rank, self.world = name, rank, max(world, 1)
        self.source = (sources or {}).get(name)
        self.rows: Batch | None = None

    def load(self) -> None:
        """Read a memory-route table now (at setup, so no read competes with training)."""
        if self.source is not None and self.rows is None:
            self.rows = read_rows(self.source["uri"], self.source["columns"])

    def _shard(self) -> Any:
        import ray.train

        return ray.train.get_dataset_shard(self.name)

    def epoch(self, epoch: int, batch_size: int, seed: int, buckets: bool = False) -> Iterator[Batch]:
        """Shuffled training batches of one epoch; ``buckets``: rows of similar text length batched together
        (memory route; a streamed table shuffles within its buffer only)."""
        if self.source is None:
            yield from self._shard().iter_batches(batch_size=batch_size, batch_format="numpy",
                                                  local_shuffle_buffer_size=SHUFFLE_BUFFER,
                                                  local_shuffle_seed=epoch_seed(seed, epoch))
            return
        self.load()
        assert self.rows is not None
        order = epoch_order(len(self.rows[self.source["columns"][0]]), seed, epoch)
        if buckets and "text" in self.rows:  # each rank's share of a bucketed order stays bucketed
            lengths = np.fromiter((len(t) for t in self.rows["text"]), dtype=np.int64, count=len(order))
            order = length_bucketed(order, lengths, batch_size * self.world, seed, epoch)
        if self.world > 1 and len(order):
            order = np.resize(order, -(-len(order) // self.world) * self.world)[self.rank::self.world]
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            yield {c: v[idx] for c, v in self.rows.items()}

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """This rank's rows in order, once (evaluation: counts are summed over ranks by the caller)."""
        if self.source is None:
            yield from self._shard().iter_batches(batch_size=batch_size, batch_format="numpy")
            return
        self.load()
        assert self.rows is not None
        n = len(self.rows[self.source["columns"][0]])
        idx = np.arange(self.rank, n, self.world)
        for i in range(0, len(idx), batch_size):
            yield {c: v[idx[i:i + batch_size]] for c, v in self.rows.items()}
