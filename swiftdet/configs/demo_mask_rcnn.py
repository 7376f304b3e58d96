"""The demo: a small Mask R-CNN (ResNet-18-FPN with BatchNorm, trained from scratch) that learns the
synthetic shapes dataset on a CPU in minutes. ``swiftdet demo`` fills in the dataset paths."""
from swiftdet.config.schema import Config
from swiftdet.configs._base import rcnn_fpn
from swiftdet.data.synth import SYNTH_SHAPES


def config() -> Config:
    cfg = rcnn_fpn(mask=True, depth=18)
    m = cfg.model
    m.num_classes = len(SYNTH_SHAPES)
    # No pretrained weights offline: train every layer, with BatchNorm so training from scratch is stable.
    m.backbone.norm = "BN"
    m.backbone.freeze_at = 0
    m.fpn.out_channels = 64
    m.fpn.norm = "BN"
    # 256-pixel images with shapes of 12..115 pixels: anchors one octave smaller than COCO's.
    m.rpn.anchors.sizes = ((16.0,), (32.0,), (64.0,), (128.0,), (256.0,))
    m.rpn.batch_size_per_image = 128
    m.rpn.pre_nms_topk_train, m.rpn.post_nms_topk_train = 600, 300
    m.rpn.pre_nms_topk_test, m.rpn.post_nms_topk_test = 300, 100
    m.box_head.fc_dim = 256
    m.box_head.batch_size_per_image = 64
    m.box_head.positive_fraction = 0.5  # few objects per image: learn from more positives per step
    m.box_head.detections_per_image = 50
    m.mask_head.conv_dim = 64
    m.mask_head.num_convs = 2

    cfg.input.min_size_train = (224, 256, 288)
    cfg.input.max_size_train = 512
    cfg.input.min_size_test = 256
    cfg.input.max_size_test = 512
    cfg.data.train.json = "swiftdet_demo/data/annotations/instances_train.json"
    cfg.data.train.image_root = "swiftdet_demo/data"
    cfg.data.test.json = "swiftdet_demo/data/annotations/instances_val.json"
    cfg.data.test.image_root = "swiftdet_demo/data"
    cfg.data.num_workers = 1

    s = cfg.solver
    s.base_lr = 0.02
    s.ims_per_batch = 4
    s.reference_batch_size = 4
    # Sized for ~8 minutes on 2 CPU cores (about 1 s per iteration of 4 images at 256 pixels).
    s.max_iter = 450
    s.steps = (350, 420)
    s.warmup_iters = 50
    s.weight_decay = 1e-4
    s.checkpoint_period = 150
    s.keep_last = 1
    s.log_period = 20
    cfg.test.eval_period = 0
    cfg.test.ims_per_batch = 4
    cfg.test.best_metric = "segm/AP"
    cfg.output_dir = "swiftdet_demo"
    return cfg
