"""Dataset formatting and splits: determinism, disjointness, groups."""

import pandas as pd
import pytest

from w2s_ray.config import ConfigError, SplitConfig
from w2s_ray.data import load_rows, resolve_dataset, split_rows, text_id


@pytest.fixture(scope="module")
def vader_rows() -> pd.DataFrame:
    return load_rows(resolve_dataset("vader"))


def test_rows_are_binary_with_stable_ids(vader_rows):
    assert list(vader_rows.columns) == ["id", "text", "label", "group"]
    assert set(vader_rows["label"]) == {0, 1}
    assert vader_rows["id"].is_unique
    assert (vader_rows["id"] == vader_rows["text"].map(text_id)).all()
    assert (vader_rows["group"] == vader_rows["id"]).all()
    again = load_rows(resolve_dataset("vader"))
    pd.testing.assert_frame_equal(vader_rows, again)


def test_splits_are_deterministic_and_disjoint(vader_rows):
    cfg = SplitConfig(seed=3, n_weak=100, n_strong=120, n_test=150)
    a = split_rows(vader_rows, cfg)
    b = split_rows(vader_rows, cfg)
    for name in ("A", "B", "test"):
        pd.testing.assert_frame_equal(a[name], b[name])
    assert [len(a[k]) for k in ("A", "B", "test")] == [100, 120, 150]
    ids = [set(a[k]["id"]) for k in ("A", "B", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])


def test_test_split_is_shared_across_seeds_but_halves_are_not(vader_rows):
    s0 = split_rows(vader_rows, SplitConfig(seed=0, n_weak=100, n_strong=100, n_test=100))
    s1 = split_rows(vader_rows, SplitConfig(seed=1, n_weak=100, n_strong=100, n_test=100))
    assert set(s0["test"]["id"]) == set(s1["test"]["id"])
    assert set(s0["A"]["id"]) != set(s1["A"]["id"])


def test_group_aware_split_keeps_question_pairs_together():
    rows = load_rows(resolve_dataset("social-iqa"))
    assert rows.groupby("group")["label"].agg(["count", "sum"]).eq([2, 1]).all().all()
    parts = split_rows(rows, SplitConfig(seed=0, n_weak=60, n_strong=60, n_test=60))
    groups = [set(p["group"]) for p in parts.values()]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])


def test_too_many_rows_requested_is_a_config_error(vader_rows):
    with pytest.raises(ConfigError, match="do not fit"):
        split_rows(vader_rows, SplitConfig(n_weak=10_000))


def test_unknown_dataset_names_the_value_and_the_choices():
    with pytest.raises(ConfigError, match="unknown dataset 'nope'.*vader, tweets"):
        resolve_dataset("nope")


def test_local_file_dataset(tmp_path):
    path = tmp_path / "mine.csv"
    pd.DataFrame({"text": ["good", "bad", "fine"], "label": [1, 0, 1]}).to_csv(path, index=False)
    rows = load_rows(resolve_dataset(str(path)))
    assert len(rows) == 3 and set(rows.columns) == {"id", "text", "label", "group"}


def test_conflicting_duplicate_texts_are_dropped(tmp_path):
    path = tmp_path / "dup.jsonl"
    pd.DataFrame({"text": ["a", "a", "b", "b"], "label": [1, 0, 1, 1]}).to_json(path, orient="records", lines=True)
    rows = load_rows(resolve_dataset(str(path)))
    assert rows["text"].tolist() == ["b"]


@pytest.mark.parametrize("content,words", [
    (b"", "the file is empty"),
    (b"text,label\n", "no rows after the header"),
    (b"text,label\ngood,1\nbad,\n", "line 3: label must be 0 or 1, found an empty value"),
    (b"text,label\ngood,1\nbad,2\n", "line 3: label must be 0 or 1, found '2'"),
    (b"words,target\ngood,1\n", "lacks column(s) ['label', 'text']"),
    (b"text,label\n,1\n", "line 2: text must be non-empty"),
    (b'text,label\n"unclosed,1\n', "cannot be read as csv"),
])
def test_bad_user_files_are_one_config_error_naming_file_and_line(tmp_path, content, words):
    path = tmp_path / "mine.csv"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_rows(resolve_dataset(str(path)))
    assert str(path) in str(err.value) and words in str(err.value) and "\n" not in str(err.value)


def test_latin1_and_utf8_files_read_alike(tmp_path):
    (tmp_path / "latin.csv").write_bytes("text,label\ncafé crème,1\nnaïve,0\n".encode("latin-1"))
    (tmp_path / "utf8.csv").write_bytes("text,label\ncafé crème,1\nnaïve,0\n".encode())
    latin, utf8 = (load_rows(resolve_dataset(str(tmp_path / f))) for f in ("latin.csv", "utf8.csv"))
    assert latin["text"].tolist() == utf8["text"].tolist() == ["café crème", "naïve"]


def test_labels_take_common_spellings(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"text": "a", "label": true}\n{"text": "b", "label": "0"}\n{"text": "c", "label": 1.0}\n')
    assert sorted(load_rows(resolve_dataset(str(path)))["label"]) == [0, 1, 1]


def test_the_pool_is_the_same_for_every_seed_and_dealt_differently(vader_rows):
    from w2s_ray.data import pool_rows

    sizes = SplitConfig(seed=0, n_weak=200, n_strong=300, n_test=200, n_val=100)
    pool = pool_rows(vader_rows, sizes)
    assert (pool["part"] == "test").sum() == 200 and (pool["part"] == "pool").sum() == 600
    s0, s1 = (split_rows(vader_rows, sizes.__class__(seed, 200, 300, 200, 100)) for seed in (0, 1))
    for parts in (s0, s1):
        assert set().union(*(set(parts[k]["id"]) for k in ("A", "B", "val"))) == set(pool.loc[pool["part"] == "pool",
                                                                                                  "id"])
    assert set(s0["A"]["id"]) != set(s1["A"]["id"])
