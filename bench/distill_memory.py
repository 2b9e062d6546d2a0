"""Memory per process of one ODE step and one DMD step (critic + generator) of a full-width
student (Wan2.1-1.3B's blocks: 1536 wide, 12 heads, ffn 8960, text 4096; a few layers) on
2 gloo processes, with every network sharded by FSDP2 (shard_size 0) and without sharding
(shard_size 1: whole copies on both processes, gradients averaged). Random weights.

    python bench/distill_memory.py --layers 2

Per process: the bytes this process holds of parameters (teacher, critic, student, student
EMA), gradients (critic, student) and optimiser states (AdamW of the ODE stage, of the
generator and of the critic: two float32 tensors per parameter each), counted from the
tensors themselves (a shard's local part when sharded); and the peak resident memory of
the process during the two steps (VmHWM, reset after building; glibc is told to return
freed blocks to the system, so RSS follows the live tensors). Training figures in float32,
no activation checkpointing, one 3-frame clip of 8x8 latents (activations are small next
to the weights here: this measures what sharding divides).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def resident_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def local_mb(tensors) -> float:
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total / 2**20


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    from distill.student import PRESETS, build_training, dmd_step, for_teacher, make_ode_pairs, ode_step
    from distill.parallel import init_parallel
    from engine.config import AttentionConfig, LatentConfig, ModelConfig, TextEncoderConfig, TransformerConfig
    from engine.model import save_model
    from engine.transformer import build_transformer

    torch.set_num_threads(1)
    par = init_parallel(args.shard_size, "cpu")
    teacher_dir = Path(args.tmp) / "teacher"
    config = ModelConfig(
        name="wide-teacher",
        transformer=TransformerConfig(num_attention_heads=args.width // 128, attention_head_dim=128, ffn_dim=8960,
                                      num_layers=args.layers, text_dim=4096, in_channels=16, out_channels=16),
        attention=AttentionConfig(policy="full", chunk_frames=3, sink_frames=3, window_frames=6),
        latent=LatentConfig(channels=16, height=64, width=64),
        text_encoder=TextEncoderConfig(kind="hash", dim=4096, max_tokens=16),
        guidance_scale=3.0)
    if par.rank == 0 and not (teacher_dir / "model.json").is_file():
        save_model(teacher_dir, config, build_transformer(config))
    dist.barrier()
    run = dataclasses.replace(PRESETS["tiny"], teacher=str(teacher_dir), latent_frames=3, ode_pairs=1,
                            ode_pair_batch=1, ode_teacher_steps=2, ode_iters=1, ode_batch=1, dmd_iters=1,
                            batch_size=1, critic_ratio=1, shard_size=args.shard_size, device="cpu")
    run = for_teacher(run)

    t = build_training(run, par)
    pairs = make_ode_pairs(run, t, Path(args.tmp) / f"pairs-{args.shard_size}-{par.rank}.safetensors")
    gc.collect()
    params = local_mb(p for m in (t.teacher, t.critic, t.student, t.ema.shadow) for p in m.parameters())
    built = resident_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak of the steps alone
    start = time.perf_counter()
    ode_step(run, t, pairs, 0)
    dmd_step(run, t, 1)
    seconds = time.perf_counter() - start
    peak = resident_mb("VmHWM")
    grads = local_mb(p.grad for m in (t.critic, t.student) for p in m.parameters() if p.grad is not None)
    optim = local_mb(v for opt in (t.opt_ode, t.opt_gen, t.opt_critic) for state in opt.state.values()
                     for v in state.values() if torch.is_tensor(v) and v.ndim > 0)
    print("RESULT " + json.dumps({"shard_size": args.shard_size, "rank": par.rank, "params_mb": params,
                                  "grads_mb": grads, "optim_mb": optim, "rss_built_mb": built, "peak_steps_mb": peak,
                                  "seconds": seconds}), flush=True)
    dist.destroy_process_group()


def launch(shard_size: int, args, tmp: str) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT),
               MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")  # freed memory goes back: RSS = live
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__, "--worker",
           "--shard-size", str(shard_size), "--layers", str(args.layers), "--width", str(args.width), "--tmp", tmp]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-4000:])
    rows = [json.loads(line.split("RESULT ", 1)[1]) for line in proc.stdout.splitlines() if "RESULT " in line]
    return sorted(rows, key=lambda r: r["rank"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks (Wan2.1-1.3B has 30)")
    parser.add_argument("--width", type=int, default=1536, help="model width (heads of 128)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shard-size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = {"unsharded": launch(1, args, tmp), "sharded": launch(0, args, tmp)}
    print(f"one ODE step + one DMD step, width {args.width}, {args.layers} layers, 2 gloo processes, float32 (MiB)")
    print(f"{'':10} {'rank':>4} {'params':>8} {'grads':>8} {'optim':>8} {'p+g+o':>8} {'RSS built':>10} "
          f"{'peak in steps':>14} {'seconds':>8}")
    for mode, ranks in rows.items():
        for r in ranks:
            total = r["params_mb"] + r["grads_mb"] + r["optim_mb"]
            print(f"{mode:10} {r['rank']:>4} {r['params_mb']:8.0f} {r['grads_mb']:8.0f} {r['optim_mb']:8.0f} "
                  f"{total:8.0f} {r['rss_built_mb']:10.0f} {r['peak_steps_mb']:14.0f} {r['seconds']:8.1f}")
    for key in ("params_mb", "grads_mb", "optim_mb", "peak_steps_mb"):
        ratio = sum(r[key] for r in rows["sharded"]) / sum(r[key] for r in rows["unsharded"])
        print(f"sharded / unsharded, {key.removesuffix('_mb')}: {ratio:.3f}")


if __name__ == "__main__":
    main()
