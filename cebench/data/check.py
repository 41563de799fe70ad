"""`cebench data check ROOT`: find every problem in a VOC tree or an image folder, each with its path.

Errors (report.ok is False): unreadable or truncated images, annotations that do not match their image
(XML size differs from the real size, empty boxes, broken XML), classes missing from a given class list
(`data.classes` / `classes.txt`: one line for all files), segmentation PNGs of the wrong size, ids listed
in a split without an image / annotation / mask.
Warnings (ok stays True): images in a mode other than 8-bit RGB (grayscale, CMYK, 16-bit, palette,
alpha), which are converted when loaded; boxes reaching outside their image (clipped when loaded; one
line with the count); class names outside the 20 VOC classes with no class list given (one line: the
classes are then read from the annotations).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cebench.data.voc import (
    VOC_CLASSES,
    annotation_class_names,
    describe_classes,
    find_voc_root,
    parse_annotation,
    resolve_classes,
)
from cebench.errors import CebenchError
from cebench.images import inspect_image, list_images


@dataclass(frozen=True)
class Issue:
    path: str
    problem: str
    severity: str = "error"  # "error" | "warning"


@dataclass
class CheckReport:
    root: str
    kind: str  # "voc" | "folder" | "missing"
    n_images: int = 0
    split_counts: dict[str, int] = field(default_factory=dict)  # "Main/trainval" -> images
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> images (non-difficult)
    object_counts: dict[str, int] = field(default_factory=dict)  # class -> objects over all annotations
    classes: tuple[str, ...] = ()
    class_source: str = ""
    issues: list[Issue] = field(default_factory=list)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, path, problem: str, severity: str = "error") -> None:
        self.issues.append(Issue(str(path), problem, severity))


def _check_images(report: CheckReport, paths) -> dict[str, tuple[int, int]]:
    """Inspect images; returns stem -> (width, height) of the readable ones."""
    sizes = {}
    for p in paths:
        r = inspect_image(p)
        report.n_images += 1
        if not r.ok:
            report.add(p, r.problem)
            continue
        sizes[Path(p).stem] = r.size
        if r.problem:
            report.add(p, r.problem, "warning")
    return sizes


def _split_files(voc: Path, sub: str, classes) -> list[Path]:
    d = voc / "ImageSets" / sub
    if not d.is_dir():
        return []
    prefixes = tuple(f"{c}_" for c in classes)
    return sorted(p for p in d.glob("*.txt") if not p.stem.startswith(prefixes))


def _short_list(names, n: int = 12) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def _check_voc(report: CheckReport, voc: Path, classes_cfg=None) -> None:
    try:
        classes, source = resolve_classes(voc, classes_cfg)
    except CebenchError as exc:
        where, _, problem = str(exc).partition(": ")
        report.add(where, problem or str(exc))
        return
    report.classes, report.class_source = classes, source
    extra = sorted(set(annotation_class_names(voc)) - set(classes) - {""})
    cindex = {c: i for i, c in enumerate((*classes, *extra))}  # extra names parse, and are reported once
    # with the classes read from the annotations, the names outside the VOC list are said once
    flagged = np.asarray([c not in VOC_CLASSES if source == "annotations" else i >= len(classes)
                          for i, c in enumerate(cindex)], dtype=bool)
    sizes = _check_images(report, list_images(voc / "JPEGImages", recursive=False))
    images = {p.stem for p in (voc / "JPEGImages").glob("*.jpg")}

    anns: dict[str, dict | None] = {}
    outside_files: list[Path] = []   # annotations using a name outside the class list
    clipped: list[tuple[Path, int]] = []  # (annotation, boxes reaching outside the image)
    for xml in sorted((voc / "Annotations").glob("*.xml")) if (voc / "Annotations").is_dir() else []:
        try:
            ann = parse_annotation(xml, cindex, voc / "JPEGImages" / f"{xml.stem}.jpg")
        except CebenchError as exc:
            report.add(xml, str(exc).split(": ", 1)[-1])
            anns[xml.stem] = None
            continue
        if flagged[ann["raw_labels"]].any():
            outside_files.append(xml)
        known = ann["labels"] < len(classes)
        anns[xml.stem] = {"labels": ann["labels"][known], "difficult": ann["difficult"][known]}
        for lab in ann["labels"][known]:
            report.object_counts[classes[lab]] = report.object_counts.get(classes[lab], 0) + 1
        real = sizes.get(xml.stem)
        w, h = ann["width"], ann["height"]
        if real is not None and real != (w, h):
            report.add(xml, f"size {w}x{h} in XML but the image is {real[0]}x{real[1]}")
        if real is not None:
            w, h = real
        b, names = ann["raw_boxes"], list(cindex)
        n_out = 0
        for k in range(len(b)):
            x0, y0, x1, y1 = b[k]
            if not (x1 > x0 and y1 > y0):
                report.add(xml, f"object {k} ({names[ann['raw_labels'][k]]}): empty box {b[k].tolist()} (0-based)")
            elif x0 < 0 or y0 < 0 or x1 > w or y1 > h:
                n_out += 1
        if n_out:
            clipped.append((xml, n_out))
    if clipped:
        n = sum(c for _, c in clipped)
        report.add(clipped[0][0], f"{n} box(es) in {len(clipped)} annotation(s) reach outside their image; they "
                                  f"are clipped to it when loaded (this file: {clipped[0][1]})", "warning")
    if outside_files:
        if source == "annotations":
            names = [c for c in classes if c not in VOC_CLASSES]
            report.add(voc / "Annotations", f"{len(outside_files)} annotations use classes outside the VOC list: "
                                            f"{_short_list(names)} - they will be read from the annotations "
                                            f"(or set data.classes)", "warning")
        else:
            report.add(outside_files[0], f"{len(outside_files)} annotations use classes not in {source}: "
                                         f"{_short_list(extra)} - add them there, or leave out {source} to "
                                         f"read the classes from the annotations")

    seg_dir = voc / "SegmentationClass"
    for png in sorted(seg_dir.glob("*.png")) if seg_dir.is_dir() else []:
        real = sizes.get(png.stem)
        try:
            with Image.open(png) as im:
                size = im.size
        except OSError as exc:
            report.add(png, f"unreadable segmentation ({exc})")
            continue
        if real is not None and size != real:
            report.add(png, f"mask size {size[0]}x{size[1]} differs from the image size {real[0]}x{real[1]}")

    segs = {p.stem for p in seg_dir.glob("*.png")} if seg_dir.is_dir() else set()
    for sub in ("Main", "Segmentation"):
        for f in _split_files(voc, sub, classes):
            ids = [line.split()[0] for line in f.read_text().splitlines() if line.strip()]
            report.split_counts[f"{sub}/{f.stem}"] = len(ids)
            for i in ids:
                if i not in images:
                    report.add(f, f"id {i}: no image JPEGImages/{i}.jpg")
                if i not in anns and sub == "Main":
                    report.add(f, f"id {i}: no annotation Annotations/{i}.xml")
                if sub == "Segmentation" and i not in segs:
                    report.add(f, f"id {i}: no mask SegmentationClass/{i}.png")
            if sub == "Main":
                counts = dict.fromkeys(classes, 0)
                for i in ids:
                    ann = anns.get(i)
                    if ann:
                        for lab in np.unique(ann["labels"][~ann["difficult"]]):
                            counts[classes[lab]] += 1
                report.class_counts[f.stem] = counts
    if not report.split_counts:
        report.add(voc / "ImageSets", "no split files (ImageSets/Main/*.txt)")


def check_dataset(root, classes=None) -> CheckReport:
    """Check a VOCyyyy folder (or the VOCdevkit above it, or its parent), or a plain folder of images.
    `classes`: the configured class list (`data.classes`: names or a file), None for the tree's own."""
    root = Path(root).expanduser()
    try:
        voc = find_voc_root(root)
    except CebenchError:
        voc = None
    if voc is not None:
        report = CheckReport(root=str(voc), kind="voc")
        _check_voc(report, voc, classes)
        return report
    if not root.is_dir():
        report = CheckReport(root=str(root), kind="missing")
        report.add(root, "not found (expected a VOC tree DIR/VOCdevkit/VOCyyyy or a folder of images)")
        return report
    report = CheckReport(root=str(root), kind="folder")
    paths = list_images(root)
    if not paths:
        report.add(root, "no images found")
    _check_images(report, paths)
    report.split_counts["all"] = len(paths)
    return report


