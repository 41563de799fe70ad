"""The pretext methods (context prediction, rotation, jigsaw, colorization): their labels are right, their
losses fall on a fixed batch, and `cebench pretrain --method M` writes a checkpoint that `cebench transfer cls`
and `cebench retrieve` accept (docs/methods.md: the test every method gets)."""

import itertools
import math
import os
import shutil

import numpy as np
import pytest
import torch

from cebench.data.sources import DataConfig, voc_root
from cebench.errors import CheckpointError, ConfigError
from cebench.pretrain import colorization as col
from cebench.pretrain import context_prediction as cp
from cebench.pretrain import jigsaw as jig
from cebench.pretrain import rotation as rot
from cebench.pretrain.config import PretrainConfig
from cebench.pretrain.loading import load_encoder, save_encoder_checkpoint
from cebench.pretrain.methods import METHODS, cache_view, method_config
from cebench.pretrain.models import AlexNetConfig, AlexNetEncoder, rgb_to_lab
from cebench.pretrain.pretext import crop_patches, lr_steps
from cebench.transfer.inits import build_init

os.environ["CEBENCH_NO_PROGRESS"] = "1"
torch.set_num_threads(1)
PRETEXT = {"context-prediction": cp, "rotation": rot, "jigsaw": jig, "colorization": col}
ROW = {"context-prediction": "context prediction", "rotation": "rotation", "jigsaw": "jigsaw",
       "colorization": "colorization"}


# ---------------------------------------------------------------------------------------------------------
# pretext labels
# ---------------------------------------------------------------------------------------------------------


def test_rotation_label_is_the_rotation():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    out, labels = rot.rotate_all(x)
    assert out.shape == (8, 3, 4, 4) and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    img = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)  # a 90 degree turn counter-clockwise:
    turned, lab = rot.rotate_all(img)                              # [[1, 2], [3, 4]] -> [[2, 4], [1, 3]]
    assert turned[1, 0].tolist() == [[2.0, 4.0], [1.0, 3.0]] and turned[2, 0].tolist() == [[4.0, 3.0], [2.0, 1.0]]
    assert turned[3, 0].tolist() == [[3.0, 1.0], [4.0, 2.0]] and lab.tolist() == [0, 1, 2, 3]
    for k in range(4):  # labels say how many quarter turns undo it
        assert torch.equal(torch.rot90(out[k * 2:(k + 1) * 2], -k, dims=(2, 3)), x)


def test_jigsaw_permutation_set_is_greedy_maximal_hamming():
    """Each next permutation has the largest minimum Hamming distance to those chosen before it (ties: the
    largest summed distance, then the first in lexicographic order), over all 9! permutations."""
    perms = jig.max_hamming_permutations(8, seed=3)
    cands = jig.all_permutations()
    assert len(cands) == math.factorial(9) and perms.shape == (8, 9)
    assert all(sorted(p) == list(range(9)) for p in perms)
    assert tuple(perms[0]) == tuple(cands[int(np.random.default_rng(3).integers(len(cands)))])
    for k in range(1, 8):
        dist = (cands[:, None, :] != perms[None, :k, :]).sum(-1)  # [9!, k]
        near, summed = dist.min(1), dist.sum(1)
        best = np.flatnonzero(near == near.max())
        best = best[summed[best] == summed[best].max()]
        assert tuple(cands[best[0]]) == tuple(perms[k]), k
    hundred = jig.max_hamming_permutations(100)
    d = (hundred[:, None, :] != hundred[None, :, :]).sum(-1)[~np.eye(100, dtype=bool)]
    assert d.min() == 6 and 8.0 < d.mean() < 8.2  # no two classes a couple of swaps apart (docs/methods.md)


