"""Weight files: cache and download (local HTTP server, file:// URLs), checkpoints, ImageNet init."""
from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from swiftdet.errors import WeightsError
from swiftdet.weights import (
    CHECKPOINT_FORMAT,
    cached_path,
    load_backbone_imagenet,
    load_checkpoint,
    make_checkpoint,
)


# ----------------------------------------------------------------------------------------------
# cached_path
# ----------------------------------------------------------------------------------------------
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    """(folder, base URL) of a local HTTP server on 127.0.0.1, shut down after the test."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _payload(path: Path, size: int = 300_000) -> str:
    data = bytes(range(256)) * (size // 256)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_local_path_passes_through_and_is_checked(tmp_path):
    f = tmp_path / "w.pth"
    digest = _payload(f)
    assert cached_path(f) == f
    assert cached_path(str(f), sha256=digest) == f
    with pytest.raises(WeightsError, match="SHA-256"):
        cached_path(f, sha256="0" * 64)
    with pytest.raises(WeightsError, match="does not exist"):
        cached_path(tmp_path / "nope.pth")
    with pytest.raises(WeightsError, match="folder"):
        cached_path(tmp_path)


def test_http_download_verifies_hash_and_caches(http_root, tmp_path):
    root, base = http_root
    digest = _payload(root / "model.pth")
    cache = tmp_path / "cache"
    got = cached_path(f"{base}/model.pth", sha256=digest, cache_dir=cache)
    assert got == cache / "model.pth" and got.read_bytes() == (root / "model.pth").read_bytes()
    (root / "model.pth").unlink()  # the second call must come from the cache
    assert cached_path(f"{base}/model.pth", sha256=digest, cache_dir=cache) == got
    assert [p.name for p in cache.iterdir()] == ["model.pth"]


def test_http_download_checks_torchvision_style_hash_prefix(http_root, tmp_path):
    root, base = http_root
    digest = _payload(root / "data.bin")
    (root / f"resnet-{digest[:8]}.pth").write_bytes((root / "data.bin").read_bytes())
    (root / "resnet-deadbeef.pth").write_bytes((root / "data.bin").read_bytes())
    cache = tmp_path / "cache"
    assert cached_path(f"{base}/resnet-{digest[:8]}.pth", cache_dir=cache).is_file()
    with pytest.raises(WeightsError, match="deadbeef"):
        cached_path(f"{base}/resnet-deadbeef.pth", cache_dir=cache)
    # The bad download left nothing behind, not even a partial file.
    assert sorted(p.name for p in cache.iterdir()) == [f"resnet-{digest[:8]}.pth"]


def test_http_errors_and_offline(http_root, tmp_path):
    _, base = http_root
    with pytest.raises(WeightsError, match="HTTP 404"):
        cached_path(f"{base}/missing.pth", cache_dir=tmp_path / "c")
    with socket.socket() as s:  # a port nobody listens on: what being offline looks like
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(WeightsError, match="offline"):
        cached_path(f"http://127.0.0.1:{port}/w.pth", cache_dir=tmp_path / "c", timeout=5)
    assert not any((tmp_path / "c").iterdir())


def test_file_url_and_environment_cache(tmp_path, monkeypatch):
    f = tmp_path / "src" / "w.pth"
    f.parent.mkdir()
    digest = _payload(f)
    monkeypatch.setenv("SWIFTDET_CACHE", str(tmp_path / "envcache"))
    got = cached_path(f.as_uri(), sha256=digest)
    assert got == tmp_path / "envcache" / "w.pth" and got.read_bytes() == f.read_bytes()


# ----------------------------------------------------------------------------------------------
# load_checkpoint
# ----------------------------------------------------------------------------------------------
class TinyDetector(nn.Module):
    """A stand-in with the layout that matters: shared layers and class-dependent predictors."""

    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width))
        self.cls_score = nn.Linear(width, num_classes + 1)
        self.bbox_pred = nn.Linear(width, 4 * (num_classes + 1))
        self.mask_predictor = nn.Conv2d(width, num_classes, 1)


def _assert_same(a: nn.Module, b: nn.Module, prefixes: tuple[str, ...]):
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        if k.startswith(prefixes):
            assert torch.equal(sa[k], sb[k]), k


def test_roundtrip_of_our_checkpoint_and_bare_state_dicts(tmp_path):
    torch.manual_seed(0)
    src = TinyDetector(5)
    ckpt = make_checkpoint(src, {"model": {"num_classes": 5}}, {"class_names": list("abcde")})
    assert ckpt["format"] == CHECKPOINT_FORMAT
    torch.save(ckpt, tmp_path / "ours.pth")
    torch.save(src.state_dict(), tmp_path / "bare.pth")
    torch.save({"state_dict": src.state_dict(), "epoch": 3}, tmp_path / "wrapped.pth")
    for name in ("ours.pth", "bare.pth", "wrapped.pth"):
        dst = TinyDetector(5)
        report = load_checkpoint(dst, tmp_path / name)
        assert report.complete, report.summary()
        _assert_same(src, dst, ("",))
    assert load_checkpoint(TinyDetector(5), tmp_path / "ours.pth").meta["class_names"] == list("abcde")


def small_rcnn_config(num_classes: int = 3, depth: int = 18, mask: bool = True):
    """A small Mask R-CNN (ResNet-18, narrow FPN and heads): the real architecture, cheap to build."""
    from swiftdet.config.core import load_config

    return load_config("mask_rcnn_R_50_FPN_1x" if mask else "faster_rcnn_R_50_FPN_1x", [
        f"model.backbone.depth={depth}", f"model.num_classes={num_classes}", "model.fpn.out_channels=32",
        "model.box_head.fc_dim=64", "model.mask_head.conv_dim=16",
    ])


def test_other_class_count_loads_all_but_class_layers(tmp_path):
    from swiftdet.config.core import config_to_dict
    from swiftdet.model.build import build_model

    torch.manual_seed(0)
    cfg7 = small_rcnn_config(7)
    src = build_model(cfg7.model)
    torch.save(make_checkpoint(src, config_to_dict(cfg7)), tmp_path / "c7.pth")
    dst = build_model(small_rcnn_config(3).model)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    report = load_checkpoint(dst, tmp_path / "c7.pth", model_cfg=small_rcnn_config(3).model)
    skipped = sorted(s.split(":")[0] for s in report.skipped)
    assert skipped == sorted(["roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias",
                              "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias",
                              "roi_heads.mask_head.predictor.weight", "roi_heads.mask_head.predictor.bias"]), skipped
    assert report.num_classes_in_file == 7 and not report.missing and not report.unexpected
    assert "Skipped 6 class-dependent tensors (file has 7 classes)" in report.summary()
    sd_src, sd_dst = src.state_dict(), dst.state_dict()
    for k in sd_dst:
        if k.split(":")[0] not in skipped:
            assert torch.equal(sd_src[k], sd_dst[k]), k
        else:
            assert torch.equal(sd_dst[k], before[k]), k
    # A bare state_dict states no class count: it is inferred from the shapes, consistently.
    torch.save(src.state_dict(), tmp_path / "c7_bare.pth")
    cfg3 = small_rcnn_config(3).model
    assert load_checkpoint(build_model(cfg3), tmp_path / "c7_bare.pth", model_cfg=cfg3).num_classes_in_file == 7
    # A wider FPN is another architecture, even though its first dimensions are multiples of 4.
    wide = small_rcnn_config(3)
    wide.model.fpn.out_channels = 64
    torch.save(build_model(wide.model).state_dict(), tmp_path / "wide.pth")
    with pytest.raises(WeightsError, match="fpn"):
        load_checkpoint(build_model(cfg3), tmp_path / "wide.pth", model_cfg=cfg3)


def test_other_architecture_is_refused_with_names(tmp_path):
    torch.save(TinyDetector(3, width=16).state_dict(), tmp_path / "wide.pth")
    with pytest.raises(WeightsError, match=r"backbone\.0\.weight: file \(16, 3, 3, 3\)"):
        load_checkpoint(TinyDetector(3), tmp_path / "wide.pth")
    torch.save(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)).state_dict(), tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="only 0 of the model's 13 tensors"):
        load_checkpoint(TinyDetector(3), tmp_path / "other.pth")
    report = load_checkpoint(TinyDetector(3), tmp_path / "other.pth", strict_arch=False)
    assert not report.loaded and len(report.missing) == 13 and report.unexpected == ["0.weight", "0.bias", "1.weight", "1.bias"]


def test_unreadable_missing_and_pickled_files(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_checkpoint(TinyDetector(3), tmp_path / "none.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file at all")
    with pytest.raises(WeightsError, match="truncated or not a PyTorch file"):
        load_checkpoint(TinyDetector(3), tmp_path / "junk.pth")
    good = TinyDetector(3)
    torch.save(good, tmp_path / "module.pth")
    # The Python keyword, not a command-line flag: predict and eval have no --allow-pickle.
    with pytest.raises(WeightsError, match="allow_pickle=True") as refused:
        load_checkpoint(TinyDetector(3), tmp_path / "module.pth")
    assert "--allow-pickle" not in str(refused.value)
    assert load_checkpoint(TinyDetector(3), tmp_path / "module.pth", allow_pickle=True).complete
    torch.save({"weights": [1, 2]}, tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="not a state_dict"):
        load_checkpoint(TinyDetector(3), tmp_path / "list.pth")


# ----------------------------------------------------------------------------------------------
# ImageNet backbone initialisation
# ----------------------------------------------------------------------------------------------
def test_imagenet_backbone_init_from_torchvision_resnet(tmp_path):
    import torchvision

    from swiftdet.model.build import build_model

    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None)
    torch.save(tv.state_dict(), tmp_path / "resnet18-imagenet.pth")
    model = build_model(small_rcnn_config(3, mask=False).model)
    heads_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    report = load_backbone_imagenet(model, tmp_path / "resnet18-imagenet.pth")
    assert not report.missing and not report.unexpected and not report.skipped, report.summary()
    sd = model.state_dict()
    for k, v in tv.state_dict().items():
        if not k.startswith("fc.") and f"backbone.{k}" in sd:
            assert torch.equal(sd[f"backbone.{k}"], v), k
    assert all(torch.equal(sd[k], v) for k, v in heads_before.items())
    # A ResNet-50 file does not fit a ResNet-18 backbone.
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(WeightsError, match="do not fit"):
        load_backbone_imagenet(model, tmp_path / "r50.pth")
