"""Training ingest: the in-memory route's row order, epoch shuffles and rank dealing (no Ray needed)."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from w2s_ray import ingest
from w2s_ray.ingest import Ingest, Source, epoch_order, read_rows


def _write_folder(tmp_path, n: int):
    """A labels-like folder of two parquet files whose rows are not in id order."""
    ids = [f"{i:04x}" for i in range(n)]
    frame = pd.DataFrame({"id": ids, "text": [f"t{i}" for i in range(n)], "p1": np.linspace(0, 1, n)})
    folder = tmp_path / "data"
    folder.mkdir()
    shuffled = frame.sample(frac=1.0, random_state=0)
    shuffled.iloc[: n // 2].to_parquet(folder / "b.parquet", index=False)
    shuffled.iloc[n // 2:].to_parquet(folder / "a.parquet", index=False)
    return folder, frame


def test_read_rows_orders_a_folder_by_id(tmp_path):
    folder, frame = _write_folder(tmp_path, 50)
    rows = read_rows(str(folder), ["text", "p1"])
    assert list(rows) == ["text", "p1"]  # id is read for ordering only
    assert rows["text"].tolist() == frame["text"].tolist()
    np.testing.assert_allclose(rows["p1"], frame["p1"])


def test_epochs_reshuffle_deterministically(tmp_path):
    folder, _ = _write_folder(tmp_path, 40)
    sources = {"train": {"uri": str(folder), "columns": ["text", "p1"]}}
    first = [b["text"].tolist() for b in Ingest("train", sources).epoch(0, 16, seed=3)]
    again = [b["text"].tolist() for b in Ingest("train", sources).epoch(0, 16, seed=3)]
    other = [b["text"].tolist() for b in Ingest("train", sources).epoch(1, 16, seed=3)]
    assert first == again and first != other
    assert [len(b) for b in first] == [16, 16, 8]
    assert sorted(sum(first, [])) == sorted(sum(other, [])) and len(set(sum(first, []))) == 40


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), world=st.integers(1, 5), batch=st.integers(1, 9), epoch=st.integers(0, 3))
def test_ranks_get_equal_steps_and_together_every_row(n, world, batch, epoch):
    rows = {"text": np.array([f"t{i}" for i in range(n)], dtype=object), "p1": np.zeros(n)}
    per_rank = []
    for rank in range(world):
        table = Ingest("train", {"train": {"uri": "unused", "columns": ["text", "p1"]}}, rank, world)
        table.rows = rows
        per_rank.append([b["text"].tolist() for b in table.epoch(epoch, batch, seed=0)])
    assert len({len(batches) for batches in per_rank}) == 1  # DDP: every rank steps the same number of times
    seen = [t for batches in per_rank for b in batches for t in b]
    assert set(seen) == set(rows["text"]) and len(seen) == -(-n // world) * world
    evaluated = []
    for rank in range(world):
        table = Ingest("val", {"val": {"uri": "unused", "columns": ["text", "p1"]}}, rank, world)
        table.rows = rows
        evaluated += [t for b in table.batches(7) for t in b["text"].tolist()]
    assert sorted(evaluated) == sorted(rows["text"].tolist())  # evaluation: each row exactly once


def test_epoch_order_is_a_permutation():
    order = epoch_order(100, seed=1, epoch=2)
    assert sorted(order.tolist()) == list(range(100))
    assert (order == epoch_order(100, seed=1, epoch=2)).all()


@pytest.mark.parametrize("rows,expected", [(ingest.IN_MEMORY_ROWS, True), (ingest.IN_MEMORY_ROWS + 1, False)])
def test_route_by_size(rows, expected):
    assert Source("x.parquet", ("text", "label"), rows).in_memory is expected


def test_length_buckets_keep_every_row_once_and_cut_padding():
    from w2s_ray.ingest import length_bucketed

    @settings(max_examples=40, deadline=None)
    @given(st.integers(1, 700), st.integers(1, 40), st.integers(0, 5))
    def check(n, batch, seed):
        lengths = np.random.default_rng(seed).integers(1, 300, n)
        order = epoch_order(n, seed, 0)
        bucketed = length_bucketed(order, lengths, batch, seed, 0)
        assert sorted(bucketed.tolist()) == list(range(n))  # a permutation: every row once per epoch
        assert np.array_equal(bucketed, length_bucketed(order, lengths, batch, seed, 0))  # seeded

    check()
    lengths = np.random.default_rng(0).integers(1, 300, 2000)
    order = epoch_order(2000, 0, 0)

    def padded(o):  # tokens a batch pads to: its longest row times its rows
        return sum(lengths[o[i:i + 32]].max() * len(o[i:i + 32]) for i in range(0, len(o), 32))

    assert padded(length_bucketed(order, lengths, 32, 0, 0)) < 0.7 * padded(order)
    assert not np.array_equal(length_bucketed(order, lengths, 32, 0, 0), length_bucketed(order, lengths, 32, 0, 1))
