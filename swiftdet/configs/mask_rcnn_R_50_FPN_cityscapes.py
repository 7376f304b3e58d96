"""Mask R-CNN R50-FPN on Cityscapes fine instances, detectron2's recipe (configs/Cityscapes/mask_rcnn_R_50_FPN.yaml).

The 8 instance classes (person, rider, car, truck, bus, train, motorcycle, bicycle; category ids
= Cityscapes label ids), training images of shortest edge 800..1024 (step 32, one per image) up to
2048, testing at 1024 / 2048, 24k iterations of 8 images at lr 0.01 with one step at 18k, evaluated
every 8k iterations by cityscapesscripts (``pip install -e ".[cityscapes]"``)::

    swiftdet train mask_rcnn_R_50_FPN_cityscapes model.weights=mask_rcnn_R_50_FPN_3x_coco.pth --output runs/cityscapes

The data are read from ``datasets/cityscapes`` (``leftImg8bit/`` and ``gtFine/``); override
``data.train.roots=[...]`` / ``data.test.roots=[...]`` for another place. detectron2 starts from
its COCO Mask R-CNN 3x model ("for better, more stable performance"): give a COCO Mask R-CNN as
``model.weights`` (its class-dependent layers start fresh), or ImageNet weights as
``model.backbone.weights``. The model is swiftdet's own (torchvision) R50-FPN Mask R-CNN.
"""
from swiftdet.config.schema import Config
from swiftdet.configs._base import rcnn_fpn


def config() -> Config:
    cfg = rcnn_fpn(mask=True)
    for spec, split in ((cfg.data.train, "train"), (cfg.data.test, "val")):
        spec.format = "cityscapes"
        spec.json = spec.image_root = ""
        spec.roots = ("datasets/cityscapes",)
        spec.split = split
    cfg.model.num_classes = 8
    cfg.input.min_size_train = tuple(range(800, 1024 + 1, 32))
    cfg.input.max_size_train = 2048
    cfg.input.min_size_test = 1024
    cfg.input.max_size_test = 2048
    s = cfg.solver
    s.ims_per_batch = s.reference_batch_size = 8
    s.base_lr = 0.01
    s.max_iter = 24000
    s.steps = (18000,)
    cfg.test.eval_period = 8000
    cfg.test.best_metric = "segm/AP"
    cfg.output_dir = "output/mask_rcnn_R_50_FPN_cityscapes"
    return cfg
