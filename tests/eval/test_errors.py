"""detlab's TIDE error analysis against tidecv (the oracle here, not the implementation), the
confusion matrix against the COCO evaluator, and the report files."""

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detlab.eval.coco import evaluate_coco
from detlab.eval.error_report import write_error_report
from detlab.eval.errors import (
    BACKGROUND,
    CLASSIFICATION,
    DUPLICATE,
    ERROR_TYPES,
    IGNORED,
    LOCALIZATION,
    MISSED,
    NOT_EVALUATED,
    SIZE_RANGES,
    TIDE_NAMES,
    TRUE_POSITIVE,
    analyze_errors,
    confusion_matrix,
    f1_curves,
)
from detlab.eval.problem import DetectionProblem, problem_from_targets

tidecv = pytest.importorskip("tidecv")  # runs on numpy 2 as it is: no patch needed
from tidecv import TIDE, Data  # noqa: E402
from tidecv.errors.main_errors import FalsePositiveError  # noqa: E402
from tidecv.errors.qualifiers import AREA  # noqa: E402

SHORT_TO_TYPE = {TIDE_NAMES[kind]: kind for kind in ERROR_TYPES}


def tidecv_run(problem: DetectionProblem, max_detections: int, foreground_iou: float, background_iou: float):
    """tidecv's TIDE run on the problem: crowd regions and difficult objects as ignore regions of their
    class, annotations and detections added in file order (so tidecv's ids are our indices)."""
    ground_truth, predictions = Data("gt", max_dets=max_detections), Data("predictions")
    for image_index in range(len(problem.image_ids)):
        ground_truth.add_image(image_index, str(problem.image_ids[image_index]))
    for g in range(len(problem.gt_category)):
        image, category, box = (
            int(problem.gt_image[g]),
            int(problem.gt_category[g]) + 1,
            problem.gt_boxes[g].tolist(),
        )
        if problem.gt_crowd[g] or problem.gt_difficult[g]:
            ground_truth.add_ignore_region(image, category, box)
        else:
            ground_truth.add_ground_truth(image, category, box)
    for d in range(len(problem.det_scores)):
        predictions.add_detection(
            int(problem.det_image[d]),
            int(problem.det_category[d]) + 1,
            float(problem.det_scores[d]),
            problem.det_boxes[d].tolist(),
        )
    tide = TIDE(pos_threshold=foreground_iou, background_threshold=background_iou)
    run = tide.evaluate(ground_truth, predictions, mode=TIDE.BOX, name="run")
    return tide, run


BOX_SIDE = st.integers(1, 60)


