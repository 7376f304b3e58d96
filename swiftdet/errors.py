"""Errors a user can cause. The CLI prints them as one paragraph, without a traceback.

Everything the user can get wrong (a config key, a dataset file, a weights file, an input image)
raises a subclass of :class:`SwiftdetError` whose message names the offending thing (file, image id,
annotation id, key) and says what to do. Programming errors stay ordinary exceptions.
"""


class SwiftdetError(Exception):
    """Base class of user-facing errors."""


class ConfigError(SwiftdetError, ValueError):
    """An unknown config key, a value of the wrong type, an invalid combination of values."""


class DatasetError(SwiftdetError, ValueError):
    """A dataset file that is missing, not COCO, or holds an invalid annotation."""


class EvaluationError(SwiftdetError, ValueError):
    """Results that do not fit the ground truth (unknown image ids, wrong format)."""


class WeightsError(SwiftdetError, ValueError):
    """A checkpoint that does not exist, cannot be read, or belongs to another architecture."""


class InputError(SwiftdetError, ValueError):
    """An input image or path the predictor cannot use."""


class OutputFolderInUseError(SwiftdetError, RuntimeError):
    """Another training process (alive, named by its pid and host) holds the lock of the output folder."""


class OutputWriteError(SwiftdetError, OSError):
    """A run's metrics.jsonl could not be appended to: disk full, folder removed, permissions."""


class TrainingProcessDiedError(SwiftdetError, RuntimeError):
    """A process of a multi-process run ended without a Python error (killed, out of memory, a native crash)."""
