"""Keypoint R-CNN, ResNet-18-FPN from scratch, on the 128-pixel synthetic shapes dataset (CPU-sized).

The shapes' keypoints are their extreme points top, left, bottom, right (swiftdet.demo.synth), one
layout for all five classes; the keypoint head is class-agnostic, as torchvision's."""
from swiftdet.config.schema import Config
from swiftdet.configs._base import rcnn_fpn
from swiftdet.configs._synth import from_scratch_backbone, synth_training

# The keypoints of swiftdet.demo.synth.SYNTH_KEYPOINT_NAMES (tests/test_keypoint_rcnn.py keeps the two in step).
SYNTH_NUM_KEYPOINTS = 4
# One OKS sigma per keypoint. COCO's person sigmas run 0.025-0.107 (mean 0.062); an extreme point of a
# geometric shape is sharply defined, so a tight 0.05: a 20-pixel shape's keypoint 2 px off has OKS 0.6.
SYNTH_OKS_SIGMA = 0.05


def config() -> Config:
    cfg = from_scratch_backbone(synth_training(rcnn_fpn(depth=18), max_iter=600))
    m = cfg.model
    # As the demo (configs/demo_mask_rcnn.py): anchors one octave below COCO's for 12..57-pixel shapes,
    # a few hundred proposals for a handful of objects, at most 16 positive RoIs per image.
    m.rpn.anchors.sizes = ((16.0,), (32.0,), (64.0,), (128.0,), (256.0,))
    m.rpn.batch_size_per_image = 128
    m.rpn.pre_nms_topk_train, m.rpn.post_nms_topk_train = 400, 256
    m.rpn.pre_nms_topk_test, m.rpn.post_nms_topk_test = 200, 100
    m.box_head.fc_dim = 256
    m.box_head.batch_size_per_image = 64
    m.box_head.detections_per_image = 50
    m.keypoint_on = True
    k = m.keypoint_head
    k.num_keypoints = SYNTH_NUM_KEYPOINTS
    # 4 convs of 64 instead of 8 of 512: the head would otherwise cost ~30x the backbone per iteration.
    k.num_convs = 4
    k.conv_dim = 64
    cfg.test.keypoint_oks_sigmas = (SYNTH_OKS_SIGMA,) * SYNTH_NUM_KEYPOINTS
    cfg.test.best_metric = "keypoints/AP"
    cfg.output_dir = "output/synth_keypoint_rcnn"
    return cfg
