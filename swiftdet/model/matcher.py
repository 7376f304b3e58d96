"""Assigning predictions to ground truth, and sampling a balanced training subset.

Both follow torchvision's ``det_utils.Matcher`` and ``BalancedPositiveNegativeSampler``.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BalancedPositiveNegativeSampler", "Matcher"]


class Matcher:
    """Match each prediction (column) to its best ground truth (row) of an IoU matrix.

    Returns (P,) int64: the matched ground-truth index, ``BELOW_LOW_THRESHOLD`` (-1) when the best IoU
    is below ``low`` (background), or ``BETWEEN_THRESHOLDS`` (-2) when it lies in [low, high)
    (ignored). With ``allow_low_quality_matches``, every ground truth also keeps the predictions
    with which it has its highest IoU (ties included), even below ``low``.
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False):
        if low_threshold > high_threshold:
            raise ValueError("Matcher: low_threshold must be <= high_threshold")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        """(G, P) IoU matrix -> (P,) matches. No ground truth: every prediction is background."""
        if match_quality_matrix.shape[0] == 0:
            return torch.full(
                (match_quality_matrix.shape[1],), self.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=match_quality_matrix.device
            )
        matched_vals, matches = match_quality_matrix.max(dim=0)
        all_matches = matches.clone() if self.allow_low_quality_matches else None
        below = matched_vals < self.low_threshold
        between = (matched_vals >= self.low_threshold) & (matched_vals < self.high_threshold)
        matches[below] = self.BELOW_LOW_THRESHOLD
        matches[between] = self.BETWEEN_THRESHOLDS
        if all_matches is not None:
            best_per_gt = match_quality_matrix.max(dim=1).values
            pred_inds = torch.nonzero(match_quality_matrix == best_per_gt[:, None])[:, 1]
            matches[pred_inds] = all_matches[pred_inds]
        return matches


class BalancedPositiveNegativeSampler:
    """Pick up to ``batch_size_per_image`` samples per image with at most ``positive_fraction`` positives.

    Input labels per image: >= 1 positive, 0 negative, -1 ignored. Negatives fill what positives
    leave. Selection is uniformly random (torch's global RNG).
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, labels: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per image (P_i,) bool masks of the sampled positives and sampled negatives."""
        pos_masks, neg_masks = [], []
        for lab in labels:
            positive = torch.nonzero(lab >= 1).squeeze(1)
            negative = torch.nonzero(lab == 0).squeeze(1)
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            pos_idx = positive[torch.randperm(positive.numel(), device=positive.device)[:num_pos]]
            neg_idx = negative[torch.randperm(negative.numel(), device=negative.device)[:num_neg]]
            pos_mask = torch.zeros_like(lab, dtype=torch.bool)
            neg_mask = torch.zeros_like(lab, dtype=torch.bool)
            pos_mask[pos_idx] = True
            neg_mask[neg_idx] = True
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks
