"""Evaluation: VOC AP, COCO mAP, ImageNet-style localization error, proposal recall, reports and plots.

The evaluators follow one contract: ``update(predictions, targets)`` per batch, then ``compute()``.
Plotting (matplotlib) is imported only when a plot is drawn.
"""

from detlab.eval.coco import COCOEvaluator, CocoResult, evaluate_coco, evaluate_coco_files
from detlab.eval.evaluate import evaluate_detections, to_coco_results
from detlab.eval.localization import localization_metrics
from detlab.eval.problem import (
    DetectionProblem,
    problem_from_coco,
    problem_from_coco_files,
    problem_from_targets,
)
from detlab.eval.proposals import proposal_recall
from detlab.eval.report import format_console_table, format_markdown_table, write_report
from detlab.eval.voc import VOCEvaluator, VocResult, evaluate_voc, voc_average_precision

__all__ = [
    "COCOEvaluator",
    "CocoResult",
    "DetectionProblem",
    "VOCEvaluator",
    "VocResult",
    "evaluate_coco",
    "evaluate_coco_files",
    "evaluate_detections",
    "format_console_table",
    "format_markdown_table",
    "evaluate_voc",
    "localization_metrics",
    "problem_from_coco",
    "problem_from_coco_files",
    "problem_from_targets",
    "proposal_recall",
    "to_coco_results",
    "voc_average_precision",
    "write_report",
]
