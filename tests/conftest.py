"""Shared pytest fixtures.

The real COCO subset lives in ../shared/datasets beside a developer's or CI's checkout, never in a
user's clone: tests that need it take the ``tiny_coco`` fixture, which skips with a reason.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("SWIFTDET_SHARED_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def tiny_coco() -> Path:
    """Root of ../shared/datasets/tiny_coco (image root; jsons under annotations/)."""
    root = SHARED_DATASETS / "tiny_coco"
    if not (root / "annotations" / "instances_val.json").is_file():
        pytest.skip(f"real test data not found at {root} (present only beside a developer's or CI's checkout)")
    return root
