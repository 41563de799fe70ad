"""Datasets: VOC readers (real VOC and the built-in demo tree), image folders, dataset checks."""

from .folder import ImageFolderDataset, SafeDataset
from .voc import (VOC_CLASSES, VOCClassification, VOCDetection, VOCImages, VOCIndex, VOCSegmentation,
                  find_voc_root)

__all__ = ["VOC_CLASSES", "find_voc_root", "VOCIndex", "VOCImages", "VOCClassification", "VOCDetection",
           "VOCSegmentation", "ImageFolderDataset", "SafeDataset"]
