"""Mask pasting and rescaling against torchvision's reference implementation."""
from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste_masks
from torchvision.models.detection.transform import resize_boxes, resize_keypoints

from swiftdet.model.postprocess import paste_masks_in_image, postprocess_instances, rescale_instances
from swiftdet.structures import Boxes, Instances, Keypoints


def _random_boxes(gen: torch.Generator, n: int, height: int, width: int) -> torch.Tensor:
    """Boxes of every scale, many crossing the image border, each overlapping the image.

    (torchvision's reference fails on a box entirely outside the image, which detectors never
    produce since they clip boxes first.)
    """
    size = torch.tensor([width, height], dtype=torch.float32)
    wh = torch.rand(n, 2, generator=gen) ** 3 * size * 1.2
    xy = torch.rand(n, 2, generator=gen) * size * 1.2 - size * 0.3
    xy = torch.minimum(xy, size - 1)
    xy = torch.maximum(xy, -wh * 0.9)
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("mask_size", [28, 14])
def test_paste_equals_torchvision_on_random_masks_and_boxes(mask_size):
    gen = torch.Generator().manual_seed(mask_size)
    for _ in range(12):
        n = int(torch.randint(1, 25, (), generator=gen))
        height, width = (int(v) for v in torch.randint(1, 260, (2,), generator=gen))
        masks = torch.rand(n, 1, mask_size, mask_size, generator=gen)
        boxes = _random_boxes(gen, n, height, width)
        expected = tv_paste_masks(masks, boxes, (height, width))[:, 0] > 0.5
        got = paste_masks_in_image(masks, boxes, (height, width))
        assert got.dtype == torch.bool and got.shape == (n, height, width)
        assert torch.equal(got, expected)


def test_paste_tiny_and_border_boxes_and_both_kernel_sizes():
    # Sub-pixel boxes, boxes on each border, and box sizes on both sides of the size (128) where
    # PyTorch's bilinear resize switches kernels.
    height, width = 200, 230
    boxes = torch.tensor(
        [
            [10.0, 10.0, 10.2, 10.3],
            [0.0, 0.0, 0.5, 0.5],
            [-3.0, -4.0, 5.0, 6.0],
            [225.0, 190.0, 229.9, 199.9],
            [-50.0, 20.0, 40.0, 80.0],
            [30.0, 30.0, 89.0, 89.0],  # expanded size 64 + 64 = 128: channels-last kernel
            [30.0, 30.0, 90.0, 90.0],  # just above: generic kernel
            [0.0, 0.0, 230.0, 200.0],
        ]
    )
    gen = torch.Generator().manual_seed(3)
    masks = torch.rand(len(boxes), 1, 28, 28, generator=gen)
    for threshold in (0.5, 0.3, 0.0):
        expected = tv_paste_masks(masks, boxes, (height, width))[:, 0] > threshold
        assert torch.equal(paste_masks_in_image(masks, boxes, (height, width), threshold), expected)


def test_paste_empty_and_bad_arguments():
    out = paste_masks_in_image(torch.zeros(0, 1, 28, 28), torch.zeros(0, 4), (5, 7))
    assert out.shape == (0, 5, 7) and out.dtype == torch.bool
    with pytest.raises(ValueError, match="threshold"):
        paste_masks_in_image(torch.zeros(1, 1, 28, 28), torch.zeros(1, 4), (5, 7), threshold=-0.1)
    with pytest.raises(ValueError, match="masks"):
        paste_masks_in_image(torch.zeros(1, 28, 28), torch.zeros(1, 4), (5, 7))


def test_rescale_instances_matches_torchvision_resize():
    gen = torch.Generator().manual_seed(0)
    boxes = torch.rand(6, 4, generator=gen) * 500
    keypoints = torch.rand(6, 17, 3, generator=gen) * 500
    inst = Instances((533, 800), boxes=Boxes(boxes), labels=torch.arange(6), scores=torch.rand(6, generator=gen),
                     keypoints=Keypoints(keypoints))
    out = rescale_instances(inst, (533, 800), (427, 640))
    assert out.image_size == (427, 640)
    assert torch.equal(out.boxes.tensor, resize_boxes(boxes, [533, 800], [427, 640]))
    assert torch.equal(out.keypoints.tensor, resize_keypoints(keypoints, [533, 800], [427, 640]))
    assert torch.equal(out.labels, inst.labels) and torch.equal(out.scores, inst.scores)


def test_postprocess_instances_pastes_masks_at_original_size():
    gen = torch.Generator().manual_seed(1)
    boxes = torch.tensor([[10.0, 20.0, 60.0, 90.0], [0.0, 0.0, 100.0, 50.0]])
    masks = torch.rand(2, 1, 28, 28, generator=gen)
    inst = Instances((100, 120), boxes=Boxes(boxes), labels=torch.tensor([0, 1]), scores=torch.tensor([0.9, 0.8]),
                     mask_probs=masks[:, 0])
    out = postprocess_instances(inst, (200, 240), mask_threshold=0.5)
    scaled = resize_boxes(boxes, [100, 120], [200, 240])
    assert torch.equal(out.boxes.tensor, scaled)
    assert torch.equal(out.masks.tensor, tv_paste_masks(masks, scaled, (200, 240))[:, 0] > 0.5)
    assert out.mask_probs is None
