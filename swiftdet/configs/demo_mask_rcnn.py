"""The demo: a small Mask R-CNN (ResNet-18-FPN with BatchNorm, trained from scratch) that learns the
synthetic shapes dataset on a CPU in minutes. ``swiftdet demo`` fills in the dataset paths and makes
the data at 128x128 pixels (``swiftdet.engine.demo.DEMO_IMAGE_SIZE``)."""
from swiftdet.config.schema import Config
from swiftdet.configs._base import rcnn_fpn
from swiftdet.data.synth import SYNTH_SHAPES

DEMO_SIZE = 128


def config() -> Config:
    cfg = rcnn_fpn(mask=True, depth=18)
    m = cfg.model
    m.num_classes = len(SYNTH_SHAPES)
    # No pretrained weights offline: train every layer, with BatchNorm so training from scratch is stable.
    m.backbone.norm = "BN"
    m.backbone.freeze_at = 0
    m.fpn.out_channels = 64
    m.fpn.norm = "BN"
    # Shapes of 12..57 pixels in 128-pixel images: anchors one octave smaller than COCO's.
    m.rpn.anchors.sizes = ((16.0,), (32.0,), (64.0,), (128.0,), (256.0,))
    m.rpn.batch_size_per_image = 128
    # A handful of objects per image: a few hundred proposals cover them.
    m.rpn.pre_nms_topk_train, m.rpn.post_nms_topk_train = 400, 256
    m.rpn.pre_nms_topk_test, m.rpn.post_nms_topk_test = 200, 100
    m.box_head.fc_dim = 256
    # At most 16 positive RoIs per image: the mask head runs on each, and with 32 it cost as much as
    # the backbone (1.4 s vs 0.95 s per iteration), for no better AP per iteration.
    m.box_head.batch_size_per_image = 64
    m.box_head.positive_fraction = 0.25
    m.box_head.detections_per_image = 50
    m.mask_head.conv_dim = 64
    m.mask_head.num_convs = 2
    m.mask_head.norm = "BN"

    # One scale, the size the images are made at: no resizing, and test = train resolution.
    cfg.input.min_size_train = (DEMO_SIZE,)
    cfg.input.max_size_train = 2 * DEMO_SIZE
    cfg.input.min_size_test = DEMO_SIZE
    cfg.input.max_size_test = 2 * DEMO_SIZE
    cfg.data.train.json = "swiftdet_demo/data/annotations/instances_train.json"
    cfg.data.train.image_root = "swiftdet_demo/data"
    cfg.data.test.json = "swiftdet_demo/data/annotations/instances_val.json"
    cfg.data.test.image_root = "swiftdet_demo/data"
    # Decoding a 128-pixel JPEG takes well under a millisecond: a loader process would only compete
    # with the training threads for the two cores.
    cfg.data.num_workers = 0

    s = cfg.solver
    # AdamW with a short warm-up and cosine decay trains from scratch far faster than SGD here.
    s.optimizer = "AdamW"
    s.base_lr = 0.002
    s.weight_decay = 0.05
    s.weight_decay_norm = 0.0
    s.weight_decay_bias = 0.0
    s.ims_per_batch = 8
    s.reference_batch_size = 8
    s.schedule = "cosine"
    s.steps = ()
    # About 6400 images seen; under 1 s per iteration even on one core of the 2-core machine.
    s.max_iter = 800
    s.warmup_iters = 50
    s.warmup_factor = 0.01
    s.checkpoint_period = 200
    s.keep_last = 1
    s.log_period = 20
    cfg.test.eval_period = 0
    cfg.test.ims_per_batch = 8
    cfg.test.best_metric = "segm/AP"
    cfg.output_dir = "swiftdet_demo"
    return cfg
