"""The one-stage detectors: task-aligned assignment, YOLO v1's targets and loss, bad input."""

import pytest
import torch

from detlab.models.yolo import YOLOConfig, build_yolo, task_aligned_assign
from detlab.models.yolov1 import YOLOv1Config, build_yolov1, encode_yolov1_targets, yolov1_loss

# Four cell centres in a row (stride 8), two boxes, two classes.
POINTS = torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0], [28.0, 4.0]])
BOX_A, BOX_B = [0.0, 0.0, 16.0, 8.0], [8.0, 0.0, 24.0, 8.0]


def assign(pred_boxes, gt_boxes, gt_labels, topk=10, mask=None):
    scores = torch.full((1, 4, 2), 0.5)
    gt = torch.tensor([gt_boxes])
    mask = torch.ones(1, len(gt_boxes), dtype=torch.bool) if mask is None else torch.tensor([mask])
    return task_aligned_assign(
        scores, torch.tensor([pred_boxes]), POINTS, torch.tensor([gt_labels]), gt, mask, topk=topk
    )


def test_assignment_takes_the_best_aligned_points_inside_the_box_and_scales_targets_by_iou():
    # Point 0 predicts box A exactly (IoU 1); point 1 half of it (IoU 0.5); points 2, 3 lie outside A.
    predictions = [BOX_A, [8.0, 0.0, 16.0, 8.0], [16.0, 0.0, 24.0, 8.0], [24.0, 0.0, 32.0, 8.0]]
    foreground, assigned, boxes, scores = assign(predictions, [BOX_A], [1])
    assert foreground[0].tolist() == [True, True, False, False]
    torch.testing.assert_close(boxes[0, 0], torch.tensor(BOX_A))
    # alignment = 0.5^0.5 * IoU^6, normalised so the best point's target is the best IoU (1):
    # point 1 gets 0.5^6 of it, for class 1 only.
    torch.testing.assert_close(scores[0, :, 0], torch.tensor([1.0, 0.5**6, 0.0, 0.0]))
    assert scores[0, :, 1].abs().max() == 0
    foreground, *_ = assign(predictions, [BOX_A], [1], topk=1)  # only the best point
    assert foreground[0].tolist() == [True, False, False, False]


def test_a_point_inside_two_boxes_goes_to_the_box_its_prediction_overlaps_more():
    # Point 1 (x=12) lies in A and in B; its prediction overlaps A by 0.41 and B by 0.5.
    predictions = [BOX_A, [9.0, 0.0, 17.0, 8.0], BOX_B, [24.0, 0.0, 32.0, 8.0]]
    foreground, assigned, boxes, scores = assign(predictions, [BOX_A, BOX_B], [1, 2])
    assert foreground[0].tolist() == [True, True, True, False]
    assert assigned[0, :3].tolist() == [0, 1, 1]
    assert scores[0, 1, 0] == 0 and scores[0, 1, 1] > 0  # class 2's target only


def test_assignment_with_no_boxes_or_only_padding_is_all_background():
    predictions = [BOX_A] * 4
    scores = torch.full((1, 4, 2), 0.5)
    empty = task_aligned_assign(
        scores,
        torch.tensor([predictions]),
        POINTS,
        torch.zeros(1, 0, dtype=torch.long),
        torch.zeros(1, 0, 4),
        torch.zeros(1, 0, dtype=torch.bool),
    )
    padded = assign(predictions, [BOX_A], [1], mask=[False])
    for foreground, _, _, target_scores in (empty, padded):
        assert not foreground.any() and target_scores.abs().max() == 0


def test_yolov1_targets_put_each_object_in_the_cell_of_its_centre_and_keep_the_largest():
    targets = [
        {
            "boxes": torch.tensor([[10.0, 10.0, 40.0, 50.0], [5.0, 5.0, 15.0, 15.0]]),
            "labels": torch.tensor([2, 1]),
        }
    ]
    encoded = encode_yolov1_targets(
        targets, torch.tensor([[100.0, 100.0, 100.0, 100.0]]), grid=2, num_classes=2
    )
    # Both centres, (25, 30) and (10, 10), fall in cell (0, 0): the larger box (label 2) is kept.
    expected = torch.tensor([1.0, 0.5, 0.6, 0.3**0.5, 0.4**0.5, 0.0, 1.0])
    torch.testing.assert_close(encoded[0, 0, 0], expected)
    assert encoded[0, 0, 1].abs().sum() == 0 and encoded[0, 1].abs().sum() == 0


def test_yolov1_loss_matches_the_hand_computed_terms_of_equation_3():
    # One cell, two predictors, one class. The object: centre offset (0.6, 0.5), sqrt w = sqrt h = 0.5.
    output = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.8, 0.5, 0.5, 0.3, 0.3, 0.4, 0.6]).view(1, 1, 1, 11)
    encoded = torch.tensor([1.0, 0.6, 0.5, 0.5, 0.5, 1.0]).view(1, 1, 1, 6)
    losses = yolov1_loss(output, encoded, predictors=2, lambda_coord=5.0, lambda_noobj=0.5)
    iou = 0.0375 / 0.0875  # predictor 0's box against the object's; predictor 1 overlaps it less
    torch.testing.assert_close(losses["loss_box"], torch.tensor(5.0 * 0.1**2))
    torch.testing.assert_close(losses["loss_object"], torch.tensor((0.8 - iou) ** 2))
    torch.testing.assert_close(losses["loss_noobject"], torch.tensor(0.5 * 0.4**2))
    torch.testing.assert_close(losses["loss_classifier"], torch.tensor(0.4**2))


