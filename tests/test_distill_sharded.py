"""A real-layout teacher distilled under torchrun with FSDP2, as on a GPU node, rehearsed on
CPUs with gloo: a tiny Wan2.1 in diffusers format (real key names, umT5, Wan VAE) converted
with `framecast convert`, a student derived from it, prompts from a file, every network
sharded over two processes. Stop and resume equals the uninterrupted run; sharded equals
replicated; a two-process checkpoint resumes on one process."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from framecast.cli import main
from tests.checkpoint_fixtures import tiny_wan_diffusers
from tests.distill_sharded_worker import student_args
from tests.engine_helpers import torchrun_two_processes

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red ball bouncing on blue background", '{"prompt": "the green square moving left slowly"}',
           "a blue ball moving left", '{"text": "a red square bouncing"}', "the green ball on red background",
           "a square moving left on green background"]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "transformer.safetensors")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """The worker's runs (tests/distill_sharded_worker.py), once for every test here."""
    from tests.test_rewards import make_standin

    root = tmp_path_factory.mktemp("sharded")
    base = tiny_wan_diffusers(root / "Wan2.1-T2V-tiny-Diffusers")
    assert main(["convert", "--format", "wan-diffusers", "--input", str(base), "--size", "32x32",
                 "-o", str(root / "teacher")]) == 0
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    make_standin(root / "reward")
    # a one-process run to step 3 (safetensors checkpoint); the worker resumes it on two processes
    assert main(student_args(root / "teacher", root / "prompts.txt", root / "from_single", dmd_iters=1)) == 0
    shutil.copytree(root / "from_single" / "model", root / "single_at3")
    returncode, stderr = torchrun_two_processes(
        [str(ROOT / "tests" / "distill_sharded_worker.py"), str(root / "teacher"), str(root / "prompts.txt"),
         str(root / "reward"), str(root)], timeout=600)
    assert returncode == 0, stderr[-4000:]
    return root


def test_the_student_follows_the_converted_teacher(sharded):
    config = json.loads((sharded / "straight" / "model" / "model.json").read_text())
    teacher = json.loads((sharded / "teacher" / "model.json").read_text())
    assert config["transformer"] == teacher["transformer"] and config["latent"] == teacher["latent"]
    assert config["text_encoder"]["kind"] == "umt5" and config["decoder"]["kind"] == "wan_vae"
    assert config["attention"]["policy"] == "sink_window" and config["attention"]["chunk_frames"] == 3
    assert config["attention"]["window_frames"] == 3  # the --set on top of the derived config
    assert config["sampler"] == teacher["sampler"] and config["guidance_scale"] == 1.0
    run = json.loads((sharded / "straight" / "run.json").read_text())
    assert run["prompts"].endswith("prompts.txt") and run["activation_checkpointing"] is True


def test_sharded_run_trains_keeps_ranks_in_sync_and_equals_replicated(sharded):
    logged = metrics(sharded / "straight")
    assert [m["step"] for m in logged if "loss/ode" in m] == [1, 2]
    assert [m["step"] for m in logged if "loss/dmd" in m] == [3, 4, 5]
    assert all(np.isfinite(v) for m in logged for v in m.values())
    assert logged[-1]["ranks_in_sync"] == 1.0 and metrics(sharded / "replicated")[-1]["ranks_in_sync"] == 1.0
    # a DCP checkpoint: one shard file per process
    assert len(list((sharded / "straight" / "checkpoint-0000005").glob("*.distcp"))) == 2
    sharded_weights, replicated = weights(sharded / "straight" / "model"), weights(sharded / "replicated" / "model")
    moved = max(float((sharded_weights[k] - weights(sharded / "teacher")[k]).abs().max()) for k in sharded_weights)
    assert moved > 1e-4  # training changed the weights
    for key in sharded_weights:  # reduce-scatter and all-reduce sum in other orders: float noise only
        torch.testing.assert_close(sharded_weights[key], replicated[key], atol=2e-5, rtol=1e-4)


def test_activation_checkpointing_recomputes_what_the_forward_computed(sharded):
    """The rollouts evict cache frames and switch prompts after the forwards that read them;
    recomputed in backward, those forwards still see what they saw: the same weights."""
    with_ckpt, without = weights(sharded / "straight" / "model"), weights(sharded / "no_checkpointing" / "model")
    for key in with_ckpt:
        torch.testing.assert_close(with_ckpt[key], without[key], atol=1e-6, rtol=1e-5)


