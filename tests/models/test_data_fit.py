"""Settings fitted to the training data: anchor coverage, auto anchors and input size, the
held-out validation split, and what the run stores of them."""

from __future__ import annotations

import dataclasses
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from detlab import config as config_io
from detlab.engine.distributed import Context
from detlab.engine.run import (
    automatic_validation,
    resolve_run_config,
    run_config_for_resume,
    train_run,
)
from detlab.models import MODELS
from detlab.models.data_fit import anchor_coverage, concrete, fit_to_data
from detlab.models.faster_rcnn import FasterRCNNConfig
from detlab.models.rpn import AnchorGenerator
from detlab.models.transform import ImageBatcher


def record(boxes, height=64, width=64, labels=None):
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.ones(len(boxes), np.int64) if labels is None else np.asarray(labels)
    return SimpleNamespace(boxes=boxes, labels=labels, height=height, width=width)


def test_coverage_on_hand_made_boxes_and_anchors():
    # One level of stride 16 on a 64x64 image: 32x32 anchors centred at 8, 24, 40, 56.
    generator = AnchorGenerator(((32.0,),), (1.0,))
    batcher = ImageBatcher(64, 64, size_divisible=16)
    exact = [8, 8, 40, 40]  # the anchor centred at (24, 24): IoU 1
    quarter = [0, 0, 16, 16]  # best: the anchor centred at (8, 8), [-8, -8, 24, 24]: IoU 256 / 1024
    result = anchor_coverage(
        [record([exact, quarter], labels=[1, 2])], generator, [16], batcher, positive_iou=0.7
    )
    assert result["boxes"] == 2
    assert result["best_possible_recall"] == pytest.approx(0.5)
    assert result["mean_best_iou"] == pytest.approx((1 + 0.25) / 2)
    assert result["class_mean_best_iou"] == pytest.approx((1 + 0.25) / 2)
    # The batcher's resize applies first: the same image at twice the size, halved, covers alike.
    doubled = record([[16, 16, 80, 80], [0, 0, 32, 32]], height=128, width=128, labels=[1, 2])
    assert anchor_coverage([doubled], generator, [16], batcher)["mean_best_iou"] == pytest.approx(0.625)


