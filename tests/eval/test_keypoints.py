import math

import numpy as np
import pytest
import torch

from detlab.eval import KeypointEvaluator, keypoint_metrics
from detlab.eval.keypoints import pose_size

NAN = float("nan")
# three joints spanning a 10 x 20 box: pose size 20
TRUTH = [[0.0, 0.0], [10.0, 0.0], [0.0, 20.0]]
# errors 0, 1 and 5 pixels (3-4-5 triangle)
PREDICTED = [[0.0, 0.0], [10.0, 1.0], [3.0, 24.0]]


def test_pck_and_errors_hand_computed():
    metrics = keypoint_metrics(np.array([PREDICTED]), np.array([TRUTH]), thresholds=(0.05, 0.1, 0.2, 0.25))
    # thresholds in pixels: 1, 2, 4, 5 (inclusive)
    assert metrics["pck@0.05"] == pytest.approx(2 / 3)
    assert metrics["pck@0.1"] == pytest.approx(2 / 3)
    assert metrics["pck@0.2"] == pytest.approx(2 / 3)
    assert metrics["pck@0.25"] == pytest.approx(1.0)
    assert metrics["mean_error_px"] == pytest.approx(2.0)
    assert metrics["mean_error_relative"] == pytest.approx(2.0 / 20)
    assert list(metrics) == [
        "pck@0.05",
        "pck@0.1",
        "pck@0.2",
        "pck@0.25",
        "mean_error_px",
        "mean_error_relative",
    ]


def test_default_thresholds_and_tensor_input():
    metrics = keypoint_metrics(torch.tensor([PREDICTED]), torch.tensor([TRUTH]))
    assert list(metrics) == ["pck@0.05", "pck@0.1", "pck@0.2", "mean_error_px", "mean_error_relative"]


def test_unlabelled_joints_are_left_out_of_every_number_and_the_pose_size():
    # a fourth, unlabelled joint whose "truth" would widen the box to 1000 and whose error is huge
    truth = np.array([TRUTH + [[NAN, NAN]]])
    predicted = np.array([PREDICTED + [[1000.0, 1000.0]]])
    assert pose_size(truth)[0] == 20.0
    assert keypoint_metrics(predicted, truth) == keypoint_metrics(np.array([PREDICTED]), np.array([TRUTH]))
    # one NaN coordinate is enough to leave a joint out
    truth[0, 2, 0] = NAN
    metrics = keypoint_metrics(predicted, truth, thresholds=(0.1,))
    # joints (0, 0) and (10, 0) remain: pose size 10, errors 0 and 1
    assert metrics == {"pck@0.1": 1.0, "mean_error_px": 0.5, "mean_error_relative": 0.05}


def test_joints_are_pooled_over_images_and_pose_size_is_at_least_one():
    truth = np.array([TRUTH, [[5.0, 5.0], [NAN, NAN], [NAN, NAN]]])
    predicted = np.array([PREDICTED, [[5.0, 5.5], [0.0, 0.0], [0.0, 0.0]]])
    # image 2: one labelled joint, pose size clamped to 1, error 0.5
    np.testing.assert_array_equal(pose_size(truth), [20.0, 1.0])
    metrics = keypoint_metrics(predicted, truth, thresholds=(0.05, 0.5))
    # four joints: errors 0, 1, 5 (size 20) and 0.5 (size 1)
    assert metrics["pck@0.05"] == pytest.approx(2 / 4)  # 0 and 1 <= 1 pixel; 0.5 > 0.05 pixel
    assert metrics["pck@0.5"] == pytest.approx(4 / 4)
    assert metrics["mean_error_px"] == pytest.approx((0 + 1 + 5 + 0.5) / 4)
    assert metrics["mean_error_relative"] == pytest.approx((0 + 1 / 20 + 5 / 20 + 0.5) / 4)


def test_no_labelled_joint_gives_nan_and_bad_shapes_raise():
    metrics = keypoint_metrics(np.zeros((1, 2, 2)), np.full((1, 2, 2), NAN))
    assert all(math.isnan(value) for value in metrics.values())
    with pytest.raises(ValueError, match=r"\[B, K, 2\]"):
        keypoint_metrics(np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="predicted has shape"):
        keypoint_metrics(np.zeros((1, 3, 2)), np.zeros((1, 2, 2)))


