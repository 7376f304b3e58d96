"""Issue 15, parts 1 and 7: `swiftdet predict` on videos (a drawn .mp4 and a per-frame json) and on a
camera (a live window; clear errors without a camera or a display), and progress bars with rate and
ETA. The videos are made here with PyAV: 12 frames of 64x96 with two moving rectangles."""
from __future__ import annotations

import io
import itertools
import json
import sys
import time
from fractions import Fraction

import numpy as np
import pytest
import torch

from swiftdet.cli import video as video_cli
from swiftdet.cli.main import main
from swiftdet.cli.progress import Progress
from swiftdet.config.core import config_to_dict, load_config
from swiftdet.errors import InputError
from swiftdet.inference import Predictor
from swiftdet.inference import video as video_io
from swiftdet.model.build import build_model
from swiftdet.utils.io import atomic_torch_save
from swiftdet.weights import make_checkpoint

av = pytest.importorskip("av", reason='PyAV is in the test extra: pip install -e ".[test]"')

# A Mask R-CNN small enough to run 12 frames in well under a second.
TINY = ["model.backbone.depth=18", "model.num_classes=3", "model.fpn.out_channels=16", "model.box_head.fc_dim=16",
        "model.mask_head.conv_dim=8", "model.mask_head.num_convs=1", "model.box_head.detections_per_image=5",
        "model.rpn.pre_nms_topk_test=50", "model.rpn.post_nms_topk_test=20",
        "input.min_size_test=64", "input.max_size_test=96"]
CONFIG = "mask_rcnn_R_50_FPN_1x"
NUM_FRAMES, RATE, HEIGHT, WIDTH = 12, Fraction(25, 1), 64, 96


