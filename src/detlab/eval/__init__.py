"""Evaluation: VOC AP, COCO mAP, ImageNet-style localization error, proposal recall, reports and plots."""

from detlab.eval.proposals import proposal_recall

__all__ = ["proposal_recall"]
