"""Fine-tune Mask R-CNN R50-FPN on your own COCO-format folder.

Give the data on the command line, and the weights to start from (the number of classes comes from
the training json's categories; ``model.num_classes=N`` states it, and a mismatch is refused)::

    swiftdet train finetune_coco_folder \\
        data.train.json=my_data/annotations/train.json data.train.image_root=my_data \\
        data.test.json=my_data/annotations/val.json data.test.image_root=my_data \\
        model.weights=mask_rcnn_R_50_FPN_3x_coco.pth --output runs/my_data

``model.weights`` is a swiftdet model file (e.g. converted COCO weights): every layer whose shape
fits is loaded, the class-dependent output layers start fresh. Without it, set
``model.backbone.weights`` to ImageNet ResNet-50 weights at least: with neither, training refuses to
start (its frozen BatchNorm and frozen stages need pretrained weights); ``scratch_coco_folder`` trains
without any. Boxes only: ``model.mask_on=false``.

The learning-rate steps are fractions of ``solver.max_iter`` (``solver.steps_fraction``), so
``solver.max_iter=...`` alone rescales the schedule; a warm-up longer than the run is cut to it.
``solver.max_minutes=...`` ends training cleanly (checkpoint, evaluation) after that many minutes.
"""
from swiftdet.config.schema import Config
from swiftdet.configs._base import rcnn_fpn


def config() -> Config:
    cfg = rcnn_fpn(mask=True)
    cfg.data.train.json = cfg.data.train.image_root = ""
    cfg.data.test.json = cfg.data.test.image_root = ""
    cfg.model.num_classes = 0  # from data.train's categories (model.num_classes=N to state it)
    cfg.input.min_size_train = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
    s = cfg.solver
    # A short schedule at a small batch: fine-tuning moves pretrained weights only a little.
    s.ims_per_batch = 4
    s.base_lr = 0.02  # for reference_batch_size 16: 0.005 at batch 4
    s.max_iter = 3000
    # As fractions, so that solver.max_iter=... alone lengthens or shortens the whole schedule (2000, 2700 here).
    s.steps = ()
    s.steps_fraction = (2 / 3, 0.9)
    s.warmup_iters = 200
    s.checkpoint_period = 500
    s.keep_last = 2
    cfg.test.eval_period = 500
    cfg.test.best_metric = "segm/AP"
    cfg.output_dir = "output/finetune"
    return cfg
