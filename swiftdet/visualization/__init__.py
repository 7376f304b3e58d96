"""Drawing of boxes, masks and keypoints on images (numpy arrays in, numpy arrays out)."""
from swiftdet.visualization.draw import draw_instances, instance_color, save_image

__all__ = ["draw_instances", "instance_color", "save_image"]
