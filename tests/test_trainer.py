import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from edgeseg.cache import build_cache
from edgeseg.data import find_items
from edgeseg.preprocess import preprocess
from edgeseg.train.dataset import NucleiDataset
from edgeseg.train.losses import bce_dice_loss, soft_dice_loss
from edgeseg.train.trainer import TrainConfig, Trainer


def test_training_tensor_equals_runtime_preprocessing(sample_dir):
    """Golden test: the cache + dataset path gives exactly the runtime's preprocess() tensor."""
    from edgeseg.data import load_sample

    items = find_items(sample_dir)
    cached = build_cache(items, 256, progress=False)
    ds = NucleiDataset(cached, range(len(items)))
    for i in (0, 5, 7):  # 256x256, 520x696 and 256x320 originals
        x, y = ds[i]
        np.testing.assert_array_equal(x.numpy(), preprocess(load_sample(items[i]).image, 256)[0])
        assert y.shape == (1, 256, 256)


def test_bce_dice_loss_on_hand_made_tensors():
    target = torch.zeros(1, 1, 2, 2)
    target[0, 0, 0, 0] = 1
    perfect = torch.where(target > 0, 20.0, -20.0)
    assert float(bce_dice_loss(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    zero = torch.zeros(1, 1, 2, 2)  # p = 0.5 everywhere
    expected_bce = float(np.log(2))
    expected_dice = 1 - (2 * 0.5 + 1) / (2.0 + 1 + 1)
    assert float(soft_dice_loss(zero, target)) == pytest.approx(expected_dice, rel=1e-6)
    assert float(bce_dice_loss(zero, target)) == pytest.approx(expected_bce + expected_dice, rel=1e-6)


def _cfg(sample_dir, out, epochs=2, model="half_unet", **kw):
    return TrainConfig(
        model=model, data=str(sample_dir), out=str(out), epochs=epochs, batch_size=4, threads=2, **kw
    )


def test_two_epoch_run_writes_checkpoints_log_and_card(sample_dir, tmp_path):
    out = tmp_path / "run"
    summary = Trainer(_cfg(sample_dir, out), progress=False).fit()
    rows = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) >= {"epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds"}
    state = torch.load(out / "best.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    card = json.loads((out / "best.card.json").read_text())
    assert card["arch"] == "half_unet" and 0.2 <= card["threshold"] <= 0.8
    assert card["threshold"] == summary["threshold"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["epochs"] == 2 and cfg["n_train"] + cfg["n_val"] == 8


def test_training_epoch_never_ends_on_a_batch_of_one(sample_dir, tmp_path):
    """Fast-SCNN pools to 1x1 before a BatchNorm: a last batch of one image would crash the epoch."""
    probe = Trainer(_cfg(sample_dir, tmp_path / "probe", model="fast_scnn"), progress=False)
    n_train = len(probe._entries("train"))
    cfg = _cfg(sample_dir, tmp_path / "run", epochs=1, model="fast_scnn")
    cfg.batch_size = n_train - 1  # n_train = one full batch + one image
    trainer = Trainer(cfg, progress=False)
    sizes = [len(x) for x, _ in trainer._loader(trainer._entries("train"), augment=False, shuffle=True, epoch=1)]
    assert sizes == [n_train - 1]
    assert np.isfinite(trainer.train_epoch(1))


def test_existing_run_is_not_overwritten_without_resume(sample_dir, tmp_path):
    from edgeseg.errors import EdgesegError

    out = tmp_path / "run"
    Trainer(_cfg(sample_dir, out, epochs=1), progress=False).fit()
    with pytest.raises(EdgesegError, match="--resume"):
        Trainer(_cfg(sample_dir, out, epochs=1), progress=False).fit()


def test_resume_after_sigkill_mid_run_continues_from_last_checkpoint(sample_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "edgeseg.cli",
        "train",
        "half_unet",
        "--data",
        str(sample_dir),
        "--epochs",
        "4",
        "--batch-size",
        "2",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-run: epoch 1 saved, epoch 2 in progress
    proc.wait()
    done = [json.loads(ln)["epoch"] for ln in (out / "log.jsonl").read_text().splitlines() if ln.strip()]
    assert done and done[-1] < 4
    r = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    epochs = [json.loads(ln)["epoch"] for ln in (out / "log.jsonl").read_text().splitlines() if ln.strip()]
    assert epochs == [1, 2, 3, 4]
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["epoch"] == 4 and "optimizer" in ck


def test_every_item_becomes_an_empty_target_hard_negative_at_share_one(sample_dir):
    from edgeseg.train.hard_negatives import HardNegatives

    items = find_items(sample_dir)
    cached = build_cache(items, 256, progress=False)
    plain = NucleiDataset(cached, range(len(items)), out_channels=2)
    hn = HardNegatives()
    negatives = NucleiDataset(cached, range(len(items)), out_channels=2, hard_negatives=hn, hard_negative_share=1.0)
    np.random.seed(0)
    swapped = 0
    for i in range(len(items)):
        (x, y), (x0, y0) = negatives[i], plain[i]
        if hn.background(cached, i) is None:  # too dense to fill: left as it is
            assert torch.equal(y, y0)
        else:
            swapped += 1
            assert not y.any() and not torch.equal(x, x0)
    assert swapped >= len(items) // 2
    none = NucleiDataset(cached, range(len(items)), out_channels=2, hard_negatives=hn, hard_negative_share=0.0)
    assert all(torch.equal(none[i][1], plain[i][1]) for i in range(len(items)))


def test_init_starts_from_the_given_run_and_refuses_another_network(sample_dir, tmp_path):
    from edgeseg.errors import EdgesegError

    first = tmp_path / "first"
    Trainer(_cfg(sample_dir, first, epochs=1), progress=False).fit()
    start = torch.load(first / "best.pt", weights_only=True)
    tuned = Trainer(_cfg(sample_dir, tmp_path / "tuned", epochs=1, init=str(first)), progress=False)
    tuned.load_init()
    assert all(torch.equal(v, start[k]) for k, v in tuned.model.state_dict().items())
    other = Trainer(_cfg(sample_dir, tmp_path / "other", epochs=1, model="fast_scnn", init=str(first)),
                    progress=False)
    with pytest.raises(EdgesegError, match="holds half_unet with 1 output.*not fast_scnn"):
        other.fit()


def test_boundary_weight_scales_the_boundary_term_of_the_training_loss(sample_dir, tmp_path):
    from edgeseg.train.losses import segmentation_loss

    logits, target = torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4)
    target[0, 0, :2] = 1
    target[0, 1, 0] = 1
    trainer = Trainer(_cfg(sample_dir, tmp_path / "r", out_channels=2, boundary_weight=3.0), progress=False)
    fg = segmentation_loss(logits[:, :1], target[:, :1])
    bd = segmentation_loss(logits[:, 1:], target[:, 1:])
    assert float(trainer.loss_fn(logits, target, None)) == pytest.approx(float(fg + 3.0 * bd), rel=1e-6)


def test_keep_last_makes_best_pt_the_last_epoch(sample_dir, tmp_path):
    out = tmp_path / "run"
    summary = Trainer(_cfg(sample_dir, out, epochs=2, keep="last"), progress=False).fit()
    assert summary["best_epoch"] == 2
    best = torch.load(out / "best.pt", weights_only=True)
    last = torch.load(out / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(v, last[k]) for k, v in best.items())


def test_a_weight_plane_in_the_target_weighs_the_cross_entropy_of_both_outputs():
    from edgeseg.train.losses import segmentation_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 2, 8, 8)
    target = (torch.rand(2, 2, 8, 8) > 0.5).float()
    ones = torch.ones(2, 1, 8, 8)
    assert float(segmentation_loss(logits, torch.cat([target, ones], 1))) == pytest.approx(
        float(segmentation_loss(logits, target)), rel=1e-6)
    w = torch.ones(2, 1, 8, 8)
    w[:, :, :4] = 3.0  # the top half counts three times
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    expected_bce = float(((bce[:, :1] * w).sum() / w.sum()) + ((bce[:, 1:] * w).sum() / w.sum()))
    dices = float(soft_dice_loss(logits[:, :1], target[:, :1]) + soft_dice_loss(logits[:, 1:], target[:, 1:]))
    assert float(segmentation_loss(logits, torch.cat([target, w], 1))) == pytest.approx(expected_bce + dices, rel=1e-5)


def test_weight_average_copies_first_then_moves_by_one_minus_decay():
    from edgeseg.train.trainer import weight_average

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.BatchNorm2d(1))
    ema = weight_average(net, 0.75)
    with torch.no_grad():
        net[0].weight.fill_(2.0)
        net[1].running_mean.fill_(4.0)
    ema.update_parameters(net)  # the first update copies
    assert float(ema.module[0].weight) == 2.0 and float(ema.module[1].running_mean) == 4.0
    with torch.no_grad():
        net[0].weight.fill_(6.0)
        net[1].running_mean.fill_(0.0)
    ema.update_parameters(net)
    assert float(ema.module[0].weight) == pytest.approx(0.75 * 2.0 + 0.25 * 6.0)
    assert float(ema.module[1].running_mean) == pytest.approx(0.75 * 4.0)
    from edgeseg.errors import EdgesegError

    with pytest.raises(EdgesegError, match="not a decay"):
        weight_average(net, 1.0)


def test_ema_run_saves_and_resumes_the_average_not_the_trained_weights(sample_dir, tmp_path):
    from edgeseg.errors import EdgesegError

    out = tmp_path / "run"
    Trainer(_cfg(sample_dir, out, epochs=2, ema=0.9, keep="last"), progress=False).fit()
    ck = torch.load(out / "last.pt", weights_only=True)
    best = torch.load(out / "best.pt", weights_only=True)
    averaged = {k[len("module."):]: v for k, v in ck["ema"].items() if k.startswith("module.")}
    assert set(averaged) == set(best) and all(torch.equal(best[k], averaged[k]) for k in best)
    assert any(not torch.equal(best[k], ck["model"][k]) for k in best if best[k].is_floating_point())
    again = Trainer(_cfg(sample_dir, out, epochs=3, ema=0.9, keep="last"), progress=False)
    again.resume()
    assert int(again.ema.n_averaged) == int(ck["ema"]["n_averaged"]) > 0
    plain = tmp_path / "plain"
    Trainer(_cfg(sample_dir, plain, epochs=1), progress=False).fit()
    with pytest.raises(EdgesegError, match="without --ema"):
        Trainer(_cfg(sample_dir, plain, epochs=2, ema=0.9), progress=False).resume()
