"""The training-throughput benchmark and the GPU check, run on the CPU at tiny sizes: decode + augment
on the device against the DataLoader/PIL path it replaces, the limit analysis by hand, and the GPU
check's files (with the rehearsal config missing, and with a tiny rehearsal run)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cebench.benchmarks import bench
from cebench.benchmarks.gpu_check import main as gpu_check
from cebench.pretrain import training_throughput
from cebench.pretrain.config import PretrainConfig
from cebench.pretrain.data import PretrainImages
from cebench.pretrain.device_decode import JpegBytes, augment_batch, collate_bytes, crop_params, decode_batch
from cebench.pretrain.models import AlexNetConfig
from cebench.pretrain.training_throughput import bench_training, limit_of, verdicts, write_jpegs

# torchvision 0.29 deprecates its JPEG decoding for TorchCodec; the device path keeps to the API of
# torchvision 0.26 (the GPU machines') through 0.29
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jpegs")
    paths = write_jpegs(folder, 5, distinct=5)  # 500 x 375, like VOC
    # a portrait image smaller than the load size (upscaled) and one whose short side is the load size
    rng = np.random.default_rng(1)
    for name, (w, h) in (("small.jpg", (150, 200)), ("exact.jpg", (300, 256))):
        low = (rng.random((h // 20, w // 20, 3)) * 255).astype(np.uint8)
        Image.fromarray(low).resize((w, h), Image.BICUBIC).save(folder / name, quality=92)
        paths.append(folder / name)
    return paths


def test_jpeg_files_look_like_photographs(jpegs):
    sizes = [p.stat().st_size for p in jpegs[:5]]
    assert all(30_000 < s < 200_000 for s in sizes)  # not a flat image's few KB
    assert Image.open(jpegs[0]).size == (500, 375)


def test_device_decode_matches_pil_and_the_augmentation_matches_pretrain_images(jpegs):
    raw = [JpegBytes(jpegs)[i][0] for i in range(len(jpegs))]
    decoded = decode_batch(raw, "cpu")
    for path, img in zip(jpegs, decoded, strict=True):  # same libjpeg: identical pixels
        ref = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(img, ref)
    ds = PretrainImages(jpegs, 227, 256, flip=True, cache=False, seed=3)
    ds.set_epoch(2)
    ref = torch.stack([ds[i][0] for i in range(len(jpegs))])  # PIL bicubic resize, crop, flip
    out = augment_batch(decoded, list(range(len(jpegs))), 256, 227, seed=3, epoch=2)
    assert out.shape == ref.shape == (len(jpegs), 3, 227, 227) and out.dtype == torch.uint8
    diff = (out.float() - ref.float()).abs().mean(dim=(1, 2, 3))
    # same crops and flips; bilinear-area vs bicubic resampling differ by a grey level or two
    assert diff.max() < 3.0, diff
    corr = [np.corrcoef(out[i].flatten().float(), ref[i].flatten().float())[0, 1] for i in range(len(jpegs))]
    assert min(corr) > 0.995, corr
    # a wrong offset or a missed flip would not be close: the same image shifted by 8 px is far
    shifted = (out[0, :, :, 8:].float() - ref[0, :, :, :-8].float()).abs().mean()
    assert shifted > 4 * diff[0]
    centre = augment_batch(decoded, list(range(len(jpegs))), 256, 227, random=False)
    ref_c = torch.stack([PretrainImages(jpegs, 227, 256, random=False, cache=False)[i][0] for i in range(len(jpegs))])
    assert (centre.float() - ref_c.float()).abs().mean(dim=(1, 2, 3)).max() < 3.0


def test_crop_params_follow_pretrain_images_rng():
    sy, sx, y0, x0, flip = crop_params(375, 500, 256, 227, seed=0, epoch=0, index=7)
    rng = np.random.default_rng([0, 0, 7])
    assert (y0, x0) == (int(rng.integers(0, 256 - 227 + 1)), int(rng.integers(0, 341 - 227 + 1)))
    assert flip == bool(rng.integers(0, 2)) and sy == 256 / 375 and sx == 341 / 500
    assert crop_params(375, 500, 256, 227, seed=0, epoch=0, index=7, random=False)[2:] == (14, 57, False)


def test_collate_keeps_bytes_as_a_list(jpegs):
    items = [JpegBytes(jpegs)[i] for i in (0, 5)]
    datas, idx = collate_bytes(items)
    assert idx == [0, 5] and isinstance(datas, list) and datas[1].numel() == jpegs[5].stat().st_size


def test_limit_is_the_slowest_part_per_image():
    # per image: decode 1 ms, augmentation 1/800 - 1/1000 = 0.25 ms, step 1/3000 = 0.33 ms
    assert limit_of(3000, 1000, 800) == "decode"
    # decode 0.1 ms, augmentation 0.5 - 0.1 = 0.4 ms, step 0.33 ms
    assert limit_of(3000, 10_000, 2000) == "augmentation"
    assert limit_of(1000, 10_000, 5000) == "step"


def _res(step, inpaint, loader, device):
    return {"ce_step": {"img_per_s": step}, "inpaint_step": {"img_per_s": inpaint},
            "jpeg": {"loader_end_to_end_img_per_s": loader[0], "loader_decode_img_per_s": loader[1],
                     "loader_decode_augment_img_per_s": loader[2], "device_end_to_end_img_per_s": device[0],
                     "device_decode_img_per_s": device[1], "device_decode_augment_img_per_s": device[2]}}


def test_verdicts_name_the_goal_the_pipeline_and_the_limit():
    v = verdicts(_res(3500, 1200, (1400, 1600, 1450), (2500, 9000, 6000)), "NVIDIA H100 80GB HBM3")
    assert v["applies"] and v["ce_step"]["met"] and not v["inpaint_step"]["met"]
    e2e = v["ce_end_to_end"]
    assert e2e["met"] and e2e["pipeline"] == "device_decode" and e2e["value"] == 2500
    assert e2e["loader_limit"] == "decode" and e2e["device_decode_limit"] == "step"
    assert v["paper_pretraining_hours"] == round(6_400_000 / 2500 / 3600, 2)  # 0.71 h
    assert not verdicts(_res(3500, 1200, (1, 1, 1), (1, 1, 1)), "NVIDIA A100-SXM4-40GB")["applies"]
    assert not verdicts(_res(3500, 1200, (1, 1, 1), (1, 1, 1)), None)["applies"]


def test_bench_training_runs_the_real_loop_on_cpu(tmp_path, monkeypatch):
    timed = []  # (images, seconds) of every timed step run, as the benchmark measured them

    def record(fn, sync):
        n, secs = real_timed(fn, sync)
        timed.append((n, secs))
        return n, secs

    real_timed = training_throughput._timed
    monkeypatch.setattr(training_throughput, "_timed", record)
    ce = PretrainConfig(method="ce", encoder=AlexNetConfig.demo(), mask="region", batch_size=4, load_size=72)
    inp = PretrainConfig(method="inpaint-adv", mask="center", batch_size=4, load_size=72)
    res = bench_training(tmp_path / "t.json", device="cpu", quick=True, ce_cfg=ce, inpaint_cfg=inp, n_images=12)
    assert json.loads((tmp_path / "t.json").read_text()) == res
    ce_step, inp_step = res["ce_step"], res["inpaint_step"]
    assert ce_step["masks"] == "region" and ce_step["input"] == 64 and inp_step["adversarial"]
    # quick on a CPU: one timed step of batch 2 each; the rate is the images the loop saw over its seconds
    assert [n for n, _ in timed] == [2, 2] and ce_step["steps"] == inp_step["steps"] == 1
    assert ce_step["batch"] == inp_step["batch"] == 2
    for step, (n, secs) in zip((ce_step, inp_step), timed):
        assert step["img_per_s"] == round(n / secs, 1) and step["seconds"] == round(secs, 3)
    j = res["jpeg"]
    assert j["crop"] == 64 and j["images"] == 12 and j["jpeg_size"] == [500, 375] and j["batch"] == 2
    assert all(j[k] > 0 for k in j if k.endswith("img_per_s"))
    # the verdict is computed from these numbers: the faster pipeline end to end, the limit of its parts
    v = res["verdict"]
    assert v["ce_step"]["value"] == ce_step["img_per_s"] and v["inpaint_step"]["value"] == inp_step["img_per_s"]
    best = max(("loader", "device"), key=lambda p: j[f"{p}_end_to_end_img_per_s"])
    assert v["ce_end_to_end"]["value"] == j[f"{best}_end_to_end_img_per_s"]
    assert v["ce_end_to_end"]["limit"] == limit_of(ce_step["img_per_s"], j[f"{best}_decode_img_per_s"],
                                                   j[f"{best}_decode_augment_img_per_s"])
    assert v["paper_pretraining_hours"] == round(6_400_000 / v["ce_end_to_end"]["value"] / 3600, 2)
    assert not v["applies"]


@pytest.fixture
def small_bench(monkeypatch, tmp_path):
    """`cebench bench` as the GPU check calls it, with the training benchmark at demo size (the paper
    sizes take half a minute on a CPU; test_bench_training_runs_the_real_loop_on_cpu covers the rest)."""

    def run_bench(which, out_dir, device="auto", quick=False):
        assert which == "training" and device == "cpu"
        ce = PretrainConfig(method="ce", encoder=AlexNetConfig.demo(), mask="region", batch_size=2, load_size=72)
        inp = PretrainConfig(method="inpaint", mask="center", batch_size=2, load_size=72)
        res = bench_training(out_dir / "bench_training.json", device=device, quick=True, ce_cfg=ce, inpaint_cfg=inp,
                             n_images=6)
        return {"training": res, "machine": bench.machine_info(), "date": "now"}

    monkeypatch.setattr(bench, "run_bench", run_bench)


def test_gpu_check_fails_clearly_without_the_rehearsal_config(tmp_path, capsys, small_bench):

    rc = gpu_check(["--device", "cpu", "--quick", "--bench", "training", "--out", str(tmp_path / "res"),
               "--work", str(tmp_path / "work"), "--rehearsal", str(tmp_path / "nope.yaml")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "rehearsal config" in err and "not found" in err
    data = json.loads((tmp_path / "res" / "bench_gpu.json").read_text())
    assert data["rehearsal"]["status"] == "missing" and "training" in data["bench"]
    md = (tmp_path / "res" / "bench_gpu.md").read_text()
    assert "Pretraining throughput on cpu" in md and "Not run" in md and "| 3000 |" in md


def test_gpu_check_refuses_cuda_without_a_gpu(tmp_path, capsys, monkeypatch):

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check(["--out", str(tmp_path), "--no-rehearsal"]) == 2
    assert "no CUDA device" in capsys.readouterr().err and not (tmp_path / "bench_gpu.json").exists()


def test_gpu_check_runs_a_rehearsal_and_reports_its_jobs(tmp_path, small_bench):
    """The same path as on a GPU, on the CPU, with the tiny config cut to one fine-tuning."""

    rc = gpu_check(["--device", "cpu", "--quick", "--bench", "training", "--out", str(tmp_path / "res"),
               "--work", str(tmp_path / "work"), "--rehearsal", "tiny", f"data.demo_dir={tmp_path / 'data'}",
               "run.methods=[]", "run.tasks=[cls]", "run.inpaint=false", "run.svm=false", "run.retrieval=false",
               "transfer.seeds=[0]", "transfer.cls.iterations=2"])
    data = json.loads((tmp_path / "res" / "bench_gpu.json").read_text())
    assert rc == 0, data["rehearsal"]
    reh = data["rehearsal"]
    assert reh["status"] == "ok" and reh["jobs"] == {"cls/random": "done"}
    assert (tmp_path / "work" / "rehearsal" / "report" / "table2.csv").is_file()
    assert "## Rehearsal" in (tmp_path / "res" / "bench_gpu.md").read_text()
