"""The GPU benchmark's table (bench/gpu.py): printed for people, and as one JSON object."""

from __future__ import annotations

import os
import platform

import torch


def json_table(result: dict) -> dict:
    """The table as one JSON object: what the closing note of a GPU run quotes."""
    keys = ("backend", "mode", "sessions", "fps", "total_fps", "ttff_s", "peak_gb_per_session", "build_s",
            "first_call_s", "mean_batch", "note")
    rounded = [{k: round(r[k], 3) if isinstance(r.get(k), float) else r.get(k) for k in keys if k in r}
               for r in result["rows"]]
    cfg = result["config"]
    return {"model": cfg["name"], "size": f"{cfg['latent']['width']}x{cfg['latent']['height']}",
            "dtype": cfg["dtype"], "device": result["device"], "versions": result["versions"],
            "decoder": result["decoder"], "rows": rounded,
            "computed_bound_fps": round(result["computed_bound_fps"], 1),
            "measured_matmul_tflops": float(f"{result['measured_matmul_tflops']:.3g}"),
            "elapsed_s": round(result["elapsed_s"], 1)}


def device_label(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def versions() -> dict[str, str]:
    import diffusers

    found = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__}
    if torch.cuda.is_available():
        found["cuda"] = torch.version.cuda or ""
    try:
        import tensorrt

        found["tensorrt"] = tensorrt.__version__
    except ImportError:
        pass
    return found


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(result: dict) -> None:
    print(f"\n{result['config']['name']} on {result['device']} ({result['decoder']} decoder), "
          f"torch {result['versions']['torch']}")
    header = f"{'backend':<20}{'mode':<9}{'sessions':>8}{'fps/session':>13}{'total fps':>11}{'ttff s':>9}" \
             f"{'GB/session':>12}{'setup s':>10}  note"
    print(header)
    print("-" * len(header))
    for r in result["rows"]:
        first = None if r.get("first_call_s") is None else r["first_call_s"] + r.get("build_s", 0.0)
        print(f"{r['backend']:<20}{r.get('mode', ''):<9}{r['sessions']:>8}{fmt(r['fps'], '.1f'):>13}"
              f"{fmt(r['total_fps'], '.1f'):>11}{fmt(r['ttff_s'], '.2f'):>9}{fmt(r['peak_gb_per_session'], '.2f'):>12}{fmt(first, '.1f'):>10}  "
              f"{r.get('note', '')}")
    singles = [r for r in result["rows"] if r.get("mode") == "single" and r["fps"] is not None]
    best = max(singles, key=lambda r: r["fps"]) if singles else None
    print("\nanchors, single stream on one H100 (same setting):")
    for name, fps in result["anchors_fps"].items():
        ratio = f"x{best['fps'] / fps:.2f} ({best['backend']})" if best else "-"
        print(f"  {name:<16}{fps:>6.1f} fps   ours {ratio}")
    if result["config"]["name"] == "bench-tiny":
        print("  (--tiny: a toy model on a CPU; these ratios only show that the table is made)")
    lo, hi = result["stated_compute_bound_fps"]
    if best:
        print(f"fraction of the compute bound: {best['fps'] / hi:.0%}-{best['fps'] / lo:.0%} of the stated "
              f"{lo:.0f}-{hi:.0f} fps; {best['fps'] / result['computed_bound_fps']:.0%} of "
              f"{result['computed_bound_fps']:.3g} fps = {result['measured_matmul_tflops']:.3g} TFLOP/s measured "
              f"matmul / {result['gflop_per_frame']:.3g} GFLOP per frame")
    else:
        print("fraction of the compute bound: - (no single-stream row ran)")
    print("(ttff: a new stream's first chunk on a warm model; setup: engine build + the first chunk ever, "
          "compile included; GB/session: peak GPU memory above the weights, per session)")