def bad_batches():
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    tiny = {"boxes": torch.tensor([[30.0, 30.0, 32.0, 31.0]]), "labels": torch.tensor([1])}  # below stride 8
    edge = {
        "boxes": torch.tensor([[0.0, 0.0, 20.0, 96.0], [70.0, 80.0, 96.0, 96.0]]),
        "labels": torch.tensor([1, 2]),
    }
    # 60 objects on a 7x7 grid: more objects than cells
    corners = torch.rand(60, 2) * 80
    crowd = {"boxes": torch.cat([corners, corners + 8], 1), "labels": torch.randint(1, 3, (60,))}
    return {
        "all empty": [empty, empty],
        "some empty": [empty, edge],
        "tiny": [tiny, edge],
        "crowd": [crowd, tiny],
    }


def test_coarse_to_fine_training_scales_batches_and_boxes_until_its_share_of_the_budget():
    torch.manual_seed(0)
    config = YOLOConfig(
        input_size=96, backbone_width=8, neck_channels=(16, 32, 64), coarse_size=64, coarse_until=0.5
    )
    model = build_yolo(config, 2)
    seen, given = [], []
    model.body.register_forward_hook(lambda module, inputs, output: seen.append(tuple(inputs[0].shape[-2:])))
    losses = model.losses
    model.losses = lambda *args: given.append(args[-1]) or losses(*args)
    images = [torch.rand(3, 96, 96)]
    targets = [{"boxes": torch.tensor([[12.0, 24.0, 60.0, 90.0]]), "labels": torch.tensor([1])}]
    model.train()
    for progress in (0.0, 0.49, 0.5, 0.9):
        model.set_progress(progress)
        assert all(torch.isfinite(value) for value in model(images, targets).values())
    model.eval()
    model.set_progress(0.0)
    with torch.no_grad():
        model(images)  # evaluation is always at the full input size
    assert seen == [(64, 64), (64, 64), (96, 96), (96, 96), (96, 96)]
    torch.testing.assert_close(given[0][0]["boxes"], torch.tensor([[8.0, 16.0, 40.0, 60.0]]))
    torch.testing.assert_close(given[2][0]["boxes"], targets[0]["boxes"])


@pytest.mark.parametrize(
    "changes", [{"coarse_size": 96}, {"coarse_size": 16}, {"coarse_size": 64, "coarse_until": 1.5}]
)
def test_a_coarse_size_not_below_the_input_size_or_a_share_outside_0_1_is_refused(changes):
    with pytest.raises(ValueError, match="model.coarse_"):
        build_yolo(YOLOConfig(input_size=96, backbone_width=8, neck_channels=(16, 32, 64), **changes), 2)


@pytest.mark.parametrize("name", ["yolo", "yolov1"])
@pytest.mark.parametrize("case", ["all empty", "some empty", "tiny", "crowd"])
def test_bad_batches_give_finite_losses_and_a_step_that_trains(name, case):
    torch.manual_seed(0)
    if name == "yolo":
        model = build_yolo(YOLOConfig(input_size=96, backbone_width=8, neck_channels=(16, 32, 64)), 2)
    else:
        model = build_yolov1(YOLOv1Config(input_size=96, backbone_width=8, hidden=32, grid_channels=8), 2)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    losses = model([torch.rand(3, 96, 96), torch.rand(3, 80, 96)], bad_batches()[case])
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    model.eval()
    with torch.no_grad():
        found = model([torch.rand(3, 50, 70)])[0]
    assert found["boxes"].shape[1] == 4 and found["labels"].dtype == torch.int64
    if len(found["boxes"]):
        assert (
            found["boxes"][:, 2].max() <= 70
            and found["boxes"][:, 3].max() <= 50
            and found["boxes"].min() >= 0
        )


def test_a_tiny_yolo_run_on_the_synthetic_set_learns(tmp_path):
    """``detlab train yolo`` defaults (mosaic, EMA, AdamW) for 150 steps on 60 synthetic images at
    128 pixels: the test split's AP50 is clearly above zero and several times the untrained
    model's."""
    from detlab.engine.checkpoint import load_checkpoint
    from detlab.engine.run import build_datasets, build_model, resolve_run_config, train_run
    from detlab.engine.sampling import make_loader
    from detlab.engine.train import evaluate

    run_config = resolve_run_config(
        "yolo",
        data={"root": str(tmp_path / "data"), "synthetic_images": 60, "val_split": "test"},
        train={
            "out_dir": str(tmp_path / "run"),
            "max_steps": 150,
            "batch_size": 8,
            "warmup_steps": 20,
            "device": "cpu",
            "eval_every": 0,
            "ema_ramp_steps": 50,
        },
        model={"input_size": 128, "backbone_width": 8, "neck_channels": [32, 64, 128]},
    )
    torch.manual_seed(0)
    result = train_run(run_config)
    assert result.status == "finished"
    stored = load_checkpoint(tmp_path / "run" / "last.pt")
    assert stored["ema_updates"] == 150 and "training_model" in stored
    _, test_set, _ = build_datasets(run_config)
    torch.manual_seed(0)
    untrained = build_model(run_config, len(test_set.classes))
    loader = make_loader(test_set, 4, torch.utils.data.SequentialSampler(test_set))
    before = evaluate(untrained, loader, untrained.make_evaluator(test_set.classes)).summary()["AP50"]
    assert result.metrics["AP50"] > max(0.02, 5 * before), (result.metrics["AP50"], before)
