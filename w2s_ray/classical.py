"""Weak supervisors that are not fine-tuned transformers: TF-IDF logistic regression and two controls.

Weak-to-strong generalization shows when the student cannot copy its
supervisor's errors (Lang et al. 2024; Charikar et al. 2024): a bag-of-words
model errs where a sentence encoder does not. The two controls prove the
engine can tell the effect from its absence, at an error rate the spec names:

* ``random-flips@r``: GT with each row's label flipped with probability r,
  independently of the text. No feature predicts the errors, so a strong
  student should recover most of the gap (PGR high).
* ``learnable-flips@r``: a hyperplane in the strong model's frozen feature
  space, turned away from the GT direction until it disagrees with GT on r of
  halves A and B. Its labels are a linear function of those features, so a
  linear probe on them fits the errors exactly (PGR near 0).

Each is a ``classical`` stage (fit on half A; a Ray task) and ``classicalinfer``
stages (its P(class 1) on a split, shaped like every other inference). Fitted
state is JSON or safetensors, never a pickle. The controls read GT labels by
definition (of the rows they label: A and B); real weak models (TF-IDF
included) read GT of half A only.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
import pyarrow.parquet as pq

STATE_FILE = "supervisor.json"
# TF-IDF settings: word 1-2 grams seen in two or more documents, sublinear counts, L2-regularised LR
TFIDF_SETTINGS = {"ngram_range": [1, 2], "min_df": 2, "sublinear_tf": True, "C": 1.0}


def needs_features(model: dict[str, Any]) -> bool:
    """Learnable flips live in the strong model's feature space; the others read text or GT only."""
    return model["source"].startswith("synthetic:learnable")


# -- fitting -------------------------------------------------------------------------------------


def run_classical_stage(stage: Any, store_uri: str) -> dict[str, Any]:
    """Fit one supervisor on half A and commit its state."""
    from w2s_ray.artifacts import ArtifactStore

    store = ArtifactStore(store_uri)
    if store.exists(stage.key):
        return store.manifest(stage.key, verify=False).meta
    t0 = time.perf_counter()
    kind, _, ref = stage.params["model"]["source"].partition(":")
    data = pq.read_table(store.path(stage.inputs["data"], "A.parquet"), filesystem=store.fs,
                         columns=["id", "text", "label"]).to_pandas()
    if kind == "classical":
        state, arrays = _fit_tfidf(data["text"].tolist(), data["label"].to_numpy(), stage.params["seed"])
    else:
        flips, rate = ref.split("@")
        state, arrays = ({"rate": float(rate)}, {}) if flips == "random" else \
            _fit_learnable(store, stage, data, float(rate))
    with store.building(stage.key) as build:
        (build.dir / STATE_FILE).write_text(json.dumps(state))
        if arrays:
            from safetensors.numpy import save_file

            save_file(arrays, str(build.dir / "arrays.safetensors"))
        build.meta = meta = {"stage": stage.name, "params": stage.params, "inputs": stage.inputs, "rows": len(data),
                             **{k: v for k, v in state.items() if k != "vocabulary"},
                             "seconds": time.perf_counter() - t0}
    return meta


