"""Sweep specs: strict loading with field paths, round trips, grid expansion and planning counts."""

import itertools

import pytest
import yaml

from w2s_ray.config import ConfigError
from w2s_ray.plan import plan_experiments
from w2s_ray.spec import load_spec, spec_from_dict, spec_to_dict

LADDER = ["minilm-l6-1l", "minilm-l6-2l", "minilm-l3", "minilm-l6"]


def base(**changes):
    spec = {"name": "t", "datasets": ["vader"], "models": LADDER[:3],
            "split": {"n_weak": 10, "n_strong": 10, "n_test": 10}}
    spec.update(changes)
    return spec


@pytest.mark.parametrize("changes,path,words", [
    ({"epochz": 3}, "epochz", "unknown field"),
    ({"resources": {"max_concurrent_trials": "two"}}, "resources.max_concurrent_trials", "expected int"),
    ({"resources": {"max_concurrent_trials": 0}}, "resources.max_concurrent_trials", "positive"),
    ({"resources": {"profile": "laptop"}}, "resources.profile", "allowed: local, cluster"),
    ({"resources": {"profile": "cluster"}}, "resources.storage", "shared storage"),
    ({"resources": {"gpus": 1}}, "resources.gpus", "unknown field"),
    ({"losses": ["xent", "mse"]}, "losses[1]", "allowed: xent, logconf"),
    ({"alpha_max": [0.5, 1.5]}, "alpha_max[1]", "outside [0, 1]"),
    ({"warmup_frac": [-0.1]}, "warmup_frac[0]", "outside [0, 1]"),
    ({"seeds": [0, 0]}, "seeds[1]", "listed twice"),
    ({"seeds": []}, "seeds", "must not be empty"),
    ({"models": ["minilm-l6", "gpt-5"]}, "models[1]", "unknown model"),
    ({"datasets": ["imaginary"]}, "datasets[0]", "unknown dataset"),
    ({"pairs": "any"}, "pairs", "allowed: weak<strong"),
    ({"pairs": [["minilm-l6-1l", "minilm-l6"]]}, "pairs[0][1]", "not in models"),
    ({"pairs": [["minilm-l6-1l"]]}, "pairs[0]", "expected 2 values"),
    ({"models": ["minilm-l6"]}, "pairs", "gives no pair"),
    ({"train": {"epochs": 0}}, "train.epochs", "positive"),
    ({"finetune": {"weak": "full", "strong": "lora"}}, "finetune.strong", "allowed: full, probe"),
    ({"finetune": {"weak": "probe"}, "bootstrap": {"steps": 2}}, "finetune", "bootstrapping chains need"),
    ({"test_curves": -1}, "test_curves", "must be >= 0"),
    ({"parts": [{}, {"name": "other"}]}, "parts[1].name", "not a field a part can set"),
    ({"parts": [{"resources": {}}]}, "parts[0].resources", "not a field a part can set"),
    ({"parts": [{"seeds": "zero"}]}, "parts[0].seeds", "expected a list"),
    ({"parts": [{"pairs": [["minilm-l6-1l", "minilm-l6"]]}]}, "parts[0].pairs[0][1]", "not in models"),
    ({"parts": [{"finetune": {"strong": "lora"}}]}, "parts[0].finetune.strong", "allowed: full, probe"),
    ({"parts": ["grid"]}, "parts[0]", "expected a mapping"),
    ({"train": {"lr": 2.0}}, "train.lr", "outside (0, 1)"),
    ({"split": {"n_test": -1}}, "split.n_test", "positive"),
    ({"model_train": {"minilm-l6": {"lr": 1e-4}}}, "model_train.minilm-l6", "not in models"),
    ({"model_train": {"minilm-l3": {"epochs": 1.5}}}, "model_train.minilm-l3.epochs", "expected int"),
    ({"seeds": [True]}, "seeds[0]", "expected int"),
    ({"datasets": "vader"}, "datasets", "expected a list"),
])
def test_invalid_specs_name_the_field(changes, path, words):
    with pytest.raises(ConfigError) as e:
        spec_from_dict(base(**changes))
    assert e.value.path == path, str(e.value)
    assert words in e.value.message


