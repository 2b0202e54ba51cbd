"""Images: digits and image folders as rows, tiny image backbones, probe mode end to end on Ray.

No pretrained vision model installs from PyPI: the backbones here are tiny and random (seeded), so these
tests show the pipeline runs on images, not what PGR a pretrained DINO probe reaches.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from w2s_ray.config import ConfigError, ExperimentConfig, LossConfig, ProbeConfig, SplitConfig
from w2s_ray.data import load_rows, resolve_dataset
from w2s_ray.models import load_pretrained, resolve_model
from w2s_ray.plan import plan_experiments
from w2s_ray.vision import class_pair, encode_images, png_bytes


def test_digits_are_binary_balanced_rows_of_8x8_images_with_ids_from_their_pixels():
    df = load_rows(resolve_dataset("digits"))
    assert len(df) == 1797 and set(df["label"]) == {0, 1} and 0.45 < df["label"].mean() < 0.55
    assert df["id"].is_unique
    first = Image.open(io.BytesIO(df["image"].iloc[0]))
    assert first.size == (8, 8)
    assert load_rows(resolve_dataset("digits"))["id"].tolist() == df["id"].tolist()  # stable


def test_an_image_folder_and_a_hub_class_pair_become_rows(tmp_path):
    rng = np.random.default_rng(0)
    for label in (0, 1):
        (tmp_path / "imgs" / str(label)).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / str(label) / f"{i}.png")
    spec = resolve_dataset(str(tmp_path / "imgs"))
    assert spec.modality == "image"
    df = load_rows(spec)
    assert sorted(df["label"]) == [0, 0, 0, 1, 1, 1]
    fake_hub = [{"img": Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)), "label": c}
                for c in (0, 3, 9, 5)]
    rows = list(class_pair("img", "label", positive=(0, 9), negative=(3,))(fake_hub))
    assert [r["label"] for r in rows] == [1, 0, 1]  # class 5 is in neither set: dropped
    assert Image.open(io.BytesIO(rows[0]["image"])).size == (4, 4)


@pytest.mark.parametrize("name,width", [("resnet-tiny", 32), ("vit-tiny", 48)])
def test_a_tiny_backbone_is_seeded_and_pools_one_vector_per_image(name, width):
    model, processor = load_pretrained(resolve_model(name))
    again, _ = load_pretrained(resolve_model(name))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    images = [png_bytes(np.full((8, 8), v, dtype=np.uint8)) for v in (0, 128, 255)]
    inputs = encode_images(processor, images, torch.device("cpu"))
    with torch.no_grad():
        feats = model.features(**inputs)
    assert feats.shape == (3, width) and torch.isfinite(feats).all()
    assert not torch.allclose(feats[0], feats[2])  # the pixels reach the features


def _cell(**kw):
    kw = {"finetune": "probe", "probe": ProbeConfig(epochs=10, lr=1e-2), **kw}
    return ExperimentConfig("digits", "resnet-tiny", "vit-tiny", split=SplitConfig(0, 300, 300, 400), **kw)


def test_images_plan_as_probes_or_fine_tuned_but_never_as_language_models():
    from w2s_ray.config import GenerativeFinetune

    assert {s.kind for s in plan_experiments([_cell()]).stages.values()} == {"rows", "data", "features",
                                                                              "probe", "probeinfer"}
    full = plan_experiments([_cell().replace(finetune="full")])
    assert {s.kind for s in full.stages.values()} == {"rows", "data", "train", "infer"}
    with pytest.raises(ConfigError, match="image dataset"):
        plan_experiments([_cell().replace(finetune="full", generative_finetune=GenerativeFinetune())])


def test_the_hub_vision_spec_plans_features_jobs_on_gpus():
    from w2s_ray.overview import describe_plan
    from w2s_ray.spec import load_spec

    spec = load_spec("sweeps/vision-probe.yaml")
    text = describe_plan(spec, plan_experiments(spec.experiments()))
    assert "each features job asks for 1 GPU" in text and "27 cells" in text


@pytest.mark.ray
def test_digits_weak_to_strong_runs_end_to_end_as_probes_and_fine_tuned(ray_cluster, tmp_path):
    """Probe cells (xent, logconf: one weak probe and one ceiling serve both) and a fully fine-tuned cell (Ray
    Train on pixels; its weak labels carry the images its student reads, never a GT column)."""
    from w2s_ray.artifacts import ArtifactStore
    from w2s_ray.config import Resources, TrainOverrides
    from w2s_ray.engine.scheduler import execute
    from w2s_ray.results import cell_row

    full = _cell(finetune="full", train=TrainOverrides(epochs=1, batch_size=32, lr=1e-3))
    plan = plan_experiments([_cell(), _cell(loss=LossConfig("logconf", 0.5)), full])
    store = ArtifactStore(str(tmp_path / "store"))
    report = execute(plan, store, Resources(num_cpus=4), str(tmp_path / "ray"), progress=lambda _: None)
    assert set(report.ran) == set(plan.stages) and not report.failed, report.failed
    rows = [cell_row(store, c, n_boot=50) for c in plan.cells]
    for row in rows:
        assert row["n_test"] == 400 and all(0.0 <= row[f"{r}_acc"] <= 1.0 for r in ("weak", "student", "ceiling"))
    assert rows[0]["weak_key"] == rows[1]["weak_key"] and rows[0]["student_key"] != rows[1]["student_key"]
    for cell in (plan.cells[0], plan.cells[2]):
        labels = pq.read_table(store.path(cell.weak_labels, "data")).column_names
        assert "label" not in labels and "p1" in labels  # the student's targets carry no ground truth
    assert "image" in pq.read_table(store.path(plan.cells[2].weak_labels, "data")).column_names
    widths = {s.params["model"]["name"]: len(pq.read_table(store.path(k, "data"), columns=["features"])
                                               ["features"][0].as_py())
              for k, s in plan.stages.items() if s.kind == "features"}
    assert widths == {"resnet-tiny": 32, "vit-tiny": 48}
