"""A tiny stand-in detector and dataset for the engine's tests, and checks that they honour the contract.

The engine is tested with these so that its tests take seconds and do not depend on the real models.
Other engine test modules (and the processes they launch) import the helpers from here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from swiftdet.config.core import apply_overrides, validate_config
from swiftdet.config.schema import Config, ModelConfig
from swiftdet.engine.distributed import get_rank, get_world_size, init_distributed_from_env, shutdown_distributed
from swiftdet.engine.evaluator import evaluate_model
from swiftdet.engine.logging import setup_logger
from swiftdet.engine.run import sync_batch_norm_if_distributed
from swiftdet.engine.trainer import Trainer, prepare_output_dir, seed_everything, write_config
from swiftdet.structures import BitMasks, Boxes, ImageList, Instances, PolygonMasks

TOY_SIZE = 32
TOY_CLASSES = 3
MASK_SIZE = 8


@dataclass
class ToySample:
    """The fields of swiftdet.data.Sample the engine reads."""

    image: torch.Tensor
    image_id: int
    file_name: str
    original_size: tuple[int, int]
    instances: Instances | None


def toy_sample(index: int, seed: int = 0) -> ToySample:
    """One image: a coloured rectangle (class = colour) on a dark noisy background, fixed by index."""
    g = torch.Generator().manual_seed(seed * 100003 + index)
    label = int(torch.randint(TOY_CLASSES, (1,), generator=g))
    x1, y1 = (int(v) for v in torch.randint(0, TOY_SIZE // 2, (2,), generator=g))
    w, h = (int(v) for v in torch.randint(6, TOY_SIZE // 2, (2,), generator=g))
    image = torch.rand(3, TOY_SIZE, TOY_SIZE, generator=g) * 40
    image[label, y1:y1 + h, x1:x1 + w] = 230.0
    polygon = [np.array([x1, y1, x1 + w, y1, x1 + w, y1 + h, x1, y1 + h], dtype=np.float64)]
    instances = Instances(
        (TOY_SIZE, TOY_SIZE),
        boxes=Boxes(torch.tensor([[x1, y1, x1 + w, y1 + h]], dtype=torch.float32)),
        labels=torch.tensor([label]),
        masks=PolygonMasks([polygon]),
    )
    return ToySample(image, index + 1, f"toy/{index:04d}.png", (TOY_SIZE, TOY_SIZE), instances)


def toy_coco(num_images: int, seed: int = 0) -> dict:
    """The COCO ground truth of images 0..num_images-1 (category ids 1..TOY_CLASSES)."""
    images, annotations = [], []
    for index in range(num_images):
        s = toy_sample(index, seed)
        images.append({"id": s.image_id, "file_name": s.file_name, "height": TOY_SIZE, "width": TOY_SIZE})
        x1, y1, x2, y2 = s.instances.boxes.tensor[0].tolist()
        annotations.append({
            "id": index + 1, "image_id": s.image_id, "category_id": int(s.instances.labels[0]) + 1,
            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            "segmentation": [s.instances.masks.polygons[0][0].tolist()],
        })
    categories = [{"id": i + 1, "name": f"class{i}"} for i in range(TOY_CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}


TOY_META = {"class_names": [f"class{i}" for i in range(TOY_CLASSES)], "category_ids": [1, 2, 3], "keypoint_names": []}


class ToyTrainLoader:
    """Infinite and exactly resumable: batch b of rank r is fixed by (seed, b, r), like the real loader."""

    def __init__(self, num_images: int, batch_size: int, start: int, rank: int, world_size: int, seed: int):
        self.num_images, self.batch_size, self.start = num_images, batch_size, start
        self.rank, self.world_size, self.seed = rank, world_size, seed

    def __iter__(self) -> Iterator[list[ToySample]]:
        b = self.start
        while True:
            g = torch.Generator().manual_seed(self.seed * 7919 + b * self.world_size + self.rank)
            indices = torch.randint(self.num_images, (self.batch_size,), generator=g).tolist()
            yield [toy_sample(i) for i in indices]
            b += 1


def toy_test_loader(num_images: int, batch_size: int, rank: int, world_size: int) -> list[list[ToySample]]:
    """This rank's shard (every world_size-th image), in order, in batches."""
    mine = [toy_sample(i) for i in range(rank, num_images, world_size)]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


