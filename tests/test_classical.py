"""The supervisors that are no transformer: TF-IDF logistic regression and the two controls.

Pure math and planning here (no Ray); the end-to-end run is in test_offline_default.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from w2s_ray.classical import _fit_tfidf, _predict_tfidf, _random_flips, hyperplane_at_rate
from w2s_ray.config import ConfigError, ExperimentConfig, SplitConfig
from w2s_ray.models import parse_flips, supervisor_only
from w2s_ray.plan import plan_experiment
from w2s_ray.spec import spec_from_dict

SPLIT = SplitConfig(0, 100, 200, 100, 50)


def test_flip_names_parse_and_bad_rates_are_refused():
    assert parse_flips("random-flips@0.3") == ("random", 0.3)
    assert parse_flips("learnable-flips@.25") == ("learnable", 0.25)
    assert parse_flips("minilm-l6") is None
    with pytest.raises(ConfigError, match=r"flip rate must be in \(0, 0.5\)"):
        parse_flips("random-flips@0.7")
    assert supervisor_only("tfidf") and supervisor_only("learnable-flips@0.2") and not supervisor_only("minilm-l6")


def test_tfidf_state_round_trips_to_sklearns_own_probabilities():
    """The fitted state is JSON + arrays (no pickle); rebuilt, it predicts what scikit-learn predicted."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    texts = ["good film", "bad film", "great fun", "awful plot", "good fun", "bad acting", "great film",
             "awful film", "good plot", "bad fun"] * 3
    labels = np.array([1, 0, 1, 0, 1, 0, 1, 0, 1, 0] * 3)
    state, arrays = _fit_tfidf(texts, labels, seed=0)
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x = vec.fit_transform(texts)
    expected = LogisticRegression(C=1.0, max_iter=2000, random_state=0).fit(x, labels).predict_proba(x)[:, 1]
    np.testing.assert_allclose(_predict_tfidf(state, arrays, texts), expected, atol=1e-6)
    assert state["terms"] == len(vec.vocabulary_)


@settings(max_examples=30, deadline=None)
@given(st.floats(0.05, 0.45), st.integers(0, 3))
def test_random_flips_hit_their_rate_and_repeat_per_row(rate, seed):
    ids = np.array([f"row{i}" for i in range(4000)])
    labels = np.arange(4000) % 2
    flipped = _random_flips(ids, labels, rate, seed)
    assert abs(np.mean(flipped != labels) - rate) < 0.04
    assert set(np.unique(flipped)) <= {0.0, 1.0}
    np.testing.assert_array_equal(_random_flips(ids[::-1], labels[::-1], rate, seed), flipped[::-1])  # per row


def test_learnable_flips_are_a_hyperplane_at_the_asked_rate():
    """Labels a linear probe can fit exactly, disagreeing with GT on the asked share of rows."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3000, 20))
    y = (z @ rng.standard_normal(20) > 0).astype(int)
    v, t, facts = hyperplane_at_rate(z, y, 0.3, seed=1)
    labels = z @ v > t
    assert abs(np.mean(labels != (y == 1)) - 0.3) < 0.01
    assert abs(facts["reached_rate"] - 0.3) < 0.01
    assert abs(labels.mean() - y.mean()) < 0.01  # GT's class balance kept


def test_a_tfidf_cell_plans_classical_stages_and_the_student_never_sees_them_as_a_model():
    plan = plan_experiment(ExperimentConfig("vader", "tfidf", "minilm-l6", split=SPLIT, finetune="probe"))
    kinds = plan.counts()
    assert kinds["classical"] == 1 and kinds["classicalinfer"] == 2  # labels of B, test predictions
    cell = plan.cells[0]
    labels = plan.stages[cell.weak_labels]
    assert labels.kind == "classicalinfer" and labels.params["text"] is True
    assert plan.stages[cell.student].inputs["labels"] == cell.weak_labels


def test_learnable_flips_live_in_the_strong_models_features():
    plan = plan_experiment(ExperimentConfig("vader", "learnable-flips@0.3", "minilm-l6", split=SPLIT,
                                            finetune="probe"))
    fit = plan.stages[plan.cells[0].weak]
    features = plan.stages[fit.inputs["features"]]
    assert features.kind == "features" and features.params["model"]["name"] == "minilm-l6"
    assert len([s for s in plan.stages.values() if s.kind == "features"]) == 1  # the student's own, shared


def test_a_chain_can_start_at_tfidf():
    cfg = ExperimentConfig("vader", "tfidf", "minilm-l6", split=SPLIT, chain=("minilm-l6-1l",))
    plan = plan_experiment(cfg)
    first = plan.stages[plan.cells[0].weak_labels]
    assert first.kind == "classicalinfer" and first.params["slice"] == [0, 2]


@pytest.mark.parametrize("strong", ["tfidf", "random-flips@0.2"])
def test_a_supervisor_is_never_a_student(strong):
    with pytest.raises(ConfigError, match="only labels"):
        plan_experiment(ExperimentConfig("vader", "minilm-l6-1l", strong, split=SPLIT))
    with pytest.raises(ConfigError, match=r"pairs\[0\]\[1\].*only labels"):
        spec_from_dict({"name": "x", "datasets": ["vader"], "models": ["minilm-l6", strong],
                        "pairs": [["minilm-l6", strong]]})


def test_ladder_rules_pair_supervisors_only_as_weak_models():
    spec = spec_from_dict({"name": "x", "datasets": ["vader"], "pairs": "weak<=strong",
                           "models": ["tfidf", "random-flips@0.3", "minilm-l6-1l", "minilm-l6"]})
    assert all(not supervisor_only(s) for _, s in spec.pair_list())
    assert ("tfidf", "minilm-l6") in spec.pair_list() and ("random-flips@0.3", "minilm-l6-1l") in spec.pair_list()


def test_early_stopping_selects_students_on_weak_labels_and_gt_models_on_gt():
    plan = plan_experiment(ExperimentConfig("vader", "tfidf", "minilm-l6", split=SPLIT, finetune="probe",
                                            early_stopping=True))
    cell = plan.cells[0]
    student, ceiling = plan.stages[cell.student], plan.stages[cell.ceiling]
    assert student.params["select"] == {"objective": "weak", "column": "p1"}
    assert plan.stages[student.inputs["val_labels"]].params["split"] == "val"
    assert ceiling.params["select"] == {"objective": "gt", "column": "label"} and "val_labels" not in ceiling.inputs
    with pytest.raises(ConfigError, match="split.n_val"):
        ExperimentConfig("vader", "tfidf", "minilm-l6", split=SplitConfig(0, 100, 200, 100), early_stopping=True)


def test_features_are_planned_once_for_every_seed():
    cells = [ExperimentConfig("vader", "minilm-l3", "minilm-l6", split=SplitConfig(seed, 100, 200, 100),
                              finetune="probe") for seed in range(3)]
    from w2s_ray.plan import plan_experiments

    plan = plan_experiments(cells)
    assert plan.counts()["features"] == 2 and plan.counts()["rows"] == 1 and plan.counts()["data"] == 3


def test_tfidf_is_refused_on_images():
    with pytest.raises(ConfigError, match="tfidf reads words"):
        plan_experiment(ExperimentConfig("digits", "tfidf", "vit-tiny", split=SplitConfig(0, 50, 50, 50),
                                         finetune="probe"))
