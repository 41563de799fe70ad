"""Labelled image folders as users download them (cebench.data.folders) and what reads them: pretraining's
supervised row on their labels, held-out images from Tiny ImageNet's val split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cebench.data.folders import detect_layout, has_split, read_image_folder
from cebench.errors import CebenchError, DatasetMissingError
from cebench.pretrain.data import PretrainImages, folder_paths
from cebench.pretrain.models import AlexNetConfig, SupervisedNet
from cebench.pretrain.objectives import SupervisedObjective

WNIDS = ["n02", "n01", "n03"]  # deliberately not sorted: labels follow wnids.txt's order


def _jpeg(path: Path, value: int, size: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path, quality=90)


def tiny_imagenet(root: Path, per_class: int = 3, n_val: int = 4) -> Path:
    """A Tiny ImageNet tree: wnids.txt, words.txt, train/<wnid>/images, val/images + val_annotations.txt."""
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (root / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\ttabby, tabby cat\nn03\tbus\n")
    for c, w in enumerate(WNIDS):
        for i in range(per_class):
            _jpeg(root / "train" / w / "images" / f"{w}_{i}.JPEG", 40 * c + i)
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
    lines = []
    for i in range(n_val):
        _jpeg(root / "val" / "images" / f"val_{i}.JPEG", 10 * i)
        lines.append(f"val_{i}.JPEG\t{WNIDS[i % 3]}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    _jpeg(root / "test" / "images" / "test_0.JPEG", 7)  # unlabelled: never read
    return root


def test_tiny_imagenet_train_and_val(tmp_path):
    root = tiny_imagenet(tmp_path / "tiny-imagenet-200")
    assert detect_layout(root) == "tiny-imagenet" and has_split(root, "val")
    train = read_image_folder(root, "train")
    assert train.classes == tuple(WNIDS) and train.names == ("tabby", "goldfish", "bus")
    assert len(train.paths) == 9 and train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(p.parent.parent.name == WNIDS[lab] for p, lab in zip(train.paths, train.labels))
    assert not any("val" in p.parts or "test" in p.parts for p in train.paths)
    val = read_image_folder(root, "val")
    assert [p.name for p in val.paths] == [f"val_{i}.JPEG" for i in range(4)]
    assert val.labels.tolist() == [0, 1, 2, 0]
    onehot = train.one_hot()
    assert onehot.shape == (9, 3) and (onehot.argmax(1) == train.labels).all() and onehot.sum() == 9
    # what pretraining reads from the root: the train split only (not the val or test photos)
    assert folder_paths(root) == train.paths


def test_class_folders_match_torchvision_imagefolder(tmp_path):
    from torchvision.datasets import ImageFolder

    root = tmp_path / "caltech"
    for c, name in enumerate(["zebra", "Airplane", "car_side"]):
        for i in range(2):
            _jpeg(root / name / ("sub" if i else "") / f"image_{i:04d}.jpg", 30 * c + i, size=20)
    (root / "empty").mkdir()  # no images: not a class
    split = read_image_folder(root)
    assert split.layout == "class-folders"
    ref = ImageFolder(str(root), allow_empty=True)
    assert split.classes == tuple(c for c in ref.classes if c != "empty")
    assert [str(p) for p in split.paths] == [s for s, _ in ref.samples]
    assert split.labels.tolist() == [split.classes.index(ref.classes[t]) for _, t in ref.samples]
    with pytest.raises(DatasetMissingError, match="one split"):
        read_image_folder(root, "val")


def test_plain_folder_is_unlabelled(tmp_path):
    for i in range(3):
        _jpeg(tmp_path / "photos" / f"{i}.png", i)
    split = read_image_folder(tmp_path / "photos")
    assert split.layout == "plain" and split.labels is None and len(split.paths) == 3
    with pytest.raises(CebenchError, match="no labels"):
        split.one_hot()


def test_bad_input_one_line(tmp_path):
    root = tiny_imagenet(tmp_path / "t")
    ann = root / "val" / "val_annotations.txt"
    ann.write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(CebenchError, match=r"val_annotations.txt:1: unknown class 'n99'"):
        read_image_folder(root, "val")
    ann.write_text("val_0.JPEG\n")
    with pytest.raises(CebenchError, match=r"val_annotations.txt:1: expected"):
        read_image_folder(root, "val")
    ann.write_text("val_9.JPEG\tn01\t0\t0\t1\t1\n")
    with pytest.raises(DatasetMissingError, match="val_9.JPEG: listed in"):
        read_image_folder(root, "val")
    ann.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CebenchError, match="not a UTF-8 text file"):
        read_image_folder(root, "val")
    (root / "train" / "n77" / "images").mkdir(parents=True)
    with pytest.raises(CebenchError, match="n77: class folder not listed"):
        read_image_folder(root, "train")
    with pytest.raises(DatasetMissingError, match="not found"):
        read_image_folder(tmp_path / "absent")


def test_supervised_objective_softmax_on_class_indices():
    torch.manual_seed(0)
    net = SupervisedNet(AlexNetConfig.demo(), num_classes=3)
    obj = SupervisedObjective(net)
    x = torch.rand(4, 3, 64, 64)
    idx = torch.tensor([0, 2, 1, 2])
    losses, out = obj(x, None, idx)
    ref = torch.nn.functional.cross_entropy(out["logits"], idx)
    assert set(losses) == {"loss", "xent"} and torch.allclose(losses["xent"], ref, atol=1e-6)
    voc = torch.tensor([[1.0, -1.0, 0.0]] * 4)  # VOC labels [B, C] keep the multi-label BCE
    assert set(obj(x, None, voc)[0]) == {"loss", "bce"}


def test_pretrain_images_label_types(tmp_path):
    root = tiny_imagenet(tmp_path / "t")
    split = read_image_folder(root)
    ds = PretrainImages(split.paths, 64, labels=split.labels)
    x, lab, i = ds[4]
    assert x.shape == (3, 64, 64) and lab.dtype == torch.int64 and int(lab) == 1 and i == 4
    ds = PretrainImages(split.paths, 64, labels=np.ones((9, 3), np.int8))
    assert ds[0][1].dtype == torch.float32 and ds[0][1].shape == (3,)


def test_supervised_pretraining_and_table1_on_a_tiny_imagenet_tree(tmp_path):
    """The real-photo track's path on a fixture: the supervised row trains on the folder's class labels
    (softmax over its classes, held-out loss on its val split) and Table 1 scores the val photos."""
    import json

    from cebench.data.sources import DataConfig
    from cebench.logs import LogConfig
    from cebench.pretrain import inpaint_eval as IE
    from cebench.pretrain import train as T

    root = tiny_imagenet(tmp_path / "tin", per_class=6, n_val=6)
    data = DataConfig(demo="", pretrain_images=str(root))
    cfg = T.PretrainConfig(method="supervised", steps=3, batch_size=4, eval_images=6, log=LogConfig(every=1),
                           sample_every=0, amp="none")
    ckpt = T.main(cfg, data, tmp_path / "sup", device="cpu")
    ck = torch.load(ckpt, weights_only=True)
    assert ck["arch"]["num_classes"] == 3 and ck["step"] == 3
    epochs = [json.loads(line) for line in (tmp_path / "sup" / "metrics.jsonl").read_text().splitlines()]
    assert any("epoch_val_xent" in e for e in epochs) and any("xent" in e for e in epochs)

    ev = IE.InpaintEvalConfig(train=IE.InpaintTrainConfig(steps=2, batch_size=4, amp="none", sample_every=0),
                              heldout="pretrain-val", n_test=5, figure_rows=2)
    table = IE.main(ev, data, tmp_path / "inpaint", device="cpu")
    assert (table["n_images"] == 5).all()
    read = (tmp_path / "inpaint" / "data.yaml").read_text()
    assert "the val split of" in read and "n_heldout: 5" in read and "n_train: 18" in read
    with pytest.raises(CebenchError, match="pretrain-val needs data.pretrain_images with a val split"):
        IE.main(ev, DataConfig(demo="", pretrain_images=str(root / "train")), tmp_path / "x", device="cpu")
