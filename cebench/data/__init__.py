"""Datasets: VOC readers (real VOC and the built-in demo tree), data sources, dataset checks.

Every stage builds its own dataset on `cebench.data.voc.VOCIndex` (ids, images, annotations, masks of one
split), so real VOC and the demo tree go through the same reader.
"""

from .voc import VOC_CLASSES, VOCIndex, find_voc_root

__all__ = ["VOC_CLASSES", "find_voc_root", "VOCIndex"]
