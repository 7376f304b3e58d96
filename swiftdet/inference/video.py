"""Video files and cameras in, video files out: RGB numpy frames for the :class:`Predictor`.

Decoding and encoding go through PyAV (``pip install -e ".[video]"``), the Python binding of
ffmpeg's libraries. Its wheels bundle ffmpeg with libx264 for every platform, so an H.264 .mp4 can
be written anywhere, and it needs no GUI or OpenGL libraries. OpenCV was the other choice: the
``opencv-python`` wheel's ``import cv2`` fails on machines without libGL (servers, slim containers),
and ``opencv-python-headless`` has no window, so neither kind would have spared the window code.

A :class:`VideoReader` yields :class:`Frame` objects (index, time, (H, W, 3) uint8 RGB image, upright
when the file says the camera was rotated); a :class:`VideoWriter` encodes such images at a fixed
frame rate into an .mp4 without audio. PyAV is imported only when a video is opened.
"""
from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from swiftdet.errors import InputError

__all__ = ["VIDEO_EXTENSIONS", "Frame", "VideoReader", "VideoWriter", "camera_device", "camera_index",
           "frame_to_rgb", "is_video_file", "open_camera", "open_video", "require_av"]

# File types predicted as videos (ffmpeg reads many more; these are the ones people name videos by).
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp")
INSTALL_HINT = 'pip install -e ".[video]" (or pip install av)'


def require_av():
    """The av module (PyAV); an InputError naming the pip extra when it is not installed."""
    try:
        import av
    except ImportError:
        raise InputError(f"Reading and writing videos needs PyAV (the av package), which is not installed: "
                         f"{INSTALL_HINT}.") from None
    return av


def is_video_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a video by its extension (the file need not exist)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def camera_index(text: str) -> int | None:
    """The camera index that an ``--input`` value names ("0", "1", ...), or None for a path.

    A digit string that is an existing file or folder stays a path.
    """
    if text.isdigit() and not os.path.exists(text):
        return int(text)
    return None


@dataclass
class Frame:
    """One decoded frame.

    Attributes:
        index: position in the video, from 0.
        time: presentation time in seconds, counted from the first frame.
        image: (H, W, 3) uint8 RGB, upright.
    """

    index: int
    time: float
    image: np.ndarray


class VideoReader:
    """The frames of a video file or a camera, decoded in order (iterate it, or :meth:`batches`).

    Attributes:
        name: the file (or camera device) it reads, for messages.
        rate: frames per second (a Fraction; the stream's average rate).
        num_frames: the frame count the container declares, or None when it does not say (cameras,
            some .mkv / .webm files). The frames decoded may differ slightly from a declared count.
        width, height: of the decoded frames before any rotation.
    """

    def __init__(self, container, name: str):
        self._container = container
        self.name = name
        if not container.streams.video:
            container.close()
            raise InputError(f"'{name}' holds no video stream (only {len(container.streams)} other streams, e.g. "
                             "audio). Give a video file.")
        self._stream = container.streams.video[0]
        # Decoding on several threads: frames are still returned in order.
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        if not rate:
            container.close()
            raise InputError(f"'{name}' declares no frame rate, so its frames cannot be timed. Re-encode it with a "
                             "constant rate, e.g. ffmpeg -i IN -r 25 OUT.mp4.")
        self.rate = Fraction(rate)
        self.num_frames = int(self._stream.frames) or None
        self.width = int(self._stream.codec_context.width)
        self.height = int(self._stream.codec_context.height)

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def __iter__(self) -> Iterator[Frame]:
        av = require_av()
        start = None
        index = 0
        try:
            for decoded in self._container.decode(self._stream):
                seconds = decoded.time if decoded.time is not None else index / float(self.rate)
                start = seconds if start is None else start
                yield Frame(index, round(seconds - start, 6), frame_to_rgb(decoded, self.width, self.height))
                index += 1
        except av.error.FFmpegError as e:
            # A damaged file: say where it broke and how to mend it.
            raise InputError(f"Cannot decode frame {index} of '{self.name}': {e}. The file may be damaged or "
                             "truncated; re-encode it (ffmpeg -i IN OUT.mp4) and predict again.") from None

    def batches(self, size: int) -> Iterator[list[Frame]]:
        """Lists of up to ``size`` consecutive frames (the last one may be shorter)."""
        batch: list[Frame] = []
        for frame in self:
            batch.append(frame)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch


