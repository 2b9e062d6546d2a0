"""The default model's autoencoder: layout, streaming decode, training, checkpoints, resume."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from framecast.cli import main as cli_main
from distill import train_autoencoder as tae
from engine.autoencoder import AutoencoderConfig, ShapesAutoencoder
from engine.errors import CheckpointError, ShapeMismatch

SHIPPED = Path(__file__).resolve().parents[1] / "engine" / "models" / "shapes-default"
TINY = tae.PRESETS["tiny"]


def random_model(config: AutoencoderConfig, seed: int = 0) -> ShapesAutoencoder:
    """Random weights everywhere: the training init zeroes the output and residual convs, which
    would make every decoder output flat and every equivalence below trivially true."""
    torch.manual_seed(seed)
    ae = ShapesAutoencoder(config).eval()
    for module in ae.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="linear")
            torch.nn.init.normal_(module.bias, std=0.1)
    return ae


def test_wan_layout_shapes_and_range():
    ae = random_model(TINY.model)
    video = torch.rand(2, 3, 8, 32, 48) * 2 - 1
    with torch.no_grad():
        z = ae.encode(video)
        out = ae.decode(z)
    assert z.shape == (2, 4, 2, 4, 6)  # [B, C, T/4, H/8, W/8]
    assert out.shape == video.shape and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    with pytest.raises(ShapeMismatch):
        ae.encode(torch.zeros(1, 3, 6, 32, 32))  # T not a multiple of 4
    with pytest.raises(ShapeMismatch):
        ae.decode(torch.zeros(1, 3, 2, 4, 4))  # wrong latent channels


@pytest.mark.parametrize("config", [TINY.model, AutoencoderConfig()], ids=["tiny", "default"])
def test_streaming_decode_equals_whole_decode(config):
    ae = random_model(config, seed=1)
    latents = torch.randn(2, config.latent_channels, 6, 4, 4)
    with torch.inference_mode():
        whole = ae.decode(latents)
        for chunk in (1, 2, 3):
            state, pieces = ae.init_decoder_state(2), []
            for start in range(0, 6, chunk):
                frames, state = ae.decode_chunk(latents[:, :, start:start + chunk], state)
                assert frames.shape == (2, 3, 4 * chunk, 32, 32)
                pieces.append(frames)
            assert state.frames_decoded == 24
            assert (torch.cat(pieces, dim=2) - whole).abs().max() < 1e-5
        # The state matters: the second chunk decoded without the first one's memory differs,
        # so the equality above is not the trivial one of a memoryless decoder.
        _, state = ae.decode_chunk(latents[:, :, :3], ae.init_decoder_state(2))
        carried, _ = ae.decode_chunk(latents[:, :, 3:], state)
        fresh, _ = ae.decode_chunk(latents[:, :, 3:], ae.init_decoder_state(2))
    assert (carried - fresh).abs().max() > 1e-3


def test_config_json_round_trip_and_validation():
    config = AutoencoderConfig(latent_channels=2, latents_mean=(0.5, -1.0), latents_std=(2.0, 0.25))
    assert AutoencoderConfig.model_validate_json(config.model_dump_json()) == config
    with pytest.raises(ValueError):
        AutoencoderConfig(decoder_time_growth=(2, 1))  # must make 4x in time
    with pytest.raises(ValueError):
        AutoencoderConfig(latent_channels=2, latents_mean=(0.0,))
    with pytest.raises(ValueError):
        AutoencoderConfig.model_validate_json(json.dumps({"latent_channels": 4, "bogus": 1}))


def test_latent_stats_normalise_encoder_output():
    ae = random_model(TINY.model)
    video = torch.rand(1, 3, 8, 32, 32) * 2 - 1
    with torch.no_grad():
        raw = ae.encode_raw(video)
        ae.with_latent_stats(raw.mean((0, 2, 3, 4)), raw.std((0, 2, 3, 4)))
        z = ae.encode(video)
    assert torch.allclose(z.mean((0, 2, 3, 4)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(z.std((0, 2, 3, 4)), torch.ones(4), atol=1e-4)
    assert ae.config.latents_std == tuple(raw.std((0, 2, 3, 4)).tolist())


def test_checkpoint_round_trip(tmp_path):
    ae = random_model(TINY.model, seed=2)
    ae.with_latent_stats(torch.tensor([0.1, 0.2, -0.3, 0.0]), torch.tensor([1.5, 0.5, 1.0, 2.0]))
    ae.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["autoencoder.json", "autoencoder.safetensors"]
    loaded = ShapesAutoencoder.load(tmp_path)
    assert loaded.config == ae.config
    assert not any(p.requires_grad for p in loaded.parameters())  # streaming builds no autograd graph
    video = torch.rand(1, 3, 8, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.encode(video), ae.encode(video))
        z = ae.encode(video)
        assert torch.equal(loaded.decode(z), ae.decode(z))


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="autoencoder.json"):
        ShapesAutoencoder.load(tmp_path / "missing")
    random_model(TINY.model).save(tmp_path)
    bigger = TINY.model.updated(latent_channels=8)
    (tmp_path / "autoencoder.json").write_text(bigger.model_dump_json())
    with pytest.raises(CheckpointError, match="does not match"):
        ShapesAutoencoder.load(tmp_path)


def test_tiny_preset_trains_and_loss_decreases(tmp_path):
    result = tae.train_autoencoder(TINY, tmp_path, progress=False)
    assert result.step == TINY.steps and len(result.losses) == TINY.steps
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    # The export is a loadable autoencoder carrying the running latent statistics.
    exported = ShapesAutoencoder.load(result.out_dir)
    assert len(exported.config.latents_std) == TINY.model.latent_channels
    assert any(s != 1.0 for s in exported.config.latents_std)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_trains_on_a_gpu_as_on_the_cpu(tmp_path, monkeypatch):
    """The same host-drawn clips and noise: the GPU's losses and export are the CPU's to
    float error (TF32 convolutions off, so that the comparison can be tight)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    run = dataclasses.replace(TINY, steps=10, eval_every=5)
    cpu = tae.train_autoencoder(dataclasses.replace(run, device="cpu"), tmp_path / "cpu", progress=False)
    gpu = tae.train_autoencoder(dataclasses.replace(run, device="cuda"), tmp_path / "gpu", progress=False)
    torch.testing.assert_close(torch.tensor(gpu.losses), torch.tensor(cpu.losses), rtol=2e-3, atol=1e-5)
    assert abs(gpu.figures["heldout_psnr_db"] - cpu.figures["heldout_psnr_db"]) < 0.05
    a, b = ShapesAutoencoder.load(cpu.out_dir), ShapesAutoencoder.load(gpu.out_dir)
    for (key, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(vb, va, atol=2e-3, rtol=2e-3, msg=key)


def test_resume_continues_where_it_stopped(tmp_path):
    run = dataclasses.replace(TINY, steps=20, ckpt_every=5, eval_every=100)
    tae.train_autoencoder(run, tmp_path, progress=False)
    final = tmp_path / "checkpoint-0000020.safetensors"
    uninterrupted = load_file(final)
    # Simulate a run killed after step 15: drop the step-20 checkpoint, re-run the same command.
    shutil.move(final, tmp_path / "kept.safetensors")
    final.with_suffix(".json").unlink()
    resumed = tae.train_autoencoder(run, tmp_path, progress=False)
    assert resumed.step == 20 and len(resumed.losses) == 5  # only steps 16..20 ran again
    meta = json.loads(final.with_suffix(".json").read_text())
    assert meta["step"] == 20
    again = load_file(final)
    assert again.keys() == uninterrupted.keys()
    assert any(k.startswith("opt_opt.state.") for k in again)  # Adam moments are in the checkpoint
    for key, value in uninterrupted.items():
        assert torch.allclose(again[key], value, atol=1e-6), key


def test_dry_run_prints_resolved_config(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = cli_main(["distill", "autoencoder", "--preset", "tiny", "--run-dir", str(run_dir), "--set", "steps=7",
                     "--set", "model.latent_channels=6", "--dry-run"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["steps"] == 7 and printed["model"]["latent_channels"] == 6
    assert printed["batch_size"] == TINY.batch_size and printed["run_dir"] == str(run_dir)
    assert not run_dir.exists()
    assert cli_main(["distill", "autoencoder", "--preset", "nope", "--dry-run"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    # a model override is validated as the config validates it
    assert cli_main(["distill", "autoencoder", "--preset", "tiny", "--set", "model.decoder_time_growth=[2,1]",
                     "--dry-run"]) == 2
    assert "multiply to 4" in capsys.readouterr().err


@pytest.mark.skipif(not (SHIPPED / "autoencoder.safetensors").is_file(), reason="shipped weights not trained yet")
def test_shipped_autoencoder_reconstructs_heldout_clips():
    from distill.data.shapes import ShapesConfig, ShapesWorld

    ae = ShapesAutoencoder.load(SHIPPED)
    world = ShapesWorld(ShapesConfig(height=ae.config.height, width=ae.config.width, fps=ae.config.fps))
    video = torch.cat([tae.heldout_video(world, i, 16) for i in range(2)])
    with torch.inference_mode():
        z = ae.encode(video)
        whole = ae.decode(z)
        state, pieces = ae.init_decoder_state(2), []
        for start in range(0, z.shape[2], 1):
            frames, state = ae.decode_chunk(z[:, :, start:start + 1], state)
            pieces.append(frames)
    assert z.shape == (2, ae.config.latent_channels, 4, 16, 16)
    assert (torch.cat(pieces, 2) - whole).abs().max() < 1e-5
    # The shipped weights give 34.9 dB on these two clips (35.1 dB mean over 32 held-out
    # clips of 32 frames, bench/autoencoder.py; the issue's aim is 32 dB). A regression guard: v1's
    # autoencoder gave 25.7 dB here, a broken or untrained one lands near 10-15 dB.
    assert tae.psnr(whole, video) > 32.0
    # Normalised latents are roughly N(0, 1) per channel, as the diffusion model expects
    # (over 16 clips: two clips are mostly two flat backgrounds, too few for the statistics).
    with torch.inference_mode():
        z = torch.cat([ae.encode(tae.heldout_video(world, i, 16)) for i in range(16)])
    assert z.mean((0, 2, 3, 4)).abs().max() < 1.0  # shipped: 0.70 (bench/autoencoder.py)
    assert ((z.std((0, 2, 3, 4)) > 0.5) & (z.std((0, 2, 3, 4)) < 2.0)).all()


def test_noise_tolerance_scores_the_decoder_on_noised_latents():
    """bench/autoencoder.py --latent-noise: clean latents decode to clips the evaluator
    scores as their prompts; latents buried in noise (std 3, three times the code itself)
    do not, so the measurement can tell a tolerant decoder from a broken one."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from autoencoder import main as bench_main, noise_tolerance

    from distill.data.shapes import ShapesConfig, ShapesWorld

    torch.set_num_threads(1)
    ae = ShapesAutoencoder.load(Path(__file__).resolve().parents[1] / "engine" / "models" / "shapes-default")
    world = ShapesWorld(ShapesConfig(height=ae.config.height, width=ae.config.width, fps=ae.config.fps))
    scores = noise_tolerance(ae, world, [0.0, 3.0], prompts=4)
    assert set(scores) == {"0", "3"}
    clean, buried = scores["0"], scores["3"]
    assert clean["colour_accuracy"] == 1.0 and clean["shape_accuracy"] >= 0.75
    assert buried["prompt_accuracy"] < clean["prompt_accuracy"] - 0.2
    with pytest.raises(SystemExit) as bad:
        bench_main(["--latent-noise", "0.2,x"])
    assert bad.value.code == 2
