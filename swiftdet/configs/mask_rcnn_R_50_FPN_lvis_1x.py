"""Mask R-CNN R50-FPN on LVIS v1, detectron2's recipe (configs/LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml).

1203 classes, repeat-factor sampling with threshold 0.001 (an image of a rare category is seen up
to sqrt(0.001 / f) times as often), training images of shortest edge 640..800 (step 32), a score
threshold of 0.0001 and 300 detections per image at test time (LVIS's evaluation takes up to 300),
evaluated by LVIS's federated AP (with APr / APc / APf)::

    swiftdet train mask_rcnn_R_50_FPN_lvis_1x model.backbone.weights=resnet50.pth --output runs/lvis

detectron2 calls this schedule "1x" although it is 180k iterations of 16 images (steps at 120k and
160k, about 29 LVIS epochs): the values here are the yaml's. The data are read from
``datasets/lvis/lvis_v1_{train,val}.json`` with COCO 2017's images under ``datasets/coco``
(``train2017/``, ``val2017/``: LVIS file names come from each image's coco_url). The classifier is
the usual softmax cross-entropy, as detectron2's file has it (``mask_rcnn_R_50_FPN_lvis_1x_fed``
trains it with the sigmoid and federated losses of later LVIS work). The model is swiftdet's own (torchvision-style) R50-FPN
Mask R-CNN.
"""
from swiftdet.config.schema import Config
from swiftdet.configs._base import rcnn_fpn


def config() -> Config:
    cfg = rcnn_fpn(mask=True)
    for spec, split in ((cfg.data.train, "train"), (cfg.data.test, "val")):
        spec.format = "lvis"
        spec.json = f"datasets/lvis/lvis_v1_{split}.json"
        spec.image_root = "datasets/coco"
    cfg.data.sampler = "repeat_factor"
    cfg.data.repeat_threshold = 0.001
    cfg.model.num_classes = 1203
    cfg.model.box_head.score_thresh = 0.0001
    cfg.model.box_head.detections_per_image = 300
    cfg.input.min_size_train = (640, 672, 704, 736, 768, 800)
    cfg.solver.max_iter = 180000
    cfg.solver.steps = (120000, 160000)
    cfg.test.best_metric = "segm/AP"
    cfg.output_dir = "output/mask_rcnn_R_50_FPN_lvis_1x"
    return cfg
