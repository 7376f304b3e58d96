"""RetinaNet, ResNet-18-FPN from scratch, on the 128-pixel synthetic shapes dataset (CPU-sized)."""
from swiftdet.config.schema import Config
from swiftdet.configs._dense import retinanet_fpn
from swiftdet.configs._synth import from_scratch_backbone, synth_training


def config() -> Config:
    cfg = from_scratch_backbone(synth_training(retinanet_fpn(depth=18)))
    r = cfg.model.retinanet
    # Shapes of 12..57 pixels: anchors two octaves below COCO's, 3 scales x 3 ratios per level.
    r.anchors.sizes = tuple(tuple(float(s * 2 ** (i / 3)) for i in range(3)) for s in (8, 16, 32, 64, 128))
    r.num_convs = 2
    r.norm = "GN"
    r.box_loss = "giou"
    r.detections_per_image = 50
    cfg.output_dir = "output/synth_retinanet"
    return cfg
