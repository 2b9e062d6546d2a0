"""The embedded default model (engine/models/shapes-default) on a CUDA GPU: does it make the
same video there, and how many viewers does one GPU hold?

The lent GPU machine has no network and cannot carry MiniLM (88 MB against the 64 MiB a
call carries), so the prompts' text-encoder states are computed here first (`--prepare`,
on the CPU, with the real MiniLM) and travel as a small safetensors file; on the GPU the
model runs with those states in place of its text encoder. Everything else is the shipped
model: transformer, sampler, cache, Shapes decoder.

`--prepare DIR` (here): the states of the prompts (standard and held-out sets, and the
benchmark's prompts), one transformer forward on fixed inputs (the probe) and its CPU
output, and the CPU's prompt accuracy on the same prompts and seeds.
`--check DIR` (on the GPU): the probe's error on the device in float32 and bfloat16 against
the CPU's output; prompt accuracy of clips generated on the device, scored by the project's
evaluator (noise comes from the device's generator, so clips differ from the CPU's and the
two accuracies agree only within their intervals); single-stream frames/s for eager
float32, eager bfloat16, torch.compile and torch.compile with CUDA graphs; sessions batched
by the engine's BatchScheduler, and how many of them stream in real time (>= the model's
16 fps each). JSON to $OUT/gpu_default.json (or DIR) after every row.

    python bench/gpu_default.py --prepare runs/gpu-default              # here, ~2 min
    python bench/gpu_default.py --check runs/gpu-default                # GPU machine (PYTHONPATH as bench/gpu.sh sets it)
    python bench/gpu_default.py --check runs/gpu-default --device cpu --sessions 1,2 --backends eager   # dry run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.model import DEFAULT_MODEL_DIR, StreamModel, load_model  # noqa: E402
from engine.runtime import TorchStepRunner  # noqa: E402

from gpu import (PROMPT, CudaGraphStep, batched_sessions, free, runtime_model, single_stream,  # noqa: E402
                 threaded_cudagraphs_broken)
from gpu_report import device_label, versions  # noqa: E402

MAX_SESSIONS = 128


def bench_prompts(max_sessions: int) -> list[str]:
    """What gpu.single_stream and gpu.batched_sessions open sessions with."""
    return ["warm-up prompt", PROMPT] + [f"{PROMPT}, take {i}" for i in range(max_sessions)]


class StoredText:
    """A text encoder that answers from states computed elsewhere by the real one."""

    def __init__(self, states: dict[str, torch.Tensor]):
        self.states = states

    def encode(self, prompts: list[str]) -> torch.Tensor:
        missing = [p for p in prompts if p not in self.states]
        if missing:
            raise KeyError(f"no stored text states for {missing[:3]}: run --prepare with these prompts")
        return torch.cat([self.states[p] for p in prompts])


def probe_inputs(model: StreamModel, context: torch.Tensor) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    lat = model.config.latent
    frames = model.config.attention.chunk_frames * 2
    latents = torch.randn(2, lat.channels, frames, lat.latent_height, lat.latent_width, generator=gen)
    return {"latents": latents, "timestep": torch.tensor([750.0, 250.0]), "context": context.expand(2, -1, -1)}


@torch.no_grad()
def probe(model: StreamModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    tr = model.transformer
    x = {k: v.to(model.device, model.dtype if v.is_floating_point() and k != "timestep" else v.dtype)
         for k, v in inputs.items()}
    out = tr.denoise(x["latents"], x["timestep"].to(model.device), x["context"],
                     tr.full_attention(x["latents"].shape[2]))
    return out.float().cpu()


def accuracy(model: StreamModel, prompts: list[str], seeds: int, seconds: float) -> dict:
    from distill.eval import evaluate_generator

    started = time.perf_counter()
    report = evaluate_generator(model.generate_clip, prompts, seeds, seconds, fps=model.fps)
    keys = ("prompt_accuracy", "colour_accuracy", "shape_accuracy", "motion_accuracy", "background_accuracy")
    return {"summary": {k: report["summary"].get(k) for k in keys},
            "intervals": {k: report["intervals"].get(k) for k in keys},
            "wall_s": time.perf_counter() - started}


def prepare(directory: Path, args) -> int:
    from safetensors.torch import save_file

    from distill.eval import PROMPT_SETS

    directory.mkdir(parents=True, exist_ok=True)
    sets = {name: PROMPT_SETS[name]()[: args.prompts] for name in ("standard", "heldout")}
    model = load_model(str(args.model), device="cpu", backend="eager")
    scored = list(dict.fromkeys(p for ps in sets.values() for p in ps))
    everything = scored + [p for p in bench_prompts(MAX_SESSIONS) if p not in scored]
    # the states of what the text encoder is given (the model's read_prompt of each prompt:
    # with prompt_rewrite, its canonical caption); the scored prompts' as they are, the speed
    # rows' in bfloat16 (their values do not change the cost), so that the file stays small
    # enough to travel (~5 MB)
    read_scored = {model.read_prompt(p) for p in scored}
    encoded = list(dict.fromkeys(model.read_prompt(p) for p in everything))
    states = {f"s{i}": model.text_encoder.encode([t]).float().to(torch.float32 if t in read_scored else torch.bfloat16)
              .contiguous() for i, t in enumerate(encoded)}
    inputs = probe_inputs(model, model.context_for(PROMPT).float())
    expected = probe(model, inputs)
    save_file({**states, **{f"probe.{k}": v.contiguous() for k, v in inputs.items()}, "probe.output": expected},
              str(directory / "inputs.safetensors"))
    cpu = {name: accuracy(model, ps, args.seeds, args.seconds) for name, ps in sets.items()}
    (directory / "prepared.json").write_text(json.dumps(
        {"model": str(args.model), "prompts": everything, "encoded": encoded, "sets": sets, "seeds": args.seeds, "seconds": args.seconds,
         "cpu_accuracy": cpu, "cpu": device_label("cpu"), "threads": torch.get_num_threads()}, indent=2) + "\n")
    for name, row in cpu.items():
        print(f"cpu {name}: prompt accuracy {row['summary']['prompt_accuracy']:.3f} "
              f"{row['intervals']['prompt_accuracy']}")
    print(f"wrote {directory}")
    return 0


def check(directory: Path, args) -> int:
    from safetensors.torch import load_file

    t_start = time.perf_counter()
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA GPU here; --device cpu for the dry run", file=sys.stderr)
        return 2
    prepared = json.loads((directory / "prepared.json").read_text())
    tensors = load_file(str(directory / "inputs.safetensors"))
    states = {t: tensors[f"s{i}"].float() for i, t in enumerate(prepared["encoded"])}
    inputs = {k.removeprefix("probe."): v for k, v in tensors.items() if k.startswith("probe.") and k != "probe.output"}
    expected = tensors["probe.output"]
    torch._dynamo.config.recompile_limit = 64

    out = Path(args.json) if args.json else Path(os.environ.get("OUT") or directory) / "gpu_default.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict = {"model": prepared["model"], "device": device_label(device), "versions": versions(),
                    "cpu_accuracy": prepared["cpu_accuracy"], "rows": [], "complete": False}

    def save() -> None:
        result["elapsed_s"] = time.perf_counter() - t_start
        out.write_text(json.dumps(result, indent=2) + "\n")

    def load(dtype: str | None) -> StreamModel:
        model = load_model(prepared["model"], device=device, backend="eager", dtype=dtype, text_encoder=False)
        model.text_encoder = StoredText(states)
        return model

    base = load(None)
    bf16 = load("bfloat16")
    result["probe"] = {}
    for name, model in (("float32", base), ("bfloat16", bf16)):
        got = probe(model, inputs)
        err = (got - expected).abs()
        result["probe"][name] = {"max_abs": err.max().item(), "mean_abs": err.mean().item(),
                                 "rel_rms": ((err ** 2).mean().sqrt() / expected.pow(2).mean().sqrt()).item()}
        print(f"probe {name} on {device}: max |diff| {err.max().item():.2e}, relative rms "
              f"{result['probe'][name]['rel_rms']:.2e}", flush=True)
    save()

    result["accuracy"] = {}
    for name, prompts in prepared["sets"].items():
        row = accuracy(base, prompts, prepared["seeds"], prepared["seconds"])
        result["accuracy"][name] = row
        cpu = prepared["cpu_accuracy"][name]
        print(f"{name}: prompt accuracy on {device} {row['summary']['prompt_accuracy']:.3f} "
              f"{row['intervals']['prompt_accuracy']}, on the CPU {cpu['summary']['prompt_accuracy']:.3f} "
              f"{cpu['intervals']['prompt_accuracy']}", flush=True)
        save()

    rows = result["rows"]
    knobs = SimpleNamespace(tiny=device == "cpu", max_batch=max(args.sessions), engine_cache=Path(directory) / "engines")
    warm, timed = 2, 6
    models = {"eager": base, "eager-bf16": bf16}
    for backend in args.backends:
        if time.perf_counter() - t_start > args.budget_s:
            rows.append({"backend": backend, "note": "skipped: budget spent"})
            continue
        try:
            if backend in ("eager", "eager-bf16"):
                model, info = models[backend], {}
            else:
                model, info = runtime_model(base, backend, knobs, device)
                models[backend] = model
            row = single_stream(model, device, warm, timed)
        except Exception as exc:  # a compile failure, out of memory: the row says which
            rows.append({"backend": backend, "mode": "single", "note": f"{type(exc).__name__}: {exc}"[:500]})
            free(device)
            save()
            continue
        row.update(backend=backend, mode="single", **info)
        rows.append(row)
        print(f"  {backend} single: {row['fps']:.1f} fps, first frame {row['ttff_s']:.3f} s", flush=True)
        save()
    fastest = max((r for r in rows if r.get("fps") and r["backend"] in models), key=lambda r: r["fps"], default=None)
    wanted = [fastest["backend"] if b == "fastest" and fastest else b for b in args.batched]
    for backend in dict.fromkeys(b for b in wanted if b in models):
        model = models[backend]
        runner = getattr(model.step_fn, "runner", None)
        for n in args.sessions:
            if time.perf_counter() - t_start > args.budget_s:
                rows.append({"backend": backend, "mode": "batched", "sessions": n, "note": "skipped: budget spent"})
                continue
            if backend == "compile-cudagraphs" and n > 1 and (blocked := threaded_cudagraphs_broken(device)):
                rows.append({"backend": backend, "mode": "batched", "sessions": n, "note": blocked})
                continue
            try:
                if backend not in ("eager", "eager-bf16") and isinstance(runner, (TorchStepRunner, CudaGraphStep)):
                    runner.warm_up(model.config, (n,))
                row = batched_sessions(model, device, n, warm, timed)
            except Exception as exc:
                rows.append({"backend": backend, "mode": "batched", "sessions": n,
                             "note": f"{type(exc).__name__}: {exc}"[:500]})
                free(device)
                save()
                continue
            row.update(backend=backend, mode="batched", real_time=row["fps"] >= model.fps)
            rows.append(row)
            print(f"  {backend} x{n}: {row['fps']:.1f} fps per session, {row['total_fps']:.1f} total, "
                  f"batch {row['mean_batch']:.1f}", flush=True)
            save()
    live = [r["sessions"] for r in rows if r.get("mode") == "batched" and r.get("real_time")]
    result["real_time_sessions_max_measured"] = max(live, default=0)
    result["complete"] = True
    save()
    for row in rows:
        print("  " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    print(f"real-time sessions (most measured): {result['real_time_sessions_max_measured']}")
    print(f"wrote {out}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prepare", metavar="DIR", help="on a machine with MiniLM: write the inputs to DIR")
    mode.add_argument("--check", metavar="DIR", help="on the GPU: run the model with DIR's inputs")
    ap.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="model dir (--prepare)")
    ap.add_argument("--prompts", type=int, default=12, help="first N prompts of each set (--prepare)")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per prompt (--prepare)")
    ap.add_argument("--seconds", type=float, default=1.5, help="clip length scored (--prepare)")
    ap.add_argument("--device", default="cuda", help="--check: torch device")
    ap.add_argument("--backends", default="eager,eager-bf16,compile,compile-cudagraphs",
                    type=lambda s: [b for b in s.split(",") if b], help="--check: single-stream rows")
    ap.add_argument("--sessions", default="1,8,32,128", type=lambda s: [int(n) for n in s.split(",") if n],
                    help=f"--check: batched session counts (at most {MAX_SESSIONS})")
    ap.add_argument("--batched", default="eager,fastest", type=lambda s: [b for b in s.split(",") if b],
                    help="--check: backends of the batched rows (fastest: the fastest single-stream one)")
    ap.add_argument("--budget-s", type=float, default=240.0, help="--check: start no row past this many seconds")
    ap.add_argument("--json", default=None, help="--check: results here (default $OUT/gpu_default.json or DIR)")
    args = ap.parse_args()
    if args.check and max(args.sessions, default=0) > MAX_SESSIONS:
        ap.error(f"--sessions: at most {MAX_SESSIONS} (the prepared prompts)")
    return prepare(Path(args.prepare), args) if args.prepare else check(Path(args.check), args)


if __name__ == "__main__":
    sys.exit(main())
