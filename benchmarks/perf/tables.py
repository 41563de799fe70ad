"""results/bench.md: the tables of `cebench bench`'s results/bench.json, one section per benchmark.

`summary_markdown(data)` writes the whole file (the side-by-side ratios first, every number of
bench.json at the end); `training_markdown` is also the GPU check's section (`gpu_check.py`).
"""

from __future__ import annotations


def _flatten(prefix, obj, rows):
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, rows)
    else:
        rows.append((prefix, obj))


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int) and abs(v) >= 10000:
        return f"{v:,}"
    return str(v)


def table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return out


def _reference_rows(ref: dict) -> list[list]:
    rows = []
    for mode, r in (ref.get("modes") or {}).items():
        rows.append([f"inpainting CE step, 128 px, 4000-d, D on the centre ({mode})", r.get("cebench_img_per_s"),
                     r.get("port_img_per_s"), f"**{r.get('ratio')}x** ({r.get('ratio_min')}-{r.get('ratio_max')})",
                     f"{r.get('cpu_ratio')}x", ref.get("batch"), f"cpu, {ref.get('threads')} threads",
                     f"{r.get('rounds')} alternating rounds"])
    return rows


def _pretrain_rows(pre: dict) -> list[list]:
    rows = []
    for name, r in (pre.get("results") or {}).items():
        arch, _, dev = name.partition("@")
        rows.append([arch, r.get("img_per_s"), r.get("batch"), f"{_fmt(r.get('peak_mem_mb'))} MB ({r.get('memory')})",
                     f"{dev}, {r.get('threads')} thread(s)", _fmt(r.get("params"))])
    return rows


def _transfer_rows(tr: dict) -> list[list]:
    rows = []
    for name, r in tr.items():
        if not isinstance(r, dict) or "train_images_per_s" not in r:
            continue
        what = {"cls": "classification fine-tuning", "seg": "segmentation (FCN, pool5)",
                "seg_conv5": "segmentation (FCN, conv5)", "det": "detection (Fast R-CNN, 128 px)"}.get(name, name)
        size = r.get("input") or r.get("image") or (r.get("demo_128px") or {}).get("image")
        batch = r.get("batch") or r.get("images_per_batch") or (r.get("demo_128px") or {}).get("images_per_batch")
        rows.append([what, r.get("train_images_per_s"), r.get("infer_images_per_s"), batch, size,
                     f"{tr.get('device')}, {tr.get('threads')} threads"])
    return rows


def _retrieval_rows(rt: dict) -> list[list]:
    rows = []
    if "hog_ours_exact_img_s" in rt:
        rows.append([f"HOG, {rt.get('patch_size')} px patches (ours, exact)", rt["hog_ours_exact_img_s"],
                     f"{_fmt(rt.get('hog_speedup_vs_skimage'))}x scikit-image", rt.get("n_patches")])
    for layer in ("conv3", "pool5"):
        k = f"random_alexnet_demo_{layer}_img_s"
        if k in rt:
            rows.append([f"demo AlexNet features, {layer}", rt[k], "-", rt.get("n_patches")])
    return rows


def _knn_rows(kn: dict) -> list[list]:
    rows = []
    for name, r in (kn.get("methods") or {}).items():
        if "skipped" in r:
            rows.append([name, "-", "-", "-", "-", "-", r["skipped"]])
            continue
        settings = ", ".join(f"{k} {r[k]}" for k in ("nlist", "coarse_dim", "nprobe", "ef_search", "refine_k_factor")
                             if k in r and (k != "coarse_dim" or r[k]))
        rows.append([name, r.get("build_s"), r.get("search_s"), r.get("total_s"), r.get("recall_at_10"),
                     f"**{r.get('speedup_vs_sklearn')}x**" if name != "sklearn brute" else "1x", settings])
    return rows


def training_markdown(t: dict) -> list[str]:
    """The throughput goals as a table: value, goal, met, and the part that limits."""
    v = t.get("verdict", {})
    where = t.get("gpu") or t.get("device", "?")
    scope = "" if v.get("applies") else " (not this device: shown for reference)"
    lines = [f"## Pretraining throughput on {where}", "", f"Goals are for one H100/H200{scope}.",
             "", "| measurement | img/s | goal | met | limited by |", "|---|---|---|---|---|"]
    names = {"ce_step": f"AlexNet CE 227 px training step (batch {t.get('ce_step', {}).get('batch')})",
             "ce_end_to_end": "AlexNet CE end to end from JPEG files",
             "inpaint_step": "inpainting CE 128 px + discriminator step"}
    for key, label in names.items():
        g = v.get(key)
        if not g:
            continue
        met = "yes" if g["met"] else "no"
        lines.append(f"| {label} | {g['value']:.4g} | {g['goal']:.0f} | {met} | {g['limit']} |")
    j = t.get("jpeg", {})
    if j:
        lines += ["", f"JPEG input ({j.get('jpeg_size')} px files, {j.get('workers')} workers, batch "
                  f"{j.get('batch')}), img/s: DataLoader+PIL decode {j['loader_decode_img_per_s']:.0f}, "
                  f"+ augmentation {j['loader_decode_augment_img_per_s']:.0f}, end to end "
                  f"{j['loader_end_to_end_img_per_s']:.0f}."]
    if "paper_pretraining_hours" in v:
        lines.append(f"The paper's 100k steps x 64 images at the end-to-end rate: "
                     f"{v['paper_pretraining_hours']:.2f} h.")
    return lines


