import pytest
import torch

from detlab.eval.localization import localization_metrics


def test_top1_and_top5_hand_computed():
    gt_labels = [torch.tensor([3]), torch.tensor([1]), torch.tensor([2]), torch.tensor([1, 2])]
    gt_boxes = [
        torch.tensor([[0.0, 0, 10, 10]]),
        torch.tensor([[0.0, 0, 10, 10]]),
        torch.tensor([[0.0, 0, 10, 10]]),
        torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 30]]),
    ]
    exact, shifted, far = [0.0, 0, 10, 10], [5.0, 0, 15, 10], [50.0, 50, 60, 60]
    labels = torch.tensor(
        [
            [3, 1, 2, 4, 5],  # right class, exact box: top-1 localized
            [2, 1, 3, 4, 5],  # right class second, exact box: top-5 only
            [2, 1, 3, 4, 5],  # right class first but box IoU 1/3: not localized at all
            [2, 4, 5, 6, 7],  # class 2 is present but the box is on the class-1 object: not localized
        ]
    )
    boxes = torch.tensor(
        [
            [exact, far, far, far, far],
            [far, exact, far, far, far],
            [shifted, shifted, shifted, shifted, shifted],
            [exact, exact, exact, exact, exact],
        ]
    )
    result = localization_metrics(labels, boxes, gt_labels, gt_boxes)
    assert result["num_images"] == 4
    assert result["classification_top1"] == pytest.approx(3 / 4)
    assert result["classification_top5"] == pytest.approx(4 / 4)
    assert result["localization_top1"] == pytest.approx(1 / 4)
    assert result["localization_top5"] == pytest.approx(2 / 4)
    assert result["localization_error_top1"] == pytest.approx(3 / 4)
    # top-1 box best IoU with any gt box: 1, 0, 1/3, 1
    assert result["mean_iou"] == pytest.approx((1 + 0 + 1 / 3 + 1) / 4)


def test_single_guess_shapes_and_images_without_truth():
    result = localization_metrics(
        torch.tensor([1, 1]),
        torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10]]),
        [torch.tensor([1]), torch.zeros(0, dtype=torch.int64)],
        [torch.tensor([[0.0, 0, 10, 8]]), torch.zeros((0, 4))],
    )
    assert result["num_images"] == 1 and result["num_skipped"] == 1
    assert result["localization_top1"] == 1.0
    assert "localization_top5" not in result
    assert result["mean_iou"] == pytest.approx(0.8)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"\[N, K, 4\]"):
        localization_metrics(
            torch.ones((2, 5), dtype=torch.int64), torch.zeros((2, 4, 4)), [[1], [1]], [[[0, 0, 1, 1]]] * 2
        )
    with pytest.raises(ValueError, match="gt_labels"):
        localization_metrics(
            torch.ones((2, 1), dtype=torch.int64), torch.zeros((2, 1, 4)), [[1]], [[[0, 0, 1, 1]]]
        )