@st.composite
def crowded_problems(draw):
    """Images crowded with overlapping objects of a few classes (integer coordinates, so exact IoU
    ties happen), some crowd regions, and detections made to fall into every TIDE type: near copies
    of an object (jittered so IoU lands near 0.1 and 0.5), several on one object (duplicates), with
    another class, and anywhere; scores from a coarse set (ties) or continuous."""
    num_classes = draw(st.integers(1, 4))
    predictions, targets = [], []
    for image in range(draw(st.integers(1, 5))):
        scale = draw(st.sampled_from([1, 4]))  # 4: objects up to 240 px, so all three COCO sizes occur
        objects = draw(
            st.lists(
                st.tuples(
                    st.integers(0, 80), st.integers(0, 80), BOX_SIDE, BOX_SIDE, st.integers(1, num_classes)
                ),
                max_size=8,
            )
        )
        crowd = draw(st.lists(st.booleans(), min_size=len(objects), max_size=len(objects)))
        crowd = [flag and draw(st.integers(0, 2)) == 0 for flag in crowd]
        gt_boxes = [[x * scale, y * scale, (x + w) * scale, (y + h) * scale] for x, y, w, h, _ in objects]
        recipes = draw(
            st.lists(
                st.tuples(
                    st.sampled_from(["exact", "near", "near", "other_class", "anywhere"]),
                    st.integers(0, 7),
                    st.tuples(*[st.integers(-12, 12)] * 4),
                    st.integers(1, num_classes),
                    st.one_of(st.sampled_from([0.2, 0.5, 0.9]), st.floats(0, 1)),
                ),
                min_size=1,
                max_size=16,
            )
        )
        boxes, labels, scores = [], [], []
        for kind, target, jitter, label, score in recipes:
            if kind != "anywhere" and objects:
                x1, y1, x2, y2 = gt_boxes[target % len(objects)]
                # each side moved by up to 30% of the box's size: IoU anywhere from about 0.2 to 1
                width, height = (x2 - x1) / 40, (y2 - y1) / 40
                box = [
                    x1 + jitter[0] * width,
                    y1 + jitter[1] * height,
                    x2 + jitter[2] * width,
                    y2 + jitter[3] * height,
                ]
                box[2], box[3] = max(box[2], box[0] + 1), max(box[3], box[1] + 1)
                if kind == "exact":
                    box = [x1, y1, x2, y2]
                object_label = objects[target % len(objects)][4]
                if kind in ("exact", "near"):
                    label = object_label
                else:  # a class confusion: another class (when there is one), the box off or a little off
                    if jitter[2] % 2 == 0:
                        box = [x1 + jitter[0] * width / 4, y1 + jitter[1] * height / 4, x2, y2]
                    label = (object_label + label - 1) % num_classes + 1 if label != num_classes else label
            else:
                x, y = jitter[0] * 8 + 100, jitter[1] * 8 + 100
                box = [
                    x * scale,
                    y * scale,
                    (x + 5 + abs(jitter[2]) * 3) * scale,
                    (y + 5 + abs(jitter[3]) * 3) * scale,
                ]
            boxes.append(box)
            labels.append(label)
            scores.append(score)
        predictions.append(
            {
                "boxes": np.array(boxes, float).reshape(-1, 4),
                "scores": np.array(scores),
                "labels": np.array(labels, int),
            }
        )
        targets.append(
            {
                "boxes": np.array(gt_boxes, float).reshape(-1, 4),
                "labels": np.array([o[4] for o in objects], int),
                "iscrowd": np.array(crowd, bool),
                "image_id": image,
            }
        )
    problem = problem_from_targets(predictions, targets, [f"class{k}" for k in range(1, num_classes + 1)])
    # tidecv's mAP divides by the number of classes with an object or a detection: give it one object
    if (problem.gt_crowd | problem.gt_difficult).all():
        targets[0] = {"boxes": np.array([[0.0, 0.0, 10.0, 10.0]]), "labels": np.array([1]), "image_id": 0}
        problem = problem_from_targets(predictions, targets, problem.class_names)
    return problem


def their_main_dap(run, qualifier=None) -> dict:
    """tidecv's dAP of the six main errors by short name (AP points), one type at a time as its
    ``get_main_errors`` computes them; None where tidecv raises ZeroDivisionError."""
    values = {}
    for error_type in TIDE._error_types:
        try:
            values[error_type.short_name] = run.fix_main_errors(error_types=[error_type], qual=qualifier)[
                error_type
            ]
        except ZeroDivisionError:
            values[error_type.short_name] = None
    return values


def their_dap(tide, run) -> dict:
    """tidecv's eight dAP values by short name (AP points); None where tidecv raises ZeroDivisionError."""
    try:
        return {**tide.get_main_errors()["run"], **tide.get_special_errors()["run"]}
    except ZeroDivisionError:
        pass
    values = their_main_dap(run)
    for name, fixed in (
        ("FalsePos", lambda: run.fix_errors(transform=FalsePositiveError.fix)),
        ("FalseNeg", lambda: run.fix_errors(false_neg_dict=run.false_negatives)),
    ):  # the two lines of TIDERun.fix_special_errors
        try:
            values[name] = fixed().get_mAP() - run.ap
        except ZeroDivisionError:
            values[name] = None
    return values


