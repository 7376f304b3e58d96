"""RPN alone (detectron2's ProposalNetwork, COCO-Detection/rpn_R_50_FPN_1x.yaml) in torchvision's
conventions, like the other un-prefixed configs (``d2_rpn_R_50_FPN_1x`` is the same model in detectron2's):
ResNet-50-FPN and the RPN, its proposals the output, up to 2000 per image at test time (that yaml's
POST_NMS_TOPK_TEST), evaluated by detectron2's proposal AR (``box_proposals/AR@100``, ``AR@1000``,
``ARs/ARm/ARl@1000``). Proposal scores are the RPN's objectness probabilities here (logits in the d2 config)."""
from swiftdet.config.schema import Config
from swiftdet.configs._base import rcnn_fpn, schedule


def config() -> Config:
    cfg = schedule(rcnn_fpn(), 1)
    cfg.model.arch = "rpn"
    cfg.model.rpn.post_nms_topk_test = 2000
    cfg.test.best_metric = "box_proposals/AR@1000"
    return cfg
