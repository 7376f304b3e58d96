"""Image decoding, transforms, samplers, loaders and the browse verb."""
from __future__ import annotations

import argparse
import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from swiftdet.cli import browse
from swiftdet.config.schema import Config
from swiftdet.data import DatasetMeta, DetectionDataset, build_test_loader, build_train_loader, read_image
from swiftdet.data.samplers import InferenceSampler, TrainBatchSampler, TrainingSampler
from swiftdet.data.transforms import (
    Augmentation,
    apply_augmentation,
    augmentation_rng,
    resize_image,
    resized_size,
    sample_augmentation,
    transform_instances,
)
from swiftdet.errors import DatasetError, InputError
from swiftdet.structures import BitMasks, Boxes, Instances, Keypoints, PolygonMasks, flip_indices


# ------------------------------------------------------------------ read_image
def _write_png_rgb16(path, rgb16: np.ndarray) -> None:
    """A 16-bit RGB PNG written with the standard library (Pillow writes 16-bit gray only)."""
    height, width, _ = rgb16.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)  # filter 0 per row, big-endian samples
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # depth 16, colour type 2 (RGB)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_read_image_gray_rgba_16bit_and_exif(tmp_path):
    Image.fromarray(np.full((5, 6), 7, np.uint8)).save(tmp_path / "g.png")
    g = read_image(tmp_path / "g.png")
    assert g.shape == (3, 5, 6) and g.dtype == torch.uint8 and (g == 7).all()

    Image.fromarray(np.full((5, 6), 9, np.uint8)).convert("LA").save(tmp_path / "la.png")
    assert (read_image(tmp_path / "la.png") == 9).all()

    Image.fromarray(np.full((4, 3, 4), [10, 20, 30, 40], np.uint8)).save(tmp_path / "rgba.png")
    assert read_image(tmp_path / "rgba.png")[:, 0, 0].tolist() == [10, 20, 30]

    _write_png_rgb16(tmp_path / "rgb16.png", np.full((4, 5, 3), [65535, 30000, 1000], np.uint16))
    assert read_image(tmp_path / "rgb16.png")[:, 2, 2].tolist() == [255, round(30000 / 257), round(1000 / 257)]

    gray16 = (np.arange(20).reshape(4, 5) * 3000).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    out = read_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(out[1].numpy(), np.round(gray16 / 257).astype(np.uint8))

    im = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    im.save(tmp_path / "exif.jpg", exif=exif)
    assert read_image(tmp_path / "exif.jpg").shape == (3, 20, 10)


def test_read_image_bmp_and_tiff_through_pillow(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.bmp")
    np.testing.assert_array_equal(read_image(tmp_path / "a.bmp").permute(1, 2, 0).numpy(), rgb)
    Image.fromarray(rgb).save(tmp_path / "a.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif").permute(1, 2, 0).numpy(), rgb)
    gray16 = (np.arange(42).reshape(6, 7) * 1500).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "g16.tif")[2].numpy(), np.round(gray16 / 257).astype(np.uint8))
    (tmp_path / "bad.bmp").write_bytes(b"BM truncated")
    with pytest.raises(InputError, match="Cannot decode image file"):
        read_image(tmp_path / "bad.bmp")


def test_read_image_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "none.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(InputError, match="Cannot decode image file"):
        read_image(tmp_path / "bad.jpg")


# ------------------------------------------------------------------ transforms
@pytest.mark.parametrize("h,w,min_size,max_size", [(427, 640, 800, 1333), (333, 1001, 512, 700), (17, 33, 64, 100), (50, 50, 32, 1000)])
def test_resize_matches_torchvision(h, w, min_size, max_size):
    image = torch.rand(3, h, w) * 255
    tv = GeneralizedRCNNTransform(min_size, max_size, [0.0] * 3, [1.0] * 3).eval()
    boxes = torch.tensor([[1.5, 2.25, 10.0, 15.0], [0.0, 0.0, w, h]])
    expected, target = tv.resize(image, {"boxes": boxes.clone()})
    ours = resize_image(image, min_size, max_size)
    assert tuple(ours.shape[-2:]) == resized_size(h, w, min_size, max_size) == tuple(expected.shape[-2:])
    assert torch.equal(ours, expected)
    moved = transform_instances(Instances((h, w), boxes=Boxes(boxes)), tuple(ours.shape[-2:]))
    assert torch.equal(moved.boxes.tensor, target["boxes"])