def deeppose_output(stages: list[list[list[float]]]) -> dict:
    """The model's per-image dict: the last stage is the final estimate."""
    per_stage = torch.tensor(stages)[:, None]  # [S, 1, K, 2]
    return {"keypoints": per_stage[-1], "scores": torch.ones(1), "keypoints_per_stage": per_stage}


def test_evaluator_reports_final_and_per_stage_metrics():
    stage1 = [[0.0, 4.0], [10.0, 0.0], [0.0, 20.0]]  # errors 4, 0, 0
    predictions = [deeppose_output([stage1, PREDICTED])]
    # the first object is the truth; the second is ignored
    targets = [{"keypoints": torch.tensor([TRUTH, [[500.0, 500.0]] * 3]), "boxes": torch.zeros((2, 4))}]
    evaluator = KeypointEvaluator()
    evaluator.update(predictions, targets)
    result = evaluator.compute()
    names = ["pck@0.05", "pck@0.1", "pck@0.2", "mean_error_px", "mean_error_relative"]
    assert set(result) == {
        *names,
        *(f"stage{stage}/{name}" for stage in (1, 2) for name in names),
        "num_images",
        "num_skipped",
    }
    assert result["mean_error_px"] == pytest.approx(2.0)
    assert result["stage2/mean_error_px"] == pytest.approx(2.0)
    assert result["stage1/mean_error_px"] == pytest.approx(4 / 3)
    assert result["stage1/pck@0.05"] == pytest.approx(2 / 3)  # 4 px > 1 px
    assert result["stage1/pck@0.2"] == pytest.approx(1.0)  # 4 px <= 4 px
    assert result["stage1/mean_error_relative"] == pytest.approx(4 / 3 / 20)
    assert result["num_images"] == 1 and result["num_skipped"] == 0


def test_evaluator_skips_images_without_keypoints_and_accumulates_batches():
    with_truth = {"keypoints": torch.tensor([TRUTH])}
    predictions = [{"keypoints": torch.tensor([PREDICTED]), "scores": torch.ones(1)}] * 4
    targets = [
        with_truth,
        {"boxes": torch.zeros((0, 4))},  # no keypoints key
        {"keypoints": torch.zeros((0, 3, 2))},  # no object
        {"keypoints": torch.full((1, 3, 2), NAN)},  # no labelled joint
    ]
    evaluator = KeypointEvaluator(thresholds=(0.25,))
    evaluator.update(predictions[:2], targets[:2])
    evaluator.update(predictions[2:], targets[2:])
    evaluator.update(predictions[:1], [{"keypoints": torch.tensor([[[0.0, 1.0], [10.0, 1.0], [3.0, 24.0]]])}])
    result = evaluator.compute()
    assert result["num_images"] == 2 and result["num_skipped"] == 3
    # image 1: errors 0, 1, 5 (size 20); image 2: errors 1, 0, 0 (size 23)
    assert result["pck@0.25"] == 1.0
    assert result["mean_error_px"] == pytest.approx(7 / 6)
    assert result["mean_error_relative"] == pytest.approx((6 / 20 + 1 / 23) / 6)
    assert not any(key.startswith("stage") for key in result)
    evaluator.reset()
    assert evaluator.compute()["num_images"] == 0


def test_evaluator_rejects_inconsistent_input():
    evaluator = KeypointEvaluator()
    with pytest.raises(ValueError, match="pose of shape"):
        evaluator.update([{"keypoints": torch.zeros((1, 2, 2))}], [{"keypoints": torch.tensor([TRUTH])}])
    evaluator.update([deeppose_output([PREDICTED])], [{"keypoints": torch.tensor([TRUTH])}])
    evaluator.update([{"keypoints": torch.tensor([PREDICTED])}], [{"keypoints": torch.tensor([TRUTH])}])
    with pytest.raises(ValueError, match="keypoints_per_stage"):
        evaluator.compute()