def test_stop_and_resume_equals_the_uninterrupted_run(sharded):
    straight, resumed = weights(sharded / "straight" / "model"), weights(sharded / "resumed" / "model")
    for key in straight:
        torch.testing.assert_close(straight[key], resumed[key], atol=1e-6, rtol=1e-5)
    later = [m for m in metrics(sharded / "resumed") if m["step"] > 3]
    assert [m["step"] for m in later if "loss/dmd" in m] == [4, 5]  # only the steps after the checkpoint ran again
    assert [m["loss/dmd"] for m in metrics(sharded / "straight") if m["step"] > 3 and "loss/dmd" in m] == \
        pytest.approx([m["loss/dmd"] for m in later if "loss/dmd" in m], abs=1e-6)


def test_a_two_process_checkpoint_resumes_on_one_process(sharded, tmp_path):
    """The copy of the run stopped at step 3 (a DCP checkpoint of two processes) resumes here,
    in this one process: at once it exports what the two processes exported at step 3; run
    on, it trains and checkpoints in the one-process format."""
    args = ["distill", "student", "--preset", "tiny", "--teacher", str(sharded / "teacher"), "--prompts",
            str(sharded / "prompts.txt"), "--no-progress", "--run-dir", str(sharded / "stopped"),
            "--out", str(tmp_path / "at3"), "--set", "latent_frames=3", "--set", "rollout_frames=9",
            "--set", "ode_iters=2", "--set", "dmd_iters=1", "--set", "batch_size=1", "--set", "critic_ratio=1",
            "--set", "model.attention.window_frames=3", "--set", "log_every=1", "--set", "ckpt_every=3"]
    assert main(args) == 0
    at3 = weights(tmp_path / "at3")
    two_process = weights(sharded / "stopped" / "model")  # exported by the two processes at step 3
    for key in at3:
        torch.testing.assert_close(at3[key], two_process[key], atol=0, rtol=0)
    assert main(args[:-4] + ["--set", "dmd_iters=3", "--set", "log_every=1"]) == 0
    logged = metrics(sharded / "stopped")
    assert [m["step"] for m in logged if m["step"] > 3 and "loss/dmd" in m] == [4, 5]
    assert (sharded / "stopped" / "checkpoint-0000005.safetensors").is_file()


def test_a_one_process_checkpoint_resumes_on_two_processes(sharded):
    """The safetensors checkpoint of a one-process run, loaded into sharded networks: resumed
    at its last step the two processes export exactly what the one did; run on, they train
    and write a sharded checkpoint."""
    single, two = weights(sharded / "single_at3"), weights(sharded / "from_single_at3")
    for key in single:
        torch.testing.assert_close(two[key], single[key], atol=0, rtol=0)
    logged = metrics(sharded / "from_single")
    assert [m["step"] for m in logged if m["step"] > 3 and "loss/dmd" in m] == [4, 5]
    assert len(list((sharded / "from_single" / "checkpoint-0000005").glob("*.distcp"))) == 2


def test_stream_r1_with_a_sharded_pretrained_reward(sharded):
    logged = metrics(sharded / "stream_r1")
    assert [m["step"] for m in logged if "loss/dmd" in m] == [1, 2]
    assert all(np.isfinite(m["loss/dmd"]) for m in logged if "loss/dmd" in m)
    assert json.loads((sharded / "stream_r1" / "run.json").read_text())["method"] == "stream_r1"


# --- prompts from a file, and the student a teacher makes -----------------------------------------

def test_prompt_files_read_lines_and_jsonl(tmp_path):
    from distill.data.prompts import read_prompt_file

    path = tmp_path / "p.txt"
    path.write_text("# a comment\n\n" + "\n".join(PROMPTS) + "\n")
    assert read_prompt_file(path) == ["a red ball bouncing on blue background", "the green square moving left slowly",
                                      "a blue ball moving left", "a red square bouncing",
                                      "the green ball on red background", "a square moving left on green background"]
    for bad, message in [('{"caption": "x"}', "prompt"), ("{not json", "JSON"), ("# only a comment", "no prompts")]:
        path.write_text(bad + "\n")
        with pytest.raises(ValueError, match=message):
            read_prompt_file(path)