def assert_equal_dap(ours: float, theirs: float | None, what: str) -> None:
    if theirs is None:
        # the one divergence: tidecv divides by zero when a fix leaves no class with an object or a
        # detection (FalseNeg when no detection outside crowd regions is a true positive; Miss when
        # nothing was detected); no AP is gained, and detlab reports 0
        assert ours == 0.0, what
    else:
        assert ours * 100 == pytest.approx(theirs, abs=1e-6), what


def assert_same_as_tidecv(problem, max_detections=100, foreground_iou=0.5, background_iou=0.1):
    ours = analyze_errors(problem, foreground_iou, background_iou, max_detections)
    tide, run = tidecv_run(problem, max_detections, foreground_iou, background_iou)
    theirs = their_dap(tide, run)
    # tidecv's numbers are AP points (x100)
    assert ours.ap * 100 == pytest.approx(run.ap, abs=1e-6)
    for kind, value in ours.dap.items():
        assert_equal_dap(value, theirs[TIDE_NAMES[kind]], kind)
    counts = {error.short_name: count for error, count in run.count_errors().items()}
    assert {TIDE_NAMES[kind]: count for kind, count in ours.counts.items()} == counts

    # the type of every detection and every missed object: tidecv's ids are our indices
    their_det_error = np.full(len(problem.det_scores), TRUE_POSITIVE, np.int8)
    their_missed = np.zeros(len(problem.gt_category), bool)
    for error in run.errors:
        if hasattr(error, "pred"):
            their_det_error[error.pred["_id"]] = ERROR_TYPES.index(SHORT_TO_TYPE[error.short_name])
        else:
            their_missed[error.gt["_id"]] = True
    evaluated = ours.det_error != NOT_EVALUATED
    np.testing.assert_array_equal(ours.det_error[evaluated], their_det_error[evaluated])
    np.testing.assert_array_equal(ours.gt_error == MISSED, their_missed)

    # dAP per object size: tidecv's own qualifiers (fix_main_errors(qual=...)) on box areas, which are
    # the problem's gt_area here (problem_from_targets)
    for qualifier, size in zip(AREA, SIZE_RANGES):
        their_size = their_main_dap(run, qualifier)
        for kind in ERROR_TYPES:
            assert_equal_dap(ours.size_dap[size][kind], their_size[TIDE_NAMES[kind]], f"{size} {kind}")
    return ours


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(problem=crowded_problems(), max_detections=st.sampled_from([100, 4]))
def test_equal_to_tidecv_on_generated_problems(problem, max_detections):
    ours = assert_same_as_tidecv(problem, max_detections=max_detections)
    if problem.num_classes == 1 and not np.isnan(ours.class_ap[0]):
        # one class: its own AP and dAP are the overall ones
        assert ours.class_ap[0] == pytest.approx(ours.ap)
        for kind in ERROR_TYPES:
            if np.isnan(ours.class_dap[kind][0]):  # the fix left the class without objects or detections
                assert ours.dap[kind] == 0.0
            else:
                assert ours.class_dap[kind][0] == pytest.approx(ours.dap[kind], abs=1e-12)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(problem=crowded_problems(), thresholds=st.sampled_from([(0.6, 0.2), (0.3, 0.3), (0.75, 0.05)]))
def test_equal_to_tidecv_with_other_thresholds(problem, thresholds):
    assert_same_as_tidecv(problem, foreground_iou=thresholds[0], background_iou=thresholds[1])


def one_image_problem(gt_boxes, gt_labels, det_boxes, det_labels, det_scores, num_classes=2, crowd=None):
    """A problem of one image from ``(x1, y1, x2, y2)`` boxes and labels 1..K."""
    target = {
        "boxes": np.array(gt_boxes, float).reshape(-1, 4),
        "labels": np.array(gt_labels, int),
        "image_id": 1,
    }
    if crowd is not None:
        target["iscrowd"] = np.array(crowd, bool)
    prediction = {
        "boxes": np.array(det_boxes, float).reshape(-1, 4),
        "labels": np.array(det_labels, int),
        "scores": np.array(det_scores, float),
    }
    return problem_from_targets([prediction], [target], [f"class{k}" for k in range(1, num_classes + 1)])


