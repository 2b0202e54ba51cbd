"""Hub datasets, loaded offline from small fixtures through the real loading path.

``$W2S_RAY_HF_LOCAL_DIR`` points ``data._source_rows`` at tests/fixtures/hub
(written by its make_fixtures.py in each hub dataset's schema), so every
formatter runs on the column names and value types the hub would give it,
through ``datasets.load_dataset``, ``load_rows`` and the splits. No network.
"""

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from w2s_ray import hub_datasets as hub
from w2s_ray.config import ConfigError, SplitConfig
from w2s_ray.data import (
    HF_LOCAL_ENV,
    REGISTRY,
    bigbench_binary,
    fingerprint,
    hf_local_files,
    load_rows,
    mirror_hf_dataset,
    registry_rows,
    split_rows,
    text_id,
)
from w2s_ray.vision import image_id

FIXTURES = Path(__file__).parent / "fixtures" / "hub"
HUB = sorted(name for name, s in REGISTRY.items() if s.source.startswith("hf:"))
PAIRED = {"sciq", "cosmos_qa", "anthropic_hh", "hellaswag", "piqa", "quail", "social_i_qa", "dream", "openbookqa"}
REFERENCE_FIVE = {"amazon_polarity", "sciq", "cosmos_qa", "boolq", "anthropic_hh"}


@pytest.fixture
def hub_dir(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "hub"
    shutil.copytree(FIXTURES, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    monkeypatch.setenv(HF_LOCAL_ENV, str(root))
    return root


def test_registry_covers_the_reference_and_the_follow_ups():
    assert set(HUB) >= REFERENCE_FIVE
    assert len(set(HUB) - REFERENCE_FIVE) >= 12
    assert {"fever", "vitaminc", "strategyqa", "social-iqa"} <= set(REGISTRY)
    assert set(HUB) >= PAIRED


def test_every_hub_dataset_has_a_fixture():
    for name in HUB:
        assert hf_local_files(REGISTRY[name], FIXTURES), name


@pytest.mark.parametrize("name", HUB)
def test_hub_dataset_rows_are_binary_balanced_grouped_and_stable(name, hub_dir):
    spec = REGISTRY[name]
    rows = load_rows(spec)
    image = spec.modality == "image"  # ids hash the image (PNG bytes) instead of the text
    assert list(rows.columns) == ["id", "text", "label", "group", *(["image"] if image else [])]
    assert len(rows) >= 2 and set(rows["label"]) == {0, 1}
    assert rows["id"].is_unique and (rows["id"] == (rows["image"].map(image_id) if image
                                                    else rows["text"].map(text_id))).all()
    assert rows["label"].mean() == 0.5  # pairs by construction, the rest by spec.balance
    assert spec.balance or name in PAIRED
    if name in PAIRED:  # one right and one wrong row per question (or pair), in one group
        assert rows.groupby("group")["label"].agg(["count", "sum"]).eq([2, 1]).all().all()
    pd.testing.assert_frame_equal(rows, load_rows(spec))
    assert fingerprint(spec) == fingerprint(spec)


@pytest.mark.parametrize("name", sorted(PAIRED))
def test_pairs_stay_in_one_split(name, hub_dir):
    parts = split_rows(load_rows(REGISTRY[name]), SplitConfig(n_weak=2, n_strong=2, n_test=2))
    groups = [set(p["group"]) for p in parts.values()]
    assert all(len(p) % 2 == 0 for p in parts.values())
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])


def test_mc_taco_keeps_a_questions_answers_together(hub_dir):
    rows = load_rows(REGISTRY["mc_taco"])
    assert rows["group"].nunique() < len(rows)
    for _, part in rows.groupby("group"):
        assert part["text"].str.split("\nAnswer:").str[0].nunique() == 1


def test_parquet_and_jsonl_mirrors_give_the_same_rows(hub_dir):
    spec = REGISTRY["sst2"]
    jsonl_rows, jsonl_version = load_rows(spec), fingerprint(spec)
    (path,) = hf_local_files(spec, hub_dir)
    pd.read_json(path, lines=True).to_parquet(path.with_suffix(".parquet"), index=False)
    path.unlink()
    pd.testing.assert_frame_equal(load_rows(spec), jsonl_rows)
    assert fingerprint(spec) != jsonl_version  # the data version follows the local files


def test_split_plus_joins_hub_splits(hub_dir):
    r1, r2 = (load_rows(REGISTRY[f"anli-r{r}"]) for r in (1, 2))
    both = load_rows(dataclasses.replace(REGISTRY["anli-r1"], hf_split="train_r1+train_r2"))
    assert set(both["id"]) == set(r1["id"]) | set(r2["id"])


def test_missing_local_split_is_a_config_error(hub_dir):
    spec = dataclasses.replace(REGISTRY["sst2"], hf_split="validation")
    with pytest.raises(ConfigError, match="validation"):
        load_rows(spec)