def test_jigsaw_tiles_land_where_the_permutation_says():
    cfg = jig.JigsawConfig(grid_size=63, tile_size=18, permutations=10, channel_jitter=0)
    cell = torch.arange(63) // 21
    x = (cell[:, None] * 3 + cell[None, :]).float().expand(4, 3, 63, 63).clone()  # pixel value = its cell
    perms = torch.as_tensor(jig.max_hamming_permutations(10))
    torch.manual_seed(0)
    puzzles, labels, raw = jig.make_puzzles(x, cfg, perms)
    assert raw.shape == (4, 9, 3, 18, 18)
    for b in range(4):
        for i in range(9):  # position i shows tile perms[label][i]
            assert torch.all(raw[b, i] == perms[labels[b], i]), (b, i)
    shown = jig.mosaic(raw, 63)  # and the sample grid puts them in puzzle order
    assert shown.shape == (4, 3, 63, 63) and float(shown[0, 0, 4, 4]) == float(perms[labels[0], 0])


def test_crop_patches_per_channel_offsets_match_a_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 20, 20, generator=g)
    ys = torch.randint(0, 15, (2, 4, 3), generator=g)
    xs = torch.randint(0, 15, (2, 4, 3), generator=g)
    out = crop_patches(x, ys, xs, 5)
    for b, k, c in itertools.product(range(2), range(4), range(3)):
        y, x0 = int(ys[b, k, c]), int(xs[b, k, c])
        assert torch.equal(out[b, k, c], x[b, c, y:y + 5, x0:x0 + 5])


