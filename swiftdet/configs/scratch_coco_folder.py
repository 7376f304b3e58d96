"""Train Mask R-CNN ResNet-FPN from scratch (no pretrained weights) on your own COCO-format folder.

The same data fields as ``finetune_coco_folder``::

    swiftdet train scratch_coco_folder \\
        data.train.json=my_data/annotations/train.json data.train.image_root=my_data \\
        data.test.json=my_data/annotations/val.json data.test.image_root=my_data \\
        --output runs/my_data_scratch

Every layer trains (``freeze_at=0``) and normalises with GroupNorm, whose statistics do not depend
on the batch, so small per-GPU batches of own-data runs train as well as large ones (detectron2's
from-scratch recipes use it for the same reason; ``model.backbone.norm=BN model.fpn.norm=BN
model.mask_head.norm=BN`` for BatchNorm at 8 or more images per process).

``model.backbone.depth`` defaults to 18: from scratch on a dataset of your own, the time to train
limits more than the backbone's capacity, and ResNet-18 trains about twice as fast as ResNet-50 and
can be tried on a CPU; set ``model.backbone.depth=50`` for large datasets and long schedules.
Training from scratch needs many more iterations than fine-tuning: the steps are fractions of
``solver.max_iter`` (``solver.steps_fraction``), so ``solver.max_iter=...`` alone rescales them.
"""
from swiftdet.config.schema import Config
from swiftdet.configs._base import rcnn_fpn


def config() -> Config:
    cfg = rcnn_fpn(mask=True, depth=18)
    cfg.data.train.json = cfg.data.train.image_root = ""
    cfg.data.test.json = cfg.data.test.image_root = ""
    cfg.model.num_classes = 0  # from data.train's categories (model.num_classes=N to state it)
    cfg.input.min_size_train = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
    m = cfg.model
    m.backbone.norm = "GN"
    m.backbone.freeze_at = 0
    m.fpn.norm = "GN"
    m.mask_head.norm = "GN"
    s = cfg.solver
    s.ims_per_batch = 8
    s.base_lr = 0.02  # for reference_batch_size 16: 0.01 at batch 8
    s.max_iter = 20000
    # detectron2's from-scratch schedules drop the rate at about 78% and 93% of the run.
    s.steps = ()
    s.steps_fraction = (0.78, 0.93)
    s.warmup_iters = 1000
    s.checkpoint_period = 2000
    s.keep_last = 2
    cfg.test.eval_period = 2000
    cfg.test.best_metric = "segm/AP"
    cfg.output_dir = "output/scratch"
    return cfg
