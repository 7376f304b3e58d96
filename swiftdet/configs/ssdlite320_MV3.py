"""SSDlite320, MobileNetV3-Large (torchvision's ssdlite320_mobilenet_v3_large and its COCO recipe:
600 epochs at batch 192, cosine schedule)."""
from swiftdet.config.schema import Config
from swiftdet.configs._base import coco_detection


def config() -> Config:
    cfg = coco_detection(Config())
    m = cfg.model
    m.arch = "ssd"
    m.backbone.name = "mobilenet_v3_large"
    m.backbone.out_features = ("block13_expand", "block16")  # C4's expansion conv and the last conv
    m.backbone.norm = "BN"
    m.backbone.norm_eps, m.backbone.norm_momentum = 1e-3, 0.03
    m.backbone.freeze_at = 0
    # torchvision's COCO model is built with the reduced tail (as its constructor does without an
    # ImageNet backbone); set reduced_tail=false to start from an ImageNet MobileNetV3 file.
    m.backbone.reduced_tail = True
    m.pixel_mean = (127.5, 127.5, 127.5)  # [0, 255] -> [-1, 1]
    m.pixel_std = (127.5, 127.5, 127.5)
    sd = m.ssd
    sd.aspect_ratios = ((2.0, 3.0),) * 6
    sd.scales = ()  # evenly spaced from min_ratio to max_ratio
    sd.min_ratio, sd.max_ratio = 0.2, 0.95
    sd.steps = ()  # box centres from the map sizes
    sd.score_thresh = 0.001
    sd.nms_thresh = 0.55
    sd.topk_candidates = 300
    sd.detections_per_image = 300
    i = cfg.input
    i.resize = "fixed"
    i.fixed_size = (320, 320)
    i.size_divisibility = 1
    i.iou_crop = True  # torchvision's "ssdlite" augmentation: IoU crop and flip
    cfg.data.aspect_ratio_grouping = False
    s = cfg.solver
    s.ims_per_batch = s.reference_batch_size = 192
    s.base_lr = 0.15
    s.weight_decay = s.weight_decay_norm = s.weight_decay_bias = 4e-5
    s.schedule = "cosine"
    s.steps = ()
    s.max_iter = 600 * 611  # 600 epochs of COCO train2017 at 611 iterations an epoch
    cfg.output_dir = "output/ssdlite320_MV3"
    return cfg
