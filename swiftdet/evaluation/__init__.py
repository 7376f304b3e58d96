"""Evaluation: COCO box, mask and keypoint AP and proposal recall, equal to pycocotools, faster."""
from swiftdet.evaluation.coco import (CocoEvaluation, evaluate_coco, evaluate_proposals, format_metrics,
                                      run_coco_evaluation)

__all__ = ["CocoEvaluation", "evaluate_coco", "evaluate_proposals", "format_metrics", "run_coco_evaluation"]
