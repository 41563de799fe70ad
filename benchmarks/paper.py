"""The paper's published numbers (Pathak et al., CVPR 2016), for side-by-side tables."""

from __future__ import annotations

# Table 1: Paris StreetView, centre 1/4 masks. (mean L1 %, mean L2 %, PSNR dB)
TABLE1 = {
    "NN-inpainting (HOG features)": (19.92, 6.92, 12.79),
    "NN-inpainting (our features)": (15.10, 4.30, 14.70),
    "Our Reconstruction (joint)": (9.37, 1.96, 18.58),
}
# Which of our methods corresponds to which paper row (the paper's "our features" NN row used
# context-encoder features; the closest thing we run for it is raw-pixel NN, stated in the report).
TABLE1_MATCH = {
    "NN (HOG)": "NN-inpainting (HOG features)",
    "NN (pixels)": "NN-inpainting (our features)",
    "CE (L2+adv)": "Our Reconstruction (joint)",
}

# Table 2: VOC2007 classification mAP, VOC2007 detection mAP (Fast R-CNN), VOC2012 seg mean IU (FCN).
TABLE2 = {
    "imagenet": {"cls": 78.2, "det": 56.8, "seg": 48.0},
    "random": {"cls": 53.3, "det": 43.4, "seg": 19.8},
    "autoencoder": {"cls": 53.8, "det": 41.9, "seg": 25.2},
    "agrawal": {"cls": 52.9, "det": 41.8, "seg": None},
    "wang": {"cls": 58.7, "det": 47.4, "seg": None},
    "doersch": {"cls": 55.3, "det": 46.6, "seg": None},
    "context encoder": {"cls": 56.5, "det": 44.5, "seg": 29.7},
}
# the real-photo track's supervised row (ImageNet labels of Tiny ImageNet's photos) is the paper's ImageNet row
TABLE2["supervised (ImageNet labels)"] = TABLE2["imagenet"]
TASK_METRIC = {"cls": "mAP", "det": "mAP", "seg": "mean IU"}
