"""Detectors and their parts. ``build_model(cfg.model)`` builds the one a config describes."""
from swiftdet.model.build import build_model

__all__ = ["build_model"]