def _instances() -> Instances:
    return Instances(
        (20, 30),
        boxes=Boxes(torch.tensor([[2.0, 3.0, 12.0, 9.0]])),
        labels=torch.tensor([1]),
        masks=PolygonMasks([[np.array([2.0, 3.0, 12.0, 3.0, 12.0, 9.0])]]),
        keypoints=Keypoints(torch.tensor([[[3.0, 4.0, 2.0], [11.0, 8.0, 1.0], [5.0, 5.0, 2.0]]])),
    )


def test_flip_moves_targets_and_swaps_keypoints():
    names = ["nose", "left_eye", "right_eye"]
    fi = flip_indices(names)
    assert fi == [0, 2, 1]
    inst = _instances()
    out = transform_instances(inst, (20, 30), hflip=True, flip_index=fi)
    assert out.boxes.tensor.tolist() == [[18.0, 3.0, 28.0, 9.0]]
    np.testing.assert_allclose(out.masks.polygons[0][0], [28, 3, 18, 3, 18, 9])
    # nose mirrored in place; left_eye now holds the mirrored right_eye and vice versa.
    assert out.keypoints.tensor[0].tolist() == [[27.0, 4.0, 2.0], [25.0, 5.0, 2.0], [19.0, 8.0, 1.0]]
    back = transform_instances(out, (20, 30), hflip=True, flip_index=fi)
    assert torch.equal(back.boxes.tensor, inst.boxes.tensor)
    assert torch.equal(back.keypoints.tensor, inst.keypoints.tensor)
    np.testing.assert_allclose(back.masks.polygons[0][0], inst.masks.polygons[0][0])


def test_targets_stay_on_the_image_content_through_resize_and_flip():
    """A bright rectangle: its box, polygon mask, bitmask and a keypoint at its corner move with it."""
    image = torch.zeros(3, 40, 60)
    image[:, 10:20, 30:50] = 255.0
    poly = np.array([30.0, 10.0, 50.0, 10.0, 50.0, 20.0, 30.0, 20.0])
    bit = torch.zeros(1, 40, 60, dtype=torch.bool)
    bit[0, 10:20, 30:50] = True
    kp = Keypoints(torch.tensor([[[30.5, 10.5, 2.0]]]))
    for masks in (PolygonMasks([[poly]]), BitMasks(bit)):
        inst = Instances((40, 60), boxes=Boxes(torch.tensor([[30.0, 10.0, 50.0, 20.0]])), labels=torch.tensor([0]), masks=masks, keypoints=kp)
        out_image, out = apply_augmentation(image, inst, Augmentation(80, 1000, hflip=True), flip_index=[0])
        assert out_image.shape == (3, 80, 120) and out.image_size == (80, 120)
        x0, y0, x1, y1 = out.boxes.tensor[0].round().int().tolist()
        assert (x0, y0, x1, y1) == (20, 20, 60, 40)
        assert (out_image[0, y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] > 250).all()
        assert (out_image[0, :, x1 + 1 :] < 5).all()
        bm = out.masks.to_bitmasks(80, 120).tensor[0] if isinstance(out.masks, PolygonMasks) else out.masks.tensor[0]
        assert bm[y0:y1, x0:x1].all() and bm.sum() == (x1 - x0) * (y1 - y0)
        kx, ky = out.keypoints.tensor[0, 0, :2].tolist()
        assert (kx, ky) == (120 - 61.0, 21.0)  # x scaled then mirrored: 120 - 30.5 * 2


def test_augmentation_depends_only_on_seed_and_position():
    a = [sample_augmentation(augmentation_rng(3, p), (480, 512, 544), 1333, 0.5) for p in range(50)]
    b = [sample_augmentation(augmentation_rng(3, p), (480, 512, 544), 1333, 0.5) for p in reversed(range(50))]
    assert a == b[::-1]
    assert {x.min_size for x in a} == {480, 512, 544} and {x.hflip for x in a} == {True, False}
    assert a != [sample_augmentation(augmentation_rng(4, p), (480, 512, 544), 1333, 0.5) for p in range(50)]


