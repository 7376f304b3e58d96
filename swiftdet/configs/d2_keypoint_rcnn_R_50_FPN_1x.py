"""detectron2's Keypoint R-CNN R50-FPN 1x (configs/COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml): COCO
persons and their 17 keypoints, in detectron2's conventions."""
from swiftdet.config.schema import Config
from swiftdet.configs._detectron2 import d2_rcnn_fpn


def config() -> Config:
    cfg = d2_rcnn_fpn()
    cfg.data.train.json = "datasets/coco/annotations/person_keypoints_train2017.json"
    cfg.data.test.json = "datasets/coco/annotations/person_keypoints_val2017.json"
    cfg.model.num_classes = 1
    cfg.model.keypoint_on = True
    cfg.model.rpn.post_nms_topk_train = 1500
    cfg.model.box_head.smooth_l1_beta = 0.5
    cfg.test.best_metric = "keypoints/AP"
    return cfg
