"""Videos and cameras for `swiftdet predict`: `--input video.mp4 --output DIR` and `--input 0`.

A video file becomes DIR/<name>.mp4, every frame drawn with its detections (same frame count and
rate, H.264, audio dropped), and DIR/<name>.json with the detections of every frame::

    {"video": "in.mp4", "frame_rate": 25.0, "frame_rate_fraction": "25/1",
     "categories": [{"id": 1, "name": "car"}, ...],
     "frames": [{"frame": 0, "time": 0.0, "detections": [
         {"bbox": [x, y, w, h], "score": 0.93, "category_id": 1, "label": 0, "class_name": "car",
          "segmentation": {"size": [H, W], "counts": "..."},      (mask models: compressed RLE)
          "keypoints": [x1, y1, s1, ...]}, ...]}, ...],         (keypoint models)
     "num_frames": 12, "width": 96, "height": 64}          (of the frames as shown, upright)

Detections are what predicting each frame as an image gives (``bbox``, ``segmentation`` and
``keypoints`` as in predictions.json). Frames go through the model ``--batch-size`` at a time.

A camera (``--input 0``) is shown live in a window with the frames per second drawn on it; the
window is tkinter's (Python's standard library, so no extra package, and no OpenGL), frames are
handed to it through Pillow's ImageTk. The model sees the newest frame each time it is free (older
ones are dropped), so the picture lags by one prediction, not by a growing queue. Without a display
or without a camera predict says so and exits with code 2.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from swiftdet.errors import InputError

# (RGB image (H, W, 3) uint8, its Instances) -> the drawn image.
DrawFn = Callable[[np.ndarray, object], np.ndarray]


def video_output_stems(paths: list[Path]) -> list[str]:
    """A distinct output stem per input video: its stem, then '-2', '-3'... for repeated stems."""
    stems, used = [], set()
    for p in paths:
        stem, n = p.stem, 1
        while stem.lower() in used:
            n += 1
            stem = f"{p.stem}-{n}"
        used.add(stem.lower())
        stems.append(stem)
    return stems


def _detections(instances, index: int, category_ids: list[int], class_names: list[str] | None) -> list[dict]:
    """The json entries of one frame's detections: COCO result fields plus label and class name."""
    from swiftdet.evaluation.results import instances_to_coco_results

    entries = instances_to_coco_results(instances, index, category_ids)
    labels = instances.labels.tolist() if len(instances) else []
    for entry, label in zip(entries, labels):
        del entry["image_id"]  # the frame's entry holds its index
        entry["label"] = int(label)
        if class_names:
            entry["class_name"] = class_names[label]
    return entries


def predict_video(predictor, path: Path, out_video: Path | None, out_json: Path, *, draw: DrawFn | None) -> int:
    """Predict every frame of ``path``; write the drawn video (unless ``draw`` is None) and the json.

    Both files appear only when the whole video is done (written under temporary names, then
    renamed). Returns the number of frames.

    Raises:
        InputError: the video cannot be read (or is damaged part way), or holds no frame.
    """
    from swiftdet.cli.progress import Progress
    from swiftdet.inference.video import VideoWriter, open_video
    from swiftdet.utils.io import atomic_write

    category_ids, names = predictor.category_ids, predictor.class_names
    with open_video(path) as reader:
        writer = VideoWriter(out_video, reader.rate) if out_video is not None and draw is not None else None
        rate = reader.rate
        head = {"video": str(path), "frame_rate": float(rate),
                "frame_rate_fraction": f"{rate.numerator}/{rate.denominator}",
                "categories": [{"id": cid, **({"name": names[i]} if names else {})}
                               for i, cid in enumerate(category_ids)]}
        progress = Progress(reader.num_frames, "frame", path.name)
        count, size = 0, (reader.height, reader.width)

        def write_json(f) -> None:
            # Streamed frame by frame: a long video's detections never sit in memory all at once.
            nonlocal count, size
            f.write(json.dumps(head)[:-1] + ', "frames": [')
            for batch in reader.batches(predictor.batch_size):
                for frame, instances in zip(batch, predictor([frame.image for frame in batch])):
                    entry = {"frame": frame.index, "time": frame.time,
                             "detections": _detections(instances, frame.index, category_ids, names)}
                    f.write(("" if count == 0 else ",\n") + json.dumps(entry))
                    count += 1
                    size = frame.image.shape[:2]  # upright: a rotated video's sides are swapped
                    if writer is not None:
                        writer.write(draw(frame.image, instances))
                progress.update(len(batch))
            if count == 0:
                raise InputError(f"Video '{path}' holds no frame that could be decoded: nothing to predict.")
            f.write(f'], "num_frames": {count}, "width": {size[1]}, "height": {size[0]}}}\n')

        try:
            atomic_write(out_json, write_json, mode="w")
            if writer is not None:
                writer.close()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            seconds = progress.close()
    print(f"{path}: {count} frames in {seconds:.1f} s ({count / max(seconds, 1e-9):.2f} frames/s)", file=sys.stderr)
    return count


