"""What a dataset's labels mean: :class:`DatasetMeta` (class names, category ids, keypoints)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from swiftdet.errors import DatasetError

__all__ = ["DatasetMeta"]


@dataclass(frozen=True)
class DatasetMeta:
    """What a dataset's labels mean.

    Attributes:
        class_names: C names; index = contiguous label.
        category_ids: C dataset category ids, ``category_ids[label]``; defaults to 0..C-1.
        keypoint_names: K keypoint names (empty without keypoints).
        keypoint_flip_map: (left, right) name pairs swapped by a horizontal flip; empty: derived
            from 'left_*'/'right_*' names by :func:`swiftdet.structures.flip_indices`.
        skeleton: 0-based (i, j) keypoint index pairs drawn as limbs.
        name: where the dataset came from (json path or a user-chosen name), used in messages.
    """

    class_names: tuple[str, ...]
    category_ids: tuple[int, ...] = ()
    keypoint_names: tuple[str, ...] = ()
    keypoint_flip_map: tuple[tuple[str, str], ...] = ()
    skeleton: tuple[tuple[int, int], ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        ids = tuple(int(i) for i in self.category_ids) or tuple(range(len(self.class_names)))
        object.__setattr__(self, "category_ids", ids)
        object.__setattr__(self, "keypoint_names", tuple(self.keypoint_names))
        object.__setattr__(self, "keypoint_flip_map", tuple((str(a), str(b)) for a, b in self.keypoint_flip_map))
        object.__setattr__(self, "skeleton", tuple((int(a), int(b)) for a, b in self.skeleton))
        where = f" of dataset '{self.name}'" if self.name else ""
        if len(ids) != len(self.class_names):
            raise DatasetError(
                f"DatasetMeta{where}: {len(self.class_names)} class names but {len(ids)} category ids; "
                "give one category id per class name (or none for 0..C-1)."
            )
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise DatasetError(f"DatasetMeta{where}: category ids {dup} appear more than once; category ids must be unique.")
        k = len(self.keypoint_names)
        bad = [(a, b) for a, b in self.skeleton if not (0 <= a < k and 0 <= b < k)]
        if bad:
            raise DatasetError(
                f"DatasetMeta{where}: skeleton pairs {bad} index keypoints outside 0..{k - 1} "
                f"({k} keypoint names); skeleton pairs are 0-based keypoint indices."
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)

    def label_of_category(self) -> dict[int, int]:
        """Dataset category id -> contiguous label."""
        return {cid: i for i, cid in enumerate(self.category_ids)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (stored in checkpoints as ``meta``)."""
        return {
            "class_names": list(self.class_names),
            "category_ids": list(self.category_ids),
            "keypoint_names": list(self.keypoint_names),
            "keypoint_flip_map": [list(p) for p in self.keypoint_flip_map],
            "skeleton": [list(p) for p in self.skeleton],
            "name": self.name,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "DatasetMeta":
        return DatasetMeta(
            class_names=tuple(d["class_names"]),
            category_ids=tuple(d.get("category_ids", ())),
            keypoint_names=tuple(d.get("keypoint_names", ())),
            keypoint_flip_map=tuple(tuple(p) for p in d.get("keypoint_flip_map", ())),
            skeleton=tuple(tuple(p) for p in d.get("skeleton", ())),
            name=d.get("name", ""),
        )
