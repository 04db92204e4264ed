"""Trainer core: run control (stop conditions, signals, non-finite guard) and the run logger."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
import torch
from PIL import Image

from vq3d.train.logger import RunLogger, read_metrics
from vq3d.train.run_control import NonFiniteLossError, RunControl

# ----------------------------------------------------------------------------- run control


def test_step_bound():
    with RunControl(total_steps=5, start_step=3, show_progress=False, install_signals=False) as rc:
        assert not rc.should_stop(4)
        assert rc.should_stop(5) and rc.stop_reason == "steps"


def test_time_bound():
    with RunControl(100, max_minutes=0.05 / 60, show_progress=False, install_signals=False) as rc:
        assert not rc.should_stop(0)
        time.sleep(0.08)
        assert rc.should_stop(1) and rc.stop_reason == "time"
    with RunControl(100, max_minutes=0.0, show_progress=False, install_signals=False) as rc:
        assert not rc.should_stop(1)  # 0 = no time limit


def test_sigterm_sets_stop_flag_and_handlers_are_restored():
    def previous(signum, frame):
        raise AssertionError("the run's handler should have caught this")

    old_term = signal.signal(signal.SIGTERM, previous)
    old_int = signal.getsignal(signal.SIGINT)
    try:
        rc = RunControl(100, show_progress=False)
        assert not rc.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # python runs the handler between bytecodes
        assert rc.should_stop(2) and rc.stop_reason == "signal"
        rc.close()
        assert signal.getsignal(signal.SIGTERM) is previous
        assert signal.getsignal(signal.SIGINT) is old_int
    finally:
        signal.signal(signal.SIGTERM, old_term)


def test_second_sigint_interrupts_at_once():
    rc = RunControl(100, show_progress=False)
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert rc.should_stop(1)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    finally:
        rc.close()


def test_non_finite_losses_are_skipped_then_raise():
    rc = RunControl(100, max_bad_steps=3, show_progress=False, install_signals=False)
    assert rc.record_loss(torch.tensor(0.5), step=5)
    assert not rc.record_loss(float("nan"), step=6)
    assert not rc.record_loss([torch.tensor(1.0), torch.tensor(float("inf"))], step=7)
    assert rc.record_loss(1.0, step=8)  # a finite loss resets the run of bad ones
    assert rc.skipped_steps == 2
    assert not rc.record_loss(torch.tensor([1.0, float("nan")]), step=9)
    assert not rc.record_loss(float("-inf"), step=10)
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row; last finite step 8"):
        rc.record_loss(float("nan"), step=11)
    assert issubclass(NonFiniteLossError, RuntimeError)
    rc.close()


def test_progress_bar_shows_losses_and_position(capsys):
    with RunControl(10, start_step=2, show_progress=True, install_signals=False) as rc:
        rc.update(4, {"loss": 0.123456})
        assert rc._bar.n == 4
        assert "loss=0.1235" in rc._bar.postfix


# ----------------------------------------------------------------------------- logger


def test_logger_writes_metrics_and_truncates_on_resume(tmp_path):
    with RunLogger(tmp_path, tensorboard=False) as log:
        for step in range(5):
            log.log_scalars(step, {"loss": torch.tensor(float(step)), "lr": 1e-3})
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    assert records[3]["loss"] == 3.0 and records[3]["lr"] == 1e-3
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # a write torn by a crash
    assert len(read_metrics(tmp_path)) == 5

    with RunLogger(tmp_path, resume_step=2, tensorboard=False) as log:  # resumed at step 2
        assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2]
        log.log_scalars(3, {"loss": 30.0})
    records = read_metrics(tmp_path)
    assert [(r["step"], r["loss"]) for r in records] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 30.0)]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert all(isinstance(json.loads(line), dict) for line in lines)


def test_logger_tensorboard_images_and_text(tmp_path):
    image = torch.zeros(3, 4, 5)
    image[0, 1, 2] = 1.0
    image[1] = 0.5
    with RunLogger(tmp_path) as log:
        log.log_scalars(1, {"loss/total": 2.0})
        log.log_image(1, "recon/canonical", image)
        log.log_image(1, "depth", torch.full((4, 5), 2.0))  # clamped to 1
        log.log_text(1, "config", "preset: tiny")
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    png = np.asarray(Image.open(tmp_path / "images" / "recon_canonical" / "step_00000001.png"))
    assert png.shape == (4, 5, 3)
    assert tuple(png[1, 2]) == (255, 128, 0) and tuple(png[0, 0]) == (0, 128, 0)
    depth = np.asarray(Image.open(tmp_path / "images" / "depth" / "step_00000001.png"))
    assert (depth == 255).all()
    assert "config: preset: tiny" in (tmp_path / "log.txt").read_text()


def test_disabled_logger_writes_nothing(tmp_path):
    run = tmp_path / "run"
    with RunLogger(run, enabled=False) as log:
        log.log_scalars(0, {"loss": 1.0})
        log.log_image(0, "x", torch.zeros(3, 2, 2))
        log.log_text(0, "t", "hello")
    assert not run.exists()
    assert read_metrics(run) == []