def predict_videos(predictor, paths: list[Path], out_dir: Path, *, draw: DrawFn | None) -> int:
    """Predict each video into out_dir (<stem>.mp4 when drawn, <stem>.json); returns the frame total."""
    out_dir.mkdir(parents=True, exist_ok=True)
    total = 0
    for path, stem in zip(paths, video_output_stems(paths)):
        out_video = out_dir / f"{stem}.mp4" if draw is not None else None
        frames = predict_video(predictor, path, out_video, out_dir / f"{stem}.json", draw=draw)
        total += frames
        print(f"{path}: {frames} frames, {'drawn video ' + str(out_video) + ' and ' if out_video else ''}"
              f"detections {out_dir / (stem + '.json')}")
    return total


# ---------------------------------------------------------------------------------------------- camera


def check_display() -> None:
    """Refuse early where no window can open: on Linux / BSD Tk needs an X display ($DISPLAY).

    Raises:
        InputError: no $DISPLAY, saying what to run instead.
    """
    if sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")) and not os.environ.get("DISPLAY"):
        raise InputError("No display to show the camera on: $DISPLAY is not set (a server, a container or an SSH "
                         "session without X forwarding; Wayland desktops provide it through XWayland). Run this on "
                         "a desktop, use ssh -X, or record a video and predict it: --input video.mp4 --output DIR.")


class LiveWindow:
    """A tkinter window showing RGB frames; closed by its close button, Escape or q.

    Raises:
        InputError: no display (see :func:`check_display`), tkinter missing, or Tk cannot open a window.
    """

    def __init__(self, title: str):
        check_display()
        try:
            import tkinter
            from PIL import ImageTk
        except ImportError as e:
            raise InputError(f"The live window needs tkinter (and Pillow's ImageTk), which cannot be imported: {e}. "
                             "Install your Python's Tk support (Debian / Ubuntu: apt install python3-tk).") from None
        try:
            self._root = tkinter.Tk()
        except tkinter.TclError as e:
            raise InputError(f"Cannot open a window on display '{os.environ.get('DISPLAY', '')}': {e}. Check that "
                             "the display is reachable (xdpyinfo), or predict a recorded video: --input video.mp4 "
                             "--output DIR.") from None
        self._tk, self._image_tk = tkinter, ImageTk
        self.is_open = True
        self._root.title(title)
        self._root.protocol("WM_DELETE_WINDOW", self.close)
        for key in ("<Escape>", "q"):
            self._root.bind(key, lambda _event: self.close())
        self._label = tkinter.Label(self._root)
        self._label.pack()

    def show(self, image: np.ndarray, title: str | None = None) -> None:
        """Show one (H, W, 3) uint8 RGB image and handle the window's events."""
        from PIL import Image

        if not self.is_open:
            return
        try:
            photo = self._image_tk.PhotoImage(Image.fromarray(image))
            self._label.configure(image=photo)
            self._label.image = photo  # Tk keeps no reference of its own: without this the picture vanishes
            if title is not None:
                self._root.title(title)
            self._root.update()
        except self._tk.TclError:  # destroyed between two frames
            self.is_open = False

    def close(self) -> None:
        if self.is_open:
            self.is_open = False
            try:
                self._root.destroy()
            except self._tk.TclError:
                pass


