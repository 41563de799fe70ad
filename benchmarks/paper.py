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

# The other self-supervised rows (pretrain methods context-prediction, jigsaw, colorization, rotation), AlexNet on
# the same three tasks. Context prediction is the CE paper's own Table 2 row for Doersch et al.; the other three
# are not in the CE paper: Gidaris, Singh and Komodakis (ICLR 2018) Table 7, the table the field has compared
# AlexNet learners with since (VOC2007 classification with every layer fine-tuned, VOC2007 detection with
# Fast R-CNN, VOC2012 segmentation with FCN, as the CE paper's Table 2).
TABLE2["context prediction"] = TABLE2["doersch"]
TABLE2["jigsaw"] = {"cls": 67.6, "det": 53.2, "seg": 37.6}        # Noroozi and Favaro 2016
TABLE2["colorization"] = {"cls": 65.6, "det": 46.9, "seg": 35.6}  # Zhang, Isola and Efros 2016
TABLE2["rotation"] = {"cls": 73.0, "det": 54.4, "seg": 39.1}      # Gidaris et al. 2018
CE_TABLE2 = "Pathak et al. (CVPR 2016) Table 2"
GIDARIS_TABLE7 = "Gidaris et al. (ICLR 2018) Table 7"
# where each row's printed numbers come from (rows not listed: the CE paper's Table 2), and what other tables say
TABLE2_SOURCE = {
    "context prediction": (CE_TABLE2, "the CE paper's protocol, the one this suite reproduces, with the random, "
                           "autoencoder and CE rows printed beside it; " + GIDARIS_TABLE7 + " lists 65.3 / 51.1 / - "
                           "for context prediction under its own evaluation, not shown"),
    "jigsaw": (GIDARIS_TABLE7, "VOC07 cls (all layers fine-tuned) / VOC07 det (Fast R-CNN) / VOC12 seg (FCN): "
               "the tasks of the CE paper's Table 2; not in the CE paper"),
    "colorization": (GIDARIS_TABLE7, "same protocol as the jigsaw row; not in the CE paper"),
    "rotation": (GIDARIS_TABLE7, "same protocol as the jigsaw row; the rotation paper's own table"),
}


def published_sources(labels) -> list[str]:
    """Report lines naming the table behind each printed 'paper' number of the rows present."""
    rows = [lab for lab in labels if lab in TABLE2]
    if not rows:
        return []
    out = ["Published numbers (the 'paper' columns):", ""]
    ce_rows = [lab for lab in rows if lab not in TABLE2_SOURCE]
    if ce_rows:
        out.append(f"- {', '.join(ce_rows)}: {CE_TABLE2}")
    out += [f"- {lab}: {TABLE2_SOURCE[lab][0]} ({TABLE2_SOURCE[lab][1]})" for lab in rows if lab in TABLE2_SOURCE]
    return out + [""]
