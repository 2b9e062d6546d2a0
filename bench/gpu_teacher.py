"""Shapes teachers trained on one CUDA GPU inside one device call, and brought back here.

Why: a teacher twice as wide as the shipped one (6 heads, ffn 1536) took 88 min on 2 CPU
cores for 2200 steps and drew less shape than the shipped one (docs/default-model.md). Run
as long as the shipped teacher (7800 steps) it would take about 5.5 h there; on a GPU,
minutes. This script answers whether length, or a larger batch, makes the wide teacher pay,
with the project's own command doing the training (`framecast distill teacher`, through its
argument parser), so that what is measured is what a user runs.

    # on the GPU machine (the wheels of bench/gpu.sh installed first; see docs/backends.md)
    python bench/gpu_teacher.py train --budget-s 400 --variants wide,wide-b384
    # here: model dirs from the parts that came back, scored with bench/distill_eval.py
    python bench/gpu_teacher.py unpack --parts DIR --into runs/gpu-teachers
    # the whole path on the CPU in a minute (a small pool, a few steps)
    python bench/gpu_teacher.py train --device cpu --max-steps 6 --calib-steps 2 \\
        --extra-set pool_size=32 --variants wide --out /tmp/gt && \\
        python bench/gpu_teacher.py unpack --parts /tmp/gt --into /tmp/gt-models

`train`: per variant, its run dir gets the clip pool (encoded once, on the device, then linked
into the next variant's dir), `--calib-steps` steps (warm-up), as many again timed; then the
variant's steps, capped to its share of the budget that is left, with its lr decay starting
the same fraction of the way. A run of fewer steps resumed to more is the run of more
(Checkpointer, tested), and the decay starts after the calibration, so the calibration is
part of the run. Each variant's EMA transformer goes back in bfloat16 (it trained under bf16
autocast, so its matmuls read bf16 weights anyway; norms and embeddings round too), with
model.json, run.json and metrics.jsonl, as one tar split into parts under 16 MiB (a device
call brings back at most 8 files, 64 MiB); `gpu_teacher.json` says what ran and how fast.
`unpack` joins the parts and writes each model dir in float32, with the shipped autoencoder.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

AUTOENCODER = "distill/weights/shapes-teacher"  # the shipped teacher's (the same file as the default model's)
PART_BYTES = 31 * 2**19  # 15.5 MiB: under the 16 MiB a file that comes back may have
# The shipped teacher's world and data (preset `shapes`: 96 single latent frames a step from
# a 4096-clip canonical pool) with its table of places in time; `shapes-wide` is that with the
# wide transformer (distill/teacher.py). Each on the schedule of one uninterrupted run as long
# as the shipped teacher's chain (7800 steps).
VARIANTS: dict[str, tuple[str, int, float, list[str]]] = {  # name -> (preset, steps, decay from (share), --set)
    "wide": ("shapes-wide", 7800, 0.77, []),
    "wide-b384": ("shapes-wide", 7800, 0.77, ["image_batch=384"]),
    "narrow": ("shapes", 7800, 0.77, ["model.frame_time=6", "lr=1e-3", "ema_decay=0.999"]),
}


def teacher_command(preset: str, run_dir: Path, sets: list[str], device: str, threads: int) -> None:
    """`framecast distill teacher --preset PRESET ...` through the command's own parser."""
    from distill.train_commands import register

    parser = argparse.ArgumentParser(prog="framecast")
    register(parser.add_subparsers(dest="command"))
    argv = ["distill", "teacher", "--preset", preset, "--autoencoder", AUTOENCODER, "--run-dir", str(run_dir),
            "--no-progress", "--threads", str(threads), "--set", f"device={device}"]
    for item in sets:
        argv += ["--set", item]
    args = parser.parse_args(argv)
    saved, sys.argv = sys.argv, ["framecast"] + argv  # the model's provenance records the command
    try:
        code = args.func(args)
    finally:
        sys.argv = saved
    if code:
        raise SystemExit(f"framecast distill teacher exited {code}")


def link_pool(source: Path, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    for file in source.glob("latent-pool-*"):
        if not (run_dir / file.name).exists():
            (run_dir / file.name).symlink_to(file.resolve())


def pack(name: str, run_dir: Path, out: Path) -> list[str]:
    """run_dir/model's transformer in bf16, model.json, run.json, metrics.jsonl -> out/{name}.tar.partNN."""
    from safetensors.torch import load_file, save

    model = run_dir / "model"
    weights = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
               for k, v in load_file(model / "transformer.safetensors").items()}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for arcname, data in (("transformer.bf16.safetensors", save(weights)),
                              ("model.json", (model / "model.json").read_bytes()),
                              ("run.json", (run_dir / "run.json").read_bytes()),
                              ("metrics.jsonl", (run_dir / "metrics.jsonl").read_bytes())):
            info = tarfile.TarInfo(arcname)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data, parts = buffer.getvalue(), []
    for i in range(0, len(data), PART_BYTES):
        part = out / f"{name}.tar.part{i // PART_BYTES:02d}"
        part.write_bytes(data[i:i + PART_BYTES])
        parts.append(part.name)
    return parts


