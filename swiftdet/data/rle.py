"""The COCO RLE mask codec: decoding compressed counts and checking an RLE against its image."""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["rle_counts_from_string", "validate_rle"]


def rle_counts_from_string(counts: str | bytes) -> list[int]:
    """Run lengths of a compressed COCO RLE string.

    The format packs each count in 5-bit groups (low first, bit 0x20 = more groups follow, bit 0x10
    of the last group = negative) offset by 48 into printable ASCII; from the third count on, a
    count is stored as its difference to the count two places earlier.

    Raises:
        ValueError: a character outside the format's range, or a truncated last count.
    """
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    out: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        value, shift, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("truncated count at the end of the string")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {counts[p]!r} at position {p} is not part of the COCO RLE alphabet")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            p += 1
            shift += 5
            if not more and (c & 0x10):
                value |= -1 << shift
        if len(out) > 2:
            value += out[-2]
        out.append(value)
    return out


def validate_rle(rle: Any, height: int, width: int) -> tuple[bytes | None, str]:
    """(compressed counts, "") for a valid RLE of an image of (height, width); (None, reason) if not."""
    import pycocotools.mask as mask_utils

    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        return None, "an RLE segmentation must be a dict with 'size' [height, width] and 'counts'"
    size = rle["size"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)
            or [int(size[0]), int(size[1])] != [height, width]):
        return None, f"RLE size {size} differs from the image size [{height}, {width}] (height, width)"
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(isinstance(c, (int, np.integer)) and c >= 0 for c in counts):
            return None, "uncompressed RLE counts must be non-negative integers"
        if sum(counts) != height * width:
            return None, f"uncompressed RLE counts sum to {sum(counts)}, not height * width = {height * width}"
        compressed = mask_utils.frPyObjects({"size": [height, width], "counts": list(counts)}, height, width)
        return compressed["counts"], ""
    if isinstance(counts, (str, bytes)):
        try:
            runs = rle_counts_from_string(counts)
        except (ValueError, UnicodeDecodeError) as e:
            return None, f"compressed RLE counts cannot be decoded ({e})"
        if any(r < 0 for r in runs) or sum(runs) != height * width:
            return None, f"compressed RLE counts decode to runs summing to {sum(runs)}, not height * width = {height * width}"
        return counts.encode("ascii") if isinstance(counts, str) else bytes(counts), ""
    return None, f"RLE counts must be a string (compressed) or a list of integers, got {type(counts).__name__}"
