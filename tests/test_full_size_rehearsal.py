"""bench/full_size_rehearsal.py at full width with 4 of the 30 blocks: a Self-Forcing-layout
checkpoint synthesised with the real key names and shapes converts bit-exact, streams in the
dtype `framecast serve` picks with the KV cache the arithmetic says, and exports to ONNX with
external data (the full 1.4B run needs ~9 GB of disk: not in CI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from engine.model import cpu_has_bf16

REPO = Path(__file__).resolve().parents[1]


def test_scaled_down_rehearsal(tmp_path):
    out = tmp_path / "rehearsal.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "full_size_rehearsal.py"), "--layers", "4",
                           "--in-process", "--workdir", str(tmp_path / "work"), "--cleanup", "--json", str(out)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    report = json.loads(out.read_text())
    assert all(report["checks"].values()), report["checks"]
    stream = report["stages"]["stream"]
    assert stream["dtype"] == ("bfloat16" if cpu_has_bf16() else "float32") and stream["device"] == "cpu"
    assert stream["frames"] == [12, 96, 160, 3]
    # Self-Forcing: chunk 3 + window 18 latent frames of 1560 tokens, width 1536, 2 bytes, per block
    per_block = 2 * 21 * 1560 * 1536 * torch.finfo(getattr(torch, stream["dtype"])).bits // 8 / 1e9
    assert abs(stream["kv_gb_per_stream_at_832x480"] - 4 * per_block) < 1e-6
    assert report["stages"]["synthesise"]["parameters_b"] > 0.19  # 4 full-width blocks + embeddings
    assert report["cleaned_up"] and not (tmp_path / "work").exists()