def test_each_error_type_by_hand():
    problem = one_image_problem(
        gt_boxes=[[0, 0, 100, 100], [200, 0, 300, 100], [400, 0, 500, 100], [0, 300, 100, 400]],
        gt_labels=[1, 1, 2, 1],
        det_boxes=[
            [0, 0, 100, 100],  # true positive on object 0
            [2, 2, 100, 100],  # a second detection of object 0: duplicate
            [400, 0, 500, 100],  # class 1 on the class-2 object 2: classification
            [200, 0, 250, 100],  # IoU exactly 0.5 with object 1: a match (>= 0.5)
            [200, 0, 240, 100],  # IoU 0.4 with object 1 (already found): localization
            [600, 600, 650, 650],  # nothing there: background
            [430, 30, 520, 140],  # class 1, IoU 0.33 with the class-2 object: both
        ],
        det_labels=[1, 1, 1, 1, 1, 1, 1],
        det_scores=[0.9, 0.8, 0.7, 0.65, 0.6, 0.5, 0.4],
    )
    analysis = analyze_errors(problem)
    assert analysis.det_error.tolist() == [
        TRUE_POSITIVE,
        DUPLICATE,
        CLASSIFICATION,
        TRUE_POSITIVE,
        LOCALIZATION,
        BACKGROUND,
        ERROR_TYPES.index("both"),
    ]
    assert analysis.det_gt.tolist() == [0, 0, 2, 1, 1, -1, -1]
    # object 2 is unfound but the classification error points at it; object 3 nothing found
    assert analysis.gt_error.tolist() == [TRUE_POSITIVE, TRUE_POSITIVE, CLASSIFICATION, MISSED]
    assert analysis.gt_det.tolist() == [0, 3, 2, -1]
    assert analysis.counts == {kind: 1 for kind in ERROR_TYPES}
    # class 2 has one object and no detection; fixing the classification error makes it class 2's
    # true positive
    assert analysis.class_ap[1] == 0.0 and analysis.class_dap["classification"][1] == 1.0
    # the localization error points at an object already found, so its fix removes it; it ranks below
    # class 1's last true positive, so nothing is gained
    assert analysis.dap["localization"] == 0.0 and analysis.dap["missed"] > 0
    assert_same_as_tidecv(problem)


def test_exact_ties_follow_tidecv():
    # equal IoU with two objects: the first in file order is taken (numpy's argmax in tidecv; COCO
    # takes the last), so the second detection, which overlaps only object 0, finds nothing
    problem = one_image_problem(
        gt_boxes=[[0, 0, 100, 100], [50, 0, 150, 100]],
        gt_labels=[1, 1],
        det_boxes=[[25, 0, 125, 100], [0, 0, 90, 100]],
        det_labels=[1, 1],
        det_scores=[0.9, 0.8],
        num_classes=1,
    )
    analysis = assert_same_as_tidecv(problem)
    assert analysis.det_gt[0] == 0 and analysis.det_error[1] == DUPLICATE
    # IoU exactly 0.5 with an object already found: localization (tidecv tests IoU <= t_f), not duplicate
    problem = one_image_problem(
        [[0, 0, 100, 100]], [1], [[0, 0, 100, 100], [0, 0, 50, 100]], [1, 1], [0.9, 0.8], 1
    )
    assert assert_same_as_tidecv(problem).det_error.tolist() == [TRUE_POSITIVE, LOCALIZATION]
    # a detection covering a crowd region by exactly 0.5 of its own area is not inside it (tidecv: > t_f)
    problem = one_image_problem(
        [[10, 0, 40, 10], [300, 300, 310, 310]], [1, 1], [[0, 0, 20, 10]], [1], [0.9], 1, crowd=[True, False]
    )
    assert assert_same_as_tidecv(problem).det_ignored.tolist() == [False]


