"""The torchrun side of tests/test_distill_sharded.py: several `framecast distill student`
runs in one process group (one launch: starting torchrun costs more than the runs).

    torchrun --nproc_per_node 2 tests/distill_sharded_worker.py TEACHER PROMPTS REWARD ROOT

ROOT/straight          5 steps (2 ODE + 3 DMD), fully sharded, activation checkpointing, prompt switches
ROOT/resumed           the same command stopped after step 3 (a checkpoint), then run again to step 5
ROOT/stopped           a copy of ROOT/resumed as it was at step 3 (the test resumes it on one process)
ROOT/replicated        ROOT/straight's command with shard_size=1 (whole copies, gradients averaged)
ROOT/no_checkpointing  ROOT/straight's command without activation checkpointing
ROOT/from_single       a one-process run's step-3 checkpoint (the test made it), resumed here: first to
                       step 3 (nothing to run: exported as ROOT/from_single_at3), then to step 5
ROOT/stream_r1         two Stream-R1 steps with the pretrained (Qwen2-VL) reward sharded too
"""

import shutil
import sys
from pathlib import Path

SETS = {"latent_frames": 3, "rollout_frames": 9, "ode_pairs": 2, "ode_pair_batch": 2, "ode_teacher_steps": 2,
        "ode_iters": 2, "ode_batch": 1, "batch_size": 1, "critic_ratio": 1, "switch_prob": 0.5, "log_every": 1,
        "ckpt_every": 3, "activation_checkpointing": "true", "model.attention.sink_frames": 3,
        "model.attention.window_frames": 3}


def student_args(teacher, prompts, run_dir, **changes) -> list[str]:
    """`framecast distill student` of the tiny preset on TEACHER with PROMPTS, SETS and `changes`."""
    args = ["distill", "student", "--preset", "tiny", "--teacher", str(teacher), "--prompts", str(prompts),
            "--no-progress", "--threads", "1", "--run-dir", str(run_dir)]
    for key, value in {**SETS, **changes}.items():
        args += ["--set", f"{key}={value}"]
    return args


if __name__ == "__main__":
    import torch.distributed as dist

    from framecast.cli import main

    teacher, prompts, reward, root = sys.argv[1:5]
    root = Path(root)
    # Joined here, not by the first command: a command leaves the group only if it joined it.
    dist.init_process_group("gloo")

    def student(run_dir: str, **changes) -> None:
        assert main(student_args(teacher, prompts, root / run_dir, **changes)) == 0, run_dir

    def copy(src: str, dst: str) -> None:
        if dist.get_rank() == 0:
            shutil.copytree(root / src, root / dst)
        dist.barrier()

    student("straight", dmd_iters=3)
    student("resumed", dmd_iters=1)  # stops at step 3, where it writes a checkpoint
    copy("resumed", "stopped")
    student("resumed", dmd_iters=3)  # the same command again: resumes at step 3
    student("replicated", dmd_iters=3, shard_size=1)
    student("no_checkpointing", dmd_iters=3, activation_checkpointing="false")
    student("from_single", dmd_iters=1)
    copy("from_single/model", "from_single_at3")
    student("from_single", dmd_iters=3)
    student("stream_r1", ode_iters=0, dmd_iters=2, method="stream_r1", reward=reward, switch_prob=0)
    dist.destroy_process_group()