def test_context_prediction_label_matches_the_patches_grid_cells():
    cfg = cp.ContextPredictionConfig(patch_size=14, gap=7, jitter=3, pairs=8, aberration="none")
    d, step = cp.crop_size(cfg), cfg.patch_size + cfg.gap
    region = ((torch.arange(d) - cfg.jitter + cfg.gap // 2) // step).clamp(0, 2)  # the cell each pixel row is in
    x = (region[:, None] * 3 + region[None, :]).float().expand(5, 3, d, d)
    torch.manual_seed(1)
    ys, xs, labels = cp.sample_grid(5, cfg, "cpu")
    assert labels.shape == (5, 8) and all(sorted(r) == list(range(8)) for r in labels.tolist())
    patches = crop_patches(x, ys, xs, cfg.patch_size)  # [5, 9, 3, s, s]: the centre, then the neighbours
    assert torch.all(patches[:, 0] == 4)  # the centre cell (1, 1)
    for b, k in itertools.product(range(5), range(8)):
        r, c = cp.NEIGHBOURS[int(labels[b, k])]
        assert torch.all(patches[b, k + 1] == 3 * r + c), (b, k)
    cells = torch.tensor((cp.CENTRE, *cp.NEIGHBOURS))[torch.cat([torch.zeros(5, 1, dtype=torch.long), labels + 1], 1)]
    for corner, rc in ((ys, cells[..., 0]), (xs, cells[..., 1])):  # within `jitter` px of the cell's place
        assert int((corner - (cfg.jitter + rc * step)).abs().max()) <= cfg.jitter
        assert int(corner.min()) >= 0 and int(corner.max()) <= d - cfg.patch_size
    one = cp.sample_grid(50, cp.ContextPredictionConfig(pairs=1), "cpu")[2]
    assert one.shape == (50, 1) and set(one.flatten().tolist()) <= set(range(8))


def test_chromatic_aberration_remedies():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(4, 2, 3, 6, 6, generator=g)
    proj = cp.remove_aberration(p, "projection")
    axis = torch.tensor([-1.0, 2.0, -1.0]) / math.sqrt(6)
    assert torch.einsum("bkchw,c->bkhw", proj, axis).abs().max() < 1e-5  # no green-magenta component left
    assert torch.allclose(torch.einsum("bkchw,c->bkhw", proj, torch.ones(3)), p.sum(2), atol=1e-5)  # grey kept
    drop = cp.remove_aberration(p, "drop", generator=g)
    small = drop.abs().amax(dim=(-2, -1)) <= 0.5 / 255 + 1e-7  # [4, 2, 3]: noise channels
    assert torch.all(small.sum(-1) == 2)  # exactly one channel kept per patch
    kept = (~small).float().argmax(-1)
    for b, k in itertools.product(range(4), range(2)):
        c = int(kept[b, k])
        assert torch.allclose(drop[b, k, c], p[b, k, c] - p[b, k, c].mean(), atol=1e-6)


def test_lab_agrees_with_skimage():
    from skimage.color import rgb2lab

    rgb = np.random.default_rng(0).random((2, 9, 11, 3))
    ours = rgb_to_lab(torch.from_numpy(rgb).permute(0, 3, 1, 2).float()).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours - rgb2lab(rgb)).max() < 2e-3


def test_colour_bins_soft_encoding_and_rebalancing_against_numpy():
    from skimage.color import rgb2lab

    v = np.linspace(0, 1, 16)
    lattice = np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(1, -1, 3)
    ab = rgb2lab(lattice)[0, :, 1:]
    want = {tuple(c) for c in (np.round(ab / 10).astype(int) * 10).tolist()}
    bins = col.ab_bins(10, 16)
    assert {tuple(c) for c in bins.int().tolist()} == want
    assert len(col.ab_bins(10, 64)) == 261  # the module docstring's count (the default lattice)

    pts = np.array([[3.3, -7.9], [41.7, 12.2], [-25.6, 60.9]])  # no ties among the 5 nearest
    z = col.soft_encode(torch.tensor(pts), bins).double().numpy()
    b = bins.double().numpy()
    for i, pt in enumerate(pts):
        dist = np.sqrt(((b - pt) ** 2).sum(1))
        near = np.argsort(dist)[:5]
        w = np.exp(-dist[near] ** 2 / (2 * 5.0 ** 2))
        ref = np.zeros(len(b))
        ref[near] = w / w.sum()
        assert np.allclose(z[i], ref, atol=1e-6)

    p = np.random.default_rng(1).random(len(b)) ** 4
    p /= p.sum()
    k = np.exp(-((b[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * 25.0))
    smooth = k @ p / (k @ p).sum()
    w = 1.0 / (0.5 * smooth + 0.5 / len(b))
    w /= (smooth * w).sum()
    got_s = col.smooth_prior(torch.tensor(p), bins.double())
    got_w = col.rebalance_weights(got_s, 0.5)
    assert np.allclose(got_s.numpy(), smooth) and np.allclose(got_w.numpy(), w)
    assert math.isclose(float((got_s * got_w).sum()), 1.0)  # E_p~[w] = 1


def test_colorization_prior_counts_the_training_targets():
    cfg = col.ColorizationConfig(fc_dim=8, prior_images=5)
    obj = col.build(AlexNetConfig(), cfg)
    g = torch.Generator().manual_seed(0)
    imgs = (torch.rand(6, 3, 64, 64, generator=g) * 255).to(torch.uint8)
    obj.prepare([(imgs[i], None, i) for i in range(6)])  # the dataset's items: (uint8 image, labels, index)
    # direct computation: Lab of the first 5 images, ab averaged over 8x8 blocks (conv5's 8x8 grid), nearest bin
    from skimage.color import rgb2lab

    lab = rgb2lab(imgs[:5].permute(0, 2, 3, 1).numpy() / 255.0)
    ab = lab[..., 1:].reshape(5, 8, 8, 8, 8, 2).mean(axis=(2, 4)).reshape(-1, 2)
    b = obj.net.bins.double().numpy()
    nearest = np.argmin(((ab[:, None, :] - b[None]) ** 2).sum(-1), 1)
    p = np.bincount(nearest, minlength=len(b)) / len(nearest)
    assert int(obj.net.prior_count) == 5 * 64 and np.allclose(obj.net.prior.numpy(), p, atol=1e-6)
    ref_w = col.rebalance_weights(col.smooth_prior(torch.tensor(p), torch.tensor(b)), 0.5)
    assert torch.allclose(obj.net.weights.double(), ref_w, rtol=1e-5)
    assert obj.net.encoder.conv1.weight[:, 1:].abs().max() == 0  # conv1 sees no ab


# ---------------------------------------------------------------------------------------------------------
# losses fall; checkpoints load as encoders
# ---------------------------------------------------------------------------------------------------------


def _images(n=16, size=64):
    """Structured images: coloured discs on a gradient (rotation, jigsaw, position and colour all learnable)."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = []
    for _ in range(n):
        cy, cx, r = (torch.rand(3, generator=g) * torch.tensor([0.6, 0.6, 0.2]) + torch.tensor([0.2, 0.2, 0.1]))
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2).float()
        colour = torch.rand(3, 1, 1, generator=g)
        out.append(yy[None].expand(3, -1, -1) * 0.5 * (1 - disc) + colour * disc)
    return torch.stack(out)


SMALL = {"context-prediction": cp.ContextPredictionConfig(fc_dim=64),
         "rotation": rot.RotationConfig(fc_dim=64),
         "jigsaw": jig.JigsawConfig(permutations=8, tile_dim=32, fc_dim=64),
         "colorization": col.ColorizationConfig(fc_dim=32)}


@pytest.mark.parametrize("method", list(PRETEXT))
def test_loss_falls_on_a_fixed_batch(method):
    module, cfg = PRETEXT[method], SMALL[method]
    torch.manual_seed(0)
    obj = module.build(AlexNetConfig(), cfg)
    size = module.input_size(AlexNetConfig(), cfg)
    x = _images()[:, :, :size, :size].contiguous()
    if method == "colorization":
        obj.prepare([(torch.round(x[i] * 255).to(torch.uint8), None, i) for i in range(len(x))])
    opt = torch.optim.Adam(obj.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        torch.manual_seed(5)  # the same puzzles / pairs / rotations every step: a fixed problem
        loss = obj(x)[0]["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses


def test_lab_encoder_reads_rgb_and_round_trips_a_checkpoint(tmp_path):
    enc = col.build(AlexNetConfig(), col.ColorizationConfig(fc_dim=8)).net.encoder.eval()
    x = torch.randn(2, 3, 64, 64)
    ref = enc.forward_intermediates(torch.cat([_lab_scaled(x)[:, :1], torch.zeros(2, 2, 64, 64)], 1), ("conv2",),
                                    stem=False)["conv2"]
    assert torch.allclose(enc.forward_intermediates(x, ("conv2",))["conv2"], ref, atol=1e-5)  # ab weights are 0
    path = save_encoder_checkpoint(tmp_path / "c.pt", enc, method="colorization")
    back = load_encoder(path)
    assert back.input_space == "lab" and torch.load(path, weights_only=True)["arch"]["input_space"] == "lab"
    assert torch.allclose(back.forward_features(x), enc.forward_features(x), atol=1e-6)
    rgb = AlexNetEncoder(AlexNetConfig())
    assert "input_space" not in torch.load(save_encoder_checkpoint(tmp_path / "r.pt", rgb), weights_only=True)["arch"]


def _lab_scaled(x):
    from cebench.images import denormalize

    lab = rgb_to_lab(denormalize(x))
    return (lab - torch.tensor([50.0, 0, 0]).view(1, 3, 1, 1)) / 50.0


def test_config_errors_are_one_line_and_the_ce_cache_view_is_unchanged():
    with pytest.raises(ConfigError, match="pretrain.jigsaw: grid_size must be a multiple of 3"):
        METHODS["jigsaw"](PretrainConfig(jigsaw=jig.JigsawConfig(grid_size=64)), probe=True)
    with pytest.raises(ConfigError, match="pretrain.context_prediction.aberration"):
        METHODS["context-prediction"](PretrainConfig(context_prediction=cp.ContextPredictionConfig(aberration="x")),
                                      probe=True)
    with pytest.raises(ConfigError, match="colorization.colour must be rgb"):
        METHODS["colorization"](PretrainConfig(colorization=col.ColorizationConfig(colour="gray")), probe=True)
    with pytest.raises(ConfigError, match="too small"):
        METHODS["jigsaw"](PretrainConfig(encoder=AlexNetConfig.paper(),
                                         jigsaw=jig.JigsawConfig(grid_size=48, tile_size=16, permutations=2)))
    assert METHODS["context-prediction"](PretrainConfig(), probe=True).input_size == 3 * 14 + 2 * 7 + 2 * 2
    # a method's section replaces the shared keys it sets; the others keep the context encoder's
    cfg = PretrainConfig(method="rotation", colour="gray", rotation=rot.RotationConfig(
        batch_size=192, optimizer="sgd", lr=0.01, weight_decay=5e-4, lr_milestones=(0.3, 0.6),
        lr_multipliers=(0.1, 0.01)))
    run = method_config(cfg)
    assert (run.batch_size, run.lr, run.weight_decay, run.steps, run.colour) == (192, 0.01, 5e-4, cfg.steps, "gray")
    assert method_config(PretrainConfig(method="colorization", colour="gray")).colour == "rgb"
    f = lr_steps(cfg.rotation, 100)
    assert [f(s) for s in (0, 29, 30, 59, 60, 99)] == [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    from cebench.config import config_to_dict

    view = cache_view(config_to_dict(PretrainConfig()), "ce")  # the CE job's key: as before these methods
    assert not {"rotation", "jigsaw", "colorization", "context_prediction"} & set(view)
    assert set(cache_view(config_to_dict(PretrainConfig()), "jigsaw")) - set(view) == {"jigsaw"}


# ---------------------------------------------------------------------------------------------------------
# end to end at the tiny config: pretrain, transfer cls, retrieve
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    d = DataConfig(demo="tiny", demo_dir=str(tmp_path_factory.mktemp("ssl-data")))
    return d, voc_root(d)


def _cli():
    from cebench.benchmarks.cli import main

    return main


@pytest.mark.slow  # about 11 s with the tiny tree's generation: the four methods' CLI runs in one test
def test_pretrain_transfer_retrieve_end_to_end(tmp_path, tiny_demo):
    data_cfg, root = tiny_demo
    cli = _cli()
    ckpts = {}
    for method in PRETEXT:  # tiny: 4 steps of 16 images
        out = tmp_path / method
        assert cli(["pretrain", "--config", "tiny", "--method", method, "--out", str(out), "--device", "cpu",
                    f"data.demo_dir={data_cfg.demo_dir}", "eval_images=0", "sample_every=0"]) == 0
        ck = torch.load(out / "checkpoint.pt", weights_only=True)
        assert ck["arch"]["name"] == method and ck["step"] == 4
        ckpts[method] = out / "checkpoint.pt"
    perms = torch.load(ckpts["jigsaw"], weights_only=True)["arch"]["permutations"]
    assert np.array_equal(np.array(perms), jig.max_hamming_permutations(jig.JigsawConfig().permutations))
    inits = [x for m, p in ckpts.items() for x in ("--init", f"{ROW[m]}={p}")]
    out = tmp_path / "cls"
    assert cli(["transfer", "cls", "--config", "tiny", "--data", str(root), "--out", str(out), "--device", "cpu",
                *inits, "--seeds", "0", "cls.iterations=2", "cls.batch_size=8", "cls.test_crops=1", "cls.fc_dim=16",
                "cls.lrs=[1e-3]"]) == 0
    import json

    rows = {r["init"]: r for r in json.loads((out / "results.json").read_text())["rows"] if r["metric"] == "mAP"}
    assert set(rows) == set(ROW.values()) and all(r["status"] == "ok" and 0 <= r["mean"] <= 1 for r in rows.values())
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted((root / "JPEGImages").glob("*.jpg"))[:3]:
        shutil.copy(p, folder / p.name)
    query = f"{sorted(folder.iterdir())[0]}:0,0,32,32"
    for method in ("colorization", "jigsaw"):  # a Lab-input encoder and an RGB one
        png = tmp_path / f"{method}.png"
        assert cli(["retrieve", "--images", str(folder), "--query", query, "--features", "ce", "--checkpoint",
                    str(ckpts[method]), "--patch-size", "32", "--k", "2", "--out", str(png), "--device", "cpu"]) == 0
        assert png.is_file()
    with pytest.raises(CheckpointError, match="given as the 'rotation' row but trained with method 'jigsaw'"):
        build_init("rotation", checkpoint=ckpts["jigsaw"])


def test_new_rows_reach_table2_paired_and_the_published_numbers():
    from cebench.benchmarks.paper import published_sources
    from cebench.benchmarks.report import build_paired, build_table2, table2_markdown

    per = {"random": (0.40, 0.50), "context encoder": (0.45, 0.58), "rotation": (0.50, 0.52), "SimCLR-ish": (0.3, 0.3)}
    rows = [{"init": init, "task": "cls", "metric": "mAP", "mean": sum(v) / 2, "std": 0.0, "seeds": 2, "status": "ok",
             "per_seed": {"0": v[0], "1": v[1]}} for init, v in per.items()]
    paired = build_paired(rows)
    assert list(paired["comparison"]) == ["context encoder - random", "context encoder - rotation",
                                          "context encoder - SimCLR-ish"]
    rot_row = paired.set_index("comparison").loc["context encoder - rotation"]
    assert rot_row["diffs"] == "-5.0 +6.0" and rot_row["wins"] == 1 and math.isclose(rot_row["mean_diff"], 0.5)
    t2 = build_table2(rows)
    assert t2.set_index("init").loc["rotation", "paper"] == 73.0  # Gidaris et al. Table 7
    assert "| rotation | 51.0 ± 0.0 (n=2) | 73.0 |" in table2_markdown(t2)
    lines = published_sources(["random", "context prediction", "rotation"])
    assert "- random: Pathak et al. (CVPR 2016) Table 2" in lines
    assert any(line.startswith("- rotation: Gidaris et al. (ICLR 2018) Table 7") for line in lines)
    assert any(line.startswith("- context prediction: Pathak et al. (CVPR 2016) Table 2") and "65.3 / 51.1" in line
               for line in lines)


def test_pretext_hooks_resume_bit_exact(tmp_path, tiny_demo):
    """A pretext method's own optimiser (SGD with lr milestones) and its data statistics (colorization's
    prior) survive a kill and resume: the resumed checkpoint equals the uninterrupted one."""
    from cebench.logs import LogConfig
    from cebench.pretrain import train as T

    data_cfg, _ = tiny_demo
    sched = dict(optimizer="sgd", lr=0.01, lr_milestones=(0.5,), lr_multipliers=(0.1,), batch_size=8, steps=5)
    cfg = PretrainConfig(method="colorization", ckpt_every=2, sample_every=0, eval_images=0, log=LogConfig(every=1),
                         amp="none", colorization=col.ColorizationConfig(fc_dim=16, prior_images=32, **sched))
    full = T.main(cfg, data_cfg, tmp_path / "full", device="cpu")
    with pytest.raises(T.Interrupted):
        T.main(PretrainConfig(**{**cfg.__dict__, "stop_after": 3}), data_cfg, tmp_path / "cut", device="cpu")
    resumed = T.main(cfg, data_cfg, tmp_path / "cut", device="cpu")
    a, b = torch.load(full, weights_only=True), torch.load(resumed, weights_only=True)
    assert a["step"] == b["step"] == 5 and a["config"]["batch_size"] == 8 and a["config"]["lr"] == 0.01
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), "resume differs"
    assert int(a["model"]["prior_count"]) == 32 * 64  # 32 images x the 8 x 8 conv5 grid
    assert b["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.001)  # x0.1 from step round(0.5 x 5) = 2 on
    assert "momentum" in b["optimizer"]["param_groups"][0]  # SGD, not the trainer's Adam