def test_crowd_region_absorbs_and_ignored_errors_still_fix():
    # a detection inside a crowd region of its class is left out of the AP, but tidecv still types
    # it, and as the best localization error of an unfound object its fix adds a true positive
    problem = one_image_problem(
        gt_boxes=[[0, 0, 200, 200], [0, 0, 60, 60]],
        gt_labels=[1, 1],
        crowd=[True, False],
        det_boxes=[[0, 0, 40, 40], [150, 150, 190, 190]],
        det_labels=[1, 1],
        det_scores=[0.9, 0.8],
        num_classes=1,
    )
    analysis = analyze_errors(problem)
    assert analysis.det_ignored.tolist() == [True, True]
    assert analysis.det_error.tolist() == [LOCALIZATION, BACKGROUND]
    assert analysis.gt_error.tolist() == [IGNORED, LOCALIZATION]
    assert analysis.ap == 0.0 and analysis.dap["localization"] == 1.0
    assert_same_as_tidecv(problem)


def test_detections_beyond_the_limit_are_not_evaluated():
    boxes = [[0, 0, 10 + k, 10 + k] for k in range(6)]
    problem = one_image_problem(
        [[0, 0, 10, 10]], [1], boxes, [1] * 6, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], num_classes=1
    )
    analysis = analyze_errors(problem, max_detections=3)
    assert (analysis.det_error[:3] == NOT_EVALUATED).all() and (analysis.det_error[3:] != NOT_EVALUATED).all()
    assert_same_as_tidecv(problem, max_detections=3)


def test_bad_thresholds_are_refused():
    problem = one_image_problem([[0, 0, 10, 10]], [1], [[0, 0, 10, 10]], [1], [0.5])
    with pytest.raises(ValueError, match="background_iou"):
        analyze_errors(problem, foreground_iou=0.3, background_iou=0.5)
    with pytest.raises(ValueError, match="background_iou"):
        analyze_errors(problem, background_iou=0.0)


def random_problem(seed: int, num_images: int = 30, num_classes: int = 4) -> DetectionProblem:
    """Crowded random images: jittered and class-swapped copies of the objects, duplicates and
    background boxes, tied scores, crowd and difficult objects."""
    rng = np.random.default_rng(seed)
    predictions, targets = [], []
    for image in range(num_images):
        count = int(rng.integers(0, 9))
        corners = rng.uniform(0, 300, (count, 2))
        gt_boxes = np.concatenate([corners, corners + rng.uniform(8, 150, (count, 2))], axis=1)
        gt_labels = rng.integers(1, num_classes + 1, count)
        boxes, labels = [], []
        for _ in range(int(rng.integers(0, 25))):
            if count and rng.random() < 0.75:
                target = int(rng.integers(count))
                size = gt_boxes[target, 2:] - gt_boxes[target, :2]
                box = gt_boxes[target] + rng.normal(0, 0.15, 4) * np.tile(size, 2)
                box[2:] = np.maximum(box[2:], box[:2] + 1)
                label = gt_labels[target] if rng.random() < 0.8 else rng.integers(1, num_classes + 1)
            else:
                corner = rng.uniform(0, 350, 2)
                box, label = (
                    np.concatenate([corner, corner + rng.uniform(5, 100, 2)]),
                    rng.integers(1, num_classes + 1),
                )
            boxes.append(box)
            labels.append(label)
        predictions.append(
            {
                "boxes": np.array(boxes).reshape(-1, 4),
                "labels": np.array(labels, int),
                "scores": np.round(rng.random(len(boxes)), 2),
            }
        )
        targets.append(
            {
                "boxes": gt_boxes,
                "labels": gt_labels,
                "iscrowd": rng.random(count) < 0.05,
                "difficult": rng.random(count) < 0.05,
                "image_id": image,
            }
        )
    return problem_from_targets(predictions, targets, [f"class{k}" for k in range(1, num_classes + 1)])