def _fit_tfidf(texts: list[str], labels: np.ndarray, seed: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    s = TFIDF_SETTINGS
    vec = TfidfVectorizer(ngram_range=tuple(s["ngram_range"]), min_df=s["min_df"], sublinear_tf=s["sublinear_tf"])
    x = vec.fit_transform(texts)
    lr = LogisticRegression(C=s["C"], max_iter=2000, random_state=seed).fit(x, labels)
    vocab = {term: int(i) for term, i in vec.vocabulary_.items()}
    return ({"vocabulary": vocab, "terms": len(vocab), "train_acc": float(lr.score(x, labels))},
            {"idf": vec.idf_.astype(np.float64), "coef": lr.coef_[0].astype(np.float64),
             "intercept": lr.intercept_.astype(np.float64)})


def _fit_learnable(store: Any, stage: Any, data: Any, rate: float) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Learnable flips on the strong model's features (see :func:`hyperplane_at_rate`).

    Fitted on GT of halves A and B: a control is defined from GT (random flips
    flip B's GT), and on A alone (1,000 rows for 384 features) the GT direction
    overfits, so the rate reached on A would not be the rate on test.
    """
    import pandas as pd

    from w2s_ray.probe import read_features

    parts = [read_features(store, stage.inputs["features"], stage.inputs["data"], split) for split in ("A", "B")]
    ids, feats = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    b = pq.read_table(store.path(stage.inputs["data"], "B.parquet"), filesystem=store.fs,
                      columns=["id", "label"]).to_pandas()
    y = pd.concat([data[["id", "label"]], b]).set_index("id").loc[ids, "label"].to_numpy()
    mean, std = feats.mean(0), feats.std(0) + 1e-6
    v, t, state = hyperplane_at_rate((feats - mean) / std, y, rate, stage.params["seed"])
    return ({"rate": rate, **state, "threshold": t},
            {"direction": v.astype(np.float32), "mean": mean.astype(np.float32), "std": std.astype(np.float32)})


def hyperplane_at_rate(z: np.ndarray, y: np.ndarray, rate: float, seed: int) -> tuple[np.ndarray, float, dict]:
    """A hyperplane ``v·z > t`` whose labels disagree with ``y`` on ``rate`` of the rows. → (v, t, facts)

    ``v`` turns from the GT probe's direction ``u`` towards a seeded random
    direction orthogonal to it; bisection on the angle finds the rate, and
    ``t`` keeps GT's class balance. Below the probe's own error no angle gets
    there: ``facts["reached_rate"]`` says what it reached.
    """
    from sklearn.linear_model import LogisticRegression

    u = LogisticRegression(C=1.0, max_iter=2000).fit(z, y).coef_[0]
    u /= np.linalg.norm(u)
    r = np.random.default_rng(seed).standard_normal(len(u))
    r -= (r @ u) * u
    r /= np.linalg.norm(r)
    pos = float(np.mean(y))

    def plane(theta: float) -> tuple[np.ndarray, float, float]:
        v = math.cos(theta) * u + math.sin(theta) * r
        score = z @ v
        t = float(np.quantile(score, 1 - pos))
        return v, t, float(np.mean((score > t) != (y == 1)))

    lo, hi = 0.0, math.pi / 2
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if plane(mid)[2] < rate else (lo, mid)
    theta = min((lo, hi), key=lambda a: abs(plane(a)[2] - rate))
    v, t, reached = plane(theta)
    return v, t, {"reached_rate": reached, "angle_deg": math.degrees(theta)}


# -- predicting ----------------------------------------------------------------------------------


def run_classical_infer_stage(stage: Any, store_uri: str) -> dict[str, Any]:
    """A fitted supervisor's P(class 1) on one split, as an ``infer``-shaped artifact."""
    from w2s_ray.artifacts import ArtifactStore
    from w2s_ray.data import bootstrap_slice
    from w2s_ray.probe import commit_predictions

    store = ArtifactStore(store_uri)
    if store.exists(stage.key):
        return store.manifest(stage.key, verify=False).meta
    t0 = time.perf_counter()
    fit = store.manifest(stage.inputs["model"], verify=False).meta
    data_key, split = stage.inputs["data"], stage.params["split"]
    source = fit["params"]["model"]["source"]
    columns = ["id", "group", "text", *(["label"] if source.startswith("synthetic:random") else [])]
    rows = pq.read_table(store.path(data_key, f"{split}.parquet"), filesystem=store.fs, columns=columns).to_pandas()
    if "slice" in stage.params:  # a bootstrapping chain's first step labels only its slice of B
        index, count = stage.params["slice"]
        rows = rows[[bootstrap_slice(g, count) == index for g in rows["group"]]]
    rows = rows.sort_values("id", kind="mergesort").reset_index(drop=True)
    state = json.loads((store.local_dir(stage.inputs["model"]) / STATE_FILE).read_text())
    arrays = _arrays(store, stage.inputs["model"])
    if source.startswith("classical:"):
        p1 = _predict_tfidf(state, arrays, rows["text"].tolist())
    elif source.startswith("synthetic:random"):
        p1 = _random_flips(rows["id"].to_numpy(), rows["label"].to_numpy(), state["rate"], fit["params"]["seed"])
    else:
        from w2s_ray.probe import read_features

        ids, feats = read_features(store, stage.inputs["features"], data_key, split)
        z = (feats - arrays["mean"]) / arrays["std"]
        by_id = dict(zip(ids, (z @ arrays["direction"] > state["threshold"]).astype(np.float32)))
        p1 = np.array([by_id[i] for i in rows["id"]], dtype=np.float32)
    return commit_predictions(store, stage, data_key, rows["id"].to_numpy(), p1, t0)


def _arrays(store: Any, key: str) -> dict[str, np.ndarray]:
    path = store.local_dir(key) / "arrays.safetensors"
    if not path.is_file():
        return {}
    from safetensors.numpy import load_file

    return load_file(str(path))


def _predict_tfidf(state: dict[str, Any], arrays: dict[str, np.ndarray], texts: list[str]) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer

    s = TFIDF_SETTINGS
    vec = TfidfVectorizer(ngram_range=tuple(s["ngram_range"]), sublinear_tf=s["sublinear_tf"],
                          vocabulary=state["vocabulary"])
    vec.idf_ = arrays["idf"]
    logits = vec.transform(texts) @ arrays["coef"] + arrays["intercept"][0]
    return (1 / (1 + np.exp(-logits))).astype(np.float32)


def _random_flips(ids: np.ndarray, labels: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """GT with each row flipped when a hash of (seed, id) falls below ``rate``: the same row, the same flip."""
    from w2s_ray.hub_datasets import unit_hash

    flip = np.array([unit_hash(f"flips{seed}", i) / 2**64 < rate for i in ids])
    return np.where(flip, 1 - labels, labels).astype(np.float32)
