"""Teacher and student training on tiny configs: losses fall, checkpoints round-trip,
resume continues exactly, exported models stream, and 2-process data parallel agrees."""

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from distill import student as student_mod
from distill import teacher as teacher_mod
from engine import load_model

ROOT = Path(__file__).resolve().parents[1]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_autoencoder(tmp_path_factory) -> Path:
    from engine.autoencoder import AutoencoderConfig, ShapesAutoencoder

    torch.manual_seed(0)
    ae = ShapesAutoencoder(AutoencoderConfig(latent_channels=4, encoder_channels=(8, 8, 8),
                                             decoder_channels=(8, 8, 8), decoder_blocks=(1, 1, 1),
                                             height=32, width=32))
    path = tmp_path_factory.mktemp("ae")
    ae.save(path)
    return path


@pytest.fixture(scope="module")
def tiny_teacher(tiny_autoencoder, tmp_path_factory) -> Path:
    run = replace(teacher_mod.PRESETS["tiny"], autoencoder=str(tiny_autoencoder), steps=40)
    run_dir = tmp_path_factory.mktemp("teacher")
    return teacher_mod.train_teacher(run, run_dir)


def test_teacher_loss_decreases_and_model_exports(tiny_teacher):
    logged = metrics(tiny_teacher.parent)
    losses = [m["loss/flow"] for m in logged]
    assert len(losses) == 8
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:2]), losses
    cfg = json.loads((tiny_teacher / "model.json").read_text())
    assert cfg["provenance"]["stage"] == "teacher" and cfg["attention"]["policy"] == "full"
    assert (tiny_teacher / "autoencoder.safetensors").is_file()


def test_teacher_resume_continues_exactly(tiny_autoencoder, tmp_path):
    run = replace(teacher_mod.PRESETS["tiny"], autoencoder=str(tiny_autoencoder), steps=10, ckpt_every=5)
    straight = teacher_mod.train_teacher(run, tmp_path / "straight")
    teacher_mod.train_teacher(replace(run, steps=5), tmp_path / "resumed")
    resumed = teacher_mod.train_teacher(run, tmp_path / "resumed")  # same command, longer: resumes at 5
    steps = [m["step"] for m in metrics(tmp_path / "resumed")]
    assert steps == [5, 10]
    a = load_model(str(straight)).transformer.state_dict()
    b = load_model(str(resumed)).transformer.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)


def test_student_ode_then_dmd_exports_a_streaming_model(tiny_teacher, tmp_path):
    run = replace(student_mod.PRESETS["tiny"], teacher=str(tiny_teacher), ode_iters=16, dmd_iters=4)
    out = student_mod.train_student(run, tmp_path / "student")
    logged = metrics(tmp_path / "student")
    ode = [m["loss/ode"] for m in logged if "loss/ode" in m]
    assert np.mean(ode[-2:]) < np.mean(ode[:2]), ode
    dmd = [m for m in logged if "loss/dmd" in m]
    assert dmd and all(np.isfinite(m["loss/dmd"]) and np.isfinite(m["loss/critic"]) for m in dmd)
    model = load_model(str(out))
    assert model.config.attention.policy == "sink_window"
    chunk = model.open_session("a red ball moving left", seed=0).next_chunk()
    assert chunk.frames.shape == (model.frames_per_chunk, 32, 32, 3) and chunk.latents.std() > 0.1


def test_dry_run_prints_the_resolved_config(capsys):
    from clients.cli import main

    assert main(["distill", "student", "--preset", "tiny", "--set", "dmd_iters=7", "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["dmd_iters"] == 7 and printed["model"]["name"] == "tiny-student"
    assert main(["distill", "student", "--preset", "tiny", "--set", "nonsense=1", "--dry-run"]) == 2


def test_two_process_data_parallel_on_gloo(tiny_teacher, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "clients.cli", "distill", "student", "--preset", "tiny", "--teacher", str(tiny_teacher),
           "--run-dir", str(tmp_path / "ddp"), "--set", "ode_iters=4", "--set", "dmd_iters=2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:  # never leave worker processes behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    logged = metrics(tmp_path / "ddp")
    assert logged[-1].get("ranks_in_sync") == 1.0
    assert (tmp_path / "ddp" / "model" / "transformer.safetensors").is_file()