def train(args: argparse.Namespace) -> int:
    start = time.time()
    out = Path(args.out or os.environ.get("OUT") or "runs/gpu-teacher-out")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    device = args.device
    summary: dict = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
                     "torch": torch.__version__, "budget_s": args.budget_s, "variants": {}}
    summary_file = out / "gpu_teacher.json"
    pool_from: Path | None = None
    for k, name in enumerate(names):
        preset, steps, decay_share, sets = VARIANTS[name]
        sets = sets + ["ckpt_every=1000"] + args.extra_set  # a wide checkpoint is 250 MB: not every 250 steps
        run_dir = work / name
        if pool_from is not None:
            link_pool(pool_from, run_dir)
        calib = args.calib_steps
        t0 = time.time()
        teacher_command(preset, run_dir, sets + [f"steps={calib}", f"decay_from={10**9}"], device, args.threads)
        t1 = time.time()
        teacher_command(preset, run_dir, sets + [f"steps={2 * calib}", f"decay_from={10**9}"], device, args.threads)
        t2 = time.time()
        pool_from = pool_from or run_dir
        step_s = (t2 - t1) / calib  # includes a resume and a checkpoint: a little high
        left = args.budget_s - (time.time() - start)
        share = left / (len(names) - k) - args.margin_s
        target = min(steps, args.max_steps or steps)
        fit = max(2 * calib + 1, int(share / step_s))
        final = min(target, fit)
        decay_from = max(2 * calib, int(round(final * decay_share)))
        print(f"[{name}] first {calib} steps (pool, warm-up) {t1 - t0:.1f} s, then {step_s * 1000:.1f} ms a step; "
              f"{final} of {steps} steps fit its {share:.0f} s, decay from {decay_from}", flush=True)
        t3 = time.time()
        teacher_command(preset, run_dir, sets + [f"steps={final}", f"decay_from={decay_from}"], device, args.threads)
        t4 = time.time()
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        parts = pack(name, run_dir, out)
        summary["variants"][name] = {
            "sets": sets, "steps": final, "steps_asked": steps, "decay_from": decay_from,
            "first_steps_s": round(t1 - t0, 1), "step_ms_calibration": round(step_s * 1000, 2),
            "step_ms": round((t4 - t3) / max(1, final - 2 * calib) * 1000, 2),
            "final_loss": metrics[-1].get("loss/flow"), "parts": parts}
        summary["elapsed_s"] = round(time.time() - start, 1)
        summary_file.write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps({name: summary["variants"][name]}), flush=True)
    print(json.dumps(summary, indent=2))
    return 0


def unpack(args: argparse.Namespace) -> int:
    from safetensors.torch import load, save_file

    parts_dir, into = Path(args.parts), Path(args.into)
    names = sorted({p.name.split(".tar.part")[0] for p in parts_dir.glob("*.tar.part*")})
    if not names:
        raise SystemExit(f"no *.tar.partNN files in {parts_dir}")
    for name in names:
        data = b"".join(p.read_bytes() for p in sorted(parts_dir.glob(f"{name}.tar.part*")))
        model = into / name
        model.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        weights = {k: v.float() if v.is_floating_point() else v for k, v in load(files["transformer.bf16.safetensors"]).items()}
        save_file(weights, model / "transformer.safetensors")
        (model / "model.json").write_bytes(files["model.json"])
        (model / "run.json").write_bytes(files["run.json"])
        (model / "metrics.jsonl").write_bytes(files["metrics.jsonl"])
        for file in ("autoencoder.json", "autoencoder.safetensors"):
            shutil.copy(REPO / AUTOENCODER / file, model / file)
        print(f"{name}: {model}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="action", required=True)
    t = sub.add_parser("train", help="on the GPU machine: train the variants, parts to $OUT")
    t.add_argument("--variants", default="wide", help=f"comma-separated, of {', '.join(VARIANTS)}")
    t.add_argument("--budget-s", type=float, default=400, help="seconds for everything, all variants")
    t.add_argument("--margin-s", type=float, default=15, help="kept back from each variant's share (export, pack)")
    t.add_argument("--calib-steps", type=int, default=50)
    t.add_argument("--max-steps", type=int, default=0, help="cap every variant's steps (0: as the variant says)")
    t.add_argument("--extra-set", action="append", default=[], help="another --set for every variant")
    t.add_argument("--device", default="cuda")
    t.add_argument("--threads", type=int, default=0)
    t.add_argument("--work", default="/tmp/gpu-teacher", help="run dirs (pools and checkpoints: GBs, keep out of $OUT)")
    t.add_argument("--out", default=None, help="parts and gpu_teacher.json (default $OUT)")
    u = sub.add_parser("unpack", help="here: model dirs (float32) from the parts that came back")
    u.add_argument("--parts", required=True)
    u.add_argument("--into", required=True)
    args = ap.parse_args(argv)
    return train(args) if args.action == "train" else unpack(args)


if __name__ == "__main__":
    sys.exit(main())
