"""Evaluation: VOC AP, COCO mAP, ImageNet-style localization error, keypoint PCK, proposal recall,
TIDE's error analysis (dAP per error type, confusion matrix, F1 against confidence), reports and plots.

The evaluators follow one contract: ``update(predictions, targets)`` per batch, then ``compute()``.
Plotting (matplotlib) is imported only when a plot is drawn.
"""

from detlab.eval.coco import COCOEvaluator, CocoResult, evaluate_coco, evaluate_coco_files
from detlab.eval.error_report import write_error_report
from detlab.eval.errors import (
    ConfusionMatrix,
    ErrorAnalysis,
    F1Curves,
    analyze_errors,
    confusion_matrix,
    f1_curves,
)
from detlab.eval.evaluate import evaluate_detections, to_coco_results
from detlab.eval.keypoints import KeypointEvaluator, keypoint_metrics
from detlab.eval.localization import LocalizationEvaluator, localization_metrics
from detlab.eval.problem import (
    DetectionProblem,
    problem_from_coco,
    problem_from_coco_files,
    problem_from_targets,
)
from detlab.eval.proposals import proposal_recall
from detlab.eval.report import format_console_table, format_markdown_table, write_report
from detlab.eval.results import coco_result_entries
from detlab.eval.voc import VOCEvaluator, VocResult, evaluate_voc, voc_average_precision

__all__ = [
    "COCOEvaluator",
    "CocoResult",
    "ConfusionMatrix",
    "DetectionProblem",
    "ErrorAnalysis",
    "F1Curves",
    "KeypointEvaluator",
    "LocalizationEvaluator",
    "VOCEvaluator",
    "VocResult",
    "analyze_errors",
    "coco_result_entries",
    "confusion_matrix",
    "evaluate_coco",
    "evaluate_coco_files",
    "evaluate_detections",
    "format_console_table",
    "format_markdown_table",
    "evaluate_voc",
    "f1_curves",
    "keypoint_metrics",
    "localization_metrics",
    "problem_from_coco",
    "problem_from_coco_files",
    "problem_from_targets",
    "proposal_recall",
    "to_coco_results",
    "voc_average_precision",
    "write_error_report",
    "write_report",
]
