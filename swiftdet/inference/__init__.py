"""Inference on user images: the Predictor and the model-building helper it uses."""
from swiftdet.inference.predictor import Predictor, build_model_with_weights, resolve_device, to_rgb_tensor

__all__ = ["Predictor", "build_model_with_weights", "resolve_device", "to_rgb_tensor"]
