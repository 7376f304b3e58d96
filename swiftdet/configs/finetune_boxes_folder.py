"""The small-dataset recipe for boxes: fine-tune Faster R-CNN R50-FPN on a few hundred labelled images.

Boxes are what VOC and YOLO datasets hold (``swiftdet convert-data voc|yolo|labelme|cvat`` makes the
COCO json); for polygons use ``finetune_coco_folder`` (Mask R-CNN), which this recipe is, with the
mask head off and the best checkpoint chosen by box AP::

    swiftdet train finetune_boxes_folder \\
        data.train.json=my_data/train.json data.train.image_root=my_data/images/train \\
        data.test.json=my_data/val.json data.test.image_root=my_data/images/val \\
        model.weights=faster_rcnn_coco.pth --output runs/my_data

``model.weights``: a COCO-trained model (e.g. torchvision's Faster R-CNN converted with ``swiftdet
convert torchvision``); every layer whose shape fits is loaded, the class-dependent output layers
start fresh. With a few hundred images, starting from COCO weights is what makes the result usable:
it is required here (or ``model.backbone.weights``, ImageNet weights, at the least), since the
frozen stages and frozen BatchNorm of the backbone would stay random; ``scratch_coco_folder`` is
the recipe without any pretrained weights.

The schedule: 3000 iterations of 4 images, about 40 passes over 300 images; scale
``solver.max_iter`` with the dataset (about 40 x images / 4), the learning-rate steps follow it
(fractions of ``max_iter``). Evaluation and a checkpoint every 500 iterations, the best by box AP
kept as ``checkpoints/best.pth``; ``solver.max_minutes=...`` ends the run cleanly earlier.
"""
from swiftdet.config.schema import Config
from swiftdet.configs import finetune_coco_folder


def config() -> Config:
    cfg = finetune_coco_folder.config()
    cfg.model.mask_on = False
    cfg.test.best_metric = "bbox/AP"
    cfg.output_dir = "output/finetune_boxes"
    return cfg
