"""What a new user with a real Self-Forcing checkpoint goes through, at full size, on a CPU:
random weights in the real layouts, since no hub can be reached here.

    python bench/full_size_rehearsal.py --cleanup            # 1.4B parameters: ~9 GB of disk, minutes
    python bench/full_size_rehearsal.py --layers 4 --cleanup # full width, 4 blocks (what the test runs)

Stages, each in its own process (so each has its own peak RSS):

1. base        a Wan2.1-T2V-1.3B diffusers folder: the real transformer/config.json; umT5 at its real
               width (d_model 4096) but one small layer (umt5-xxl: 24, 11 GB in bfloat16), a word-level
               tokenizer, a small Wan VAE config (unused: TAEHV decodes); TAEHV weights at taew2_1's
               widths under its key names.
2. synthesise  self_forcing_dmd.pt as Self-Forcing saves it: {generator, critic, generator_ema} under the
               `model.` prefix, original Wan key names and shapes, bfloat16. The critic shares the
               generator's storage (torch.save writes it once), so the file is 2 networks, not 3.
3. convert     `framecast convert --format self-forcing --taehv`: checked bit-exact against
               generator_ema, bfloat16 kept, the file readable by others (0644).
4. stream      load_model as `framecast serve` does (device and dtype picked), 2 chunks at 160x96; the
               KV cache allocated equals the arithmetic (2 x layers x slots x width x bytes); the
               float32 parameters diffusers keeps stay float32; no diffusers cast warning.
5. export      the step graph to ONNX with external data (engine/runtime/export.py), as
               `framecast build-engines` does before ONNX Runtime or TensorRT.

Prints one JSON object (timings, peak RSS per stage, sizes, checks); exit 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Wan2.1-T2V-1.3B's transformer/config.json (Wan-AI/Wan2.1-T2V-1.3B-Diffusers).
WAN_1_3B = {"_class_name": "WanTransformer3DModel", "patch_size": [1, 2, 2], "num_attention_heads": 12,
            "attention_head_dim": 128, "in_channels": 16, "out_channels": 16, "text_dim": 4096, "freq_dim": 256,
            "ffn_dim": 8960, "num_layers": 30, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads",
            "eps": 1e-06, "image_dim": None, "added_kv_proj_dim": None, "rope_max_seq_len": 1024,
            "pos_embed_seq_len": None}
SIZE = (160, 96)  # width, height: 12 x 20 latents, 60 tokens per latent frame
SERVE_SIZE = (832, 480)  # what the KV arithmetic is also given for: 1560 tokens per latent frame
STAGES = ("base", "synthesise", "convert", "stream", "export")


def paths(workdir: Path) -> dict[str, Path]:
    return {"base": workdir / "Wan2.1-T2V-1.3B-Diffusers", "taehv": workdir / "taew2_1.safetensors",
            "checkpoint": workdir / "self-forcing" / "self_forcing_dmd.pt", "model": workdir / "models" / "self-forcing",
            "onnx": workdir / "onnx" / "graph.onnx"}


# --- stages (each runs in its own process) ------------------------------------------------------

def stage_base(workdir: Path, layers: int) -> dict:
    import torch
    from diffusers import AutoencoderKLWan
    from safetensors.torch import save_file
    from transformers import UMT5Config, UMT5EncoderModel

    from engine.taehv import TAEHVConfig, TAEHVDecoder
    from tests.checkpoint_fixtures import WORDS, tiny_tokenizer

    p = paths(workdir)
    base = p["base"]
    (base / "transformer").mkdir(parents=True, exist_ok=True)
    (base / "transformer" / "config.json").write_text(json.dumps({**WAN_1_3B, "num_layers": layers}, indent=1))
    torch.manual_seed(0)
    umt5 = UMT5Config(vocab_size=len(WORDS) + 3, d_model=4096, d_kv=64, d_ff=256, num_layers=1, num_heads=2,
                      relative_attention_num_buckets=32, relative_attention_max_distance=128,
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False)
    UMT5EncoderModel(umt5).to(torch.bfloat16).save_pretrained(str(base / "text_encoder"))
    tiny_tokenizer(base / "tokenizer")
    AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                     temperal_downsample=[False, True, True]).save_pretrained(str(base / "vae"))
    (base / "scheduler").mkdir(exist_ok=True)
    (base / "scheduler" / "scheduler_config.json").write_text(json.dumps({"flow_shift": 3.0}))
    taehv = TAEHVDecoder(TAEHVConfig())  # taew2_1's widths, random weights, its key names
    save_file({k: v.contiguous() for k, v in taehv.state_dict().items()}, str(p["taehv"]))
    return {"text_encoder": "umT5, width 4096, 1 layer of 2 heads (umt5-xxl: 24 layers of 64)",
            "taehv_mb": p["taehv"].stat().st_size / 1e6}


def stage_synthesise(workdir: Path, layers: int) -> dict:
    import torch

    from engine.checkpoints.wan_layout import original_key_shapes
    from engine.config import TransformerConfig

    fields = {k: v for k, v in WAN_1_3B.items() if k in TransformerConfig.model_fields}
    shapes = original_key_shapes(TransformerConfig(**{**fields, "num_layers": layers}))
    g = torch.Generator().manual_seed(1)

    def network() -> dict[str, torch.Tensor]:  # Wan's names under the training wrapper's `model.`
        out = {}
        for name, shape in shapes.items():
            scale = 0.02 if name.endswith("modulation") else (shape[-1] if len(shape) > 1 else 64) ** -0.5
            tensor = torch.randn(shape, generator=g, dtype=torch.bfloat16).mul_(scale)
            if name.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight")):
                tensor.add_(1.0)
            out[f"model.{name}"] = tensor
        return out

    generator, ema = network(), network()
    p = paths(workdir)
    p["checkpoint"].parent.mkdir(parents=True, exist_ok=True)
    torch.save({"generator": generator, "critic": generator, "generator_ema": ema}, p["checkpoint"])
    parameters = sum(v.numel() for v in ema.values())
    return {"parameters_b": parameters / 1e9, "file_gb": p["checkpoint"].stat().st_size / 1e9}


def stage_convert(workdir: Path, layers: int) -> dict:
    import stat

    import torch
    from safetensors import safe_open

    from engine.checkpoints import ConvertOptions, convert
    from engine.checkpoints.wan_layout import strip_prefixes, to_diffusers

    p = paths(workdir)
    started = time.perf_counter()
    convert(ConvertOptions(format="self-forcing", input=p["checkpoint"], base=p["base"], output=p["model"],
                           size=SIZE, taehv=p["taehv"], force=True))
    seconds = time.perf_counter() - started
    weights = p["model"] / "transformer.safetensors"
    # bit-exact against generator_ema, read independently of the conversion's own pass
    ema = torch.load(p["checkpoint"], map_location="cpu", weights_only=True, mmap=True)["generator_ema"]
    expected = to_diffusers(strip_prefixes(ema, "ema"))
    with safe_open(weights, framework="pt") as f:
        exact = set(f.keys()) == set(expected) and all(torch.equal(f.get_tensor(k), expected[k]) for k in expected)
        dtypes = sorted({str(f.get_tensor(k).dtype) for k in list(f.keys())[:8]})
    return {"convert_s": seconds, "weights_gb": weights.stat().st_size / 1e9, "bit_exact_vs_generator_ema": exact,
            "dtypes": dtypes, "mode": oct(stat.S_IMODE(weights.stat().st_mode))}


def stage_stream(workdir: Path, layers: int, dtype: str | None) -> dict:
    import torch

    from engine import load_model
    from engine.transformer import CausalWanTransformer

    p = paths(workdir)
    started = time.perf_counter()
    model = load_model(str(p["model"]), dtype=dtype)  # as `framecast serve --model DIR` loads it
    load_s = time.perf_counter() - started
    keep = set(CausalWanTransformer._keep_in_fp32_modules)
    fp32_kept = all(prm.dtype == torch.float32 for name, prm in model.transformer.named_parameters()
                    if keep & set(name.split(".")))
    session = model.open_session("a red ball bouncing on blue background", seed=0)
    chunk_s = []
    for _ in range(2):
        started = time.perf_counter()
        chunk = session.next_chunk()
        chunk_s.append(time.perf_counter() - started)
    cfg, t, att = model.config, model.config.transformer, model.config.attention
    element = torch.finfo(model.dtype).bits // 8
    slots = (att.chunk_frames + att.sink_frames + att.window_frames) * cfg.tokens_per_frame
    kv_arithmetic = 2 * t.num_layers * slots * t.inner_dim * element
    kv_allocated = session.cache.k.nbytes + session.cache.v.nbytes
    serve_tokens = (SERVE_SIZE[0] // 16) * (SERVE_SIZE[1] // 16)
    serve_slots = (att.chunk_frames + att.sink_frames + att.window_frames) * serve_tokens
    return {"device": str(model.device), "dtype": str(model.dtype).removeprefix("torch."), "load_s": load_s,
            "chunk_s": chunk_s, "frames": list(chunk.frames.shape), "frames_std": float(chunk.frames.std()),
            "kv_allocated_bytes": kv_allocated, "kv_arithmetic_bytes": kv_arithmetic,
            "kv_matches_arithmetic": kv_allocated == kv_arithmetic,
            "kv_gb_per_stream_at_832x480": 2 * t.num_layers * serve_slots * t.inner_dim * element / 1e9,
            "fp32_parameters_kept": fp32_kept, "weights_gb_in_memory": model.weights_bytes() / 1e9}


def stage_export(workdir: Path, layers: int, dtype: str | None) -> dict:
    import onnx

    from engine import load_model
    from engine.runtime.export import export_step

    p = paths(workdir)
    model = load_model(str(p["model"]), dtype=dtype, text_encoder=False, decoder=False)  # as build-engines does
    started = time.perf_counter()
    export_step(model.transformer, model.config, p["onnx"])
    seconds = time.perf_counter() - started
    files = sorted(p["onnx"].parent.iterdir())
    opsets = {o.domain or "ai.onnx": o.version for o in onnx.load(str(p["onnx"]), load_external_data=False).opset_import}
    return {"export_s": seconds, "dtype": str(model.dtype).removeprefix("torch."), "opset": opsets.get("ai.onnx"),
            "graph_mb": p["onnx"].stat().st_size / 1e6,
            "external_data_gb": sum(f.stat().st_size for f in files if f != p["onnx"]) / 1e9,
            "files": [f.name for f in files][:4]}


# --- running the stages -------------------------------------------------------------------------

def stage_function(stage: str, args: argparse.Namespace):
    return {"base": lambda: stage_base(args.workdir, args.layers),
            "synthesise": lambda: stage_synthesise(args.workdir, args.layers),
            "convert": lambda: stage_convert(args.workdir, args.layers),
            "stream": lambda: stage_stream(args.workdir, args.layers, args.dtype),
            "export": lambda: stage_export(args.workdir, args.layers, args.dtype)}[stage]


def run_stage(stage: str, args: argparse.Namespace) -> dict:
    """One stage in a child process (its own peak RSS), or here with --in-process (the peak
    RSS is then this process's so far): its JSON, seconds and peak RSS."""
    if args.in_process:
        import io
        import resource
        from contextlib import redirect_stderr

        started, err = time.perf_counter(), io.StringIO()
        with redirect_stderr(err):
            result = stage_function(stage, args)()
        result.update(seconds=round(time.perf_counter() - started, 1),
                      peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9)
        if "Casting directly" in err.getvalue():
            result["diffusers_cast_warning"] = True
        return result
    command = [sys.executable, __file__, "--stage", stage, "--workdir", str(args.workdir), "--layers",
               str(args.layers)] + (["--dtype", args.dtype] if args.dtype else []) + \
        (["--threads", str(args.threads)] if args.threads else [])
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    out, err = child.communicate()
    seconds = time.perf_counter() - started
    marker = re.search(r"^PEAK_RSS_KB (\d+)$", err, re.M)  # the child's own getrusage, at its end
    rss_gb = int(marker.group(1)) * 1024 / 1e9 if marker else None
    if child.returncode != 0:
        raise RuntimeError(f"stage {stage} failed ({child.returncode}):\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(seconds=round(seconds, 1), peak_rss_gb=rss_gb)
    if "Casting directly" in err:
        result["diffusers_cast_warning"] = True
    return result


def disk_gb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e9


def checks(stages: dict) -> dict[str, bool]:
    return {
        "convert_bit_exact": stages["convert"]["bit_exact_vs_generator_ema"],
        "converted_bf16": stages["convert"]["dtypes"] == ["torch.bfloat16"],
        "converted_readable_by_others": stages["convert"]["mode"] == "0o644",
        "kv_matches_arithmetic": stages["stream"]["kv_matches_arithmetic"],
        "fp32_parameters_kept": stages["stream"]["fp32_parameters_kept"],
        "no_diffusers_cast_warning": not any(s.get("diffusers_cast_warning") for s in stages.values()),
        "frames_not_blank": stages["stream"]["frames_std"] > 0,
        "onnx_external_data": stages["export"]["external_data_gb"] > 0,
        "onnx_opset_20": stages["export"]["opset"] == 20,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=30, help="transformer blocks (default 30, Wan2.1-1.3B's)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the files go (default: a new temporary dir)")
    ap.add_argument("--dtype", default=None, help="override load_model's dtype choice (default: its own)")
    ap.add_argument("--cleanup", action="store_true", help="remove the work dir at the end (it holds GBs)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's, the core count; on a CPU shared with other "
                         "jobs, 1 avoids threads waiting on each other)")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    ap.add_argument("--in-process", action="store_true",
                    help="run the stages in this process (faster to start; peak RSS is then cumulative)")
    ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.stage:  # a child: one stage, its JSON on the last stdout line, its peak RSS on stderr
        import resource

        result = stage_function(args.stage, args)()
        print(f"PEAK_RSS_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
        print(json.dumps(result))
        return 0

    args.workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="framecast-rehearsal-"))).resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    report: dict = {"layers": args.layers, "size": f"{SIZE[0]}x{SIZE[1]}", "workdir": str(args.workdir),
                    "cpu_cores": os.cpu_count(), "threads": args.threads, "stages": {}}
    started = time.perf_counter()
    try:
        for stage in STAGES:
            report["stages"][stage] = run_stage(stage, args)
            print(f"{stage}: {report['stages'][stage]['seconds']} s, peak RSS "
                  f"{report['stages'][stage]['peak_rss_gb']:.2f} GB", file=sys.stderr, flush=True)
        report["disk_gb"] = disk_gb(args.workdir)
        report["checks"] = checks(report["stages"])
        report["total_s"] = round(time.perf_counter() - started, 1)
    finally:
        if args.cleanup:
            shutil.rmtree(args.workdir, ignore_errors=True)
            report["cleaned_up"] = True
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
