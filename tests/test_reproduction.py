"""docs/reproduction.md and the README's summary of it: every table is rebuilt from docs/reproduction/*.csv."""

from pathlib import Path

import pandas as pd
import pytest

from w2s_ray import reproduction
from w2s_ray.cli import main
from w2s_ray.results import write_results

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_documents_match_the_committed_csvs():
    """A table typed by hand, or left behind by a new run's CSVs, fails here (fix: `w2s-ray reproduction`)."""
    doc = (ROOT / "docs/reproduction.md").read_text()
    assert "<!-- table:claims -->" in doc and "<!-- table:control-checks -->" in doc
    assert "<!-- table:" in (ROOT / "README.md").read_text()  # the README's summary is generated too
    assert reproduction.stale(ROOT) == []


def test_the_committed_csvs_cover_the_reproduction():
    results = pd.read_csv(ROOT / "docs/reproduction/results.csv")
    comps = pd.read_csv(ROOT / "docs/reproduction/claims.csv")
    assert results["dataset"].nunique() >= 3 and (results["status"] == "ok").all()
    assert set(comps["claim"]) >= {"a", "b", "c", "d", "h", "controls"}


def _rows() -> list[dict]:
    rows = []
    for seed in range(3):
        for weak, acc in (("tfidf", 0.62), ("minilm-l3", 0.70), ("random-flips@0.3", 0.70),
                          ("learnable-flips@0.3", 0.70)):
            for strong, gain in (("minilm-l6", 0.05), ("mpnet-base", 0.08)):
                flips = weak.startswith("learnable")
                student = acc + (0.0 if flips else gain) + 0.003 * seed
                rows.append({"dataset": "vader", "weak": weak, "strong": strong, "finetune": "probe",
                             "generative_finetune": "off", "loss": "xent", "method": "fixed", "chain": None,
                             "alpha_max": None, "warmup_frac": None, "seed": seed, "status": "ok", "n_test": 4000,
                             "weak_acc": acc, "student_acc": student, "ceiling_acc": 0.80,
                             "agreement": 1 - (student - acc) - 0.1, "pgr": (student - acc) / (0.80 - acc),
                             "pgr_ci_low": 0.0, "pgr_ci_high": 1.0, "pgr_best": None})
    return rows


def test_export_then_render_rebuilds_every_marked_table_from_the_csvs(tmp_path):
    results_dir = tmp_path / "run"
    write_results(_rows(), results_dir, {"name": "toy", "stages_run": 5, "stages_loaded": 0, "stages_failed": 0,
                                         "wall_seconds": 90.0})
    csv_dir = tmp_path / "csv"
    reproduction.export(results_dir, csv_dir, make_seconds=120.0)
    built = reproduction.tables(csv_dir)
    assert "| toy | 24 / 24 | 1 | 3 | 5 / 0 / 0 | 1.5 min | 2.0 min |" in built["run"]
    assert "learnable-flips@0.3" in built["controls"] and "learnable-flips" not in built["grid"]
    assert "PGR random-flips@0.3 - learnable-flips@0.3 -> minilm-l6" in built["control-checks"]
    doc = ("# Doc\n\ntext\n<!-- table:run -->\nstale\n<!-- /table -->\n"
           "more text\n<!-- table:signs -->\n<!-- /table -->\n")
    out = reproduction.render(doc, built)
    assert out.startswith("# Doc\n\ntext\n<!-- table:run -->\n| sweep |") and "stale" not in out
    assert out.endswith("<!-- /table -->\n") and "more text" in out
    assert reproduction.render(out, built) == out  # idempotent
    with pytest.raises(KeyError, match="no table named 'nope'"):
        reproduction.render("<!-- table:nope -->\n<!-- /table -->", built)


def test_the_command_checks_rewrites_and_names_what_is_missing(tmp_path, monkeypatch, capsys):
    (tmp_path / "docs").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["reproduction", "--check"]) == 2
    assert "lacks results.csv, claims.csv, run.csv" in capsys.readouterr().err
    write_results(_rows(), tmp_path / "run", {"name": "toy", "wall_seconds": 60.0})
    doc = tmp_path / "docs/reproduction.md"
    doc.write_text("<!-- table:grid -->\nold\n<!-- /table -->\n")
    assert main(["reproduction", "--results", str(tmp_path / "run")]) == 0
    assert "old" not in doc.read_text() and "| vader | tfidf | minilm-l6 [probe] |" in doc.read_text()
    assert main(["reproduction", "--check"]) == 0
    doc.write_text(doc.read_text().replace("0.620", "0.999"))  # a number typed by hand
    assert main(["reproduction", "--check"]) == 1
    assert "docs/reproduction.md: its tables differ" in capsys.readouterr().out