def test_missing_required_field():
    data = base()
    del data["models"]
    with pytest.raises(ConfigError, match="models: required field is missing"):
        spec_from_dict(data)


def test_valid_spec_round_trips_through_yaml(tmp_path):
    spec = spec_from_dict(base(losses=["xent", "logconf"], alpha_max=[0.5, 0.75], seeds=[0, 1],
                               model_train={"minilm-l3": {"lr": 5e-5}}, resources={"max_concurrent_trials": 3}))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec_to_dict(spec)))
    assert load_spec(path) == spec


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [a, b\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_spec(bad)
    bad.write_text("- just a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_spec(bad)
    bad.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):  # safe_load refuses to construct objects
        load_spec(bad)


def test_shipped_specs_are_valid():
    from pathlib import Path

    for path in sorted((Path(__file__).parent.parent / "sweeps").glob("*.yaml")):
        load_spec(path)


def test_per_model_overrides_reach_only_that_model():
    spec = spec_from_dict(base(models=LADDER[:2], train={"epochs": 2}, model_train={"minilm-l6-2l": {"epochs": 3}}))
    plan = plan_experiments(spec.experiments())
    epochs = {(s.role, s.params["model"]["name"]): s.params["train"]["epochs"]
              for s in plan.stages.values() if s.kind == "train"}
    assert epochs == {("weak", "minilm-l6-1l"): 2, ("ceiling", "minilm-l6-2l"): 3, ("student", "minilm-l6-2l"): 3}


@pytest.mark.parametrize("n_models,rule,losses,alphas,seeds", [
    (3, "weak<strong", ["xent"], [0.5], [0]),
    (4, "weak<strong", ["xent", "logconf"], [0.5, 0.75], [0, 1]),
    (3, "weak<=strong", ["logconf"], [0.25, 0.5, 0.75], [3]),
    (2, "weak<strong", ["xent", "product", "logconf"], [0.5], [0, 1, 2]),
])
def test_plan_counts_match_the_grid(n_models, rule, losses, alphas, seeds):
    """K·W weak runs, K·W label jobs, K·S ceilings, one student per cell; shared stages planned once."""
    models = LADDER[:n_models]
    spec = spec_from_dict(base(models=models, pairs=rule, losses=losses, alpha_max=alphas, seeds=seeds))
    plan = plan_experiments(spec.experiments())
    pairs = [(w, s) for (i, w), (j, s) in itertools.product(enumerate(models), repeat=2)
             if (i < j if rule == "weak<strong" else i <= j)]
    weak, strong = {w for w, _ in pairs}, {s for _, s in pairs}
    variants = sum(len(alphas) if loss == "logconf" else 1 for loss in losses)
    k = len(seeds)
    counts = plan.role_counts()
    assert len(plan.cells) == k * len(pairs) * variants
    assert counts["weak"] == k * len(weak)
    assert counts["labels"] == k * len(weak)
    assert counts["ceiling"] == k * len(strong)
    assert counts["student"] == len(plan.cells)
    assert counts["data"] == k


def test_xent_cells_ignore_alpha_grid():
    spec = spec_from_dict(base(losses=["xent"], alpha_max=[0.25, 0.5, 0.75]))
    assert len(spec.experiments()) == len(spec.pair_list())


@pytest.mark.parametrize("changes,path,words", [
    ({"search": {"objectives": ["weak"]}}, "split.n_val", "needs validation rows"),
    ({"search": {"objectives": ["gt"]}, "split": {"n_val": 5}}, "search.objectives[0]", "allowed: weak, oracle"),
    ({"search": {"alpha_max": [0.2, 1.5]}, "split": {"n_val": 5}}, "search.alpha_max[1]", "outside"),
    ({"search": {"alpha_max": [0.2]}, "split": {"n_val": 5}}, "search.alpha_max", "too few values"),
    ({"search": {"num_samples": 0}, "split": {"n_val": 5}}, "search.num_samples", "positive"),
    ({"search": {"lr": [0.1, 0.01]}, "split": {"n_val": 5}}, "search.lr", "low <= high"),
])
def test_invalid_search_specs(changes, path, words):
    with pytest.raises(ConfigError) as e:
        spec_from_dict(base(**changes))
    assert e.value.path == path, str(e.value)
    assert words in e.value.message


def test_search_cells_share_weak_labels_and_add_validation_labels():
    spec = spec_from_dict(base(models=LADDER[:2], losses=["xent"], split={"n_weak": 10, "n_strong": 10, "n_test": 10,
                                                                          "n_val": 5},
                               search={"objectives": ["weak", "oracle"], "num_samples": 3}))
    plan = plan_experiments(spec.experiments())
    counts = plan.role_counts()
    assert len(plan.cells) == 3  # xent + one search per objective
    assert counts["search"] == 2 and counts["val labels"] == 1 and counts["labels"] == 1 and counts["weak"] == 1
    searches = [s for s in plan.stages.values() if s.kind == "search"]
    assert {s.params["search"]["objective"] for s in searches} == {"weak", "oracle"}
    assert all(s.inputs["labels"] == plan.cells[0].weak_labels for s in searches)


def test_validation_split_is_disjoint_and_keeps_old_keys():
    from w2s_ray.config import SplitConfig
    from w2s_ray.data import load_rows, resolve_dataset, split_rows

    df = load_rows(resolve_dataset("vader"))
    parts = split_rows(df, SplitConfig(0, 30, 30, 30, n_val=20))
    ids = [set(p["id"]) for p in parts.values()]
    assert len(parts["val"]) >= 20 and sum(map(len, ids)) == len(set().union(*ids))
    assert "n_val" not in SplitConfig(0, 30, 30, 30).effective()  # runs without validation keep their keys


def test_unshared_plan_gives_every_cell_private_stages():
    spec = spec_from_dict(base(losses=["logconf"], alpha_max=[0.25, 0.5]))
    cells = spec.experiments()
    naive = plan_experiments(cells, share=False)
    counts = naive.role_counts()
    assert counts["weak"] == counts["ceiling"] == counts["student"] == len(cells)
    for cell in naive.cells:  # cells point at their own, existing stages
        assert {cell.weak, cell.ceiling, cell.student, cell.student_test} <= set(naive.stages)
        assert naive.stages[cell.student].inputs["labels"] == cell.weak_labels


def test_parts_are_a_union_of_grids_and_shared_cells_run_once():
    """A part replaces the top level's fields for its grid; a cell two parts both list is planned once."""
    spec = spec_from_dict(base(models=LADDER, losses=["xent", "logconf"], parts=[
        {"models": LADDER[:2]},  # 1 pair x 2 losses
        {"pairs": [["minilm-l6-1l", "minilm-l6-2l"], ["minilm-l6-1l", "minilm-l6"]], "losses": ["xent"]},
        {"pairs": [["minilm-l6-1l", "minilm-l6"]], "finetune": {"weak": "full", "strong": "probe"}},
    ]))
    cells = spec.experiments()
    got = {(c.weak, c.strong, c.loss.name, c.finetune.label) for c in cells}
    assert len(cells) == len(got) == 5  # 1l->2l xent is in two parts
    assert got == {("minilm-l6-1l", "minilm-l6-2l", "xent", "full"),
                   ("minilm-l6-1l", "minilm-l6-2l", "logconf", "full"),
                   ("minilm-l6-1l", "minilm-l6", "xent", "full"),
                   ("minilm-l6-1l", "minilm-l6", "xent", "weak=full/strong=probe"),
                   ("minilm-l6-1l", "minilm-l6", "logconf", "weak=full/strong=probe")}
    plan = plan_experiments(cells)
    weak_trainings = {k for k, s in plan.stages.items() if s.kind == "train" and s.role == "weak"}
    assert len(weak_trainings) == 1  # every part's cells share the fully trained weak model
    assert spec_from_dict(spec_to_dict(spec)) == spec


def test_a_spec_without_parts_is_its_own_only_part():
    spec = spec_from_dict(base())
    assert spec.part_specs() == [spec]
