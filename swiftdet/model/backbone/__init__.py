"""Backbones (ResNet/ResNeXt, MobileNetV3-Large, VGG-16) and the feature pyramid."""
from swiftdet.model.backbone.fpn import FPN, LastLevelP6P7, build_fpn
from swiftdet.model.backbone.mobilenet import (
    InvertedResidual,
    MobileNetV3,
    build_mobilenet_v3,
    mobilenet_v3_feature_names,
    mobilenet_v3_state_dict_from_torchvision,
)
from swiftdet.model.backbone.resnet import ResNet, build_resnet, make_resnet_stage, resnet_state_dict_from_torchvision
from swiftdet.model.backbone.vgg import VGG16, vgg16_state_dict_from_torchvision

__all__ = ["FPN", "InvertedResidual", "LastLevelP6P7", "MobileNetV3", "ResNet", "build_mobilenet_v3", "mobilenet_v3_feature_names",
           "mobilenet_v3_state_dict_from_torchvision", "build_fpn", "build_resnet", "make_resnet_stage", "resnet_state_dict_from_torchvision",
           "VGG16", "vgg16_state_dict_from_torchvision"]
