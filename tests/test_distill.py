import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from edgeseg.card import read_card, write_card
from edgeseg.cli import main
from edgeseg.errors import EdgesegError
from edgeseg.fsutil import sha256_file
from edgeseg.train.distill import DistillationLoss, distill, distillation_term
from edgeseg.train.losses import segmentation_loss
from edgeseg.train.predict import load_checkpoint
from edgeseg.train.trainer import TrainConfig, Trainer
from edgeseg.zoo import SAMPLE_DIR

# KL(Bernoulli(0.75) || Bernoulli(0.5)), by hand
KL_075_050 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)


def _const(value: float, channels: int = 1) -> torch.Tensor:
    return torch.full((1, channels, 2, 2), float(value))


def test_distillation_term_on_hand_made_tensors():
    assert float(distillation_term(_const(1.3), _const(1.3), 2.0)) == pytest.approx(0.0, abs=1e-7)
    # T = 1: teacher p = sigmoid(ln 3) = 0.75, student p = 0.5
    assert float(distillation_term(_const(0.0), _const(math.log(3)), 1.0)) == pytest.approx(KL_075_050, rel=1e-6)
    # T = 2: the same softened probabilities, scaled by T^2 = 4
    assert float(distillation_term(_const(0.0), _const(2 * math.log(3)), 2.0)) == pytest.approx(
        4 * KL_075_050, rel=1e-6
    )
    # it is a divergence, not a symmetric distance: KL(0.5 || 0.75) differs
    reverse = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert float(distillation_term(_const(math.log(3)), _const(0.0), 1.0)) == pytest.approx(reverse, rel=1e-6)


def test_distillation_term_uses_only_the_channels_both_networks_have():
    student = torch.cat([_const(0.0), _const(-9.0)], dim=1)  # 2 outputs; the boundary one is far off
    teacher = _const(math.log(3))  # a binary teacher: only the foreground is distilled
    assert float(distillation_term(student, teacher, 1.0)) == pytest.approx(KL_075_050, rel=1e-6)
    both = torch.cat([_const(math.log(3)), _const(math.log(3))], dim=1)
    assert float(distillation_term(student, both, 1.0)) > KL_075_050  # with a boundary teacher it counts


def _tiny_teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, 2, 1)


def test_loss_is_hard_loss_plus_alpha_times_distillation_term_and_logs_both():
    torch.manual_seed(1)
    x, logits = torch.randn(2, 3, 8, 8), torch.randn(2, 2, 8, 8)
    y = (torch.rand(2, 2, 8, 8) > 0.5).float()
    teacher = _tiny_teacher()
    loss = DistillationLoss(teacher, alpha=0.7, temperature=3.0)
    with torch.no_grad():
        expected_kd = float(distillation_term(logits, teacher(x), 3.0))
    hard = float(segmentation_loss(logits, y))
    assert float(loss(logits, y, x)) == pytest.approx(hard + 0.7 * expected_kd, rel=1e-6)
    row = loss.log_row()
    assert row == {"train_hard_loss": round(hard, 5), "train_kd_loss": round(expected_kd, 5)}
    assert loss.log_row()["train_hard_loss"] == 0.0  # the sums restart every epoch


def test_alpha_zero_is_the_trainers_own_loss_and_never_runs_the_teacher():
    calls = []
    teacher = _tiny_teacher()
    teacher.register_forward_hook(lambda *a: calls.append(1))
    x, logits, y = torch.randn(1, 3, 8, 8), torch.randn(1, 2, 8, 8), torch.ones(1, 2, 8, 8)
    loss = DistillationLoss(teacher, alpha=0.0)
    assert float(loss(logits, y, x)) == pytest.approx(float(segmentation_loss(logits, y)), rel=1e-7)
    assert calls == [] and "train_kd_loss" not in loss.log_row()


