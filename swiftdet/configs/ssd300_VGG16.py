"""SSD300, VGG-16 (torchvision's ssd300_vgg16 and its COCO recipe: 120 epochs at batch 32)."""
from swiftdet.config.schema import Config
from swiftdet.configs._base import coco_detection

# torchvision's SSD300 normalisation: its ImageNet VGG-16 takes 0-255 pixels minus the mean, std 1.
SSD300_PIXEL_MEAN = (0.48235 * 255, 0.45882 * 255, 0.40784 * 255)
SSD300_PIXEL_STD = (1.0, 1.0, 1.0)


def config() -> Config:
    cfg = coco_detection(Config())
    m = cfg.model
    m.arch = "ssd"
    m.backbone.name = "vgg16"
    m.backbone.out_features = ("conv4", "conv5")
    m.backbone.freeze_at = 1  # torchvision's trainable_backbone_layers=4 with an ImageNet VGG-16
    m.pixel_mean = SSD300_PIXEL_MEAN
    m.pixel_std = SSD300_PIXEL_STD
    # model.ssd's defaults are SSD300's default boxes, matching, loss and postprocessing.
    i = cfg.input
    i.resize = "fixed"
    i.fixed_size = (300, 300)
    i.size_divisibility = 1  # the fixed size is the batch size; padding would move the default boxes
    # torchvision's "ssd" data augmentation: photometric distortion, zoom out, IoU crop, flip.
    i.photometric_distort_prob = 0.5
    i.zoom_out_prob = 0.5
    i.iou_crop = True
    cfg.data.aspect_ratio_grouping = False  # every image has the same size
    s = cfg.solver
    s.ims_per_batch = s.reference_batch_size = 32
    s.base_lr = 0.002
    s.weight_decay = s.weight_decay_norm = s.weight_decay_bias = 5e-4
    # 120 epochs of COCO train2017 (117k images, 3665 iterations an epoch), steps at epochs 80 and 110.
    s.max_iter = 120 * 3665
    s.steps = (80 * 3665, 110 * 3665)
    cfg.output_dir = "output/ssd300_VGG16"
    return cfg
