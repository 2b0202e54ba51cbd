"""The paper's claims as seed-paired comparisons: verdicts follow the intervals, directions follow the paper."""

import pandas as pd
import pytest

from w2s_ray.claims import comparisons, sign_counts, summary


def _cells(pgr: dict, agreement: dict | None = None, best_bonus: float = 0.1) -> pd.DataFrame:
    """Rows for (weak, strong, loss) -> per-seed PGRs; accuracies weak 0.7, ceiling 0.8."""
    rows = []
    for (weak, strong, loss), values in pgr.items():
        for seed, v in enumerate(values):
            rows.append({"dataset": "d", "weak": weak, "strong": strong, "finetune": "full", "loss": loss,
                         "method": "fixed", "alpha_max": 0.5 if loss == "logconf" else None, "seed": seed,
                         "status": "ok", "pgr": v, "pgr_best": v + best_bonus + 0.01 * seed,
                         "weak_acc": 0.7, "ceiling_acc": 0.8, "student_acc": 0.7 + 0.1 * v,
                         "agreement": (agreement or {}).get(strong, 0.9) + 0.001 * seed})
    return pd.DataFrame(rows)


def test_a_claim_is_supported_contradicted_or_unresolved_by_its_interval():
    cells = _cells({("minilm-l6-1l", "minilm-l3", "xent"): [0.30, 0.35, 0.32],
                    ("minilm-l6-1l", "minilm-l6", "xent"): [0.60, 0.62, 0.65],
                    ("minilm-l6-1l", "minilm-l6", "logconf"): [0.10, 0.80, -0.40]},
                   agreement={"minilm-l3": 0.95, "minilm-l6": 0.85})
    comps = comparisons(cells)
    verdict = {(r["claim"], r["comparison"].split(",")[-1].strip()): r["verdict"] for r in comps.to_dict("records")}
    a = comps[comps["claim"] == "a"]
    assert len(a) == 2 and set(a["verdict"]) == {"supports"}  # xent PGR clearly above 0 on every seed
    b = comps[(comps["claim"] == "b") & comps["comparison"].str.contains("xent")]
    assert b["verdict"].tolist() == ["supports"] and b["estimate"].iloc[0] == pytest.approx(0.3, abs=0.01)
    d = comps[(comps["claim"] == "d") & comps["comparison"].str.contains("xent")]
    assert d["verdict"].tolist() == ["supports"]  # agreement falls from L3 to L6: the paper's direction
    c = comps[comps["claim"] == "c"]
    assert c["verdict"].tolist() == ["unresolved"]  # logconf's seeds scatter around xent's
    e = comps[comps["claim"] == "e"]
    assert set(e["verdict"]) == {"supports"}
    assert verdict and (comps["interval"] == "95% t-interval over seeds").all()
    table = summary(comps)
    assert set(table.columns) >= {"claim", "dataset", "supports", "contradicts", "unresolved"}
    assert table["comparisons"].sum() == len(comps)


def test_a_claim_against_the_data_is_contradicted_and_one_seed_gives_no_comparison():
    cells = _cells({("w", "s", "xent"): [-0.30, -0.35, -0.32]})
    assert comparisons(cells).query("claim == 'a'")["verdict"].tolist() == ["contradicts"]
    assert comparisons(cells[cells["seed"] == 0]).empty


