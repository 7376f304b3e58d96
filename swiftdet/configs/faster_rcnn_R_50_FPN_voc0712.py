"""Faster R-CNN, ResNet-50-FPN on Pascal VOC: trained on VOC2007 + VOC2012 trainval, evaluated on VOC2007
test by VOC2007's 11-point mAP at IoU 0.5 (detectron2's PascalVOC-Detection/faster_rcnn_R_50_FPN.yaml:
20 classes, shortest edges 480..800 in steps of 32, max 1333, 800 at test time, 18k iterations at
batch 16 (~17 epochs), lr 0.02 dropped x0.1 at 12k and 16k, a 100-iteration warm-up).

The VOC year folders are expected under ./datasets (``VOCdevkit/VOC2007`` and ``VOC2012``, each with
Annotations/, ImageSets/Main/ and JPEGImages/); give yours on the command line, with ImageNet weights
for the backbone (its frozen BatchNorm and stages need pretrained ones)::

    swiftdet train faster_rcnn_R_50_FPN_voc0712 model.backbone.weights=resnet50_imagenet.pth \\
        data.train.roots=[VOCdevkit/VOC2007,VOCdevkit/VOC2012] data.test.roots=[VOCdevkit/VOC2007]

``test.voc_metric=area`` reports the VOC2010+ area AP instead; ``swiftdet voc-eval`` computes either
from a results file.
"""
from swiftdet.config.schema import Config
from swiftdet.configs._base import rcnn_fpn


def voc0712(cfg: Config) -> Config:
    """VOC2007+2012 trainval for training, VOC2007 test for evaluation (11-point mAP), detectron2's schedule."""
    for spec in (cfg.data.train, cfg.data.test):
        spec.json = spec.image_root = ""
        spec.format = "voc"
    cfg.data.train.roots, cfg.data.train.split = ("datasets/VOC2007", "datasets/VOC2012"), "trainval"
    cfg.data.test.roots, cfg.data.test.split = ("datasets/VOC2007",), "test"
    cfg.model.num_classes = 20
    cfg.input.min_size_train = tuple(range(480, 801, 32))
    cfg.input.max_size_train = 1333
    cfg.input.min_size_test = 800
    cfg.input.max_size_test = 1333
    s = cfg.solver
    s.ims_per_batch = 16
    s.max_iter, s.steps = 18000, (12000, 16000)
    s.warmup_iters = 100
    cfg.test.voc_metric = "voc07"
    cfg.test.best_metric = "bbox/mAP"
    return cfg


def config() -> Config:
    cfg = voc0712(rcnn_fpn())
    cfg.solver.base_lr = 0.02
    return cfg