def test_teacher_stays_frozen_in_eval_mode():
    teacher = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.BatchNorm2d(2))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    loss = DistillationLoss(teacher, alpha=1.0)
    teacher.train()  # whoever flips it, the loss puts it back in eval mode for its forward pass
    logits = torch.randn(4, 2, 8, 8, requires_grad=True)
    loss(logits, torch.ones(4, 2, 8, 8), torch.randn(4, 3, 8, 8)).backward()
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():  # BatchNorm running statistics untouched
        assert torch.equal(v, before[k]), k
    assert logits.grad is not None and logits.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def tiny_teacher_run(tmp_path_factory):
    """A tiny teacher: half_unet with the boundary head, one epoch on the bundled sample."""
    base = tmp_path_factory.mktemp("teacher")
    out = base / "teacher_run"
    cfg = TrainConfig(model="half_unet", data=str(SAMPLE_DIR), out=str(out), epochs=1, batch_size=4, threads=2,
                      out_channels=2)
    with pytest.MonkeyPatch.context() as mp:  # module scope: keep the cache isolated here too
        mp.setenv("EDGESEG_CACHE", str(base / "cache"))
        Trainer(cfg, progress=False).fit()
    return out


def test_two_epoch_distillation_of_a_tiny_student_from_a_tiny_teacher(tiny_teacher_run, sample_dir, tmp_path):
    teacher_sha = sha256_file(tiny_teacher_run / "best.pt")
    out = tmp_path / "student"
    r = CliRunner().invoke(main, ["distill", "fast_scnn", "--teacher", str(tiny_teacher_run), "--data",
                                  str(sample_dir), "--epochs", "2", "--batch-size", "4", "--threads", "2",
                                  "--alpha", "0.5", "--temperature", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["epochs_run"] == 2
    rows = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    for row in rows:  # the trainer's loss is the hard loss plus alpha times the distillation term
        assert row["train_kd_loss"] > 0
        assert row["train_loss"] == pytest.approx(row["train_hard_loss"] + 0.5 * row["train_kd_loss"], abs=2e-4)
    card = read_card(out / "best.pt").to_dict()
    assert card["arch"] == "fast_scnn" and card["out_channels"] == 2 and card["outputs"] == ["foreground", "boundary"]
    kd = card["recipe"]["distillation"]
    assert card["recipe"]["loss"] == "bce+dice+kd"
    assert kd["teacher"] == "teacher_run" and kd["teacher_arch"] == "half_unet" and kd["teacher_out_channels"] == 2
    assert kd["teacher_sha256"] == teacher_sha and kd["alpha"] == 0.5 and kd["temperature"] == 2.0
    with torch.no_grad():
        assert load_checkpoint(out / "best.pt", card)(torch.zeros(1, 3, 256, 256)).shape == (1, 2, 256, 256)
    assert sha256_file(tiny_teacher_run / "best.pt") == teacher_sha  # the teacher is never written


def test_teacher_with_another_normalisation_is_refused(tiny_teacher_run, sample_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad_teacher"
    shutil.copytree(tiny_teacher_run, bad)
    card = read_card(bad / "best.pt")
    write_card(bad / "best.pt", card.replace(normalisation={"mean": [0.5] * 3, "std": [0.5] * 3, "scale": 1 / 255}))
    cfg = TrainConfig(model="fast_scnn", data=str(sample_dir), out=str(tmp_path / "s"), epochs=1, threads=2)
    with pytest.raises(EdgesegError, match="normalisation"):
        distill(cfg, str(bad), progress=False)
    with pytest.raises(EdgesegError, match="--teacher"):
        distill(cfg, None, alpha=1.0, progress=False)


def test_sigterm_stops_after_the_epoch_and_still_writes_the_card(tiny_teacher_run, sample_dir, tmp_path):
    """What a time limit on the GPU box does: the run stops cleanly and keeps best.pt with its card."""
    out = tmp_path / "cut"
    cmd = [sys.executable, "-m", "edgeseg.cli", "distill", "fast_scnn", "--teacher", str(tiny_teacher_run),
           "--data", str(sample_dir), "--epochs", "200", "--batch-size", "4", "--threads", "1", "--out", str(out)]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err
    card = read_card(out / "best.pt").to_dict()
    assert 1 <= card["training"]["epochs_run"] < 200
    assert card["recipe"]["distillation"]["teacher"] == "teacher_run"
