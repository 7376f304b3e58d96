"""Backbones (ResNet/ResNeXt) and the feature pyramid."""
from swiftdet.model.backbone.fpn import FPN, LastLevelP6P7, build_fpn
from swiftdet.model.backbone.resnet import ResNet, build_resnet, make_resnet_stage, resnet_state_dict_from_torchvision

__all__ = ["FPN", "LastLevelP6P7", "ResNet", "build_fpn", "build_resnet", "make_resnet_stage", "resnet_state_dict_from_torchvision"]
