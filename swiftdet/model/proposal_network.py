"""RPN-only model (``model.arch='rpn'``, detectron2's ProposalNetwork): backbone, FPN and RPN inside
the detector shell, whose detections are the RPN's proposals.

The raw output (``core``) follows the detector contract: per image up to
``model.rpn.post_nms_topk_test`` proposals (2000 in rpn_R_50_FPN_1x), ``boxes`` clipped to the
image, ``scores`` the objectness of each proposal and ``labels`` all 0 (a proposal has no class).
The scores are what the RPN ranks by: LOGITS under ``model.convention='detectron2'`` (detectron2's
``objectness_logits``), sigmoid PROBABILITIES under 'torchvision'. Training gives the RPN losses only.
``swiftdet eval`` reports detectron2's proposal AR (swiftdet.evaluation.proposals) for it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from swiftdet.config.schema import ModelConfig
from swiftdet.model.backbone import FPN, MobileNetV3, ResNet
from swiftdet.model.detector import Detector, shell_settings
from swiftdet.model.rpn import RPN
from swiftdet.structures import ImageList, Instances

__all__ = ["ProposalNetwork", "build_proposal_network"]


class ProposalNetwork(Detector):
    """Backbone, FPN and RPN; the proposals are the detections (module docstring).

    Args:
        backbone: bottom-up network; fpn: its pyramid; rpn: proposals from the pyramid.
        num_classes: the training data's classes (only to check the targets' labels; proposals are class-agnostic).
        **shell: the :class:`Detector` settings.
    """

    def __init__(self, *, backbone: ResNet | MobileNetV3, fpn: FPN, rpn: RPN, num_classes: int, **shell):
        super().__init__(num_classes=num_classes, **shell)
        self.backbone = backbone
        self.fpn = fpn
        self.rpn = rpn

    @property
    def score_thresh(self) -> float:
        """The RPN's threshold on its objectness before NMS."""
        return self.rpn.score_thresh

    @score_thresh.setter
    def score_thresh(self, value: float) -> None:
        self.rpn.score_thresh = value

    def core(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) batch -> boxes (N, 4), scores (N,) objectness, labels (N,) zeros, num_detections (B,)."""
        features = self.fpn(self.backbone(images), consume=True)
        (proposals, scores), _ = self.rpn(images, image_sizes, features, with_scores=True)
        if isinstance(proposals, Tensor):  # traced: (P, 5) rois grouped by image
            image_index = proposals[:, 0].to(torch.int64)
            counts = (image_index[None, :] == torch.arange(images.shape[0], device=images.device)[:, None]).sum(dim=1)
            boxes = proposals[:, 1:]
        else:
            counts = torch.tensor([len(p) for p in proposals], dtype=torch.int64, device=images.device)
            boxes, scores = torch.cat(proposals), torch.cat(scores)
        return {"boxes": boxes, "scores": scores, "labels": torch.zeros_like(scores, dtype=torch.int64),
                "num_detections": counts}

    def losses(self, images: ImageList, targets: list[Instances]) -> dict[str, Tensor]:
        sizes = torch.tensor(images.image_sizes, dtype=torch.int64, device=images.tensor.device).reshape(-1, 2)
        features = self.fpn(self.backbone(images.tensor), consume=True)
        _, losses = self.rpn(images.tensor, sizes, features, targets)
        return losses


def build_proposal_network(cfg: ModelConfig, size_divisibility: int = 32) -> ProposalNetwork:
    """The RPN-only model ``cfg`` describes (``arch='rpn'``, FPN layout), randomly initialised."""
    cfg.validate()
    from swiftdet.model.rcnn import build_proposal_stage

    backbone, fpn, _, rpn = build_proposal_stage(cfg)
    return ProposalNetwork(backbone=backbone, fpn=fpn, rpn=rpn, num_classes=cfg.num_classes,
                           **shell_settings(cfg, size_divisibility))