def test_mirror_writes_what_the_local_loader_reads(tmp_path, hub_dir, monkeypatch):
    import datasets

    from w2s_ray import data

    spec = REGISTRY["openbookqa"]
    (src,) = hf_local_files(spec, hub_dir)
    examples = [json.loads(line) for line in src.read_text().splitlines()]
    monkeypatch.setattr(data, "_hub_dataset", lambda s, split: datasets.Dataset.from_list(examples))
    mirror = tmp_path / "mirror"
    assert [p.name for p in mirror_hf_dataset(spec, mirror)] == ["train.parquet"]
    expected = load_rows(spec)
    monkeypatch.setenv(HF_LOCAL_ENV, str(mirror))
    pd.testing.assert_frame_equal(load_rows(spec), expected)


def test_without_a_local_copy_the_hub_error_says_what_to_do(monkeypatch):
    monkeypatch.delenv(HF_LOCAL_ENV, raising=False)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest: the hub is never contacted
    spec = dataclasses.replace(REGISTRY["sst2"], name="nowhere", source="hf:w2s-ray-tests/does-not-exist")
    with pytest.raises(OSError, match=HF_LOCAL_ENV):
        load_rows(spec)


def test_registry_rows_list_name_source_size_and_description():
    rows = registry_rows()
    assert [r["name"] for r in rows] == list(REGISTRY)
    for r in rows:
        assert {"name", "source", "size", "description"} <= set(r) and r["description"]
        if r["source"].startswith("hf:"):
            assert isinstance(r["size"], int) and r["size"] > 0 and r["split"]


# -- formatters on single examples -------------------------------------------------


def test_hh_compares_final_replies_in_both_orders():
    ex = {"chosen": "\n\nHuman: hi\n\nAssistant: kind", "rejected": "\n\nHuman: hi\n\nAssistant: mean"}
    better, worse = hub.anthropic_hh([ex])
    assert (better["label"], worse["label"]) == (1, 0) and better["group"] == worse["group"]
    assert better["text"].index("A: kind") < better["text"].index("B: mean")
    assert worse["text"].index("A: mean") < worse["text"].index("B: kind")
    assert better["text"].count("Human: hi") == 1  # the shared conversation once, after the replies
    assert list(hub.anthropic_hh([{"chosen": "same", "rejected": "same"}])) == []


def test_choice_pairs_are_deterministic_and_never_pick_the_right_answer():
    q = hub.Choice("Q?", "yes", ["yes", "no", "maybe", ""])
    rows = hub.choice_pair(q, "{q} {a}")
    assert rows == hub.choice_pair(q, "{q} {a}")
    assert rows[0]["text"] == "Q? yes" and rows[1]["text"] in ("Q? no", "Q? maybe")
    assert hub.choice_pair(hub.Choice("Q?", "yes", ["yes"]), "{q} {a}") == []


def test_formatters_read_the_hub_encodings():
    obqa = {"question_stem": "Metal?", "choices": {"text": ["wood", "iron"], "label": ["A", "B"]}, "answerKey": "B"}
    assert next(iter(hub.openbookqa([obqa])))["text"] == "Q: Metal? A: iron"  # the text, not the letter
    siqa = {"context": "c", "question": "q", "answerA": "x", "answerB": "y", "answerC": "z", "label": "2"}
    assert next(iter(hub.social_i_qa([siqa])))["text"].endswith("Answer: y")
    virtue = {"scenario": "Pat gave money. [SEP] generous", "label": 1}
    assert "Trait: generous" in next(iter(hub.ethics_virtue([virtue])))["text"]
    anli = [{"premise": "p", "hypothesis": "h", "label": lab} for lab in (0, 1, 2)]
    assert [r["label"] for r in hub.anli(anli)] == [1, 0]  # neutral dropped
    none = {"context": "c", "question": "q", "answer0": "None of the above choices .", "answer1": "b",
            "answer2": "c", "answer3": "d", "label": 0}
    assert list(hub.cosmos_qa([none])) == []


def test_vitaminc_keeps_supported_and_refuted_claims():
    fmt = bigbench_binary("True", "False")
    examples = [{"input": f"claim {k}", "target_scores": {"True": int(k == "True"), "False": int(k == "False"),
                                                          "Neither": int(k == "Neither")}}
                for k in ("True", "False", "Neither")]
    assert [(r["text"], r["label"]) for r in fmt(examples)] == [("claim True", 1), ("claim False", 0)]


def test_balancing_is_exact_and_depends_only_on_the_rows():
    from w2s_ray.data import balance_labels

    df = pd.DataFrame({"id": [f"r{i}" for i in range(10)], "label": [1] * 7 + [0] * 3})
    kept = balance_labels(df)
    assert kept["label"].value_counts().to_dict() == {1: 3, 0: 3}
    shuffled = balance_labels(df.sample(frac=1, random_state=1).reset_index(drop=True))
    assert set(shuffled["id"]) == set(kept["id"])