def format_report(report: CheckReport, max_issues: int = 200) -> str:
    lines = [f"{report.kind} dataset at {report.root}: {report.n_images} images"]
    if report.class_source:
        lines.append(describe_classes(report.classes, report.class_source))
    if report.split_counts:
        lines.append("splits: " + ", ".join(f"{k} {v}" for k, v in report.split_counts.items()))
    if report.class_counts:
        splits = list(report.class_counts)
        width = max(len(c) for c in report.classes) if report.classes else 8
        lines.append("images per class (non-difficult): " + " ".join(f"{s:>9}" for s in splits) + "  objects")
        for c in report.classes:
            lines.append(f"  {c:<{width}} " + " ".join(f"{report.class_counts[s].get(c, 0):>9}" for s in splits)
                         + f"  {report.object_counts.get(c, 0):>7}")
    for label, items in (("errors", report.errors), ("warnings", report.warnings)):
        if items:
            lines.append(f"{len(items)} {label}:")
            lines += [f"  {i.path}: {i.problem}" for i in items[:max_issues]]
            if len(items) > max_issues:
                lines.append(f"  ... and {len(items) - max_issues} more")
    lines.append("OK" if report.ok else f"PROBLEMS FOUND ({len(report.errors)} errors)")
    return "\n".join(lines)


__all__ = ["CheckReport", "Issue", "check_dataset", "format_report"]
