"""RetinaNet, ResNet-50-FPN on Pascal VOC: the data, resizing and schedule of faster_rcnn_R_50_FPN_voc0712
(VOC2007 + 2012 trainval, VOC2007 test by 11-point mAP, 18k iterations at batch 16, steps at 12k and
16k) with RetinaNet's learning rate 0.01 (detectron2's Base-RetinaNet.yaml)."""
from swiftdet.config.schema import Config
from swiftdet.configs._dense import retinanet_fpn
from swiftdet.configs.faster_rcnn_R_50_FPN_voc0712 import voc0712


def config() -> Config:
    cfg = voc0712(retinanet_fpn())
    cfg.solver.base_lr = 0.01
    return cfg