def test_file_prompts_are_sharded_over_processes_and_deterministic_by_seed():
    from distill.data.prompts import FilePrompts

    prompts = [f"prompt {i}" for i in range(12)]
    source = FilePrompts(prompts, world_size=2)
    steps = [[source.draw(step, 3, seed=5, rank=r) for r in range(2)] for step in range(4)]  # 2 epochs of 12
    for ranks in steps:
        assert not set(ranks[0]) & set(ranks[1])  # the processes of a step never share a prompt
    first_epoch = [p for ranks in steps[:2] for r in ranks for p in r]
    assert sorted(first_epoch) == sorted(prompts)  # an epoch shows every prompt once
    again = FilePrompts(prompts, world_size=2)
    assert again.draw(2, 3, seed=5, rank=1) == steps[2][1]  # a resumed run draws the same prompts
    assert [source.draw(s, 3, seed=6, rank=0) for s in range(2)] != [steps[s][0] for s in range(2)]


def test_the_student_config_follows_the_teacher(tmp_path, capsys):
    from distill.student import PRESETS, SHAPES_STUDENT, student_config
    from distill.teacher import SHAPES_MODEL, SHAPES_WIDE_MODEL

    # the wide Shapes teacher gets exactly the Shapes student (the embedded default's recipe is unchanged)
    trained = SHAPES_WIDE_MODEL.model_copy(update={"provenance": {"stage": "teacher"}})
    assert student_config(SHAPES_STUDENT, trained) == SHAPES_STUDENT
    # a Shapes teacher from before prompts were rewritten: the student still reads them as the preset says
    assert trained.prompt_rewrite == "shapes"
    assert student_config(SHAPES_STUDENT, trained.model_copy(update={"prompt_rewrite": "none"})) == SHAPES_STUDENT
    # ... and reads its prompt and positions as the teacher does (its weights learnt to)
    masked = trained.model_copy(update={"attention": trained.attention.model_copy(
        update={"text_padding": "mask", "rope_theta": 10.0})})
    derived = student_config(SHAPES_STUDENT, masked)
    assert derived.attention == SHAPES_STUDENT.attention.model_copy(update={"text_padding": "mask", "rope_theta": 10.0})
    # a Shapes teacher of another width (the narrow slot teacher's): its own transformer, streamed as
    # the Shapes preset says (schedule, attention), named after its teacher (the preset's name says its size)
    narrow = trained.model_copy(update={"transformer": SHAPES_MODEL.transformer})
    derived = student_config(SHAPES_STUDENT, narrow)
    assert derived.transformer == SHAPES_MODEL.transformer != SHAPES_STUDENT.transformer
    assert derived == SHAPES_STUDENT.model_copy(update={
        "transformer": SHAPES_MODEL.transformer, "name": "shapes-teacher-student",
        "description": "Causal few-step student distilled from shapes-teacher."})
    # another world's latents (64x64 frames): the teacher's own schedule and name, not the preset's
    small = trained.model_copy(update={"latent": trained.latent.model_copy(update={"height": 64, "width": 64})})
    assert student_config(SHAPES_STUDENT, small).sampler == trained.sampler != SHAPES_STUDENT.sampler
    # a converted Wan2.1 teacher: its architecture, chunking and schedule, made causal; --set on top
    base = tiny_wan_diffusers(tmp_path / "wan")
    assert main(["convert", "--format", "wan-diffusers", "--input", str(base), "--size", "32x32",
                 "-o", str(tmp_path / "teacher")]) == 0
    capsys.readouterr()
    assert main(["distill", "student", "--preset", "shapes", "--teacher", str(tmp_path / "teacher"),
                 "--set", "model.sampler.shift=5", "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    teacher = json.loads((tmp_path / "teacher" / "model.json").read_text())
    assert printed["model"]["transformer"] == teacher["transformer"]
    assert printed["model"]["text_encoder"] == teacher["text_encoder"]
    assert printed["model"]["attention"] == {**teacher["attention"], "policy": "sink_window"}
    assert printed["model"]["sampler"] == {**teacher["sampler"], "shift": 5.0}
    assert printed["model"]["guidance_scale"] == 1.0 and printed["model"]["provenance"] == {}
    assert printed["model"]["prompt_rewrite"] == "none"  # a Wan model reads prompts as written
    # the wan preset on a full-size Wan teacher keeps its own attention and schedule, the teacher's paths
    wan = PRESETS["wan"].model
    full = json.loads(json.dumps(teacher))
    full["transformer"], full["latent"] = wan.transformer.model_dump(mode="json"), wan.latent.model_dump(mode="json")
    full["text_encoder"]["dim"] = 4096
    from engine.config import ModelConfig

    derived = student_config(wan, ModelConfig.model_validate(full))
    assert (derived.attention, derived.sampler, derived.name) == (wan.attention, wan.sampler, wan.name)
    assert derived.text_encoder.path == teacher["text_encoder"]["path"] and derived.decoder.path is not None
