"""Teacher and student training on tiny configs: losses fall, checkpoints round-trip,
resume continues exactly, exported models stream, and 2-process data parallel agrees."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from distill import student as student_mod
from distill import teacher as teacher_mod
from engine import load_model
from framecast.cli import main as cli_main
from tests.engine_helpers import torchrun_two_processes

ROOT = Path(__file__).resolve().parent.parent


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def same_transformer(dir_a, dir_b) -> dict:
    """Assert two model dirs hold the same transformer weights (a resumed run against an
    uninterrupted one) -> the first's state dict."""
    a = load_model(str(dir_a)).transformer.state_dict()
    b = load_model(str(dir_b)).transformer.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    return a


@pytest.fixture(scope="module")
def tiny_autoencoder(tmp_path_factory) -> Path:
    from engine.autoencoder import AutoencoderConfig, ShapesAutoencoder

    torch.manual_seed(0)
    ae = ShapesAutoencoder(AutoencoderConfig(latent_channels=4, encoder_channels=(8, 8, 8),
                                             decoder_channels=(8, 8, 8), decoder_blocks=(1, 1, 1),
                                             height=32, width=32))
    with torch.no_grad():  # its output conv starts at zero (flat grey frames): give the frames content
        for name, p in ae.named_parameters():
            if name.startswith(("decoder_out", "decoder_colour")) and p.ndim > 1:
                p.normal_(0, 0.2)
    path = tmp_path_factory.mktemp("ae")
    ae.save(path)
    return path


@pytest.fixture(scope="module")
def tiny_teacher(tiny_autoencoder, tmp_path_factory) -> Path:
    run = replace(teacher_mod.PRESETS["tiny"], autoencoder=str(tiny_autoencoder), steps=40)
    run_dir = tmp_path_factory.mktemp("teacher")
    return teacher_mod.train_teacher(run, run_dir).out_dir


def test_teacher_loss_decreases_and_model_exports(tiny_teacher):
    logged = metrics(tiny_teacher.parent)
    losses = [m["loss/flow"] for m in logged]
    assert len(losses) == 8
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:2]), losses
    cfg = json.loads((tiny_teacher / "model.json").read_text())
    assert cfg["provenance"]["stage"] == "teacher" and cfg["attention"]["policy"] == "full"
    assert (tiny_teacher / "autoencoder.safetensors").is_file()


def test_a_teacher_carries_a_finished_teacher_on_from_its_model_dir(tiny_teacher, tiny_autoencoder, tmp_path, capsys):
    """init_from: a finished teacher's exported weights (its run dir gone, as a shipped teacher's
    is) start a new run, raw weights and EMA alike, with a fresh optimiser. At lr 0 the new run's
    export is the old one, weight for weight; at the preset's lr it moves away from it. A model
    dir of another network, or none, is a clear error before any clip is encoded."""
    from safetensors.torch import load_file

    def carried(name: str, **changes) -> dict:
        run = replace(teacher_mod.PRESETS["tiny"], autoencoder=str(tiny_autoencoder), steps=3,
                      init_from=str(tiny_teacher), **changes)
        out = teacher_mod.train_teacher(run, tmp_path / name).out_dir
        return load_file(out / "transformer.safetensors")

    before = load_file(tiny_teacher / "transformer.safetensors")
    still = carried("lr0", lr=0.0)
    assert still.keys() == before.keys() and all(torch.equal(still[k], before[k]) for k in before)
    moved = carried("lr")
    assert max((moved[k] - before[k]).abs().max().item() for k in before) > 1e-4
    assert "starting from the weights of" in capsys.readouterr().err

    base = ["distill", "teacher", "--preset", "tiny", "--autoencoder", str(tiny_autoencoder), "--no-progress"]
    assert cli_main([*base, "--run-dir", str(tmp_path / "none"), "--set", f"init_from={tmp_path / 'nowhere'}"]) == 2
    assert "no teacher to start from" in capsys.readouterr().err
    other = ["--run-dir", str(tmp_path / "other"), "--set", f"init_from={tiny_teacher}",
             "--set", "model.transformer.num_layers=1"]
    assert cli_main([*base, *other]) == 2
    err = capsys.readouterr().err
    assert "framecast distill: error:" in err and "Traceback" not in err
    assert "unexpected keys" in err and not list((tmp_path / "other").glob("checkpoint-*"))


def test_a_frames_only_teacher_is_sampled_at_the_length_asked_for(tiny_teacher, tmp_path):
    """A teacher trained on single frames (batch_size 0) never attended across frames, so the
    evaluator samples it one latent frame for a clip of one; a clip teacher is sampled at its
    training length (and cut)."""
    import shutil

    frames_only = tmp_path / "frames-only"
    shutil.copytree(tiny_teacher, frames_only)
    cfg = json.loads((frames_only / "model.json").read_text())
    cfg["provenance"]["run"]["batch_size"] = 0
    (frames_only / "model.json").write_text(json.dumps(cfg))
    for model_dir, want in ((tiny_teacher, cfg["provenance"]["run"]["latent_frames"]), (frames_only, 1)):
        gen = teacher_mod.TeacherGenerator(model_dir, steps=2)
        seen = []
        denoise = gen.transformer.denoise
        gen.transformer.denoise = lambda x, t, *rest: seen.append(x.shape[2]) or denoise(x, t, *rest)
        video = gen.generate("a red circle", seconds=4 / gen.fps, seed=0)
        assert video.shape[0] == 4 and set(seen) == {want}, (model_dir, seen)


def test_teacher_sampling_can_start_from_a_noised_clip(tiny_teacher):
    """SDEdit (bench/teacher_noise_levels.py): from s = 1 it is plain sampling from that noise;
    from a low level only the schedule's levels at or below it run."""
    gen = teacher_mod.TeacherGenerator(tiny_teacher, steps=8)
    feats = gen.text_encoder.encode(["a red circle"])
    shape = (1, gen.config.latent.channels, 2, gen.config.latent.latent_height, gen.config.latent.latent_width)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    plain = teacher_mod.sample_teacher(gen.transformer, gen.config, feats, 2, steps=8,
                                       generator=torch.Generator().manual_seed(3))
    from_one = teacher_mod.sample_teacher(gen.transformer, gen.config, feats, 2, steps=8, start=(noise, 1.0))
    assert torch.allclose(plain, from_one)

    calls = []
    denoise = gen.transformer.denoise
    gen.transformer.denoise = lambda x, t, *rest: calls.append(float(t[0])) or denoise(x, t, *rest)
    clip = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    level = 0.3
    teacher_mod.sample_teacher(gen.transformer, gen.config, feats, 2, steps=8,
                               start=((1 - level) * clip + level * noise, level))
    assert calls and max(calls) <= level * 1000 + 1e-3, calls  # no level above s was run
    assert len(calls) < 8


def test_teacher_resume_continues_exactly(tiny_autoencoder, tmp_path):
    run = replace(teacher_mod.PRESETS["tiny"], autoencoder=str(tiny_autoencoder), steps=10, ckpt_every=5)
    straight = teacher_mod.train_teacher(run, tmp_path / "straight").out_dir
    teacher_mod.train_teacher(replace(run, steps=5), tmp_path / "resumed")
    resumed = teacher_mod.train_teacher(run, tmp_path / "resumed").out_dir  # same command, longer: resumes at 5
    steps = [m["step"] for m in metrics(tmp_path / "resumed")]
    assert steps == [5, 10]
    same_transformer(straight, resumed)


def test_a_runs_device_auto_is_this_processs_gpu_else_the_cpu(monkeypatch):
    from distill.common import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == torch.device("cuda", 3)  # torchrun's process 3 takes GPU 3
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # a named index is kept
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_teacher_trains_on_a_gpu_as_on_the_cpu_and_resumes_across_them(tiny_autoencoder, tmp_path):
    """Clips encoded each step and single frames from a pool encoded on the GPU: the same
    draws as on the CPU (host generators), so the same losses to float error; a run begun
    on the GPU and finished on the CPU ends where the CPU run does."""
    run = replace(teacher_mod.PRESETS["tiny"], autoencoder=str(tiny_autoencoder), steps=10, ckpt_every=5,
                  log_every=1, pool_size=8, image_batch=2)
    cpu = teacher_mod.train_teacher(replace(run, device="cpu"), tmp_path / "cpu").out_dir
    gpu = teacher_mod.train_teacher(replace(run, device="cuda"), tmp_path / "gpu").out_dir
    cpu_losses = [m["loss/flow"] for m in metrics(tmp_path / "cpu")]
    gpu_losses = [m["loss/flow"] for m in metrics(tmp_path / "gpu")]
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=2e-3)
    teacher_mod.train_teacher(replace(run, device="cuda", steps=5), tmp_path / "moved")
    moved = teacher_mod.train_teacher(replace(run, device="cpu"), tmp_path / "moved").out_dir
    for a, b in ((cpu, gpu), (cpu, moved)):
        sa, sb = load_model(str(a)).transformer.state_dict(), load_model(str(b)).transformer.state_dict()
        for key in sa:
            torch.testing.assert_close(sb[key], sa[key], atol=2e-3, rtol=2e-3)


def test_teacher_lr_warms_up_holds_then_decays_linearly():
    run = replace(teacher_mod.PRESETS["tiny"], lr=1e-3, warmup=10, steps=100, decay_from=60, final_lr_fraction=0.1)
    lrs = [teacher_mod.lr_at(run, s) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(lr == pytest.approx(1e-3) for lr in lrs[9:61])
    assert lrs[80] == pytest.approx(1e-3 * (1 - 0.9 * 0.5))  # halfway through the decay
    assert all(a > b for a, b in zip(lrs[60:], lrs[61:]))  # strictly falling to the end
    assert teacher_mod.lr_at(replace(run, decay_from=0), 99) == pytest.approx(1e-3)  # no decay by default


def test_ema_forgets_the_random_init_within_a_short_run():
    """A slow average (0.9995) over a run of 4500 steps must end near the trained weights,
    not keep a tenth of the init (which cost the Shapes teacher half its prompt accuracy)."""
    from distill.common import EMA

    model = torch.nn.Linear(4, 4)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, 0.9995)
    with torch.no_grad():
        model.weight.fill_(0.0)  # trained weights: 0; the init was 1
    for step in range(4500):
        ema.update(model, step)
    assert ema.shadow.weight.abs().max() < 0.01  # without warm-up: 0.9995 ** 4500 = 0.105
    assert ema.decay_at(0) < 0.2 and ema.decay_at(100_000) == 0.9995