# ------------------------------------------------------------------ samplers
def _take(it, n):
    return [next(it) for _ in range(n)]


def test_training_sampler_epochs_sharding_and_resume():
    stream = _take(iter(TrainingSampler(10, seed=5)), 30)
    assert [g for g, _ in stream] == list(range(30))
    for e in range(3):
        assert sorted(i for _, i in stream[10 * e : 10 * e + 10]) == list(range(10))
    assert [i for _, i in stream[:10]] != [i for _, i in stream[10:20]]  # reshuffled per epoch
    # Rank r of 3 takes global positions r, r + 3, ...
    for r in range(3):
        shard = _take(iter(TrainingSampler(10, seed=5, rank=r, world_size=3)), 10)
        assert shard == stream[r::3]
    # Resume: start=k, or a state_dict, continues the same stream.
    s = TrainingSampler(10, seed=5, rank=1, world_size=3)
    first = _take(iter(s), 4)
    state = s.state_dict()
    resumed = TrainingSampler(10, seed=5, rank=1, world_size=3)
    resumed.load_state_dict(state)
    assert _take(iter(resumed), 6) == _take(iter(TrainingSampler(10, seed=5, rank=1, world_size=3, start=4)), 6) == stream[1::3][4:10]
    assert first == stream[1::3][:4]
    assert [i for _, i in _take(iter(TrainingSampler(4, seed=0, shuffle=False)), 6)] == [0, 1, 2, 3, 0, 1]


def test_grouped_batches_are_single_group_and_resume_exactly():
    group = np.array([0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 0])
    full = _take(iter(TrainBatchSampler(11, 3, seed=2, group_of=group)), 20)
    for batch in full:
        assert len(batch) == 3 and len({int(group[i]) for _, i in batch}) == 1
    assert _take(iter(TrainBatchSampler(11, 3, seed=2, group_of=group, start_iter=7)), 13) == full[7:]
    plain = _take(iter(TrainBatchSampler(11, 3, seed=2)), 10)
    assert _take(iter(TrainBatchSampler(11, 3, seed=2, start_iter=4)), 6) == plain[4:]


def test_inference_sampler_covers_each_index_once_in_order():
    shards = [list(InferenceSampler(11, r, 4)) for r in range(4)]
    assert sum(shards, []) == list(range(11))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


