"""Planning: unique stages, dependency layers, shared stages across cells."""


import pytest

from w2s_ray.config import ExperimentConfig, LossConfig, SplitConfig
from w2s_ray.plan import Plan, plan_experiment


def _cfg(**kw):
    cfg = ExperimentConfig("vader", "minilm-l6-1l", "minilm-l6", split=SplitConfig(0, 50, 50, 50))
    return cfg.replace(**kw)


def test_one_experiment_has_three_trainings_and_four_inferences():
    plan = plan_experiment(_cfg())
    assert plan.counts() == {"rows": 1, "data": 1, "train": 3, "infer": 4}
    kinds = [[s.kind for s in layer] for layer in plan.layers()]
    assert kinds == [["rows"], ["data"], ["train"], ["infer", "infer"], ["train", "train"], ["infer", "infer"]]


def test_layers_are_as_late_as_possible_so_the_ceiling_trains_beside_the_student():
    """Side-by-side trainings of one layer should take alike: the ceiling and the student, not weak and ceiling."""
    plan = plan_experiment(_cfg())
    cell = plan.cells[0]
    where = {s.key: i for i, layer in enumerate(plan.layers()) for s in layer}
    assert where[cell.ceiling] == where[cell.student] > where[cell.weak_labels] > where[cell.weak]
    # inference runs as soon as its model exists (the weak model's, beside its labels job)
    assert where[cell.weak_test] == where[cell.weak_labels]
    assert where[cell.ceiling_test] == where[cell.student_test] == where[cell.student] + 1



def test_layers_respect_dependencies():
    plan = plan_experiment(_cfg())
    seen: set[str] = set()
    for layer in plan.layers():
        for stage in layer:
            assert set(stage.deps) <= seen
        seen |= {s.key for s in layer}


def test_cells_share_weak_model_labels_and_ceiling():
    plan = Plan()
    for loss in (LossConfig("xent"), LossConfig("logconf", 0.5), LossConfig("logconf", 0.75)):
        plan_experiment(_cfg(loss=loss), plan)
    # 1 weak + 1 ceiling + 3 students; 1 label job + weak/ceiling/3 student predictions
    assert plan.counts() == {"rows": 1, "data": 1, "train": 5, "infer": 6}
    assert len({c.weak_labels for c in plan.cells}) == 1


def test_student_reads_weak_labels_and_ceiling_reads_gt_of_the_same_half():
    cell = plan_experiment(_cfg()).cells[0]
    plan = plan_experiment(_cfg())
    student, ceiling = plan.stages[cell.student], plan.stages[cell.ceiling]
    assert student.params["split"] == ceiling.params["split"] == "B"
    assert student.params["targets"] == "weak" and student.inputs["labels"] == cell.weak_labels
    assert ceiling.params["targets"] == "gt" and "labels" not in ceiling.inputs
    assert plan.stages[cell.weak].params["split"] == "A"


def test_test_curves_only_touch_the_students_key():
    from w2s_ray.config import ExperimentConfig, LossConfig
    from w2s_ray.plan import plan_experiment

    base = ExperimentConfig("vader", "minilm-l6-1l", "minilm-l6", loss=LossConfig("logconf"))
    plain, curves = plan_experiment(base).cells[0], plan_experiment(base.replace(test_curves=True)).cells[0]
    for field in ("data", "weak", "weak_labels", "weak_test", "ceiling", "ceiling_test"):
        assert getattr(plain, field) == getattr(curves, field), field
    assert plain.student != curves.student
    assert plan_experiment(base.replace(test_curves=True)).stages[curves.student].params["monitor"] == "gt_test"


def test_test_curves_points_per_epoch_keep_the_once_per_epoch_key():
    once, twice = (plan_experiment(_cfg(test_curves=n)) for n in (1, 2))
    s1, s2 = once.stages[once.cells[0].student], twice.stages[twice.cells[0].student]
    assert "monitor_points" not in s1.params and s2.params["monitor_points"] == 2 and s1.key != s2.key


def test_per_role_finetune_reuses_each_roles_stages_of_the_uniform_modes():
    """{weak: full, strong: probe}: the weak side is the full-mode weak model and labels, the strong side the
    probe-mode ceiling; only the student differs (probe heads on the weak model's labels)."""
    from w2s_ray.config import ConfigError, Finetune

    full, probe = plan_experiment(_cfg()).cells[0], plan_experiment(_cfg(finetune="probe")).cells[0]
    mixed_plan = plan_experiment(_cfg(finetune=Finetune("full", "probe")))
    mixed = mixed_plan.cells[0]
    assert (mixed.weak, mixed.weak_labels, mixed.weak_test) == (full.weak, full.weak_labels, full.weak_test)
    assert (mixed.ceiling, mixed.ceiling_test) == (probe.ceiling, probe.ceiling_test)
    student = mixed_plan.stages[mixed.student]
    assert student.kind == "probe" and student.inputs["labels"] == full.weak_labels
    assert mixed_plan.counts() == {"rows": 1, "data": 1, "train": 1, "infer": 2, "features": 1, "probe": 2,
                                   "probeinfer": 2}
    reverse = plan_experiment(_cfg(finetune=Finetune("probe", "full")))
    labels = reverse.stages[reverse.cells[0].weak_labels]
    assert labels.kind == "probeinfer" and labels.params["text"] is True  # a fine-tuned student reads text
    assert reverse.stages[reverse.cells[0].student].kind == "train"
    with pytest.raises(ConfigError, match="finetune: 'lora' is not allowed"):
        _cfg(finetune="lora")
    with pytest.raises(ConfigError, match="strong: 'lora' is not allowed"):
        Finetune("full", "lora")


def test_full_fine_tuning_early_stops_on_weak_labels_and_takes_weight_decay():
    from w2s_ray.config import TrainOverrides

    cfg = _cfg(split=SplitConfig(0, 50, 50, 50, 20), early_stopping=True, train=TrainOverrides(weight_decay=0.1))
    plan = plan_experiment(cfg)
    cell = plan.cells[0]
    student, ceiling, weak = (plan.stages[k] for k in (cell.student, cell.ceiling, cell.weak))
    assert student.params["select"]["objective"] == "weak"
    val = plan.stages[student.inputs["val_labels"]]
    assert val.kind == "infer" and val.params["split"] == "val" and val.inputs["model"] == cell.weak
    assert ceiling.params["select"]["objective"] == weak.params["select"]["objective"] == "gt"
    assert {s.params["train"]["weight_decay"] for s in (student, ceiling, weak)} == {0.1}