def test_latent_pool_is_encoded_once_and_reused(tiny_autoencoder, tmp_path):
    from distill.common import ShapesLatents

    ae = teacher_mod.load_autoencoder(tiny_autoencoder)
    pooled = ShapesLatents(ae, 2, 3, seed=0, height=32, width=32, pool_size=5, cache_dir=tmp_path, progress=False)
    assert pooled.pool.shape == (5, 4, 2, 4, 4) and len(pooled.pool_captions) == 5
    x, captions = pooled.batch(7)
    assert x.shape == (3, 4, 2, 4, 4) and len(captions) == 3
    # every drawn clip is a pool clip, with one of that clip's own paraphrases
    for latents, caption in zip(x, captions):
        k = int(((pooled.pool - latents).flatten(1).abs().amax(1) == 0).nonzero()[0])
        assert caption in pooled.pool_captions[k]
    # the pool holds what encoding its clips gives, and a second run loads it instead of encoding
    again = ShapesLatents(ae, 2, 3, seed=0, height=32, width=32, pool_size=5, cache_dir=tmp_path, progress=False)
    assert list(tmp_path.glob("latent-pool-*.safetensors")) and torch.equal(again.pool, pooled.pool)
    fresh = ShapesLatents(ae, 2, 3, seed=0, height=32, width=32)  # the pool encodes batch_size clips at a time
    torch.testing.assert_close(pooled.pool[:3], fresh.encode(fresh.clips(0, stream=(2,))), atol=1e-5, rtol=1e-4)
    x2, captions2 = again.batch(7)  # deterministic per step: a resumed run sees the same data
    assert torch.equal(x, x2) and captions == captions2


def test_a_canonical_pool_holds_scene_starts_in_their_slots_and_a_file_of_its_own(tiny_autoencoder, tmp_path):
    from distill.common import ShapesLatents
    from engine.shapes.scene import CANONICAL_SLOTS, SceneSampling
    from distill.data.shapes import ShapesConfig, ShapesWorld

    ae = teacher_mod.load_autoencoder(tiny_autoencoder)
    ShapesLatents(ae, 2, 3, seed=0, height=32, width=32, pool_size=3, cache_dir=tmp_path, progress=False)
    canonical = ShapesLatents(ae, 2, 3, seed=0, height=32, width=32, pool_size=3, cache_dir=tmp_path,
                              progress=False, layout="canonical", max_start_frame=0)
    clockwise = ShapesLatents(ae, 2, 3, seed=0, height=32, width=32, pool_size=3, cache_dir=tmp_path,
                              progress=False, layout="canonical", max_start_frame=0, orbit="clockwise")
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [
        "latent-pool-0-3x8.safetensors", "latent-pool-canonical-start0-0-3x8.safetensors",
        "latent-pool-canonical-start0-clockwise-0-3x8.safetensors"]
    assert clockwise.world.config.sampling.orbit == "clockwise"
    world = ShapesWorld(ShapesConfig(height=32, width=32, sampling=SceneSampling(layout="canonical")))
    clips = canonical.clips(0, stream=(2,))
    for clip in clips:  # each is its seed's canonical scene from its first frame
        assert clip.frames.shape[0] == 8
        slots = CANONICAL_SLOTS[len(clip.scene.objects)]
        assert all(abs(o.x - x) <= 0.03 + 1e-9 for o, (x, _) in zip(clip.scene.objects, slots))
    seeds, starts = canonical._draws(0, (2,))
    assert not starts.any()
    first = world.sample(int(seeds[0]), 8)
    assert np.array_equal(first.frames, clips[0].frames) and first.captions == canonical.pool_captions[0]
    torch.testing.assert_close(canonical.pool, canonical.encode(clips), atol=1e-5, rtol=1e-4)


def test_canonical_captions_read_each_clips_first_caption_and_draw_the_same_clips(tiny_autoencoder, tmp_path):
    from distill.common import ShapesLatents

    ae = teacher_mod.load_autoencoder(tiny_autoencoder)
    kw = dict(height=32, width=32, pool_size=6, cache_dir=tmp_path, progress=False)
    para = ShapesLatents(ae, 2, 4, seed=0, **kw)
    canon = ShapesLatents(ae, 2, 4, seed=0, captions="canonical", **kw)
    assert torch.equal(para.pool, canon.pool)
    seen_other = False
    for step in range(3):
        (x, c_para), (y, c_canon) = para.batch(step), canon.batch(step)
        assert torch.equal(x, y)  # the same clips, step for step
        index, _ = canon.batch_draw(step)
        assert c_canon == [canon.pool_captions[i][0] for i in index]
        seen_other |= any(a != b for a, b in zip(c_para, c_canon))
        (f, _), (g, f_canon) = para.single_frames(step, 5), canon.single_frames(step, 5)
        index, _, _ = canon.single_frames_draw(step, 5)
        assert torch.equal(f, g) and f_canon == [canon.pool_captions[i][0] for i in index]
    assert seen_other  # paraphrases do differ from the first caption somewhere
    fresh = ShapesLatents(ae, 2, 3, seed=0, height=32, width=32, captions="canonical")  # no pool
    assert fresh.batch(0)[1] == [c.captions[0] for c in fresh.clips(0)]
    with pytest.raises(ValueError, match="captions 'first'"):
        ShapesLatents(ae, 2, 3, seed=0, height=32, width=32, captions="first")


def test_single_frames_from_the_pool_are_what_encoding_their_four_frames_gives(tiny_autoencoder, tmp_path):
    from distill.common import ShapesLatents

    ae = teacher_mod.load_autoencoder(tiny_autoencoder)
    pooled = ShapesLatents(ae, 3, 2, seed=0, height=32, width=32, pool_size=4, cache_dir=tmp_path, progress=False)
    x, captions = pooled.single_frames(5, 6)
    assert x.shape == (6, 4, 1, 4, 4) and len(captions) == 6
    clips = [c for step in range(2) for c in pooled.clips(step, stream=(2,))]  # the pool's clips, in order
    found = 0
    for latent, caption in zip(x, captions):
        # which pool clip and frame it is, then: the autoencoder on those 4 frames alone gives it
        hits = ((pooled.pool - latent[:, :1]).abs().amax(dim=(1, 3, 4)) == 0).nonzero()
        assert len(hits), "not a frame of the pool"
        k, f = (int(v) for v in hits[0])
        assert caption in pooled.pool_captions[k]
        frames = clips[k].frames[4 * f: 4 * f + 4]
        video = torch.from_numpy(frames[None]).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
        torch.testing.assert_close(ae.encode(video)[0], latent, atol=1e-5, rtol=1e-4)
        found += 1
    assert found == 6
    assert torch.equal(pooled.single_frames(5, 6)[0], x)  # deterministic per step (resume)
    assert not torch.equal(pooled.single_frames(6, 6)[0], x)


@pytest.mark.parametrize("clips", [2, 0], ids=["joint", "frames-only"])
def test_teacher_trains_on_single_frames_beside_or_instead_of_clips(tiny_autoencoder, tmp_path, monkeypatch, clips):
    from engine.transformer import CausalWanTransformer

    seen = []
    denoise = CausalWanTransformer.denoise
    monkeypatch.setattr(CausalWanTransformer, "denoise",
                        lambda self, x, *rest: seen.append(tuple(x.shape)) or denoise(self, x, *rest))
    run = replace(teacher_mod.PRESETS["tiny"], autoencoder=str(tiny_autoencoder), steps=20, batch_size=clips,
                  image_batch=3, pool_size=4, log_every=10)
    out = teacher_mod.train_teacher(run, tmp_path, progress=False).out_dir
    frames = [s for s in seen if s[2] == 1]
    assert len(frames) == 20 and all(s[0] == 3 for s in frames)  # 3 single frames every step
    assert len([s for s in seen if s[2] == 2]) == (20 if clips else 0)  # and the clips, when asked for
    losses = [m["loss/flow"] for m in metrics(tmp_path)]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert (out / "model.json").is_file()


@pytest.mark.parametrize("keep_place", [True, False])
def test_single_frames_keep_their_place_in_the_clip(tiny_autoencoder, tmp_path, monkeypatch, keep_place):
    """frame_positions (the default): each single frame is denoised at its latent frame's
    rotary position in its clip, the frame the pool draw took; off, every frame sits at 0."""
    from distill.common import ShapesLatents
    from engine.attention import FullAttention
    from engine.transformer import CausalWanTransformer

    seen = []
    denoise = CausalWanTransformer.denoise
    monkeypatch.setattr(CausalWanTransformer, "denoise", lambda self, x, t, ctx, att: seen.append(
        (self, x.shape[2], att)) or denoise(self, x, t, ctx, att))
    run = replace(teacher_mod.PRESETS["tiny"], autoencoder=str(tiny_autoencoder), steps=3, batch_size=0,
                  image_batch=6, pool_size=4, frame_positions=keep_place)
    teacher_mod.train_teacher(run, tmp_path, progress=False)
    data = ShapesLatents(teacher_mod.load_autoencoder(tiny_autoencoder), run.latent_frames, 16, run.seed, 32, 32,
                         pool_size=4, cache_dir=tmp_path, progress=False)
    assert len(seen) == 3
    assert any(data.single_frames_draw(step, 6)[1].any() for step in range(3))  # some frame is not the first
    for step, (model, frames, att) in enumerate(seen):
        assert frames == 1 and isinstance(att, FullAttention)
        _, frame, _ = data.single_frames_draw(step, 6)
        want = frame[:, None] if keep_place else np.zeros((1, 1), int)
        cos, _ = model.rope_tables.for_frames(torch.from_numpy(want))
        torch.testing.assert_close(att.cos.expand(6, *att.cos.shape[1:]), cos.expand(6, *cos.shape[1:]))