def test_generative_finetuning_is_compared_with_the_same_cell_without_it_and_never_mixed_into_the_others():
    """Claim (g) pairs each adapted cell with its plain twin by seed, xent (alpha NaN) included; claims (a)-(f)
    keep adapted and plain cells apart."""
    plain = _cells({("w", "s", "xent"): [0.10, 0.12, 0.11], ("w", "s", "logconf"): [0.20, 0.22, 0.21]})
    adapted = _cells({("w", "s", "xent"): [0.30, 0.33, 0.31], ("w", "s", "logconf"): [0.10, 0.12, 0.11]})
    cells = pd.concat([plain.assign(generative_finetune="off"),
                       adapted.assign(generative_finetune="lm 1ep lr=5e-05")], ignore_index=True)
    comps = comparisons(cells)
    g = comps[comps["claim"] == "g"].set_index(comps[comps["claim"] == "g"]["comparison"].str.contains("xent"))
    assert len(g) == 2
    assert g.loc[True, "estimate"] == pytest.approx(0.2033, abs=1e-3) and g.loc[True, "verdict"] == "supports"
    assert g.loc[False, "estimate"] == pytest.approx(-0.1, abs=1e-6) and g.loc[False, "verdict"] == "contradicts"
    a = comps[comps["claim"] == "a"]
    assert len(a) == 2 and a["comparison"].str.contains(r"\(full\+adapted\)").sum() == 1


def test_the_gain_is_regressed_on_the_misfit_seed_by_seed():
    """Claim (h): a grid where the students that disagree more with their supervisor gain more supports it;
    the reverse contradicts it; the slope is the gain per unit of misfit."""
    rows = []
    for seed in range(4):
        for i, misfit in enumerate([0.1, 0.2, 0.3, 0.4]):
            rows.append({"dataset": "d", "weak": f"w{i}", "strong": "s", "finetune": "probe", "loss": "xent",
                         "method": "fixed", "alpha_max": None, "seed": seed, "status": "ok", "pgr": 0.5,
                         "weak_acc": 0.6, "ceiling_acc": 0.8, "agreement": 1 - misfit,
                         "student_acc": 0.6 + 0.5 * misfit + 0.01 * seed * (i % 2)})
    grows = pd.DataFrame(rows)
    h = comparisons(grows).query("claim == 'h'")
    assert h["verdict"].tolist() == ["supports"] and h["estimate"].iloc[0] == pytest.approx(0.5, abs=0.05)
    shrinks = grows.assign(student_acc=0.9 - grows["student_acc"] + 0.6)
    assert comparisons(shrinks).query("claim == 'h'")["verdict"].tolist() == ["contradicts"]


def test_the_controls_are_compared_with_each_other_and_left_out_of_the_papers_claims():
    cells = _cells({("random-flips@0.3", "s", "xent"): [0.60, 0.55, 0.62],
                    ("learnable-flips@0.3", "s", "xent"): [0.02, -0.01, 0.03],
                    ("random-flips@0.2", "s", "xent"): [0.50, 0.45, 0.52]})
    comps = comparisons(cells)
    assert set(comps["claim"]) == {"controls"}  # no claim (a) from a synthetic supervisor
    ctl = comps.iloc[0]
    assert len(comps) == 1 and ctl["verdict"] == "supports" and "flips@0.3" in ctl["comparison"]
    assert ctl["random_pgr"] == pytest.approx(0.59) and ctl["learnable_pgr"] == pytest.approx(0.0133, abs=1e-3)


def test_a_dataset_verdict_is_the_majority_of_its_comparisons_and_datasets_are_counted_per_claim():
    one = _cells({("w", "s", "xent"): [0.3, 0.35, 0.32], ("w", "t", "xent"): [0.3, 0.31, 0.33]})
    mixed = _cells({("w", "s", "xent"): [0.3, 0.35, 0.32], ("w", "t", "xent"): [-0.3, -0.31, -0.33]})
    cells = pd.concat([one, mixed.assign(dataset="e")], ignore_index=True)
    by_dataset = summary(comparisons(cells))
    a = by_dataset[by_dataset["claim"].str.startswith("(a)")].set_index("dataset")["verdict"]
    assert a.to_dict() == {"d": "supports", "e": "unresolved"}  # one of two support: no majority
    counts = sign_counts(by_dataset).set_index("claim").loc[by_dataset["claim"].iloc[0]]
    assert (counts["datasets"], counts["supports"], counts["unresolved"]) == (2, 1, 1)