# ------------------------------------------------------------------ loaders
@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> DetectionDataset:
    """Six small images (landscape and portrait) with polygons, one RLE instance, crowd and keypoints."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    records = []
    for k in range(6):
        h, w = (24, 36) if k % 2 == 0 else (36, 24)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"{k}.png")
        anns = [
            {"bbox": [2, 3, 12, 15], "category_id": 2, "segmentation": [[2, 3, 12, 3, 12, 15]],
             "keypoints": [3, 4, 2, 10, 12, 2]},
            {"bbox": [0, 0, 20, 20], "category_id": 1, "iscrowd": 1},
        ]
        if k == 3:
            anns.append({"bbox": [0, 0, 4, 4], "category_id": 1,
                         "segmentation": {"size": [h, w], "counts": [0, 4, h - 4, 4, h * w - h - 4]}})
        records.append({"file_name": f"{k}.png", "height": h, "width": w, "image_id": 100 + k, "annotations": anns})
    meta = DatasetMeta(class_names=("a", "b"), category_ids=(1, 2), keypoint_names=("left_x", "right_x"))
    return DetectionDataset.from_records(records, meta, image_root=str(root), training=True, verbose=False)


def _cfg() -> Config:
    cfg = Config()
    cfg.seed = 7
    cfg.input.min_size_train = (24, 32, 40)
    cfg.input.max_size_train = 64
    cfg.input.min_size_test = 32
    cfg.input.max_size_test = 64
    return cfg


def _batches(loader, n):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def _key(batch):
    return [(s.image_id, tuple(s.image.shape), s.image.sum().item(), s.instances.boxes.tensor.tolist(),
             s.instances.keypoints.tensor.tolist()) for s in batch]


def test_train_loader_targets(small_dataset):
    batch = _batches(build_train_loader(_cfg(), small_dataset, batch_size=2, num_workers=0), 1)[0]
    for s in batch:
        assert s.image.dtype == torch.float32 and s.image.shape[0] == 3
        assert s.instances.image_size == tuple(s.image.shape[1:])
        assert s.original_size in ((24, 36), (36, 24)) and s.file_name.endswith(f"{s.image_id - 100}.png")
        assert s.instances.labels.dtype == torch.int64
        assert s.instances.labels.tolist()[0] == 1  # category 2 -> label 1; crowd excluded
        assert (s.image_id == 103) == isinstance(s.instances.masks, BitMasks)
        assert s.instances.keypoints.tensor.shape[1:] == (2, 3)
    # Aspect-ratio grouping: one orientation per batch.
    assert len({s.original_size for s in batch}) == 1


def test_train_loader_resume_independent_of_workers(small_dataset):
    cfg = _cfg()
    full = _batches(build_train_loader(cfg, small_dataset, batch_size=2, num_workers=0), 8)
    resumed = _batches(build_train_loader(cfg, small_dataset, batch_size=2, num_workers=2, start_iter=5), 3)
    assert [_key(b) for b in resumed] == [_key(b) for b in full[5:8]]
    loader = build_train_loader(cfg, small_dataset, batch_size=2, num_workers=0)
    _batches(loader, 3)
    assert loader.state_dict()["iteration"] == 3
    assert [_key(b) for b in _batches(loader, 2)] == [_key(b) for b in full[3:5]]  # iterating again continues
    flips = {tuple(s.image.shape) for b in full for s in b}
    assert len(flips) > 2  # several training sizes were drawn


def test_test_loader_order_and_shards(small_dataset):
    cfg = _cfg()
    ids = [s.image_id for b in build_test_loader(cfg, small_dataset, batch_size=4, num_workers=0) for s in b]
    assert ids == [100 + k for k in range(6)]
    shards = [[s.image_id for b in build_test_loader(cfg, small_dataset, rank=r, world_size=4, num_workers=0) for s in b]
              for r in range(4)]
    assert sum(shards, []) == ids
    s = next(iter(build_test_loader(cfg, small_dataset, num_workers=0)))[0]
    assert tuple(s.image.shape[1:]) == resized_size(24, 36, 32, 64)


def test_worker_errors_surface_as_dataset_error(tmp_path):
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    records = [
        {"file_name": "ok.png", "height": 10, "width": 14, "image_id": 1, "annotations": [{"bbox": [0, 0, 5, 5], "category_id": 0}]},
        {"file_name": "broken.jpg", "height": 10, "width": 12, "image_id": 2, "annotations": [{"bbox": [0, 0, 5, 5], "category_id": 0}]},
    ]
    ds = DetectionDataset.from_records(records, DatasetMeta(class_names=("x",)), image_root=str(tmp_path), verbose=False)
    with pytest.raises(DatasetError, match=r"image id 1.*10x14.*10x12"):
        next(iter(build_test_loader(_cfg(), ds.select([0]), num_workers=1)))
    with pytest.raises(DatasetError, match=r"image id 2.*Cannot decode image file.*broken.jpg"):
        next(iter(build_test_loader(_cfg(), ds.select([1]), num_workers=0)))


# ------------------------------------------------------------------ browse
def test_browse_writes_images(tmp_path, tiny_coco):
    parser = argparse.ArgumentParser()
    browse.add_arguments(parser)
    args = parser.parse_args([str(tiny_coco / "annotations" / "person_keypoints_val.json"), str(tiny_coco),
                              "--out", str(tmp_path / "out"), "--ids", "397133", "87038"])
    assert browse.run(args) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["397133.png", "87038.png"]
    drawn = np.asarray(Image.open(tmp_path / "out" / "397133.png"))
    original = read_image(tiny_coco / "val2017" / "000000397133.jpg").permute(1, 2, 0).numpy()
    assert drawn.shape == original.shape and not np.array_equal(drawn, original)


def test_browse_reports_invalid_dataset(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"images": [], "categories": []}))
    parser = argparse.ArgumentParser()
    browse.add_arguments(parser)
    with pytest.raises(DatasetError, match="no 'annotations' list"):
        browse.run(parser.parse_args([str(tmp_path / "bad.json"), str(tmp_path), "--out", str(tmp_path / "o")]))
