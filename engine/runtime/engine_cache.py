"""The engine cache: exported ONNX graphs and TensorRT plans on disk, keyed by everything
that makes one invalid (DESIGN.md: "Engines are keyed by GPU, TensorRT version, model,
shapes and precision").

    <cache_dir>/<model name>/<part>-<backend>-<digest>/
        key.json        the key in full (what the digest was taken of), written last
        step.onnx ...   the artefacts

An entry is built in a private temporary directory and renamed into place in one step,
so a reader (another replica on a shared volume, a server starting while the init
container still builds) sees either no entry or a whole one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn

# Bumped when the exported graph's inputs or outputs change meaning, so old entries
# are never read by new code.
FORMAT_VERSION = 1
KEY_FILE = "key.json"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "framecast" / "engines"


def weights_hash(module: nn.Module) -> str:
    """sha256 over every parameter and buffer of the module: names, dtypes, shapes and
    bytes, in a fixed order. Hashes what is loaded, so converted or retrained weights
    under the same file name still get a new key."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def device_name(device: torch.device | str) -> str:
    """The GPU's marketing name and compute capability, or 'cpu': engines are specific to
    the GPU they were tuned on."""
    device = torch.device(device)
    if device.type != "cuda":
        return "cpu"
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"


@dataclass(frozen=True)
class EngineKey:
    part: str  # "step" (one denoising step) or "decoder"
    backend: str  # "onnxruntime" | "tensorrt"
    model_name: str
    model_hash: str  # weights + config of the part
    shapes: dict[str, Any]  # every static size the graph was built for
    precision: str  # float32 | float16 | bfloat16 | fp8
    device: str  # device_name()
    versions: dict[str, str]  # torch (the exporter), and the backend's own version
    format_version: int = field(default=FORMAT_VERSION)

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def directory(self, cache_dir: Path) -> Path:
        safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.model_name) or "model"
        return cache_dir / safe_name / f"{self.part}-{self.backend}-{self.digest()}"


class EngineCache:
    def __init__(self, cache_dir: str | Path | None = None):
        self.dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    def find(self, key: EngineKey) -> Path | None:
        """The entry's directory if it was built completely for exactly this key."""
        path = key.directory(self.dir)
        try:
            stored = json.loads((path / KEY_FILE).read_text())
        except (OSError, ValueError):
            return None
        return path if stored == asdict(key) else None

    @contextmanager
    def building(self, key: EngineKey) -> Iterator[Path]:
        """A fresh directory to build the entry in; renamed into place when the block
        ends without an error (and discarded if another builder got there first)."""
        final = key.directory(self.dir)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            yield tmp
            (tmp / KEY_FILE).write_text(json.dumps(asdict(key), indent=2, sort_keys=True) + "\n")
            try:
                os.rename(tmp, final)
            except OSError:
                if self.find(key) is None:  # a broken leftover, not a finished twin: replace it
                    shutil.rmtree(final, ignore_errors=True)
                    os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