def large_box_records(count=40, seed=0):
    """Images of 480x360 with one or two objects filling a third to most of the picture."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(count):
        boxes = []
        for _ in range(rng.integers(1, 3)):
            width, height = rng.uniform(180, 460), rng.uniform(150, 350)
            x, y = rng.uniform(0, 480 - width), rng.uniform(0, 360 - height)
            boxes.append([x, y, x + width, y + height])
        records.append(record(boxes, height=360, width=480))
    return records


build = MODELS["faster_rcnn"]


def test_auto_anchors_cover_large_boxes_where_the_fixed_defaults_fall_short():
    run_config = resolve_run_config("faster_rcnn")
    assert run_config.model.anchor_sizes == "auto" and run_config.model.min_size == "auto"
    fitted, report = fit_to_data(run_config, large_box_records(), build, 1)
    assert report["anchors_fixed"]["best_possible_recall"] < 0.3  # anchors of 16-144 px
    assert report["anchors"]["chosen"] == "fitted" and report["anchors"]["best_possible_recall"] > 0.8
    model = fitted.model
    assert all(isinstance(value, float) for value in model.anchor_sizes) and max(model.anchor_sizes) > 150
    assert isinstance(model.min_size, int) and model.min_size <= 360  # never above the images' size
    assert report["resolved"]["anchor_sizes"] == list(model.anchor_sizes)
    # Deterministic: the same records give the same choice.
    assert fit_to_data(run_config, large_box_records(), build, 1)[0] == fitted


def test_small_objects_raise_the_input_size_and_fixed_anchors_that_miss_warn():
    rng = np.random.default_rng(1)
    small = [
        record([[x, y, x + 12, y + 12] for x, y in rng.uniform(0, 600, (5, 2))], height=800, width=800)
        for _ in range(20)
    ]
    fitted, report = fit_to_data(resolve_run_config("faster_rcnn"), small, build, 1)
    assert fitted.model.min_size == 512  # the CPU bound; the objects would want more
    assert report["input_size"]["wanted_side"] > 512
    hand_set = resolve_run_config(
        "faster_rcnn",
        overrides=["model.anchor_sizes=[200,300,400]", "model.min_size=320", "model.aspect_ratios=[1.0]"],
    )
    with pytest.warns(UserWarning, match="cover the training boxes poorly"):
        kept, report = fit_to_data(hand_set, small, build, 1)
    assert kept.model.anchor_sizes == (200.0, 300.0, 400.0) and report["anchors"]["chosen"] == "fixed"


def test_auto_values_parse_and_fall_back_without_data():
    config = config_io.merge(FasterRCNNConfig(), {"anchor_sizes": "16,32,64", "aspect_ratios": "auto"})
    assert config.anchor_sizes == (16.0, 32.0, 64.0) and config.aspect_ratios == "auto"
    plain = concrete(FasterRCNNConfig())
    assert plain.anchor_sizes == (16.0, 24.0, 40.0, 64.0, 96.0, 144.0) and (
        plain.min_size,
        plain.max_size,
    ) == (320, 427)
    model = build(FasterRCNNConfig(backbone_width=8), 1)  # builds without data: the fallbacks
    assert model.batcher.min_size == 320
    with pytest.raises(ValueError, match="or auto"):
        concrete(dataclasses.replace(FasterRCNNConfig(), min_size="large"))


@pytest.mark.parametrize("name", ["rcnn", "fast_rcnn"])
def test_an_auto_that_is_not_fitted_to_data_is_kept(name):
    """R-CNN's and Fast R-CNN's cache folders default to "auto" (the user cache folder): fitting
    the run to its data leaves them be (it once raised KeyError, so neither trained with its
    defaults)."""
    run_config = resolve_run_config(name)
    assert run_config.model.proposal_cache_dir == "auto"
    fitted, _ = fit_to_data(run_config, large_box_records(), MODELS[name], 1)
    assert fitted.model == run_config.model


def test_held_out_validation_is_disjoint_seeded_and_small_sets_are_used_whole(synthetic_root, tmp_path):
    from detlab.data.loading import load_dataset

    def run_config(seed):
        return resolve_run_config(
            "faster_rcnn",
            overrides=[
                f"data.spec={synthetic_root}",
                f"train.seed={seed}",
                f"train.out_dir={tmp_path / str(seed)}",
            ],
        )

    trainval = load_dataset(str(synthetic_root), "trainval")  # contains the val split: not usable as it is
    test_ids = {record.image_id for record in load_dataset(str(synthetic_root), "test").records}
    train, validation, report = automatic_validation(run_config(0), trainval, Context())
    train_ids, val_ids = {r.image_id for r in train.records}, {r.image_id for r in validation.records}
    assert report["held_out"] == len(val_ids) == round(0.15 * len(trainval)) > 0
    assert not train_ids & val_ids and not val_ids & test_ids and len(train_ids | val_ids) == len(trainval)
    assert (tmp_path / "0" / "val_held_out.txt").read_text().split() == [
        str(r.image_id) for r in validation.records
    ]
    again = automatic_validation(run_config(0), trainval, Context())[1]
    assert [r.image_id for r in again.records] == [r.image_id for r in validation.records]
    other = automatic_validation(run_config(1), trainval, Context())[1]
    assert {r.image_id for r in other.records} != val_ids
    # A train split apart from the data set's val split uses that split.
    train_only = load_dataset(str(synthetic_root), "train")
    _, val_split, _ = automatic_validation(run_config(0), train_only, Context())
    assert {r.image_id for r in val_split.records} == {
        r.image_id for r in load_dataset(str(synthetic_root), "val").records
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        last_six = trainval.subset(range(len(trainval) - 6, len(trainval)))  # val images among them
        kept, none, _ = automatic_validation(run_config(0), last_six, Context())
    assert none is None and len(kept) == 6 and "best.pt is the last" in str(caught[-1].message)


def test_a_run_stores_the_fitted_values_and_a_resumed_run_reuses_them(synthetic_root, tmp_path):
    out = tmp_path / "run"
    run_config = resolve_run_config(
        "faster_rcnn",
        overrides=[
            f"data.spec={synthetic_root}",
            "data.train_split=trainval",
            f"train.out_dir={out}",
            "train.max_steps=2",
            "train.eval_every=0",
            "model.backbone_width=8",
            "model.rpn_post_nms_top_n_train=50",
        ],
    )
    torch.manual_seed(0)
    train_run(run_config)
    stored = yaml.safe_load((out / "config.yaml").read_text())["model"]
    assert isinstance(stored["min_size"], int) and all(isinstance(v, float) for v in stored["anchor_sizes"])
    assert (out / "data_fit.json").is_file() and (out / "val_held_out.txt").is_file()
    resumed = run_config_for_resume(out, overrides=["train.max_steps=3"])
    assert (
        resumed.model.min_size == stored["min_size"]
        and list(resumed.model.anchor_sizes) == stored["anchor_sizes"]
    )
    assert list(resumed.model.aspect_ratios) == stored["aspect_ratios"]


build_yolo = MODELS["yolo"]


def test_yolo_input_size_auto_keeps_small_images_small_and_grows_for_small_objects():
    run_config = resolve_run_config("yolo", overrides=["model.backbone_width=8"])
    assert run_config.model.input_size == "auto"
    # Images of 200 x 150: not blown up to the fixed 416 (the longer side, to a multiple of 32).
    small_images = [record([[20, 20, 120, 110]], height=150, width=200) for _ in range(10)]
    fitted, report = fit_to_data(run_config, small_images, build_yolo, 1)
    assert fitted.model.input_size == 192 and report["resolved"]["input_size"] == 192
    assert report["input_size"]["which"] == "long" and "anchors" not in report
    # 640 x 480 images of large objects: the fixed 416 (auto never shrinks images that are larger).
    large = [record([[100, 80, 500, 400]], height=480, width=640) for _ in range(10)]
    assert fit_to_data(run_config, large, build_yolo, 1)[0].model.input_size == 416
    # 1280 x 960 images of 16-pixel objects: grown to keep them 2.5 stride-8 cells, up to 640.
    tiny = [record([[300, 300, 316, 316]], height=960, width=1280) for _ in range(10)]
    assert fit_to_data(run_config, tiny, build_yolo, 1)[0].model.input_size == 640
    # Built without data, auto is the fixed fallback.
    assert build_yolo(run_config.model, 1).training_resize() == 416


def test_scale_jitter_varies_training_sizes_only_and_boxes_follow():
    batcher = ImageBatcher(100, 200, size_divisible=8, scale_jitter=0.2)
    image = torch.rand(3, 50, 80)
    target = {"boxes": torch.tensor([[10.0, 5.0, 30.0, 25.0]])}
    torch.manual_seed(0)
    batcher.train()
    short_sides = set()
    for _ in range(40):
        _, sizes, scales, targets = batcher([image], [target])
        short_sides.add(sizes[0][0])
        assert torch.allclose(targets[0]["boxes"], target["boxes"] * scales[0])
    assert short_sides == {80, 88, 96, 104, 112, 120}  # the multiples of 8 within 100 +- 20%
    batcher.eval()
    assert {batcher([image])[1][0] for _ in range(5)} == {(100, 160)}
    with pytest.raises(ValueError, match="scale_jitter"):
        ImageBatcher(100, 200, scale_jitter=1.5)
