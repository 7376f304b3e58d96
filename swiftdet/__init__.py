"""swiftdet: object detection, instance segmentation and keypoint detection in plain PyTorch.

Layers, each importable on its own: ``swiftdet.config`` → ``swiftdet.data`` → ``swiftdet.model`` →
``swiftdet.engine`` → ``swiftdet.evaluation`` (and ``swiftdet.inference``, ``swiftdet.weights``,
``swiftdet.visualization``). The command line is ``swiftdet`` (``swiftdet.cli.main``).
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("swiftdet")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