class ToyDetector(nn.Module):
    """A few conv layers honouring the detector contract; predicts one box and mask per image and
    scores every class for it (so the evaluation sees several detections per image)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.size_divisibility = 32
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(3, 1, 1), persistent=False)
        norm = nn.BatchNorm2d if cfg.backbone.norm in ("BN", "SyncBN") else (lambda c: nn.GroupNorm(4, c))
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), norm(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), norm(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.cls = nn.Linear(128, cfg.num_classes)
        self.box = nn.Linear(128, 4)
        self.mask = nn.Linear(128, MASK_SIZE * MASK_SIZE)

    @property
    def device(self) -> torch.device:
        return self.cls.weight.device

    def preprocess(self, images: list[torch.Tensor], original_sizes=None) -> ImageList:
        images = [(img.to(self.device) - self.pixel_mean) / self.pixel_std for img in images]
        return ImageList.from_tensors(images, self.size_divisibility, original_sizes=original_sizes)

    def forward(self, images: ImageList, targets: list[Instances] | None = None):
        x = self.features(images.tensor)
        logits, boxes, masks = self.cls(x), self.box(x).sigmoid(), self.mask(x).view(-1, 1, MASK_SIZE, MASK_SIZE)
        scale = torch.tensor([[w, h, w, h] for h, w in images.image_sizes], dtype=boxes.dtype, device=boxes.device)
        cx, cy, bw, bh = (boxes * scale).unbind(1)
        xyxy = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=1)
        if self.training:
            gt_labels = torch.stack([t.labels[0] for t in targets])
            gt_boxes = torch.stack([t.boxes.tensor[0] for t in targets])
            losses = {
                "loss_cls": F.cross_entropy(logits, gt_labels),
                "loss_box": F.l1_loss(xyxy / scale, gt_boxes / scale),
            }
            if self.cfg.mask_on:
                gt_masks = torch.cat([
                    t.masks[0].crop_and_resize(t.boxes.tensor[:1], MASK_SIZE).to(masks.device) for t in targets
                ])
                losses["loss_mask"] = F.binary_cross_entropy_with_logits(masks[:, 0], gt_masks.float())
            return losses
        scores = logits.softmax(1)
        results = []
        for i, size in enumerate(images.image_sizes):
            n = self.cfg.num_classes
            inst = Instances(
                size, boxes=Boxes(xyxy[i:i + 1].expand(n, 4)), labels=torch.arange(n, device=scores.device),
                scores=scores[i],
            )
            if self.cfg.mask_on:
                inst.mask_probs = masks[i, 0].sigmoid().expand(n, MASK_SIZE, MASK_SIZE)
            results.append(inst)
        return results

    def postprocess(self, results: list[Instances], images: ImageList) -> list[Instances]:
        out = []
        for inst, (h, w), (oh, ow) in zip(results, images.image_sizes, images.original_sizes):
            boxes = inst.boxes.tensor * torch.tensor([ow / w, oh / h, ow / w, oh / h], device=inst.boxes.tensor.device)
            boxes = Boxes(boxes).clip((oh, ow))
            masks = None
            if inst.mask_probs is not None:
                masks = torch.zeros(len(inst), oh, ow, dtype=torch.bool)
                for k, (x1, y1, x2, y2) in enumerate(boxes.tensor.round().int().tolist()):
                    if x2 > x1 and y2 > y1:
                        pasted = F.interpolate(inst.mask_probs[k:k + 1, None], size=(y2 - y1, x2 - x1), mode="bilinear")
                        masks[k, y1:y2, x1:x2] = pasted[0, 0] >= 0.5
                masks = BitMasks(masks)
            out.append(Instances((oh, ow), boxes=boxes, labels=inst.labels, scores=inst.scores, masks=masks))
        return out

    @torch.no_grad()
    def predict(self, images: list[torch.Tensor], original_sizes=None) -> list[Instances]:
        batch = self.preprocess(images, original_sizes)
        return self.postprocess(self.forward(batch), batch)


def toy_config(*overrides: str) -> Config:
    cfg = Config()
    apply_overrides(cfg, [
        f"model.num_classes={TOY_CLASSES}", "model.mask_on=true", "model.backbone.norm=GN",
        "solver.max_iter=12", "solver.steps=[8]", "solver.warmup_iters=3", "solver.base_lr=0.05",
        "solver.ims_per_batch=4", "solver.reference_batch_size=4", "solver.checkpoint_period=4",
        "solver.log_period=1", "solver.keep_last=2", "test.eval_period=0", "data.num_workers=0",
        *overrides,
    ])
    return validate_config(cfg)


def build_toy_trainer(cfg: Config, output_dir: Path, *, resume: bool, num_train: int = 64, num_test: int = 12,
                      model: nn.Module | None = None) -> Trainer:
    """What run_training does with the real parts, with the toy ones."""
    rank, world = get_rank(), get_world_size()
    prepare_output_dir(output_dir, resume=resume)
    setup_logger(output_dir if rank == 0 else None, rank)
    seed_everything(cfg.seed)
    if model is None:
        model = sync_batch_norm_if_distributed(ToyDetector(cfg.model), cfg, torch.device("cpu"))
    seed_everything(cfg.seed + rank)
    if rank == 0:
        write_config(cfg, output_dir)
    per_process = cfg.solver.ims_per_batch // (world * cfg.solver.accumulate_steps)
    gt = toy_coco(num_test)

    def factory(start: int) -> ToyTrainLoader:
        return ToyTrainLoader(num_train, per_process, start, rank, world, cfg.seed)

    def evaluate(m: nn.Module, prefix: str) -> dict[str, float]:
        loader = toy_test_loader(num_test, cfg.test.ims_per_batch, rank, world)
        return evaluate_model(m, loader, gt, TOY_META["category_ids"], mask_on=cfg.model.mask_on, prefix=prefix)

    return Trainer(cfg, model, factory, evaluate, TOY_META, output_dir, torch.device("cpu"))


def train_toy_main(output_dir: str, resume: bool, overrides: list[str]) -> dict[str, float]:
    """Entry of the multi-process tests: join the process group if any, train."""
    torch.set_num_threads(1)
    init_distributed_from_env()
    try:
        cfg = toy_config(*overrides)
        return build_toy_trainer(cfg, Path(output_dir), resume=resume).train(resume=resume)
    finally:
        shutdown_distributed()


# ----------------------------------------------------------------------------------------------
# The toy honours the contract the engine relies on
# ----------------------------------------------------------------------------------------------
def test_toy_detector_follows_the_contract():
    torch.manual_seed(0)
    model = ToyDetector(toy_config().model)
    samples = [toy_sample(0), toy_sample(1)]
    images = model.preprocess([s.image for s in samples])
    assert images.tensor.shape == (2, 3, 32, 32)
    model.train()
    losses = model(images, [s.instances for s in samples])
    assert set(losses) == {"loss_cls", "loss_box", "loss_mask"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    model.eval()
    out = model.predict([s.image for s in samples], [(64, 48), (32, 32)])
    assert out[0].image_size == (64, 48) and out[0].masks.tensor.shape == (TOY_CLASSES, 64, 48)
    assert isinstance(out[0].masks, BitMasks) and len(out[1]) == TOY_CLASSES


def test_toy_loader_resumes_exactly():
    full = ToyTrainLoader(16, 2, 0, 0, 1, seed=3)
    resumed = ToyTrainLoader(16, 2, 5, 0, 1, seed=3)
    expected = [b for _, b in zip(range(8), iter(full))][5:]
    got = [b for _, b in zip(range(3), iter(resumed))]
    assert [[s.image_id for s in b] for b in got] == [[s.image_id for s in b] for b in expected]