def summary_markdown(data: dict) -> str:
    """results/bench.md: one readable table per kind of benchmark (one row per measurement), the
    side-by-side ratios first; every number of bench.json is also listed at the end."""
    m = data.get("machine", {})
    lines = ["# cebench performance benchmarks", "",
             f"Last written {data.get('date', '-')} by `cebench bench` on {m.get('cpu')} ({m.get('cpu_count')} "
             f"cores), GPU: {m.get('cuda') or 'none'}, torch {m.get('torch')}, Python {m.get('python')}. The "
             "sections come from runs on different days and CPUs: each names its own machine where it was "
             "recorded.",
             "", "This machine is shared and its speed changes 2-4x from hour to hour: compare ratios measured "
             "side by side in one run (the ratio columns), not absolute times across rows of different runs."]
    on = data.get("measured_on", {})

    def measured(name: str) -> list[str]:
        where = on.get(name)
        return [f"Measured on {where['cpu']}, {where['date']}.", ""] if where else []
    if data.get("demo"):
        lines += ["", *demo_markdown(data["demo"])]
    ref = data.get("reference")
    if ref:
        lines += ["", "## Side by side: the inpainting context encoder's training step vs the PyTorch port",
                  "", f"`cebench bench reference --compare-reference PATH/model.py`; the port is "
                  f"{ref.get('reference')}, {_fmt(ref.get('g_params'))} G parameters. Ratio: median of the "
                  "per-round ratios (range); CPU ratio: CPU time per image, port / cebench.", "",
                  *measured("reference")]
        lines += table(["what", "cebench img/s", "port img/s", "ratio", "CPU-time ratio", "batch", "device",
                         "rounds"], _reference_rows(ref))
    if "training" in data:
        lines += ["", *training_markdown(data["training"])]
    if data.get("knn"):
        kn = data["knn"]
        lines += ["", f"## Nearest neighbours at scale: {_fmt(kn.get('n'))} x {kn.get('dim')} vectors, "
                  f"{kn.get('queries')} queries, k {kn.get('k')}, {kn.get('threads')} threads", "",
                  f"`cebench bench knn --n {kn.get('n')}`; data: {kn.get('data')}. Speed-up = scikit-learn's "
                  "brute force time / (build + search); recall@10 against the exact neighbours; nprobe and "
                  "efSearch chosen on separate validation queries for recall >= "
                  f"{kn.get('target_recall')}. FeatureIndex auto resolved to {kn.get('auto_resolved')}.", "",
                  *measured("knn")]
        lines += table(["method", "build s", "search s", "total s", "recall@10", "vs sklearn", "settings"],
                        _knn_rows(kn))
        lines += knn_markdown(kn)  # the other data distributions
    if data.get("folder"):
        f = data["folder"]
        lines += ["", "## `cebench retrieve` over a folder of photos", "",
                  f"`cebench bench folder --photos {f.get('photos')}`: the command as a user runs it (a fresh "
                  f"process), HOG, {f.get('patch')} px patches every {f.get('stride')} px, photos scaled to "
                  f"{f.get('max_side')} px first.", "", *measured("folder")]
        lines += table(["photos (long side px)", "patches", "empty cache s", "filled cache s", "cache on disk",
                         "peak RSS", "float16 vs float32 recall@10", "device"],
                        [[f"{f.get('photos')} ({f.get('long_side_px')})", f.get("patches"), f.get("fresh_s"),
                          f.get("cached_s"), f"{_fmt(f.get('cache_mb'))} MB", f"{_fmt(f.get('peak_rss_mb'))} MB",
                          f.get("float16_recall_at_10_vs_float32"), f"cpu, {f.get('cpu_count')} cores"]])
        cnn = f.get("cnn")
        if cnn:
            lines += ["", f"With CNN features ({cnn['features']}), empty cache: "
                      + ", ".join(f"{'fp32' if k.endswith('none') else k.removeprefix('fresh_s_')} {v} s"
                                  for k, v in cnn.items() if k.startswith("fresh_s_"))
                      + f" (amp=auto chose {cnn['auto_precision']})."]
    if data.get("pretrain"):
        lines += ["", "## Pretraining steps (forward, backward, optimiser; synthetic input)", "", *measured("pretrain")]
        lines += table(["architecture", "img/s", "batch", "memory", "device", "parameters"],
                        _pretrain_rows(data["pretrain"]))
    if data.get("transfer"):
        lines += ["", "## Transfer tasks", "", *measured("transfer")]
        lines += table(["task", "train img/s", "inference img/s", "batch", "input", "device"],
                        _transfer_rows(data["transfer"]))
    if data.get("retrieval"):
        lines += ["", "## Retrieval features", "", *measured("retrieval")]
        lines += table(["extractor", "patches/s", "vs reference", "patches"], _retrieval_rows(data["retrieval"]))
    lines += ["", "<details><summary>Every number in bench.json</summary>", ""]
    for stage in [k for k in data if k not in ("machine", "date", "measured_on")]:
        rows: list = []
        _flatten("", data[stage], rows)
        lines += ["", f"### {stage}", ""] + table(["measurement", "value"], [[k, v] for k, v in rows
                                                                             if "raw" not in k.split(".")])
    lines += ["", "</details>"]
    return "\n".join(lines) + "\n"




