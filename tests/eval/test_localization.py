import pytest
import torch

from detlab.eval.localization import LocalizationEvaluator, localization_metrics


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


def localizer_output(guesses: list[tuple[int, list[float], float]]) -> dict:
    """Detector-contract dict of (label, xyxy box, score) guesses."""
    return {
        "boxes": torch.tensor([box for _, box, _ in guesses], dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor([score for _, _, score in guesses]),
        "labels": torch.tensor([label for label, _, _ in guesses], dtype=torch.int64),
    }


def target(labels: list[int], boxes: list[list[float]]) -> dict:
    return {"boxes": torch.tensor(boxes).reshape(-1, 4), "labels": torch.tensor(labels, dtype=torch.int64)}


EXACT, SHIFTED, FAR = [0.0, 0, 10, 10], [5.0, 0, 15, 10], [50.0, 50, 60, 60]
CLASSES = [f"class{c}" for c in range(1, 10)]


def test_evaluator_ranks_guesses_by_score_and_keeps_top_k():
    predictions = [
        # the right guess has the highest score but comes last: top-1 after sorting
        localizer_output([(2, FAR, 0.1), (4, FAR, 0.2), (3, EXACT, 0.9)]),
        # the right guess is sixth by score: outside the top 5
        localizer_output([(c, FAR, 0.9 - 0.1 * c) for c in (2, 4, 5, 6, 7)] + [(1, EXACT, 0.05)]),
        # equal scores keep the given order: the wrong guess comes first
        localizer_output([(2, EXACT, 0.5), (1, EXACT, 0.5)]),
    ]
    targets = [target([3], [EXACT]), target([1], [EXACT]), target([1], [EXACT])]
    evaluator = LocalizationEvaluator(CLASSES)
    evaluator.update(predictions, targets)
    result = evaluator.compute()
    assert result["num_images"] == 3 and result["num_skipped"] == 0
    assert result["classification_top1"] == pytest.approx(1 / 3)
    assert result["localization_top1"] == pytest.approx(1 / 3)
    assert result["localization_error_top1"] == pytest.approx(2 / 3)
    assert result["classification_top5"] == pytest.approx(2 / 3)
    assert result["localization_top5"] == pytest.approx(2 / 3)
    assert result["localization_error_top5"] == pytest.approx(1 / 3)
    # top-1 box IoU with the ground truth: 1, 0 (FAR), 1
    assert result["mean_iou"] == pytest.approx(2 / 3)
    assert result["iou_threshold"] == 0.5
    assert all(type(value) in (int, float) for value in result.values())


def test_evaluator_top_k_sets_the_keys():
    evaluator = LocalizationEvaluator(CLASSES, top_k=2)
    evaluator.update(
        [localizer_output([(2, EXACT, 0.9), (1, EXACT, 0.8), (3, EXACT, 0.7)])], [target([3], [EXACT])]
    )
    result = evaluator.compute()
    assert result["localization_top1"] == 0.0 and result["localization_top2"] == 0.0  # class 3 is third
    assert "localization_top5" not in result and "localization_top3" not in result


def test_ragged_guesses_are_judged_on_what_there_is():
    predictions = [
        localizer_output([(2, FAR, 0.9), (3, EXACT, 0.8), (4, FAR, 0.7), (5, FAR, 0.6), (6, FAR, 0.5)]),
        localizer_output([(2, FAR, 0.9), (1, SHIFTED, 0.8)]),  # right class, IoU 1/3: not localized
        localizer_output([]),  # no guess at all: wrong, IoU 0
        localizer_output([(1, SHIFTED, 0.3)]),
    ]
    targets = [target([3], [EXACT]), target([1], [EXACT]), target([1], [EXACT]), target([1], [EXACT])]
    evaluator = LocalizationEvaluator(CLASSES, iou_threshold=0.3)
    evaluator.update(predictions, targets)
    result = evaluator.compute()
    assert result["num_images"] == 4
    assert result["classification_top1"] == pytest.approx(1 / 4)  # image 4
    assert result["localization_top1"] == pytest.approx(1 / 4)  # image 4: IoU 1/3 >= 0.3
    assert result["classification_top5"] == pytest.approx(3 / 4)  # images 1, 2, 4
    assert result["localization_top5"] == pytest.approx(3 / 4)
    assert result["mean_iou"] == pytest.approx((0 + 0 + 0 + 1 / 3) / 4)


def test_padding_changes_nothing():
    """Short guess lists give exactly the numbers of the same lists filled up with wrong guesses."""
    short = [
        localizer_output([(2, FAR, 0.9), (1, EXACT, 0.8)]),
        localizer_output([]),
        localizer_output([(3, SHIFTED, 0.7)]),
    ]
    wrong = [(9, [100.0, 100, 110, 110], 0.01)] * 5  # class 9 is in no target; the box overlaps none
    filled = [
        localizer_output([(2, FAR, 0.9), (1, EXACT, 0.8)] + wrong[:3]),
        localizer_output(wrong),
        localizer_output([(3, SHIFTED, 0.7)] + wrong[:4]),
    ]
    # the padding's box [0, 0, 0, 0] touches a corner of EXACT, and its label 0 is no class
    targets = [target([1], [EXACT]), target([1, 2], [EXACT, FAR]), target([3], [SHIFTED])]
    results = []
    for predictions in (short, filled):
        evaluator = LocalizationEvaluator(CLASSES)
        evaluator.update(predictions, targets)
        results.append(evaluator.compute())
    assert results[0] == results[1]
    assert results[0]["localization_top5"] == pytest.approx(2 / 3)
    assert results[0]["localization_top1"] == pytest.approx(1 / 3)


def test_batches_accumulate_and_images_without_truth_are_skipped():
    predictions = [localizer_output([(1, EXACT, 0.9)]), localizer_output([(1, EXACT, 0.9)])]
    targets = [target([1], [EXACT]), target([], [])]
    one_batch = LocalizationEvaluator(CLASSES)
    one_batch.update(predictions, targets)
    two_batches = LocalizationEvaluator(CLASSES)
    two_batches.update(predictions[:1], targets[:1])
    two_batches.update(predictions[1:], targets[1:])
    result = two_batches.compute()
    assert result == one_batch.compute()
    assert result["num_images"] == 1 and result["num_skipped"] == 1 and result["localization_top1"] == 1.0
    two_batches.reset()
    assert two_batches.compute()["num_images"] == 0


def test_evaluator_rejects_bad_input():
    evaluator = LocalizationEvaluator(CLASSES[:3])
    with pytest.raises(ValueError, match=r"labels must be in 1..3"):
        evaluator.update([localizer_output([(4, EXACT, 0.9)])], [target([1], [EXACT])])
    with pytest.raises(ValueError, match="2 predictions for 1 targets"):
        evaluator.update([localizer_output([])] * 2, [target([1], [EXACT])])
    with pytest.raises(ValueError, match="top_k"):
        LocalizationEvaluator(CLASSES, top_k=0)


def test_metrics_accept_tensors_that_require_grad_and_module_imports_no_torch():
    boxes = torch.tensor([[0.0, 0, 10, 10]], requires_grad=True)
    result = localization_metrics(
        torch.tensor([1]), boxes, [torch.tensor([1])], [torch.tensor([[0.0, 0, 10, 8]])]
    )
    assert result["mean_iou"] == pytest.approx(0.8)
    import ast
    from pathlib import Path

    import detlab.eval.keypoints
    import detlab.eval.localization
    import detlab.eval.results

    for module in (detlab.eval.localization, detlab.eval.keypoints, detlab.eval.results):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {
            alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        }
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not any(name.split(".")[0] == "torch" for name in imported), module.__name__