def frame_to_rgb(frame, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a decoded PyAV frame, at the stream's ``width`` x ``height`` (a frame of
    another size mid-stream is rescaled, so that every frame fits one output video), turned upright
    by the file's rotation (phone videos are stored sideways with a rotation to show them by)."""
    image = frame.to_ndarray(format="rgb24", width=width, height=height)
    # PyAV gives the counter-clockwise angle that shows the frame upright; np.rot90 turns counter-clockwise.
    turns = round(getattr(frame, "rotation", 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def open_video(path: str | os.PathLike) -> VideoReader:
    """A :class:`VideoReader` of a video file.

    Raises:
        InputError: PyAV is missing, the file does not exist, or ffmpeg cannot read it as a video.
    """
    av = require_av()
    if not os.path.isfile(path):
        raise InputError(f"Video '{path}' does not exist.")
    try:
        container = av.open(os.fspath(path))
    except av.error.FFmpegError as e:
        raise InputError(f"Cannot read '{path}' as a video: {e}. Give a video file ffmpeg can read "
                         f"({', '.join(VIDEO_EXTENSIONS)}).") from None
    return VideoReader(container, os.fspath(path))


def camera_device(index: int) -> tuple[str, str, dict]:
    """(device, ffmpeg input format, options) of camera ``index``: /dev/video<index> through
    video4linux2 on Linux, the index-th AVFoundation device on macOS. Opens nothing (a quick check
    before a model is loaded).

    Raises:
        InputError: there is no such camera (Linux; naming the cameras there are), or the platform
            is one whose cameras ffmpeg names rather than numbers (Windows).
    """
    if sys.platform.startswith("linux"):
        device = f"/dev/video{index}"
        if not os.path.exists(device):
            found = sorted(glob.glob("/dev/video*"))
            there = (f"the cameras here are {', '.join(found)}" if found
                     else "this machine has no camera (no /dev/video*)")
            raise InputError(f"No camera {index}: {device} does not exist; {there}. Plug in a camera, give another "
                             "index, or predict a recorded video: --input video.mp4 --output DIR.")
        return device, "v4l2", {}
    if sys.platform == "darwin":
        # "N" is the N-th video device without audio; AVFoundation refuses its default 29.97 on many cameras.
        return str(index), "avfoundation", {"framerate": "30"}
    raise InputError(f"Camera indices are read on Linux (video4linux2) and macOS (AVFoundation); on {sys.platform} "
                     "ffmpeg names cameras rather than numbering them. Record a video and predict it: "
                     "--input video.mp4 --output DIR.")


def open_camera(index: int) -> VideoReader:
    """A :class:`VideoReader` of camera ``index`` (see :func:`camera_device`).

    Raises:
        InputError: PyAV is missing, there is no such camera, or it cannot be opened.
    """
    av = require_av()
    device, fmt, options = camera_device(index)
    try:
        container = av.open(device, format=fmt, options=options)
    except av.error.FFmpegError as e:
        raise InputError(f"Cannot open camera {index} ({device}): {e}. Another program may be using it, or this "
                         "user may lack the rights to it (on Linux: the video group).") from None
    return VideoReader(container, f"camera {index} ({device})")


class VideoWriter:
    """Encodes (H, W, 3) uint8 RGB images into an H.264 .mp4 at a fixed frame rate, without audio.

    The file is written beside ``path`` under a temporary name and renamed onto it by :meth:`close`,
    so that an interrupted run never leaves a half-written video under the final name (:meth:`abort`
    removes it). Frame size is taken from the first image; even sizes are encoded as yuv420p (what
    every player shows), odd ones as yuv444p, which H.264's 4:2:0 cannot hold (some players, browsers
    among them, do not show 4:4:4).

    Args:
        path: the .mp4 to write.
        rate: frames per second (each frame lasts 1 / rate).
        crf: x264's constant rate factor (18 is visually lossless; higher is smaller and worse).
    """

    def __init__(self, path: str | os.PathLike, rate: Fraction, crf: int = 18):
        self._av = require_av()
        self.path = Path(path)
        self.rate = Fraction(rate)
        self.crf = crf
        self.frames = 0
        self._tmp = self.path.with_name(f".{self.path.name}.tmp")
        self._container = None
        self._stream = None

    def write(self, image: np.ndarray) -> None:
        if self._container is None:
            self._open(image.shape[0], image.shape[1])
        if image.shape[:2] != (self._stream.height, self._stream.width):
            raise InputError(f"Frame {self.frames} written to '{self.path}' is {image.shape[1]}x{image.shape[0]}, the "
                             f"video is {self._stream.width}x{self._stream.height}: every frame needs one size.")
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = self.frames  # the stream's time base is 1 / rate: frame i shows at i / rate
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def _open(self, height: int, width: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = self._av.open(os.fspath(self._tmp), mode="w", format="mp4")
        self._stream = self._container.add_stream("libx264", rate=self.rate)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        self._stream.time_base = 1 / self.rate
        self._stream.options = {"crf": str(self.crf), "preset": "veryfast"}

    def close(self) -> Path:
        """Flush the encoder and put the file in place; returns its path."""
        if self._container is None:
            raise InputError(f"No frame was written to '{self.path}': a video needs at least one frame.")
        for packet in self._stream.encode():  # the frames the encoder still holds
            self._container.mux(packet)
        self._container.close()
        self._container = None
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop what was written (after an error or an interrupt)."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # closing a half-written file may fail too; it is removed either way
                pass
            self._container = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