@pytest.mark.parametrize("seed", range(4))
def test_equal_to_tidecv_on_random_problems(seed):
    assert_same_as_tidecv(random_problem(seed))


def filtered(problem: DetectionProblem, keep: np.ndarray) -> DetectionProblem:
    """The problem with only the detections ``keep`` (bool ``[D]``)."""
    return DetectionProblem(
        **{
            **problem.__dict__,
            "det_image": problem.det_image[keep],
            "det_category": problem.det_category[keep],
            "det_boxes": problem.det_boxes[keep],
            "det_scores": problem.det_scores[keep],
        }
    )


def perfect_problem(problem: DetectionProblem) -> DetectionProblem:
    """Every object found once, exactly, by a detection of its class."""
    return DetectionProblem(
        **{
            **problem.__dict__,
            "det_image": problem.gt_image.copy(),
            "det_category": problem.gt_category.copy(),
            "det_boxes": problem.gt_boxes.copy(),
            "det_scores": np.linspace(1, 0.5, len(problem.gt_category)),
        }
    )


def test_perfect_predictions_give_a_diagonal_matrix():
    problem = random_problem(0)
    problem.gt_crowd[:] = False
    problem.gt_difficult[:] = False
    matrix = confusion_matrix(perfect_problem(problem), score_threshold=0.0).matrix
    num_classes = problem.num_classes
    np.testing.assert_array_equal(matrix, np.diag(np.diag(matrix)))
    assert matrix[num_classes].sum() == 0 and matrix[:, num_classes].sum() == 0
    np.testing.assert_array_equal(
        np.diag(matrix)[:num_classes], np.bincount(problem.gt_category, minlength=num_classes)
    )
    analysis = analyze_errors(perfect_problem(problem))
    assert analysis.ap == pytest.approx(1.0) and all(value == 0 for value in analysis.dap.values())


@pytest.mark.parametrize(
    ("seed", "score_threshold", "iou_threshold"), [(1, 0.3, 0.5), (2, 0.0, 0.5), (3, 0.55, 0.7)]
)
def test_confusion_matrix_true_positives_are_the_coco_evaluators(seed, score_threshold, iou_threshold):
    problem = random_problem(seed, num_images=40)
    matrix = confusion_matrix(problem, score_threshold, iou_threshold).matrix
    kept = filtered(problem, problem.det_scores >= score_threshold)
    coco = evaluate_coco(kept, max_detections=10_000, iou_thresholds=np.array([iou_threshold]))
    counted = ~(problem.gt_crowd | problem.gt_difficult)
    num_gt = np.bincount(problem.gt_category[counted], minlength=problem.num_classes)
    recall = coco.recall[0, :, 0, -1]  # [K], final recall at the one threshold, area "all"
    has_gt = num_gt > 0
    np.testing.assert_array_equal(
        np.diag(matrix)[: problem.num_classes][has_gt], np.round(recall[has_gt] * num_gt[has_gt])
    )
    # every counted object is in its row once
    np.testing.assert_array_equal(matrix[: problem.num_classes].sum(axis=1), num_gt)
    assert matrix[problem.num_classes, problem.num_classes] == 0
    # off the diagonal: detections of one class that overlap an object of another class
    assert matrix[: problem.num_classes, : problem.num_classes].sum() > np.trace(matrix)