def test_blur_latents_keeps_place_and_colour_and_softens_outlines():
    from distill.losses import blur_latents

    flat = torch.full((1, 2, 3, 8, 8), 0.7)
    torch.testing.assert_close(blur_latents(flat, 1.0), flat)  # a flat field (a background) is untouched
    x = torch.zeros(1, 1, 2, 9, 9)
    x[0, 0, 1, 4, 4] = 1.0  # a point in the second frame only
    y = blur_latents(x, 1.0)
    assert y[0, 0, 0].abs().max() == 0  # frames are blurred apart: nothing leaks across time
    assert y[0, 0, 1].sum() == pytest.approx(1.0, abs=1e-5) and y[0, 0, 1].argmax() == 4 * 9 + 4
    assert 0.1 < y[0, 0, 1, 4, 4] < 0.2 and y[0, 0, 1, 4, 5] == pytest.approx(y[0, 0, 1, 5, 4])


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_teacher_noises_blurred_inputs_and_fits_the_sharp_clip(tiny_autoencoder, tmp_path, monkeypatch, share):
    from distill.common import ClipLatents
    from distill.losses import blur_latents

    drawn, noised, targets = [], [], []
    single_frames = ClipLatents.single_frames
    monkeypatch.setattr(ClipLatents, "single_frames",
                        lambda self, *a: (out := single_frames(self, *a)) and drawn.append(out[0]) or out)
    add_noise, loss = teacher_mod.add_noise, teacher_mod.flow_matching_loss
    monkeypatch.setattr(teacher_mod, "add_noise", lambda x, *a: noised.append(x) or add_noise(x, *a))
    monkeypatch.setattr(teacher_mod, "flow_matching_loss", lambda v, x0, n: targets.append(x0) or loss(v, x0, n))
    run = replace(teacher_mod.PRESETS["tiny"], autoencoder=str(tiny_autoencoder), steps=3, batch_size=0,
                  image_batch=4, pool_size=4, blur_inputs=share, blur_sigma=1.0)
    teacher_mod.train_teacher(run, tmp_path, progress=False)
    assert len(drawn) == len(noised) == len(targets) == 3
    for x0, source, target in zip(drawn, noised, targets):
        assert torch.equal(target, x0)  # the target is always the sharp frame
        torch.testing.assert_close(source, blur_latents(x0, 1.0) if share else x0)
        assert share == 0 or not torch.allclose(source, x0)


def test_teacher_command_refuses_single_frames_without_a_pool(tiny_autoencoder, tmp_path, capsys):
    base = ["distill", "teacher", "--preset", "tiny", "--autoencoder", str(tiny_autoencoder), "--run-dir",
            str(tmp_path / "run")]
    assert cli_main([*base, "--set", "image_batch=4"]) == 2
    assert "pool_size" in capsys.readouterr().err
    assert cli_main([*base, "--set", "batch_size=0"]) == 2
    assert "not both 0" in capsys.readouterr().err
    assert cli_main([*base, "--set", "blur_inputs=1.5"]) == 2
    assert "blur_inputs" in capsys.readouterr().err
    assert cli_main([*base, "--set", "blur_inputs=0.5", "--set", "blur_sigma=0"]) == 2
    assert "blur_sigma" in capsys.readouterr().err
    assert cli_main([*base, "--set", "shape_labels=0.5"]) == 2  # the tiny preset has no pool
    assert "shape_labels" in capsys.readouterr().err
    assert cli_main([*base, "--set", "shape_labels=-1", "--set", "pool_size=4"]) == 2
    assert "shape_labels" in capsys.readouterr().err
    assert cli_main([*base, "--set", "shape_labels=1", "--set", "pool_size=4", "--set", "shape_layer=99"]) == 2
    assert "shape_layer" in capsys.readouterr().err
    assert cli_main([*base, "--set", "shape_critic=0.1"]) == 2  # no pool
    assert "shape_critic" in capsys.readouterr().err
    assert cli_main([*base, "--set", "shape_critic=0.1", "--set", "pool_size=4", "--set", "shape_critic_sigma=0"]) == 2
    assert "shape_critic" in capsys.readouterr().err
    assert cli_main([*base, "--set", "layout=tidy"]) == 2
    assert "layout" in capsys.readouterr().err
    assert cli_main([*base, "--set", "max_start_frame=-1"]) == 2
    assert "max_start_frame" in capsys.readouterr().err
    assert cli_main([*base, "--set", "orbit=widdershins"]) == 2
    assert "orbit" in capsys.readouterr().err
    assert cli_main([*base, "--set", "orbit=clockwise", "--data", str(tmp_path)]) == 2
    assert "--data" in capsys.readouterr().err
    assert cli_main([*base, "--set", "layout=canonical", "--data", str(tmp_path)]) == 2
    assert "--data" in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_student_ode_then_dmd_exports_a_streaming_model(tiny_teacher, tmp_path):
    run = replace(student_mod.PRESETS["tiny"], teacher=str(tiny_teacher), ode_iters=16, dmd_iters=4)
    out = student_mod.train_student(run, tmp_path / "student").out_dir
    logged = metrics(tmp_path / "student")
    ode = [m["loss/ode"] for m in logged if "loss/ode" in m]
    assert np.mean(ode[-2:]) < np.mean(ode[:2]), ode
    dmd = [m for m in logged if "loss/dmd" in m]
    assert dmd and all(np.isfinite(m["loss/dmd"]) and np.isfinite(m["loss/critic"]) for m in dmd)
    model = load_model(str(out))
    assert model.config.attention.policy == "sink_window"
    chunk = model.open_session("a red ball moving left", seed=0).next_chunk()
    assert chunk.frames.shape == (model.frames_per_chunk, 32, 32, 3) and chunk.latents.std() > 0.1


