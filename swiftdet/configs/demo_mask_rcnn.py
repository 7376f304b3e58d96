"""The demo: a small Mask R-CNN (ResNet-18-FPN with BatchNorm, trained from scratch) that learns the
synthetic shapes dataset on a CPU in minutes. ``swiftdet demo`` fills in the dataset paths and makes
the data at 128x128 pixels (``swiftdet.demo.app.DEMO_IMAGE_SIZE``)."""
from swiftdet.config.schema import Config
from swiftdet.configs._base import rcnn_fpn
from swiftdet.configs._synth import from_scratch_backbone, synth_training


def config() -> Config:
    # 128-pixel data at one scale, AdamW + cosine: about 6400 images seen in 800 iterations, under
    # 1 s per iteration even on one core of the 2-core machine.
    cfg = from_scratch_backbone(synth_training(rcnn_fpn(mask=True, depth=18), max_iter=800))
    m = cfg.model
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
    cfg.test.best_metric = "segm/AP"
    cfg.output_dir = "swiftdet_demo"
    return cfg