class _NewestFrame:
    """Reads a camera on a thread and keeps only its newest frame, so that a model slower than the
    camera shows the present, not a backlog. Errors of the reader are raised again by :meth:`get`."""

    def __init__(self, reader):
        self._reader = reader
        self._frame = None
        self._error: BaseException | None = None
        self._ended = False
        self._stop = False
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._read, name="swiftdet-camera", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for frame in self._reader:
                with self._ready:
                    self._frame = frame
                    self._ready.notify()
                if self._stop:
                    break
        except BaseException as e:  # handed to the main thread
            self._error = e
        with self._ready:
            self._ended = True
            self._ready.notify()

    def get(self, timeout: float):
        """The newest frame not yet taken; None once the camera has stopped and every frame is taken.

        Raises:
            InputError: no frame came within ``timeout`` seconds.
        """
        with self._ready:
            if not self._ready.wait_for(lambda: self._frame is not None or self._ended, timeout):
                raise InputError(f"{self._reader.name} sent no frame for {timeout:.0f} s. Check that it is not in "
                                 "use by another program, and unplug and plug it in again.")
            frame, self._frame = self._frame, None
        if frame is None and self._error is not None:
            raise self._error
        return frame

    def stop(self) -> None:
        self._stop = True
        self._thread.join(timeout=2.0)


def _draw_fps(image: np.ndarray, fps: float) -> np.ndarray:
    """The image with 'N.N FPS' written in its top-left corner, white on black."""
    from PIL import Image, ImageDraw, ImageFont

    picture = Image.fromarray(image)
    pen = ImageDraw.Draw(picture)
    size = max(10, min(40, min(image.shape[:2]) // 20))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        font = ImageFont.load_default()
    text = f"{fps:.1f} FPS"
    x0, y0, x1, y1 = pen.textbbox((4, 4), text, font=font)
    pen.rectangle([x0 - 2, y0 - 2, x1 + 2, y1 + 2], fill=(0, 0, 0))
    pen.text((4, 4), text, fill=(255, 255, 255), font=font)
    return np.asarray(picture)


def run_camera(predictor, index: int, draw: DrawFn, *, window_factory=LiveWindow, frame_timeout: float = 10.0,
               max_frames: int | None = None) -> int:
    """Show camera ``index`` live with its detections and the frames per second until the window is
    closed (or the camera stops, or ``max_frames`` frames were shown); returns the frames shown.

    The display is checked before the camera is opened (no point in switching a camera on with
    nowhere to show it). The FPS is that of the whole loop (prediction, drawing, showing), averaged
    over the last few frames.

    Raises:
        InputError: no display, no such camera, or a camera that sends nothing.
    """
    from swiftdet.inference.video import open_camera

    window = window_factory(f"swiftdet: camera {index}")
    try:
        reader = open_camera(index)
    except BaseException:
        window.close()
        raise
    newest = _NewestFrame(reader)
    shown, fps, last = 0, None, None
    try:
        while window.is_open and (max_frames is None or shown < max_frames):
            frame = newest.get(frame_timeout)
            if frame is None:
                print(f"{reader.name} stopped sending frames", file=sys.stderr)
                break
            instances = predictor([frame.image])[0]
            now = time.perf_counter()
            if last is not None:
                # A moving average: steady enough to read, still following a change within a second or so.
                rate = 1.0 / max(now - last, 1e-6)
                fps = rate if fps is None else 0.9 * fps + 0.1 * rate
            last = now
            drawn = draw(frame.image, instances)
            title = f"swiftdet: camera {index}"
            if fps is not None:
                drawn = _draw_fps(drawn, fps)
                title += f", {fps:.1f} FPS"
            window.show(drawn, title)
            shown += 1
    finally:
        newest.stop()
        window.close()
        reader.close()
    print(f"camera {index}: {shown} frames shown" + (f", {fps:.1f} FPS at the end" if fps is not None else ""),
          file=sys.stderr)
    return shown