def test_student_is_exported_to_stream_as_its_serving_fields_say(tiny_teacher, tmp_path):
    """serve_chunk_frames / serve_refresh_context change how the exported model cuts and caches
    chunks, nothing it reads: trained a latent frame a chunk with a refresh, exported to stream
    2 a chunk from the last pass's context."""
    run = replace(student_mod.PRESETS["tiny"], teacher=str(tiny_teacher), latent_frames=2, ode_iters=2, dmd_iters=1,
                  serve_chunk_frames=2, serve_refresh_context=False)
    assert run.model.attention.chunk_frames == 1 and run.model.sampler.refresh_context
    out = student_mod.train_student(run, tmp_path / "student", progress=False).out_dir
    model = load_model(str(out))
    assert model.config.attention.chunk_frames == 2 and not model.config.sampler.refresh_context
    assert model.config.model_copy(update={"attention": run.model.attention, "sampler": run.model.sampler,
                                           "provenance": {}}) == run.model
    chunk = model.open_session("a red ball moving left", seed=0).next_chunk()
    assert chunk.frames.shape == (8, 32, 32, 3)
    plain = replace(run, serve_chunk_frames=0, serve_refresh_context=None)
    as_trained = load_model(str(student_mod.train_student(plain, tmp_path / "as-trained", progress=False).out_dir))
    assert as_trained.config.attention.chunk_frames == 1 and as_trained.config.sampler.refresh_context
    with pytest.raises(ValueError, match="serve_chunk_frames"):
        student_mod.train_student(replace(run, serve_chunk_frames=-1), tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused").exists()


def test_the_shapes_student_trains_and_streams_in_chunks_of_3_with_a_refresh():
    """v11: its rollouts are cached as its stream is (each chunk re-run at t=0), so what it serves
    is what it trained on (v9 and v10 trained from the last pass's context and served refreshed)."""
    run = student_mod.PRESETS["shapes"]
    served = student_mod.served_model(run)
    assert (run.model.attention.chunk_frames, run.model.sampler.refresh_context) == (3, True)  # as trained
    assert (served.attention.chunk_frames, served.sampler.refresh_context) == (3, True)
    assert served == run.model
    assert served.sampler.steps_per_chunk == run.model.sampler.steps_per_chunk == (4, 3, 2)
    assert served.transformer == run.model.transformer and served.latent == run.model.latent


def test_a_student_that_starts_from_a_missing_model_is_refused_before_any_work(tiny_teacher, tmp_path, capsys):
    """A run that carries a trained student on (init_from) without one stops with a usage error
    that says how to make one, and writes nothing."""
    from framecast.cli import main

    run_dir = tmp_path / "stream"
    assert main(["distill", "student", "--preset", "tiny", "--teacher", str(tiny_teacher), "--run-dir",
                 str(run_dir), "--set", f"init_from={tmp_path / 'missing'}"]) == 2
    assert "no student to start from" in capsys.readouterr().err and not run_dir.exists()


def test_student_resume_through_ode_and_dmd_continues_exactly(tiny_teacher, tmp_path):
    """Killed after step 5 (of 4 ODE + 4 DMD steps: inside DMD, critic and both optimisers
    in flight), the same command resumes and ends with the uninterrupted run's weights."""
    run = replace(student_mod.PRESETS["tiny"], teacher=str(tiny_teacher), ode_iters=4, dmd_iters=4, ckpt_every=5,
                  log_every=1)
    straight = student_mod.train_student(run, tmp_path / "straight", progress=False)
    student_mod.train_student(replace(run, dmd_iters=1), tmp_path / "resumed", progress=False)
    resumed = student_mod.train_student(run, tmp_path / "resumed", progress=False)
    assert resumed.step == 8 and len(resumed.losses) == 3  # only steps 6..8 ran again
    same_transformer(straight.out_dir, resumed.out_dir)
    assert [m["loss/dmd"] for m in metrics(tmp_path / "straight") if m["step"] > 5] == \
        pytest.approx([m["loss/dmd"] for m in metrics(tmp_path / "resumed") if m["step"] > 5], abs=1e-6)


def test_dmd2_adversarial_term_trains_its_head_and_resumes_exactly(tiny_teacher, tmp_path):
    """gan_weight > 0: the critic's head learns from real Shapes clips (encoded once into the
    run dir), the generator gets its term, and the head is checkpointed: a resumed run ends
    with the uninterrupted run's weights."""
    run = replace(student_mod.PRESETS["tiny"], teacher=str(tiny_teacher), ode_iters=0, dmd_iters=4, ckpt_every=2,
                  log_every=1, gan_weight=0.5, gan_pool=8)
    straight = student_mod.train_student(run, tmp_path / "straight", progress=False)
    logged = metrics(tmp_path / "straight")
    assert all(np.isfinite(m["loss/gan_critic"]) and np.isfinite(m["loss/gan_generator"]) for m in logged)
    assert list((tmp_path / "straight").glob("latent-pool-*.safetensors"))
    student_mod.train_student(replace(run, dmd_iters=2), tmp_path / "resumed", progress=False)
    resumed = student_mod.train_student(run, tmp_path / "resumed", progress=False)
    assert resumed.step == 4 and len(resumed.losses) == 2
    a = same_transformer(straight.out_dir, resumed.out_dir)
    from framecast.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball\n")
    assert main(["distill", "student", "--preset", "tiny", "--teacher", str(tiny_teacher), "--prompts", str(prompts),
                 "--set", "gan_weight=0.5", "--run-dir", str(tmp_path / "refused")]) == 2
    assert not (tmp_path / "refused").exists()
    off = student_mod.train_student(replace(run, gan_weight=0.0), tmp_path / "off", progress=False)
    assert "loss/gan_critic" not in metrics(tmp_path / "off")[0]
    c = load_model(str(off.out_dir)).transformer.state_dict()
    assert any(not torch.allclose(a[key], c[key]) for key in a)  # the term changes what the student learns


def test_dmd2_head_judges_scene_starts_only_and_the_frames_asked(tiny_teacher, tmp_path):
    """The head's real clips begin their scene, so it never judges a rollout that switched
    prompts (its objects carry on from before); with gan_frames it judges each clip's first
    frames only, real and fake alike, and more frames than a clip has are refused."""
    from distill.parallel import init_parallel
    from framecast.cli import main

    run = replace(student_mod.PRESETS["tiny"], teacher=str(tiny_teacher), ode_iters=0, dmd_iters=2, log_every=1,
                  gan_weight=0.5, gan_pool=8, rollout_frames=3)
    student_mod.train_student(replace(run, switch_prob=1.0), tmp_path / "switched", progress=False)
    logged = metrics(tmp_path / "switched")
    assert len(logged) == 2 and all("loss/dmd" in m and "loss/gan_critic" not in m and "loss/gan_generator" not in m
                                    for m in logged)
    student_mod.train_student(run, tmp_path / "started", progress=False)  # switch_prob 0: every rollout judged
    assert all("loss/gan_critic" in m and "loss/gan_generator" in m for m in metrics(tmp_path / "started"))

    t = student_mod.build_training(replace(run, gan_frames=1), init_parallel(0, "cpu"))
    lat = run.model.latent
    clips = torch.randn(2, lat.channels, run.latent_frames, lat.height // lat.spatial_compression,
                        lat.width // lat.spatial_compression, generator=torch.Generator().manual_seed(0))
    feats = t.features(["a red ball", "a blue square"])
    head = student_mod.discriminate(replace(run, gan_frames=1), t, clips, feats, torch.Generator().manual_seed(1))
    first = student_mod.discriminate(run, t, clips[:, :, :1], feats, torch.Generator().manual_seed(1))
    whole = student_mod.discriminate(run, t, clips, feats, torch.Generator().manual_seed(1))
    torch.testing.assert_close(head, first)
    assert not torch.allclose(head, whole)
    assert main(["distill", "student", "--preset", "tiny", "--teacher", str(tiny_teacher), "--set", "gan_weight=0.5",
                 "--set", f"gan_frames={run.latent_frames + 1}", "--run-dir", str(tmp_path / "refused")]) == 2
    assert not (tmp_path / "refused").exists()


def test_dmd2_head_judges_a_later_chunk_beside_the_same_scenes_later(tiny_teacher, tmp_path):
    """gan_later: the head also judges a scene-start rollout's frames from that chunk on, beside a
    second pool of real clips: the first pool's scenes, each starting that many latent frames
    later (the autoencoder encodes each latent frame from its own video frames, so the pools
    overlap frame for frame). A chunk outside the rollout is refused before any work."""
    from safetensors.torch import load_file

    from distill.parallel import init_parallel
    from framecast.cli import main

    run = replace(student_mod.PRESETS["tiny"], teacher=str(tiny_teacher), ode_iters=0, dmd_iters=2, log_every=1,
                  gan_weight=0.5, gan_pool=8, gan_frames=1, gan_later=2, rollout_frames=3)
    student_mod.train_student(run, tmp_path / "later", progress=False)
    assert all("loss/gan_critic" in m and "loss/gan_generator" in m for m in metrics(tmp_path / "later"))
    pools = {f.name.removesuffix(".safetensors"): load_file(f)["latents"]
             for f in (tmp_path / "later").glob("latent-pool-*.safetensors")}
    # the tiny teacher's clips start anywhere up to video frame 480; 2 latent frames are 8 video frames
    assert sorted(pools) == ["latent-pool-0-8x8", "latent-pool-random-start8to488-0-8x8"]
    first, later = pools["latent-pool-0-8x8"], pools["latent-pool-random-start8to488-0-8x8"]
    # 2 latent frames a clip, shifted by 2: no overlap; one latent frame later overlaps by one
    one = student_mod.real_clips(replace(run, gan_later=1), tmp_path / "one", progress=False, later=1)
    torch.testing.assert_close(one.pool[:, :, :1], first[:, :, 1:], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(later, first)

    t = student_mod.build_training(run, init_parallel(0, "cpu"))
    scene = torch.arange(3.0).view(1, 1, 3, 1, 1).expand(2, 4, 3, 4, 4)
    feats = t.features(["a red ball", "a blue square"])
    views, view_feats = student_mod.head_views(run, scene, feats)
    assert views[:, 0, :, 0, 0].tolist() == [[0.0], [0.0], [2.0], [2.0]]  # the first frame, then chunk 2's
    torch.testing.assert_close(view_feats, torch.cat([feats, feats]))
    assert main(["distill", "student", "--preset", "tiny", "--teacher", str(tiny_teacher), "--set", "gan_weight=0.5",
                 "--set", "gan_later=3", "--set", "rollout_frames=3", "--run-dir", str(tmp_path / "refused")]) == 2
    assert not (tmp_path / "refused").exists()


def test_dmd2_taken_up_after_the_ode_stage_matches_a_run_with_it_throughout(tiny_teacher, tmp_path):
    """The ODE stage does not use the adversarial head, so a run whose ODE checkpoint was made
    without it, resumed with gan_weight > 0, starts the head afresh and ends with the weights
    of a run that had the term from step 0."""
    run = replace(student_mod.PRESETS["tiny"], teacher=str(tiny_teacher), ode_iters=3, dmd_iters=2, ckpt_every=3,
                  log_every=1, gan_weight=0.5, gan_pool=8)
    straight = student_mod.train_student(run, tmp_path / "straight", progress=False)
    student_mod.train_student(replace(run, gan_weight=0.0, dmd_iters=0), tmp_path / "later", progress=False)
    assert not list((tmp_path / "later").glob("latent-pool-*"))  # the ODE stage alone: no head, no real clips
    later = student_mod.train_student(run, tmp_path / "later", progress=False)
    assert later.step == 5 and len(later.losses) == 2  # only the DMD steps ran
    same_transformer(straight.out_dir, later.out_dir)
    assert [m["loss/gan_critic"] for m in metrics(tmp_path / "straight") if m["step"] > 3] == \
        pytest.approx([m["loss/gan_critic"] for m in metrics(tmp_path / "later") if m["step"] > 3], abs=1e-6)


def test_dmd2_real_clips_are_drawn_as_the_teachers_were(tiny_teacher, tmp_path):
    """A teacher trained on the canonical layout from each scene's start gets real clips drawn
    the same way for DMD2's head (a pool of their own); any other teacher, the default world."""
    import shutil

    canonical = tmp_path / "canonical-teacher"
    shutil.copytree(tiny_teacher, canonical)
    cfg = json.loads((canonical / "model.json").read_text())
    cfg["provenance"]["run"].update(layout="canonical", max_start_frame=0)
    (canonical / "model.json").write_text(json.dumps(cfg))
    run = replace(student_mod.PRESETS["tiny"], gan_weight=1.0, gan_pool=2)
    plain = student_mod.real_clips(replace(run, teacher=str(tiny_teacher)), tmp_path / "a", progress=False)
    real = student_mod.real_clips(replace(run, teacher=str(canonical)), tmp_path / "b", progress=False)
    assert (plain.world.config.sampling.layout, plain.max_start) == ("random", 480)
    assert (real.world.config.sampling.layout, real.max_start) == ("canonical", 0)
    assert real.world.config.sampling.orbit == "either"
    cfg["provenance"]["run"].update(orbit="clockwise")
    (canonical / "model.json").write_text(json.dumps(cfg))
    turning = student_mod.real_clips(replace(run, teacher=str(canonical)), tmp_path / "e", progress=False)
    assert turning.world.config.sampling.orbit == "clockwise"
    cfg["provenance"]["run"].update(orbit="either")
    assert [p.name.split("-0-")[0] for p in (tmp_path / "b").glob("*.safetensors")] == ["latent-pool-canonical-start0"]
    # the teacher's seed and clips per draw, not the run's: the very pool the teacher's run wrote
    cfg["provenance"]["run"].update(seed=5, batch_size=0)
    (canonical / "model.json").write_text(json.dumps(cfg))
    teachers = student_mod.real_clips(replace(run, teacher=str(canonical), gan_pool=3), tmp_path / "c", progress=False)
    assert [p.name.split("x")[0] for p in (tmp_path / "c").glob("*.safetensors")] == ["latent-pool-canonical-start0-5-3"]
    from distill.teacher import FRAMES_ONLY_CLIP_BATCH

    drawn = teachers.clips(0, stream=(2,), seed=5, count=FRAMES_ONLY_CLIP_BATCH)[:3]
    assert [list(dict.fromkeys(c.captions)) for c in drawn] == teachers.pool_captions
    # so the teacher run's pool, linked into a student's run dir, is read instead of encoded again
    (tmp_path / "d").mkdir()
    for file in (tmp_path / "c").glob("latent-pool-*"):
        (tmp_path / "d" / file.name).symlink_to(file)
    linked = student_mod.real_clips(replace(run, teacher=str(canonical), gan_pool=3), tmp_path / "d", progress=False)
    torch.testing.assert_close(linked.pool, teachers.pool)
    assert all(p.is_symlink() for p in (tmp_path / "d").iterdir())  # nothing written beside the links


def test_dmd2_head_tells_real_clips_from_made_up_ones(tiny_teacher, tmp_path):
    """The head on the critic's tokens, trained alone on its loss, separates real clips from
    noise-like fakes; the generator's step leaves critic and head untouched."""
    from distill.parallel import init_parallel

    run = replace(student_mod.PRESETS["tiny"], teacher=str(tiny_teacher), gan_weight=1.0, gan_pool=8,
                  gan_sigma_high=0.3)
    t = student_mod.build_training(run, init_parallel(0, "cpu"))
    t.real = student_mod.real_clips(run, tmp_path, progress=False)
    gen = torch.Generator().manual_seed(0)
    real, prompts = t.real.batch(0)
    fake = torch.randn(real.shape, generator=gen) * 2
    feats = t.features(prompts)

    def judged_real() -> tuple[float, float]:
        with torch.no_grad():
            lr, lf = student_mod.discriminate(run, t, torch.cat([real, fake]), torch.cat([feats, feats]),
                                              torch.Generator().manual_seed(1)).chunk(2)
        return (lr > 0).float().mean().item(), (lf > 0).float().mean().item()

    untrained = judged_real()
    opt = torch.optim.Adam(t.discriminator.parameters(), lr=3e-3)
    for _ in range(60):
        lr, lf = student_mod.discriminate(run, t, torch.cat([real, fake]), torch.cat([feats, feats]), gen).chunk(2)
        opt.zero_grad()
        student_mod.gan_critic_loss(lr, lf).backward()
        opt.step()
    real_ok, fake_ok = judged_real()
    assert real_ok > 0.9 and fake_ok < 0.1, (untrained, real_ok, fake_ok)

    before = {k: v.clone() for k, v in [*t.critic.state_dict().items(), *t.discriminator.state_dict().items()]}
    run = replace(run, critic_ratio=0)  # the generator's update alone
    student_mod.dmd_step(run, t, step=0)
    after = dict([*t.critic.state_dict().items(), *t.discriminator.state_dict().items()])
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in t.critic.parameters())


def test_dry_run_prints_the_resolved_config(capsys):
    from framecast.cli import main

    assert main(["distill", "student", "--preset", "tiny", "--set", "dmd_iters=7", "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["dmd_iters"] == 7 and printed["model"]["name"] == "tiny-student"
    # a field of text or nothing (str | None) takes a plain path
    assert main(["distill", "student", "--preset", "tiny", "--set", "init_from=runs/a/model", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["init_from"] == "runs/a/model"
    assert main(["distill", "student", "--preset", "tiny", "--set", "nonsense=1", "--dry-run"]) == 2
    # a choice of words takes the plain word, and only one of its choices
    assert main(["distill", "teacher", "--preset", "tiny", "--set", "model.attention.text_padding=mask",
                 "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["attention"]["text_padding"] == "mask"
    assert main(["distill", "teacher", "--preset", "tiny", "--set", "model.attention.text_padding=maybe",
                 "--dry-run"]) == 2
    assert "text_padding" in capsys.readouterr().err
    assert main(["distill", "teacher", "--preset", "tiny", "--set", "captions=canonical", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["captions"] == "canonical"
    assert main(["distill", "teacher", "--preset", "tiny", "--set", 'captions="first"', "--dry-run"]) == 2
    assert "one of paraphrases, canonical" in capsys.readouterr().err  # JSON text is checked as well
    assert main(["distill", "teacher", "--preset", "tiny", "--set", "model.text_pooling=mean", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["text_pooling"] == "mean"


def test_two_process_data_parallel_on_gloo(tiny_teacher, tmp_path):
    returncode, stderr = torchrun_two_processes(
        ["-m", "framecast", "distill", "student", "--preset", "tiny", "--teacher", str(tiny_teacher),
         "--run-dir", str(tmp_path / "ddp"), "--set", "ode_iters=4", "--set", "dmd_iters=2"], timeout=300)
    assert returncode == 0, stderr[-3000:]
    logged = metrics(tmp_path / "ddp")
    assert logged[-1].get("ranks_in_sync") == 1.0
    assert (tmp_path / "ddp" / "model" / "transformer.safetensors").is_file()


def test_a_command_leaves_the_process_group_it_joined_and_only_that(tmp_path):
    # A torchrun worker that exits with its gloo group alive can abort (SIGABRT) in the group's
    # destructor after its work is done: a distill command leaves the group it joined. One it
    # found already joined (a caller running several commands in one group) is the caller's.
    import torch.distributed as dist

    from distill.train_commands import _leaving_process_group

    def join(args):
        if not dist.is_initialized():
            dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / args), 1), rank=0, world_size=1)
        return 0

    def fail(args):
        join(args)
        raise RuntimeError("the training failed")

    assert _leaving_process_group(join)("own") == 0 and not dist.is_initialized()
    with pytest.raises(RuntimeError):  # after an error too (at once: the others may never arrive)
        _leaving_process_group(fail)("failed")
    assert not dist.is_initialized()
    join("caller")
    try:
        assert _leaving_process_group(join)("inner") == 0 and dist.is_initialized()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def tiny_reward(tmp_path_factory) -> Path:
    from distill.rewards.shapes import ShapesVideoReward
    from distill.rewards.train import PRESETS as reward_presets

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("reward")
    ShapesVideoReward(reward_presets["tiny"].model).save(path)
    return path


def test_every_ablation_variant_names_its_schedule_whatever_the_default_streams_with():
    # The default student streams with 4, 3, then 2 steps and a refresh: the ablation's plain variants
    # must still be plain (4 steps and a refresh a chunk), its +diag ones diagonal (no refresh).
    from distill.ablate import VARIANTS, variant_run

    base = student_mod.PRESETS["shapes"]
    assert base.model.sampler.model_dump(include={"steps_per_chunk", "refresh_context"}) == \
        {"steps_per_chunk": (4, 3, 2), "refresh_context": True}
    for name in VARIANTS:
        variant = variant_run(base, name, init_from="start")
        sampler = variant.model.sampler
        expected = student_mod.DIAGONAL_SCHEDULE if name.endswith("+diag") else student_mod.PLAIN_SCHEDULE
        assert (sampler.steps_per_chunk, sampler.refresh_context) == tuple(expected.values()), name
        # ... and each is exported streaming as it was trained, not as the default serves
        assert student_mod.served_model(variant) == variant.model, name


@pytest.mark.parametrize("method,diagonal", [("re_dmd", False), ("stream_r1", True)])
def test_reward_methods_and_diagonal_train_and_export(tiny_teacher, tiny_reward, tmp_path, method, diagonal):
    from distill.ablate import variant_run

    base = replace(student_mod.PRESETS["tiny"], teacher=str(tiny_teacher), reward=str(tiny_reward), dmd_iters=3,
                   latent_frames=2, rollout_frames=4)
    run = variant_run(base, method + ("+diag" if diagonal else ""), init_from=str(tiny_teacher))
    assert run.ode_iters == 0 and run.method == method
    assert (run.model.attention.policy == "ema_sink") == (method == "re_dmd")
    assert (run.model.sampler.steps_per_chunk == (4, 3, 2)) == diagonal
    out = student_mod.train_student(run, tmp_path / method).out_dir
    logged = metrics(tmp_path / method)
    assert [m["step"] for m in logged if "loss/dmd" in m] and all(np.isfinite(m.get("loss/dmd", 0)) for m in logged)
    assert load_model(str(out)).config.attention.policy == run.model.attention.policy


@pytest.mark.parametrize("method", ["dmd", "re_dmd", "stream_r1"])
def test_each_method_hands_its_weights_to_the_dmd_loss(tiny_teacher, tiny_reward, tmp_path, monkeypatch, method):
    """The wiring: plain DMD passes no weight; Re-DMD one mean-1 weight per rollout;
    Stream-R1 per-rollout times per-latent-pixel weights; none of them carries gradient."""
    seen = []
    real_loss = student_mod.dmd_loss

    def recording_loss(x, x0_real, x0_fake, weight=None):
        seen.append((x.shape, weight))
        return real_loss(x, x0_real, x0_fake, weight)

    monkeypatch.setattr(student_mod, "dmd_loss", recording_loss)
    run = replace(student_mod.PRESETS["tiny"], teacher=str(tiny_teacher), reward=str(tiny_reward), ode_iters=0,
                  dmd_iters=2, method=method)
    student_mod.train_student(run, tmp_path / method)
    assert len(seen) == 2
    for shape, weight in seen:
        b, _, f, h, w = shape
        if method == "dmd":
            assert weight is None
            continue
        assert not weight.requires_grad
        expected = (b,) if method == "re_dmd" else (b, 1, f, h, w)
        assert tuple(weight.shape) == expected
        assert torch.allclose(weight.mean(), torch.tensor(1.0), atol=1e-4) or method == "stream_r1"
        assert (weight > 0).all() and weight.std() > 0


def test_ablation_writes_a_report_with_every_column(tiny_teacher, tiny_reward, tmp_path, capsys):
    from distill.ablate import run_ablation

    base = replace(student_mod.PRESETS["tiny"], reward=str(tiny_reward), ode_iters=4, dmd_iters=1)
    rows = run_ablation(base, str(tiny_teacher), tmp_path, ["dmd", "re_dmd+diag"], prompts=2, seeds=1,
                        seconds=1.0, drift_minutes=0.05, progress=False)
    err = capsys.readouterr().err
    assert "student:" not in err and "ODE pairs" not in err  # --no-progress reaches every bar of every run
    assert set(rows) == {"ode init only", "dmd", "re_dmd+diag"}
    for row in rows.values():
        for key in ("prompt_accuracy", "colour_accuracy", "shape_accuracy", "motion_accuracy", "smoothness",
                    "flicker", "drift_first", "drift_last", "fps", "rtf"):
            assert np.isfinite(row[key]), key
        low, high = row["intervals"]["prompt_accuracy"]  # 2 prompts x 1 seed: an interval exists
        assert low <= row["prompt_accuracy"] <= high
        assert row["fps"] > 0 and len(row["drift"]) >= 2
    table = (tmp_path / "report.md").read_text()
    assert "| re_dmd+diag |" in table and "| ode init only |" in table and (tmp_path / "drift.png").stat().st_size > 1000
    assert f"{rows['dmd']['prompt_accuracy']:.3f} [" in table  # the interval is printed beside the mean
    # both variants started from the one shared ODE-initialised student
    assert json.loads((tmp_path / "re_dmd+diag" / "run.json").read_text())["init_from"].endswith("ode_init/model")
    # re-run: every row is read back from its run dir, nothing trained or judged again
    saved = {name: (tmp_path / name / "row.json").stat().st_mtime_ns for name in ("ode_init", "dmd", "re_dmd+diag")}
    again = run_ablation(base, str(tiny_teacher), tmp_path, ["dmd", "re_dmd+diag"], prompts=2, seeds=1,
                         seconds=1.0, drift_minutes=0.05, progress=False)
    assert again == json.loads(json.dumps(rows))
    assert saved == {name: (tmp_path / name / "row.json").stat().st_mtime_ns for name in saved}


def test_switch_rollouts_judge_the_window_after_the_switch_under_the_new_prompt(tiny_teacher, tmp_path, monkeypatch):
    """With switch_prob 1 every DMD rollout switches prompts; the teacher and critic are then
    asked about the window after the switch, under the new prompt's features."""
    seen = []
    real = student_mod.real_and_fake_x0

    def recording(run, teacher, critic, x_t, sigma, feats):
        seen.append(feats)
        return real(run, teacher, critic, x_t, sigma, feats)

    switches = []
    real_rollout = student_mod.rollout

    def recording_rollout(*args, switch=None, **kwargs):
        switches.append(switch)
        return real_rollout(*args, switch=switch, **kwargs)

    monkeypatch.setattr(student_mod, "real_and_fake_x0", recording)
    monkeypatch.setattr(student_mod, "rollout", recording_rollout)
    run = replace(student_mod.PRESETS["tiny"], teacher=str(tiny_teacher), ode_iters=0, dmd_iters=2, latent_frames=2,
                  rollout_frames=4, switch_prob=1.0)
    student_mod.train_student(run, tmp_path / "s", progress=False)
    # 4 one-frame chunks, a judged window of 2: the switch comes before chunk 1 or 2
    assert switches and all(s is not None and s[0] in (1, 2) for s in switches)
    encoder = teacher_mod.build_text_encoder_for(run.model)
    before = encoder.encode(student_mod.shapes_captions(0, run.batch_size, run.seed, 0))
    after = encoder.encode(student_mod.shapes_captions(0, run.batch_size, run.seed + 2, 0))
    assert torch.equal(seen[0], after) and not torch.equal(seen[0], before)  # step 0: judged under the new prompts


def test_hard_negative_loss_is_zero_once_the_wrong_caption_fits_the_objects_worse():
    from distill.losses import hard_negative_loss, object_cells

    gen = torch.Generator().manual_seed(0)
    x0 = torch.zeros(2, 4, 2, 8, 8)
    x0[:, :, :, 2:4, 2:4] = 3.0  # an object on a flat background
    noise = torch.randn(x0.shape, generator=gen)
    mask = object_cells(x0)
    assert mask[:, :, :, 2:4, 2:4].all() and mask.sum() == 2 * 2 * 4  # the object's cells, no others
    target = noise - x0
    good = (target + 0.1 * torch.randn(x0.shape, generator=gen)).requires_grad_(True)
    same = good.detach().clone().requires_grad_(True)
    loss = hard_negative_loss(good, same, x0, noise, margin=0.2)
    loss.backward()
    assert loss > 0 and good.grad.abs().sum() > 0 and same.grad.abs().sum() > 0
    far = target + 5.0  # the wrong caption's fit is much worse: nothing left to learn
    assert hard_negative_loss(good.detach(), far, x0, noise, margin=0.2) == 0


def test_pooled_text_trains_and_reaches_the_student(tiny_autoencoder, tmp_path):
    """model.text_pooling=mean: the teacher trains its pooled-text MLP (zero at the start),
    saves it, and the student made of it has the same option and loads those weights."""
    from distill import student as student_mod

    run = replace(teacher_mod.PRESETS["tiny"], autoencoder=str(tiny_autoencoder), steps=10,
                  model=teacher_mod.TINY_MODEL.updated(text_pooling="mean"))
    out = teacher_mod.train_teacher(run, tmp_path / "teacher").out_dir
    teacher = load_model(str(out))
    assert teacher.config.text_pooling == "mean"
    assert teacher.transformer.pooled_text_embedder[2].weight.abs().max() > 0  # trained away from zero
    srun = replace(student_mod.PRESETS["tiny"], teacher=str(out), ode_iters=0, dmd_iters=1)
    with pytest.raises(ValueError, match="text features"):  # a student that would drop the teacher's MLP
        student_mod.train_student(srun, tmp_path / "refused", progress=False)
    srun = student_mod.for_teacher(srun)
    student = load_model(str(student_mod.train_student(srun, tmp_path / "student", progress=False).out_dir))
    assert student.config.text_pooling == "mean"
    # the student starts from the teacher's weights, its pooled-text MLP included (one DMD step on)
    first = teacher.transformer.pooled_text_embedder[0].weight
    assert (student.transformer.pooled_text_embedder[0].weight - first).abs().max() < 0.1 * first.abs().max()
    assert torch.isfinite(student.open_session("a red ball moving left", seed=0).next_chunk().latents).all()


def test_teacher_trains_with_hard_negative_captions(tiny_autoencoder, tmp_path):
    """negative_captions > 0: a second forward under swapped captions, logged as
    loss/negative, and it changes what the teacher learns."""
    run = replace(teacher_mod.PRESETS["tiny"], autoencoder=str(tiny_autoencoder), steps=10, log_every=1)
    plain = teacher_mod.train_teacher(run, tmp_path / "plain").out_dir
    with_negatives = teacher_mod.train_teacher(replace(run, negative_captions=0.5), tmp_path / "negative").out_dir
    logged = metrics(tmp_path / "negative")
    assert all(np.isfinite(m["loss/negative"]) and m["loss/negative"] >= 0 for m in logged)
    assert any(m["loss/negative"] > 0 for m in logged)
    assert "loss/negative" not in metrics(tmp_path / "plain")[0]
    # loss/flow is the flow-matching loss alone: the first step's, before any update, is the plain run's
    assert logged[0]["loss/flow"] == pytest.approx(metrics(tmp_path / "plain")[0]["loss/flow"], rel=1e-6)
    a = load_model(str(plain)).transformer.state_dict()
    b = load_model(str(with_negatives)).transformer.state_dict()
    assert any(not torch.allclose(a[k], b[k]) for k in a)



@pytest.mark.parametrize("expected", [False, True])
def test_bf16_autocast_only_where_the_cpu_runs_bf16(monkeypatch, capsys, expected):
    """A run asking for bf16 autocast gets it on CPUs with avx512_bf16 or AMX; on an AVX2-only
    CPU, where torch emulates bf16 (~18x slower than float32), it trains in float32 and says so."""
    from distill import common

    from engine import model as engine_model

    monkeypatch.setattr(engine_model, "cpu_has_bf16", lambda: expected)
    monkeypatch.setattr(common, "_said_float32", set())
    layer = torch.nn.Linear(4, 4)
    for _ in range(2):
        with common.autocast(layer, True):
            assert torch.is_autocast_enabled("cpu") is expected
            assert (layer(torch.randn(2, 4)).dtype == torch.bfloat16) is expected
    with common.autocast(layer, False):
        assert not torch.is_autocast_enabled("cpu")
    said = capsys.readouterr().err
    assert said.count("bf16 autocast is off") == (0 if expected else 1)


def test_shape_maps_show_each_objects_shape_where_the_frames_show_the_object():
    from engine.shapes import vocab
    from distill.data.render import render_scene, shape_maps
    from distill.data.shapes import ShapesConfig, ShapesWorld

    world = ShapesWorld(ShapesConfig(height=64, width=64))
    for seed in range(6):
        scene = world.scene(seed)
        idx = np.arange(10, 14)
        frames = render_scene(scene, idx, 64, 64, 16.0).astype(np.int16)
        maps = shape_maps(scene, idx, 64, 64, 16.0)  # [T, H, W, 1 + S]
        np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
        background = render_scene(replace(scene, objects=()), idx, 64, 64, 16.0).astype(np.int16)
        changed = np.abs(frames - background).max(-1)  # [T, H, W]
        assert (changed > 40).any()
        assert (maps[..., 0][changed > 0] < 1).all()  # every pixel an object changed is one in the maps
        assert (changed[maps[..., 0] < 0.9] > 0).all()  # and every pixel mostly object in the maps was drawn
        top = scene.objects[-1]  # drawn last: wherever it covers a pixel fully, the map names its shape
        k = 1 + vocab.SHAPES.index(top.shape)
        assert (maps[..., k] > 0.99).any()


def test_pool_shape_maps_belong_to_the_pool_clips(tiny_autoencoder, tmp_path):
    from distill.common import ShapesLatents
    from distill.teacher import load_autoencoder

    ae = load_autoencoder(tiny_autoencoder)
    data = ShapesLatents(ae, 2, 3, 0, 32, 32, pool_size=4, cache_dir=tmp_path, progress=False)
    maps = data.pool_shape_maps(8, tmp_path, progress=False)  # [N, F, K, 4, 4]
    assert maps.shape == (4, 2, 6, 4, 4)
    torch.testing.assert_close(maps.sum(2), torch.ones(4, 2, 4, 4))
    clips = data.clips(0, stream=(2,)) + data.clips(1, stream=(2,))[:1]  # the pool's clips, as it drew them
    for clip, m in zip(clips, maps):
        video = torch.from_numpy(clip.frames.astype(np.float32))  # [8, 32, 32, 3]
        spread = (video - video.median(1, keepdim=True).values.median(2, keepdim=True).values).abs().amax(-1)
        busy = spread.reshape(2, 4, 4, 8, 4, 8).amax((1, 3, 5)) > 60  # tokens where an object clearly is
        assert (m[:, 0][busy] < 1).all()  # ... are not pure background in the maps
    torch.testing.assert_close(data.pool_shape_maps(8, tmp_path, progress=False), maps)  # cached
    other = ShapesLatents(ae, 2, 2, 0, 32, 32, pool_size=4, cache_dir=tmp_path, progress=False)  # the same pool file
    with pytest.raises(ValueError, match="batch size"):  # drawn 2 at a time, its scenes are not the pool's
        other.pool_shape_maps(8, None, progress=False)


def test_teacher_learns_shape_maps_and_adds_the_head_to_a_resumed_run(tiny_autoencoder, tmp_path):
    base = replace(teacher_mod.PRESETS["tiny"], autoencoder=str(tiny_autoencoder), steps=10, batch_size=2,
                   image_batch=3, pool_size=4, log_every=5, ckpt_every=10)
    teacher_mod.train_teacher(base, tmp_path, progress=False)  # no head: a run to fine-tune
    run = replace(base, steps=40, shape_labels=1.0, log_every=10)
    teacher_mod.train_teacher(run, tmp_path, progress=False)  # resumes at 10 with a fresh head
    logged = [m for m in metrics(tmp_path) if "loss/shapes" in m]
    assert [m["step"] for m in logged] == [20, 30, 40]
    assert logged[-1]["loss/shapes"] < logged[0]["loss/shapes"]  # the head (and the blocks under it) learn
    from safetensors.torch import load_file

    weights = load_file(next((tmp_path / "model").glob("*.safetensors")))
    assert not any("shape_head" in k for k in weights)  # training-only
    ckpt = load_file(sorted(tmp_path.glob("checkpoint-*.safetensors"))[-1])
    assert any(k.startswith("shape_head.") for k in ckpt)  # but kept for resuming


def test_shape_critic_is_trained_once_and_then_only_the_transformers_clean_estimate_learns(
        tiny_autoencoder, tmp_path, monkeypatch):
    """shape_critic: a resumed run trains the critic first (cached beside the pool), logs its
    term, and its gradient reaches only the samples at or below shape_critic_sigma, through
    x_t - s v; the critic itself stays frozen and is not exported."""
    from safetensors.torch import load_file

    monkeypatch.setattr(teacher_mod.ShapeCritic, "steps", 30)
    base = replace(teacher_mod.PRESETS["tiny"], autoencoder=str(tiny_autoencoder), steps=10, batch_size=2,
                   image_batch=3, pool_size=4, log_every=5, ckpt_every=10)
    teacher_mod.train_teacher(base, tmp_path, progress=False)
    run = replace(base, steps=30, shape_critic=1.0, shape_critic_sigma=0.9, log_every=10)
    teacher_mod.train_teacher(run, tmp_path, progress=False)
    logged = [m for m in metrics(tmp_path) if "loss/shape_critic" in m]
    assert [m["step"] for m in logged] == [20, 30] and all(np.isfinite(m["loss/shape_critic"]) for m in logged)
    cached = list(tmp_path.glob("shape-critic-*.safetensors"))
    assert len(cached) == 1
    weights = load_file(next((tmp_path / "model").glob("*.safetensors")))
    assert not any("critic" in k for k in weights)

    lat = run.model.latent
    data = teacher_mod.ShapesLatents(teacher_mod.load_autoencoder(tiny_autoencoder), run.latent_frames, 2, run.seed,
                                     lat.height, lat.width, int(lat.fps), pool_size=4, cache_dir=tmp_path, progress=False)
    critic = teacher_mod.ShapeCritic(run, data, tmp_path, progress=False)  # loads the cached one
    maps = torch.zeros_like(critic.clip_maps(0))  # [2, F, K, h, w]
    maps[:, :, 1] = 1  # every token a circle: object tokens everywhere, so every kept sample counts
    x0 = data.batch(0)[0]
    xt, v = torch.randn_like(x0), torch.randn_like(x0, requires_grad=True)
    critic.loss(xt, v, torch.tensor([0.5, 0.95]), maps).backward()
    assert v.grad[0].abs().sum() > 0 and v.grad[1].abs().sum() == 0  # s = 0.95 is above the limit
    assert all(p.grad is None for p in critic.net.parameters())  # frozen: only the estimate learns


def test_teacher_gains_absolute_positions_when_resumed_and_the_student_keeps_them(tiny_autoencoder, tmp_path):
    """model.absolute_positions: a run resumed from a checkpoint without the table starts it at
    zero, after every old parameter (the optimizer's state stays with its own parameters), and
    trains it; the student made from that teacher keeps the table and streams."""
    from safetensors.torch import load_file

    from distill import student as student_mod

    base = replace(teacher_mod.PRESETS["tiny"], autoencoder=str(tiny_autoencoder), steps=10, ckpt_every=10)
    teacher_mod.train_teacher(base, tmp_path / "teacher", progress=False)
    before = load_file(tmp_path / "teacher" / "checkpoint-0000010.safetensors")
    run = replace(base, steps=20, model=teacher_mod.TINY_MODEL.updated(absolute_positions=True))
    out = teacher_mod.train_teacher(run, tmp_path / "teacher", progress=False).out_dir
    after = load_file(tmp_path / "teacher" / "checkpoint-0000020.safetensors")
    assert after.keys() - before.keys() >= {"model.spatial_position.table", "ema.spatial_position.table"}
    assert after["model.spatial_position.table"].abs().max() > 0  # trained away from its zero start
    teacher = load_model(str(out))
    assert teacher.config.absolute_positions and teacher.transformer.spatial_position.table.abs().max() > 0
    srun = student_mod.for_teacher(replace(student_mod.PRESETS["tiny"], teacher=str(out), ode_iters=0, dmd_iters=1))
    student = load_model(str(student_mod.train_student(srun, tmp_path / "student", progress=False).out_dir))
    assert student.config.absolute_positions
    assert student.transformer.spatial_position.table.abs().max() > 0
    assert torch.isfinite(student.open_session("a red ball moving left", seed=0).next_chunk().latents).all()


def test_teacher_gains_an_output_refiner_when_resumed_and_the_student_keeps_it(tiny_autoencoder, tmp_path):
    """model.output_refiner: a run resumed from a checkpoint without the refiner starts it at zero
    (so the step-10 model is where it was) and trains it; the student made from it keeps it."""
    from safetensors.torch import load_file

    from distill import student as student_mod

    base = replace(teacher_mod.PRESETS["tiny"], autoencoder=str(tiny_autoencoder), steps=10, ckpt_every=10)
    teacher_mod.train_teacher(base, tmp_path / "teacher", progress=False)
    before = load_file(tmp_path / "teacher" / "checkpoint-0000010.safetensors")
    run = replace(base, steps=20, model=teacher_mod.TINY_MODEL.updated(output_refiner=8))
    out = teacher_mod.train_teacher(run, tmp_path / "teacher", progress=False).out_dir
    after = load_file(tmp_path / "teacher" / "checkpoint-0000020.safetensors")
    assert before.keys() < after.keys() and any(".output_refiner." in k for k in after)
    assert after["model.output_refiner.conv_out.weight"].abs().max() > 0  # trained away from its zero start
    teacher = load_model(str(out))
    assert teacher.transformer.output_refiner.conv_out.weight.abs().max() > 0
    srun = student_mod.for_teacher(replace(student_mod.PRESETS["tiny"], teacher=str(out), ode_iters=0, dmd_iters=1))
    student = load_model(str(student_mod.train_student(srun, tmp_path / "student", progress=False).out_dir))
    assert student.config.output_refiner == 8
    assert torch.isfinite(student.open_session("a red ball moving left", seed=0).next_chunk().latents).all()
    bad = replace(run, model=teacher_mod.TINY_MODEL.updated(output_refiner=8, text_pooling="mean"),
                  steps=30)  # a module the resumed run may not silently gain is refused
    with pytest.raises(ValueError, match="does not fit"):
        teacher_mod.train_teacher(bad, tmp_path / "teacher", progress=False)


def test_memorise_bench_masks_the_object_and_not_the_background():
    """bench/teacher_memorise.py scores samples by the IoU of object masks: the mask must be the
    object's pixels, whatever the background's colour, and empty for a plain frame."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("teacher_memorise", Path(__file__).resolve().parents[1]
                                                  / "bench" / "teacher_memorise.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    yy, xx = np.mgrid[:128, :128]
    disc = (yy - 64) ** 2 + (xx - 40) ** 2 <= 12 ** 2
    for background, colour in (((30, 200, 40), (220, 20, 20)), ((250, 250, 250), (20, 20, 20))):
        frame = np.empty((128, 128, 3), np.uint8)
        frame[:] = background
        assert not bench.object_mask(frame).any()
        frame[disc] = colour
        assert (bench.object_mask(frame) == disc).all()
    assert bench.ONE_OBJECT.match("a small red star moves left on a green background")
    assert not bench.ONE_OBJECT.match("a small red star moves left on a green striped background")
    # clips: a disc that moves right 20 px, against one that moves right, left, or stays put
    def clip(dx_total: float) -> np.ndarray:
        return np.stack([(yy - 64) ** 2 + (xx - 40 - dx_total * k / 5) ** 2 <= 12 ** 2 for k in range(6)])

    right = bench.compare_paths(clip(20), clip(18))
    assert right["agrees"] and abs(right["target_px"] - 20) < 0.5 and abs(right["end_error_px"] - 2) < 0.5
    assert not bench.compare_paths(clip(20), clip(-20))["agrees"]
    assert not bench.compare_paths(clip(20), clip(0))["agrees"]
    assert bench.compare_paths(clip(0), clip(1))["agrees"]


def test_frames_only_teacher_learns_places_in_time_and_its_student_streams(tiny_autoencoder, tmp_path, monkeypatch):
    """model.frame_time on a frames-only teacher: resumed from a checkpoint without the table, it
    starts it at zero and trains it from each single frame's place in its clip; its samples
    and the DMD judge see clips one frame at a time (clip_attention), a rollout longer than the
    teacher's clip is judged on the window its places fit (the first), and the student made
    from it has no table and streams."""
    from safetensors.torch import load_file

    from distill import student as student_mod

    base = replace(teacher_mod.PRESETS["tiny"], autoencoder=str(tiny_autoencoder), steps=6, ckpt_every=6,
                   batch_size=0, image_batch=6, pool_size=4)
    teacher_mod.train_teacher(base, tmp_path / "teacher", progress=False)
    run = replace(base, steps=12, model=teacher_mod.TINY_MODEL.updated(frame_time=2))
    out = teacher_mod.train_teacher(run, tmp_path / "teacher", progress=False).out_dir
    after = load_file(tmp_path / "teacher" / "checkpoint-0000012.safetensors")
    assert after["model.frame_time.table"].abs().max() > 0  # trained away from its zero start
    teacher = load_model(str(out))
    assert teacher.config.frame_time == 2
    judged = []
    real = student_mod.real_and_fake_x0
    monkeypatch.setattr(student_mod, "real_and_fake_x0", lambda run, te, cr, x_t, *a: judged.append(
        (x_t.shape[2], te.clip_attention(x_t.shape[2]).mask)) or real(run, te, cr, x_t, *a))
    window = student_mod.judged_window
    windows = []
    monkeypatch.setattr(student_mod, "judged_window", lambda lat, r, g, first_chunk=0, anchored=False: windows.append(
        anchored) or window(lat, r, g, first_chunk, anchored))
    srun = student_mod.for_teacher(replace(student_mod.PRESETS["tiny"], teacher=str(out), ode_iters=2, dmd_iters=1,
                                           rollout_frames=4))
    assert srun.model.frame_time == 0
    student = load_model(str(student_mod.train_student(srun, tmp_path / "student", progress=False).out_dir))
    assert judged and all(f == 2 and mask is not None for f, mask in judged)  # one frame at a time
    assert windows and all(windows)
    assert student.config.frame_time == 0 and getattr(student.transformer, "frame_time", None) is None
    assert torch.isfinite(student.open_session("a red ball moving left", seed=0).next_chunk().latents).all()
    latents = torch.arange(4.0).view(1, 1, 4, 1, 1)
    gen = torch.Generator().manual_seed(0)
    first = [student_mod.judged_window(latents, srun, gen, anchored=True).flatten().tolist() for _ in range(4)]
    assert first == [[0.0, 1.0]] * 4
    assert student_mod.judged_window(latents, srun, gen, first_chunk=1, anchored=True).flatten().tolist() == [1.0, 2.0]


def test_shared_noise_draws_one_object_that_a_frames_only_teacher_moves():
    """sample_teacher(shared_noise=True): every latent frame starts from the same noise, so a
    frames-only teacher (frames seen apart) whose table of places is still zero draws the same
    frame at every place; trained (non-zero), the places differ. Without it the frames differ
    from the first step; both are finite and reproducible."""
    from engine.transformer import build_transformer

    cfg = teacher_mod.TINY_MODEL.updated(frame_time=3)
    tr = build_transformer(cfg, seed=0).eval()
    feats = torch.randn(2, cfg.text_encoder.max_tokens, cfg.text_encoder.dim)

    def sample(shared):
        return teacher_mod.sample_teacher(tr, cfg, feats, 3, steps=4, generator=torch.Generator().manual_seed(1),
                                          shared_noise=shared)

    same = sample(True)
    torch.testing.assert_close(same[:, :, 1:], same[:, :, :1].expand(-1, -1, 2, -1, -1))
    assert (sample(False)[:, :, 1:] - sample(False)[:, :, :1]).abs().max() > 1e-2
    torch.testing.assert_close(sample(False), sample(False))
    with torch.no_grad():
        torch.nn.init.normal_(tr.frame_time.table, std=0.5)
    moved = sample(True)
    assert torch.isfinite(moved).all() and (moved[:, :, 2] - moved[:, :, 0]).abs().max() > 1e-2


def _printed_configs(out: str) -> list[dict]:
    """The JSON objects `--dry-run` printed one after another."""
    decoder, printed, i = json.JSONDecoder(), [], 0
    while i < len(out):
        if out[i].isspace():
            i += 1
            continue
        obj, i = decoder.raw_decode(out, i)
        printed.append(obj)
    return printed


def test_distill_default_can_start_from_a_trained_autoencoder(capsys, tmp_path):
    """`--autoencoder DIR` skips the first stage (95 min on 2 cores) and points every teacher
    stage at DIR; the rest of the chain is unchanged. A folder with no autoencoder is an error
    before anything runs."""
    from framecast.cli import main

    assert main(["distill", "default", "--run-dir", str(tmp_path / "a"), "--dry-run"]) == 0
    whole = _printed_configs(capsys.readouterr().out)
    shipped = str(ROOT / "engine/models/shapes-default")
    assert main(["distill", "default", "--run-dir", str(tmp_path / "a"), "--autoencoder", shipped, "--dry-run"]) == 0
    skipped = _printed_configs(capsys.readouterr().out)
    assert [p["stage"] for p in skipped] == [p["stage"] for p in whole[1:]] and whole[0]["stage"] == "autoencoder"
    assert {p["autoencoder"] for p in skipped if p["stage"] == "teacher"} == {shipped}
    assert {p["autoencoder"] for p in whole if p["stage"] == "teacher"} == {str(tmp_path / "a/autoencoder/autoencoder")}
    for a, b in zip(whole[1:], skipped):
        assert {k: v for k, v in a.items() if k != "autoencoder"} == {k: v for k, v in b.items() if k != "autoencoder"}

    assert main(["distill", "default", "--run-dir", str(tmp_path / "b"), "--autoencoder", str(tmp_path)]) == 2
    assert "no autoencoder.json" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_distill_default_trains_the_wide_teacher_carries_it_on_twice_and_distils_it(capsys, tmp_path):
    """`framecast distill default` chains the autoencoder, the `shapes-wide` teacher, the
    `shapes-wide-carry` teacher in the same run dir (it resumes where the first stopped: the same
    data, model and recipe, its own decay at its end), the `shapes-wide-carry-on` teacher in a dir
    of its own starting from the weights that one made, then the student from the last teacher,
    whose network is the teacher's (the student preset is made for that width: no other name)."""
    from distill.student import PRESETS as STUDENT_PRESETS
    from framecast.cli import main

    assert main(["distill", "default", "--run-dir", str(tmp_path), "--dry-run"]) == 0
    printed = _printed_configs(capsys.readouterr().out)
    assert [(p["stage"], p["preset"]) for p in printed] == [
        ("autoencoder", "shapes"), ("teacher", "shapes-wide"), ("teacher", "shapes-wide-carry"),
        ("teacher", "shapes-wide-carry-on"), ("student", "shapes")]
    first, carry, on = printed[1:-1]
    assert first["run_dir"] == carry["run_dir"] == str(tmp_path / "teacher")
    assert on["run_dir"] == str(tmp_path / "teacher-on")
    assert first["init_from"] is None and carry["init_from"] is None
    assert on["init_from"] == str(tmp_path / "teacher" / "model")
    assert carry["model"] == first["model"] == on["model"] and first["model"]["frame_time"] == 6
    assert first["steps"] <= carry["decay_from"] < carry["steps"] and first["decay_from"] < first["steps"]
    assert 0 < on["decay_from"] < on["steps"]
    same = ("preset", "steps", "decay_from", "weights_dtype")
    assert {k: v for k, v in carry.items() if k not in same} == {k: v for k, v in first.items() if k not in same}
    # the carry-on is the carry's recipe, started afresh from its weights in its own dir
    diff = {k for k in on if on[k] != carry[k]}
    assert diff == {"preset", "steps", "decay_from", "ckpt_every", "init_from", "run_dir"}, diff
    # the teachers a student is made from are stored in bf16, as the student the chain ends with
    assert carry["weights_dtype"] == on["weights_dtype"] == printed[-1]["weights_dtype"] == "bfloat16"
    assert printed[-1]["teacher"] == str(tmp_path / "teacher-on" / "model")
    assert first["model"]["transformer"] == json.loads(STUDENT_PRESETS["shapes"].model.transformer.model_dump_json())


def test_real_forcing_bench_fits_real_clips_given_their_past_and_exports_a_model(tiny_teacher, tmp_path):
    """bench/student_real_forcing.py: a student regressed onto real clips, each chunk given the
    clean real chunks before it; the loss falls, the model dir it writes loads with changed
    weights, and its command refuses a missing model with a usage error."""
    import importlib.util
    import subprocess
    import sys

    from safetensors.torch import load_file

    path = Path(__file__).resolve().parents[1] / "bench" / "student_real_forcing.py"
    spec = importlib.util.spec_from_file_location("student_real_forcing", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    student = load_model(str(student_mod.train_student(
        replace(student_mod.PRESETS["tiny"], teacher=str(tiny_teacher), latent_frames=2, ode_iters=2, dmd_iters=0),
        tmp_path / "student", progress=False).out_dir))
    init = tmp_path / "student" / "model"
    torch.manual_seed(0)
    out, losses = bench.fine_tune(init, tmp_path / "rf", steps=30, batch=4, lr=3e-3, pool=8, frames=2, progress=False)
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    before, after = load_file(init / "transformer.safetensors"), load_file(out / "transformer.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    tuned = load_model(str(out))
    assert tuned.config.attention == student.config.attention
    _, noised = bench.fine_tune(init, tmp_path / "rf250", steps=3, batch=4, lr=3e-3, pool=8, frames=2, context_t=250,
                                progress=False)
    _, clean = bench.fine_tune(init, tmp_path / "rf0", steps=3, batch=4, lr=3e-3, pool=8, frames=2, progress=False)
    assert np.isfinite(noised).all() and noised != clean  # the same draws, another context
    assert json.loads((tmp_path / "rf250" / "model" / "model.json").read_text())["provenance"]["context_t"] == 250
    chunk = tuned.open_session("a red ball moving left", seed=0).next_chunk()
    assert chunk.frames.shape == (tuned.frames_per_chunk, 32, 32, 3)
    bad = subprocess.run([sys.executable, str(path), "--init", str(tmp_path / "none"), "--run-dir",
                          str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no model.json" in bad.stderr


def test_gpu_teacher_script_trains_through_the_command_and_brings_the_weights_back(tmp_path, monkeypatch):
    """bench/gpu_teacher.py on the CPU: `framecast distill teacher` (the shipped autoencoder, a
    16-clip pool) timed, capped to its steps, packed in parts under the cap, unpacked into a
    float32 model dir whose weights are the trained ones to bf16's rounding."""
    import importlib.util
    from safetensors.torch import load_file

    spec = importlib.util.spec_from_file_location("gpu_teacher", ROOT / "bench" / "gpu_teacher.py")
    gpu_teacher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_teacher)
    monkeypatch.setattr(gpu_teacher, "PART_BYTES", 3 * 2**20)  # the 8 MB narrow teacher in three parts
    monkeypatch.chdir(ROOT)
    out, work = tmp_path / "out", tmp_path / "work"
    assert gpu_teacher.main(["train", "--device", "cpu", "--variants", "narrow", "--calib-steps", "1",
                             "--max-steps", "3", "--extra-set", "pool_size=16", "--extra-set", "image_batch=4",
                             "--threads", "2", "--work", str(work), "--out", str(out)]) == 0
    summary = json.loads((out / "gpu_teacher.json").read_text())["variants"]["narrow"]
    assert summary["steps"] == 3 and summary["parts"] == ["narrow.tar.part00", "narrow.tar.part01", "narrow.tar.part02"]
    assert all((out / p).stat().st_size <= 3 * 2**20 for p in summary["parts"])
    assert [m["step"] for m in metrics(work / "narrow")][-1] == 3
    assert gpu_teacher.main(["unpack", "--parts", str(out), "--into", str(tmp_path / "models")]) == 0
    trained = load_file(work / "narrow" / "model" / "transformer.safetensors")
    back = load_file(tmp_path / "models" / "narrow" / "transformer.safetensors")
    assert back.keys() == trained.keys()
    for key, value in trained.items():
        assert back[key].dtype == torch.float32
        torch.testing.assert_close(back[key], value.to(torch.bfloat16).float(), atol=0, rtol=0)
    assert load_model(str(tmp_path / "models" / "narrow")).config.provenance["command"].startswith(
        "framecast distill teacher --preset shapes")


def test_the_wide_teacher_presets_are_the_runs_its_recorded_commands_made():
    """`shapes-wide` then `shapes-wide-carry` (in the same run dir) are the two commands that
    made the wide teacher (docs/default-model.md): the `shapes` preset with these overrides, the
    carry's weights stored in bf16 as the shipped teacher is."""
    from distill.train_commands import resolve

    wide = ["model.transformer.num_attention_heads=6", "model.transformer.ffn_dim=1536", "model.frame_time=6",
            "lr=1e-3", "ema_decay=0.999"]
    presets = teacher_mod.PRESETS
    first = resolve(presets, "shapes", wide + ["steps=2200", "decay_from=1700"])
    carry = resolve(presets, "shapes", wide + ["steps=3900", "decay_from=3400", "weights_dtype=bfloat16"])
    assert presets["shapes-wide"] == first
    assert presets["shapes-wide-carry"] == carry
    # the third run, from the carry's weights in its own dir (init_from, given by the chain)
    on = resolve(presets, "shapes", wide + ["steps=1200", "decay_from=700", "ckpt_every=100", "weights_dtype=bfloat16"])
    assert presets["shapes-wide-carry-on"] == on and on.init_from is None
    # the carry resumes where the first run ended, on the same network
    assert carry.model == first.model and first.steps <= carry.decay_from < carry.steps
    assert first.model.transformer.num_attention_heads == 2 * presets["shapes"].model.transformer.num_attention_heads