def test_f1_curves_agree_with_the_confusion_matrix():
    problem = random_problem(5, num_images=40)
    curves = f1_curves(problem, iou_threshold=0.5)
    index = int(np.searchsorted(curves.confidences, 0.42))
    matrix = confusion_matrix(problem, float(curves.confidences[index]), 0.5).matrix
    num_classes = problem.num_classes
    true_positives = np.diag(matrix)[:num_classes]
    np.testing.assert_allclose(
        curves.class_recall[:, index], true_positives / matrix[:num_classes].sum(axis=1)
    )
    np.testing.assert_allclose(
        curves.class_precision[:, index], true_positives / matrix[:, :num_classes].sum(axis=0)
    )
    assert curves.f1[curves.best_index] == curves.f1.max()
    at_best = curves.at_best()
    expected_f1 = 2 * at_best["precision"] * at_best["recall"] / (at_best["precision"] + at_best["recall"])
    np.testing.assert_allclose(at_best["f1"], expected_f1)
    # no threshold beats each class's own best
    assert (
        curves.class_f1.max(axis=1) == curves.class_f1[np.arange(num_classes), curves.class_best_index]
    ).all()


def test_report_files_are_written(tmp_path):
    from PIL import Image

    problem = random_problem(7, num_images=12)
    image_paths = {}
    for image_id in problem.image_ids:
        path = tmp_path / "images" / f"{image_id}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (480, 420), (90, 90, 90)).save(path)
        image_paths[image_id] = path
    out = tmp_path / "report"
    report = write_error_report(problem, out, image_paths=image_paths, gallery_size=5, progress=False)
    for name in ("errors.json", "errors.md", "errors.png", "confusion_matrix.png", "f1_confidence.png"):
        assert (out / name).stat().st_size > 0, name
    written = json.loads((out / "errors.json").read_text())
    analysis = analyze_errors(problem)
    assert written["ap"] == pytest.approx(analysis.ap)
    assert written["dap"] == pytest.approx(analysis.dap)
    assert written["counts"] == analysis.counts
    assert len(written["per_class"]) == problem.num_classes
    assert set(written["per_size"]) == set(SIZE_RANGES)
    matrix = np.array(written["confusion_matrix"]["matrix"])
    assert matrix.shape == (problem.num_classes + 1,) * 2
    assert written["confusion_matrix"]["score_threshold"] == pytest.approx(
        written["operating_point"]["best_confidence"]
    )
    for kind in ERROR_TYPES:
        examples = written["galleries"][kind]["examples"]
        assert len(examples) == min(
            5,
            analysis.counts[kind]
            if kind == "missed"
            else int(((analysis.det_error == ERROR_TYPES.index(kind)) & ~analysis.det_ignored).sum()),
        )
        if examples:
            with Image.open(out / f"gallery_{kind}.jpg") as gallery:
                assert gallery.width > 200
    scores = [example["score"] for example in written["galleries"]["background"]["examples"]]
    assert scores == sorted(scores, reverse=True)  # the worst (highest-scoring) first
    areas = [example["area"] for example in written["galleries"]["missed"]["examples"]]
    assert areas == sorted(areas, reverse=True)
    markdown = (out / "errors.md").read_text()
    assert "| dAP |" in markdown and "## Confusion matrix" in markdown and "gallery_missed.jpg" in markdown
    assert report["files"]["errors_json"] == out / "errors.json"


def test_report_without_images_and_missing_image(tmp_path):
    problem = random_problem(8, num_images=4)
    report = write_error_report(problem, tmp_path / "plain", progress=False)
    assert report["galleries"] == {} and not list((tmp_path / "plain").glob("gallery_*"))
    with pytest.raises(ValueError, match="image_paths has no path"):
        write_error_report(problem, tmp_path / "partial", image_paths={}, progress=False)


def test_analysis_and_report_load_no_torch(tmp_path):
    script = (
        "import sys\n"
        "import numpy as np\n"
        "from detlab.eval import analyze_errors, problem_from_targets, write_error_report\n"
        "target = {'boxes': np.array([[0.0, 0, 10, 10]]), 'labels': np.array([1]), 'image_id': 1}\n"
        "prediction = {'boxes': np.array([[0.0, 0, 9, 10]]), 'labels': np.array([1]), 'scores': np.array([0.5])}\n"
        "problem = problem_from_targets([prediction], [target], ['thing'])\n"
        f"write_error_report(problem, {str(tmp_path)!r}, progress=False)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "errors.json").is_file()
