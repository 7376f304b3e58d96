"""Mask R-CNN R50-FPN on LVIS v1 with the sigmoid cross-entropy and federated loss of the box classifier.

``mask_rcnn_R_50_FPN_lvis_1x`` (detectron2's LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml,
softmax) with the classifier settings detectron2 gives its LVIS models in
``projects/ViTDet/configs/LVIS/mask_rcnn_vitdet_b_100ep.py`` (detectron2 has no R50-FPN yaml with
them): ``use_sigmoid_ce`` and ``use_fed_loss`` (50 classes per iteration, drawn by image count **
0.5), test score threshold 0.02 and 300 detections per image. Everything else (data, sampler,
schedule) is the softmax recipe's::

    swiftdet train mask_rcnn_R_50_FPN_lvis_1x_fed model.backbone.weights=resnet50.pth --output runs/lvis_fed

The class image counts come from data.train when training starts (how many training images hold
each class; LVIS's ``image_count``) and are saved in the checkpoints.
"""
from swiftdet.config.schema import Config
from swiftdet.configs.mask_rcnn_R_50_FPN_lvis_1x import config as lvis_config


def config() -> Config:
    cfg = lvis_config()
    cfg.model.box_head.cls_loss = "federated"
    cfg.model.box_head.fed_loss_num_classes = 50
    cfg.model.box_head.fed_loss_freq_weight_power = 0.5
    cfg.model.box_head.score_thresh = 0.02
    cfg.output_dir = "output/mask_rcnn_R_50_FPN_lvis_1x_fed"
    return cfg