def _frame(i: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    image = np.full((height, width, 3), 40, np.uint8)
    image[10:30, 5 + 5 * i:25 + 5 * i] = (250, 30, 30)  # moves right
    image[35:60, 70 - 4 * i:90 - 4 * i] = (30, 200, 60)  # moves left
    return image


def _write_video(path, frames: int = NUM_FRAMES, rate: Fraction = RATE, height: int = HEIGHT, width: int = WIDTH):
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    for i in range(frames):
        for packet in stream.encode(av.VideoFrame.from_ndarray(_frame(i, height, width), format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def _decode(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(weights path, video path) of a random tiny Mask R-CNN with class names and a 12-frame video."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("video")
    cfg = load_config(CONFIG, TINY)
    weights = root / "tiny.pth"
    meta = {"class_names": ["red", "green", "grey"], "category_ids": [5, 7, 9]}
    atomic_torch_save(make_checkpoint(build_model(cfg.model), config_to_dict(cfg), meta), weights)
    return weights, _write_video(root / "clip.mp4")


def _predict(weights, *args) -> int:
    return main(["predict", "--config", CONFIG, *TINY, "--weights", str(weights), "--score-thresh", "0", *args])


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(scope="module")
def runs(world, tmp_path_factory):
    """(video output folder, images output folder, what both runs wrote to stderr): the video
    predicted (drawn, 4 frames a pass) and its frames saved as PNG and predicted as a folder of
    images (4 a pass), with stderr a terminal."""
    from PIL import Image

    weights, clip = world
    root = tmp_path_factory.mktemp("runs")
    frames = root / "frames"
    frames.mkdir()
    for i, image in enumerate(_decode(clip)):  # PNG is lossless: the very pixels the video run sees
        Image.fromarray(image).save(frames / f"{i:03d}.png")
    tty = _Terminal()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stderr", tty)
        assert _predict(weights, "--input", str(clip), "--output", str(root / "video"), "--batch-size", "4",
                        "--draw-thresh", "0") == 0
        assert _predict(weights, "--input", str(frames), "--output", str(root / "images"), "--no-draw",
                        "--batch-size", "4") == 0
    return root / "video", root / "images", tty.getvalue()


@pytest.fixture(scope="module")
def predictor(world):
    return Predictor(load_config(CONFIG, TINY), str(world[0]), score_thresh=0.0)


def test_video_gives_a_drawn_video_of_the_same_frames_rate_and_size_and_a_json_per_frame(world, runs):
    _, clip = world
    out, _, err = runs
    assert sorted(p.name for p in out.iterdir()) == ["clip.json", "clip.mp4"]  # no temporary file left
    with av.open(str(out / "clip.mp4")) as container:
        stream = container.streams.video[0]
        assert not container.streams.audio
        assert stream.average_rate == RATE
        assert (stream.codec_context.width, stream.codec_context.height) == (WIDTH, HEIGHT)
        drawn = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(drawn) == NUM_FRAMES
    # Every detection is drawn (--draw-thresh 0): the frames are not the input's.
    assert all(np.abs(d.astype(int) - s.astype(int)).mean() > 2 for d, s in zip(drawn, _decode(clip)))
    data = json.loads((out / "clip.json").read_text())
    assert (data["width"], data["height"], data["frame_rate"], data["num_frames"]) == (WIDTH, HEIGHT, 25.0, NUM_FRAMES)
    assert data["frame_rate_fraction"] == "25/1" and data["video"] == str(clip)
    assert data["categories"] == [{"id": 5, "name": "red"}, {"id": 7, "name": "green"}, {"id": 9, "name": "grey"}]
    assert [f["frame"] for f in data["frames"]] == list(range(NUM_FRAMES))
    assert [f["time"] for f in data["frames"]] == pytest.approx([i / 25 for i in range(NUM_FRAMES)])
    detection = data["frames"][0]["detections"][0]
    assert set(detection) == {"bbox", "score", "category_id", "label", "class_name", "segmentation"}
    assert detection["class_name"] == ["red", "green", "grey"][detection["label"]]
    assert detection["category_id"] == [5, 7, 9][detection["label"]]
    assert detection["segmentation"]["size"] == [HEIGHT, WIDTH]
    assert f"clip.mp4: {NUM_FRAMES} frames in" in err and "frames/s)" in err


def test_video_results_equal_predicting_its_frames_as_images(runs):
    video_out, images_out, _ = runs
    by_image: dict[int, list[dict]] = {}
    for r in json.loads((images_out / "predictions.json").read_text()):
        by_image.setdefault(r["image_id"], []).append(
            {k: r[k] for k in ("bbox", "score", "category_id", "segmentation")})
    video = json.loads((video_out / "clip.json").read_text())
    assert len(video["frames"]) == NUM_FRAMES
    assert sum(len(f["detections"]) for f in video["frames"]) > 0
    for entry in video["frames"]:
        got = [{k: d[k] for k in ("bbox", "score", "category_id", "segmentation")} for d in entry["detections"]]
        assert got == by_image.get(entry["frame"], [])


def test_predict_over_a_folder_and_a_video_draw_a_bar_with_rate_on_a_terminal(runs):
    text = runs[2]
    assert "clip.mp4: 100%" in text and f"{NUM_FRAMES}/{NUM_FRAMES}" in text and "frame/s" in text
    assert "predict: 100%" in text and "img/s" in text


def test_no_draw_writes_the_json_only(world, predictor, tmp_path):
    short = _write_video(tmp_path / "short.mp4", frames=3)
    out = tmp_path / "out"
    assert video_cli.predict_videos(predictor, [short, short], out, draw=None) == 6
    # Two inputs with one name get two outputs; no video is drawn.
    assert sorted(p.name for p in out.iterdir()) == ["short-2.json", "short.json"]
    assert json.loads((out / "short.json").read_text())["num_frames"] == 3


def test_writer_keeps_odd_sizes_and_the_rate(tmp_path):
    path = tmp_path / "odd.mp4"
    with video_io.VideoWriter(path, Fraction(30000, 1001)) as writer:
        for i in range(5):
            writer.write(_frame(i, 33, 47))
    with video_io.open_video(path) as reader:
        assert (reader.width, reader.height, reader.rate) == (47, 33, Fraction(30000, 1001))
        frames = list(reader)
    assert [f.index for f in frames] == list(range(5)) and frames[0].image.shape == (33, 47, 3)
    assert frames[4].time == pytest.approx(4 * 1001 / 30000, abs=1e-4)
    # Near-lossless (crf 18): the rectangles are where they were written.
    assert np.abs(frames[2].image.astype(int) - _frame(2, 33, 47).astype(int)).mean() < 6
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_interrupted_writer_leaves_no_file(tmp_path):
    path = tmp_path / "cut.mp4"
    with pytest.raises(KeyboardInterrupt):
        with video_io.VideoWriter(path, RATE) as writer:
            writer.write(_frame(0))
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_rotated_frames_are_turned_upright():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)

    class Rotated:  # a decoded frame whose file says: show me turned 90 degrees counter-clockwise
        rotation = 90

        def to_ndarray(self, format, width, height):
            assert (format, width, height) == ("rgb24", 3, 2)
            return image

    upright = video_io.frame_to_rgb(Rotated(), 3, 2)
    assert upright.shape == (3, 2, 3) and np.array_equal(upright, np.rot90(image))


def test_unreadable_and_missing_videos_and_missing_pyav_are_clear(world, tmp_path, capsys, monkeypatch):
    weights, clip = world
    broken = tmp_path / "in" / "broken.mp4"
    broken.parent.mkdir()
    broken.write_bytes(b"not a video at all" * 10)
    assert _predict(weights, "--input", str(broken), "--output", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "Cannot read" in err and "broken.mp4" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
    assert _predict(weights, "--input", str(tmp_path / "gone.mp4"), "--output", str(tmp_path / "o")) == 2
    # The CLI wraps its messages at 100 columns, where depends on the temporary path's length.
    assert "does not exist" in " ".join(capsys.readouterr().err.split())
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    assert _predict(weights, "--input", str(clip), "--output", str(tmp_path / "o")) == 2
    assert '".[video]"' in " ".join(capsys.readouterr().err.split())


def test_flags_that_do_not_apply_to_videos_or_cameras_are_refused(world, tmp_path, capsys):
    weights, clip = world
    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(_frame(0)).save(image)
    cases = [
        (["--input", str(clip), str(image), "--output", str(tmp_path / "o")], "separate runs"),
        (["--input", str(clip), "--coco-json", str(tmp_path / "gt.json"), "--output", str(tmp_path / "o")],
         "--coco-json"),
        (["--input", str(clip)], "--output DIR"),
        (["--input", str(clip), "--output", str(clip.parent)], "overwrite"),  # the video's own folder
        (["--input", "0", "--output", str(tmp_path / "o")], "--output does not apply"),
        (["--input", "0", "--batch-size", "2"], "--batch-size does not apply"),
        (["--input", "0", str(clip)], "give it alone"),
        (["--input", str(clip.parent), "--output", str(tmp_path / "o")], "It holds videos"),  # a folder of videos
    ]
    for args, said in cases:
        assert _predict(weights, *args) == 2, args
        err = " ".join(capsys.readouterr().err.split())
        assert said in err and "Traceback" not in err, (args, err)


def test_camera_without_a_display_says_so(world, monkeypatch, capsys):
    weights, _ = world
    if not sys.platform.startswith("linux"):
        pytest.skip("the $DISPLAY check is for Linux / BSD")
    monkeypatch.delenv("DISPLAY", raising=False)
    assert _predict(weights, "--input", "0") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "No display" in err and "$DISPLAY is not set" in err and "--input video.mp4" in err


def test_camera_without_a_camera_says_so(world, monkeypatch, capsys):
    weights, _ = world
    if not sys.platform.startswith("linux"):
        pytest.skip("cameras are numbered /dev/videoN on Linux")
    monkeypatch.setenv("DISPLAY", ":97")  # past the display check; the camera is looked for first
    assert _predict(weights, "--input", "97") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "No camera 97" in err and "/dev/video97 does not exist" in err


def test_a_display_that_cannot_be_reached_says_so(monkeypatch):
    pytest.importorskip("tkinter")
    if not sys.platform.startswith("linux"):
        pytest.skip("X displays are named by $DISPLAY on Linux")
    monkeypatch.setenv("DISPLAY", ":97")  # no X server listens there
    with pytest.raises(InputError, match="Cannot open a window on display ':97'"):
        video_cli.LiveWindow("test")


class _FakeWindow:
    """Stands in for the tkinter window: keeps what it is shown, closes after three frames."""

    def __init__(self, title):
        self.is_open, self.shown, self.titles = True, [], []

    def show(self, image, title=None):
        self.shown.append(image)
        self.titles.append(title)
        if len(self.shown) == 3:
            self.is_open = False

    def close(self):
        self.is_open = False


def test_camera_loop_shows_drawn_frames_with_fps_until_the_window_closes(world, predictor, monkeypatch, capsys):
    _, clip = world

    class Camera:  # sends the test video's frames over and over, 100 a second, until it is closed
        name = "camera 0 (test)"

        def __iter__(self):
            images = _decode(clip)
            for i in itertools.count():
                time.sleep(0.01)
                yield video_io.Frame(i, i / 100, images[i % len(images)])

        def close(self):
            pass

    monkeypatch.setattr(video_io, "open_camera", lambda index: Camera())
    windows = []

    def factory(title):
        windows.append(_FakeWindow(title))
        return windows[-1]

    drawn_calls = []

    def draw(image, instances):
        drawn_calls.append(len(instances))
        return image.copy()

    shown = video_cli.run_camera(predictor, 0, draw, window_factory=factory)
    assert shown == 3 and len(drawn_calls) == 3
    window = windows[0]
    assert window.titles[0] == "swiftdet: camera 0" and "FPS" in window.titles[2]
    assert window.shown[2].shape == (HEIGHT, WIDTH, 3)
    # The FPS is written white on black in the top-left corner of the frames after the first (the
    # video has neither colour there: grey 40 and a red rectangle).
    corner = window.shown[2][:24, :48].reshape(-1, 3)
    assert (corner == 0).all(axis=1).any() and (corner > 200).all(axis=1).any()  # white text, anti-aliased
    first = window.shown[0][:24, :48].reshape(-1, 3)
    assert not (first == 0).all(axis=1).any()
    assert "camera 0: 3 frames shown" in capsys.readouterr().err


def test_progress_bar_on_a_terminal_and_lines_elsewhere():
    tty = _Terminal()
    with Progress(12, "frame", "clip.mp4", file=tty) as progress:
        progress.update(4)
        progress.update(8)
    assert "12/12" in tty.getvalue() and "frame/s" in tty.getvalue() and "clip.mp4" in tty.getvalue()
    log = io.StringIO()  # not a terminal: no bar, a line per `every` seconds (here each update)
    progress = Progress(10, "img", "predict", every=0.0, file=log)
    progress.update(5)
    progress.close()
    line = log.getvalue().strip()
    assert line.startswith("predict: 5/10 img, ") and " img/s, eta " in line and "\r" not in log.getvalue()


def test_a_digit_input_is_a_camera_unless_such_a_file_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert video_io.camera_index("0") == 0 and video_io.camera_index("12") == 12
    (tmp_path / "0").write_bytes(b"")
    assert video_io.camera_index("0") is None  # the file named 0
    assert video_io.camera_index("cam0") is None and video_io.camera_index("-1") is None
    assert video_io.is_video_file("a/B.MP4") and video_io.is_video_file("x.webm") and not video_io.is_video_file("x.png")
