import numpy as np
import pytest
import torch

from detlab.box_arrays import iou as pairwise_iou
from detlab.eval.plots import plot_recall_vs_iou, plot_recall_vs_proposals
from detlab.eval.proposals import best_overlaps, proposal_recall


def box(x1, y1, x2, y2):
    return [float(x1), float(y1), float(x2), float(y2)]


def test_pairwise_iou_hand_values():
    a = np.array([box(0, 0, 10, 10)])
    b = np.array([box(0, 0, 10, 10), box(5, 0, 15, 10), box(20, 20, 30, 30), box(3, 3, 3, 3)])
    # half overlap: intersection 50, union 150
    np.testing.assert_allclose(pairwise_iou(a, b), [[1.0, 50 / 150, 0.0, 0.0]])


def test_best_overlaps_grow_with_more_proposals_and_use_ranking():
    gt = torch.tensor([box(0, 0, 10, 10)])
    # ranked: a poor box first, the exact box third
    proposals = torch.tensor([box(5, 0, 15, 10), box(50, 50, 60, 60), box(0, 0, 10, 10)])
    best = best_overlaps(proposals, gt, [1, 2, 3, 1000])
    np.testing.assert_allclose(best, [[1 / 3, 1 / 3, 1.0, 1.0]])


def test_recall_ar_and_mabo_hand_computed():
    # image 0: two gt of class 1, image 1: one gt of class 2, image 2: no gt, image 3: gt but no proposals
    gt_boxes = [
        torch.tensor([box(0, 0, 10, 10), box(100, 100, 110, 110)]),
        torch.tensor([box(0, 0, 20, 10)]),
        torch.zeros((0, 4)),
        torch.tensor([box(0, 0, 4, 4)]),
    ]
    gt_labels = [
        torch.tensor([1, 1]),
        torch.tensor([2]),
        torch.zeros(0, dtype=torch.int64),
        torch.tensor([2]),
    ]
    proposals = [
        # first proposal: IoU 1.0 with gt0; second: IoU 0.6 with gt1 (shifted 2.5 px -> 75/125)
        torch.tensor([box(0, 0, 10, 10), box(102.5, 100, 112.5, 110)]),
        # IoU of (0,0,10,10) with (0,0,20,10) is 0.5
        torch.tensor([box(0, 0, 10, 10)]),
        torch.tensor([box(0, 0, 5, 5)]),
        torch.zeros((0, 4)),
    ]
    result = proposal_recall(proposals, gt_boxes, gt_labels, num_proposals=(1, 2), classes=["a", "b"])
    assert result["num_gt"] == 4
    # best overlaps with top 1: [1.0, 0.0, 0.5, 0.0]; with top 2: [1.0, 0.6, 0.5, 0.0]
    assert result["recall"]["0.5@1"] == pytest.approx(2 / 4)
    assert result["recall"]["0.5@2"] == pytest.approx(3 / 4)
    assert result["recall"]["0.7@2"] == pytest.approx(1 / 4)
    # AR = 2 * mean(max(best - 0.5, 0)) = 2 * (0.5 + 0.1 + 0 + 0) / 4
    assert result["ar"] == pytest.approx(2 * 0.6 / 4)
    assert result["average_recall"]["1"] == pytest.approx(2 * 0.5 / 4)
    # ABO: class a = (1.0 + 0.6) / 2 = 0.8, class b = (0.5 + 0) / 2 = 0.25; MABO = 0.525
    assert result["abo_per_class"] == pytest.approx({"a": 0.8, "b": 0.25})
    assert result["mabo"] == pytest.approx(0.525)
    assert result["average_best_overlap"] == pytest.approx(2.1 / 4)


def test_ar_equals_dense_average_of_recall_over_iou():
    generator = np.random.default_rng(0)
    gt, proposals = [], []
    for _ in range(20):
        corners = generator.uniform(0, 100, (5, 2))
        gt.append(np.concatenate([corners, corners + generator.uniform(5, 50, (5, 2))], 1))
        corners = generator.uniform(0, 100, (30, 2))
        proposals.append(np.concatenate([corners, corners + generator.uniform(5, 50, (30, 2))], 1))
    result = proposal_recall(proposals, gt, num_proposals=(30,))
    best = np.concatenate([best_overlaps(p, g, [30])[:, 0] for p, g in zip(proposals, gt)])
    thresholds = np.linspace(0.5, 1.0, 20001)
    dense = np.mean([(best >= t).mean() for t in thresholds])
    assert result["ar"] == pytest.approx(dense, abs=1e-3)
    # recall never decreases with more proposals nor increases with a stricter IoU
    curve = result["recall_vs_proposals"]["recall"]["0.5"]
    assert all(a <= b for a, b in zip(curve, curve[1:]))
    by_iou = result["recall_vs_iou"]["recall"]["30"]
    assert all(a >= b for a, b in zip(by_iou, by_iou[1:]))


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="one entry per image"):
        proposal_recall([torch.zeros((0, 4))], [])
    with pytest.raises(ValueError, match="shape"):
        proposal_recall([torch.zeros((3, 5))], [torch.zeros((1, 4))])


def test_plots_write_png(tmp_path):
    gt = [torch.tensor([box(0, 0, 10, 10)])]
    result = proposal_recall([torch.tensor([box(1, 1, 10, 10)])], gt, num_proposals=(1, 10))
    first = plot_recall_vs_proposals({"method": result}, tmp_path / "recall.png", iou_threshold=0.7)
    second = plot_recall_vs_iou({"method": result}, tmp_path / "iou.png")
    for path in (first, second):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
