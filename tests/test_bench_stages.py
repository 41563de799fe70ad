"""`cebench bench transfer` and `cebench bench retrieval` on the CPU at quick sizes: the transfer
benchmarks fine-tune with the fine-tuning code itself (its optimiser builder and loop, the function
objects `cebench transfer` calls, and detection's own loss), and every rate or speed-up they report is
computed from the counts and seconds they timed."""

from __future__ import annotations

import json

import torch

from cebench.benchmarks.perf import transfer as transfer_bench
from cebench.benchmarks.perf.retrieval import bench_retrieval
from cebench.transfer import engine
from cebench.transfer.det import train as det_train


def _spy(monkeypatch, module, name, calls):
    real = getattr(module, name)

    def spy(*args, **kw):
        out = real(*args, **kw)
        calls.append((args, kw, out))
        return out

    monkeypatch.setattr(module, name, spy)


def test_transfer_benchmarks_run_the_fine_tuning_loop(monkeypatch):
    loops, optims, timed = [], [], []
    _spy(monkeypatch, engine, "train_one_epoch", loops)
    _spy(monkeypatch, engine, "make_optimizer", optims)
    _spy(monkeypatch, transfer_bench, "timed", timed)
    out = transfer_bench.bench_cls("cpu", quick=True)
    # one optimiser and schedule as a classification job builds them (Adam with one-cycle: AdamW, fused)
    ((args, kw, (opt, sched)),) = optims
    assert type(opt) is torch.optim.AdamW and opt.defaults["fused"] and kw["backbone"] is args[0].encoder
    assert isinstance(sched, torch.optim.lr_scheduler.OneCycleLR) and sched.total_steps == 2 + 3
    # the loop ran 2 warm-up then 3 timed iterations of batch 32 with that optimiser and schedule
    assert [r["iterations"] for _, _, r in loops] == [2, 3] and all(a[3] is opt and a[4] is sched for a, _, _ in loops)
    (_, _, (stats, secs)), (args, kw, (_, infer_s)) = timed
    assert kw == {"repeat": 3, "warmup": 2}
    assert out["train_images_per_s"] == stats["images"] / secs == 3 * 32 / secs
    assert out["infer_images_per_s"] == 3 * 32 / infer_s and out["optimizer"] == "AdamW"
    assert (out["input"], out["batch"], out["train_iterations"]) == (64, 32, 3)


def test_bench_det_uses_the_detection_loss_and_times_proposals(monkeypatch):
    assert transfer_bench.make_loss_fn is det_train.make_loss_fn  # the loss a detection job trains with
    loss_calls, loops, timed, proposals = [], [], [], []
    real_make = det_train.make_loss_fn

    def make_loss_fn(cfg, generator, device):  # the real loss, counting the batches it scores
        loss_fn = real_make(cfg, generator, device)

        def counted(model, batch):
            loss_calls.append((len(batch[1]), cfg.rois_per_image))
            return loss_fn(model, batch)
        return counted

    monkeypatch.setattr(transfer_bench, "make_loss_fn", make_loss_fn)
    _spy(monkeypatch, engine, "train_one_epoch", loops)
    _spy(monkeypatch, transfer_bench, "timed", timed)
    _spy(monkeypatch, transfer_bench, "compute_missing", proposals)
    out = transfer_bench.bench_det("cpu", quick=True)
    demo = out["demo_128px"]
    assert demo["image"] == [128, 128] and demo["images_per_batch"] == 2 and demo["proposals"] == 70
    # the fine-tuning loop ran detection's loss (2 images, 64 RoIs each) 2 + 3 times
    assert [r["iterations"] for _, _, r in loops] == [2, 3] and loss_calls == [(2, 64)] * 5
    # quick: 3 timed iterations of 2 images after 2 warm-up ones; inference: 3 calls on 8 images
    (_, _, (stats, t_tr)), (_, kw, (_, t_inf)) = timed
    assert kw == {"repeat": 3, "warmup": 2}
    assert out["train_images_per_s"] == demo["train_images_per_s"] == stats["images"] / t_tr == 3 * 2 / t_tr
    assert out["infer_images_per_s"] == demo["infer_images_per_s"] == 3 * 8 / t_inf
    # selective search on 16 generated scenes in one process; the rate is what the cache path measured
    ((args, kw, rate),) = proposals
    assert (len(args[0]), args[1].workers) == (16, 1) and out["proposals_images_per_s"] == {"64px_1proc": rate}
    assert [n for n, _ in transfer_bench.BENCHES] == ["cls", "seg", "seg_conv5", "det"]


def test_bench_retrieval_quick(tmp_path):
    res = bench_retrieval(tmp_path / "b.json", device="cpu", quick=True, dim=32)
    assert json.loads((tmp_path / "b.json").read_text()) == res
    # quick: 128 patches of 32 px, 2,000 database vectors and 100 queries (the sizes `quick` sets)
    assert (res["n_patches"], res["patch_size"], res["n_db"], res["n_queries"], res["dim"]) == (128, 32, 2000, 100, 32)
    assert res["faiss_flat_recall_at_10"] == res["sklearn_brute_recall_at_10"] == 1.0  # exact against exact
    assert res["hog_ours_exact_img_s"] > 0 and res["sklearn_brute_queries_s"] > 0
    # the speed-ups are the ratios of the rates measured beside them
    assert res["hog_speedup_vs_skimage"] == res["hog_ours_exact_img_s"] / res["hog_skimage_img_s"]
    assert res["faiss_flat_speedup_vs_sklearn"] == res["faiss_flat_queries_s"] / res["sklearn_brute_queries_s"]