def knn_markdown(kn: dict) -> list[str]:
    """bench.md lines for the distributions of a `bench_knn` result after the first (whose table
    `summary_markdown` writes): one summary table of the default index on every distribution, then
    each distribution's table. [] for older results."""
    dists = kn.get("distributions") or {}
    if not dists:
        return []
    lines = ["", "The default index (`FeatureIndex(kind=\"auto\")`, calibrated on its own vectors at build time: "
             "recall measured there, nprobe chosen for recall >= "
             f"{kn.get('target_recall')}) on every kind of data, and the fixed setting it used before "
             "(512 lists, 16-d, nprobe 3); recall@10 against the exact neighbours of the 1,000 test queries:", ""]
    rows = []
    for name, d in dists.items():
        if "skipped" in d:
            rows.append([name, "-", "-", "-", "-", "-", d["skipped"]])
            continue
        m = d["methods"]
        a = m.get("FeatureIndex auto", {})
        old = next((r for key, r in m.items() if key.startswith("ivf-gemm512 coarse-pca16 nprobe 3")), {})
        cal = d.get("auto_calibration") or {}
        rows.append([f"{name} ({d['n']:,} x {d['dim']})", a.get("recall_at_10"), a.get("recall_at_10_ties", "-"),
                     cal.get("recall"), f"**{a.get('speedup_vs_sklearn')}x**", old.get("recall_at_10", "-"),
                     f"{old.get('speedup_vs_sklearn')}x" if old else "-", a.get("settings", "")])
    lines += table(["data", "auto recall@10", "with ties", "recall measured at build", "auto vs sklearn",
                    "fixed recall@10", "fixed vs sklearn", "auto's index"], rows)
    lines += ["", "recall@10 counts the ids of scikit-learn's exact neighbours found; \"with ties\" also counts a "
              "neighbour as near as the 10th (equal vectors, such as HOG windows of flat areas, are equally right)."]
    for name, d in list(dists.items())[1:]:
        if "skipped" in d:
            continue
        lines += ["", f"### {name}: {d['data']}", ""]
        rows = []
        for mname, r in d["methods"].items():
            if "skipped" in r:
                continue
            settings = ", ".join(f"{key} {r[key]}" for key in ("nlist", "coarse_dim", "nprobe") if r.get(key))
            rows.append([mname, r.get("build_s"), r.get("search_s"), r.get("total_s"), r.get("recall_at_10"),
                         r.get("recall_at_10_ties", "-"),
                         f"**{r.get('speedup_vs_sklearn')}x**" if mname != "sklearn brute" else "1x",
                         r.get("settings", settings)])
        lines += table(["method", "build s", "search s", "total s", "recall@10", "with ties", "vs sklearn",
                        "settings"], rows)
    return lines


def demo_markdown(d: dict) -> list[str]:
    """The section of `cebench bench demo` in results/bench.md."""
    o, n = d["old"], d["new"]
    lines = ["## Side by side: the demo pipeline, one run after the other", "",
             f"`cebench bench demo --old OLD/report --new NEW/report`: old {o['config']} "
             f"{' '.join(o.get('overrides') or [])} ({o['seeds']} test seeds, {o['wall_minutes']} min), new "
             f"{n['config']} {' '.join(n.get('overrides') or [])} ({n['seeds']} test seeds, {n['wall_minutes']} min) "
             f"on {n['cpu']}; **wall time ratio new/old {d['wall_ratio']}** (sum of job seconds: "
             f"{d['job_seconds_ratio']}).", ""]
    if d.get("warning"):
        lines += [f"Warning: {d['warning']}.", ""]
    lines += table(["stage", "jobs", "old s", "new s", "new/old"],
                   [[k, s["jobs"], s["old_s"], s["new_s"], s["ratio"]] for k, s in d["stages"].items()])
    return lines
