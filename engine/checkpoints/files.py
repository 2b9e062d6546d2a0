"""Reading weight files from a user's disk, with a CheckpointError naming the file and
what is wrong instead of a traceback from deep inside torch or safetensors; and writing
safetensors that other users can read.

- safetensors: one file, or a directory of shards with a `*.safetensors.index.json`
  (diffusers and transformers both write that layout for large models);
- torch pickles (.pt / .pth / .bin / .ckpt, how the research repos release students):
  only through `torch.load(weights_only=True)`, which unpickles tensors and plain
  containers and refuses any other Python object, so a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def describe_mismatch(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> str | None:
    """What keeps a checkpoint from loading ({name: shape} found vs expected): missing keys,
    unexpected keys and wrong shapes, a few of each; None when they match."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(found) & set(expected) if tuple(found[k]) != tuple(expected[k]))
    parts = []
    if missing:
        parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)} in all)")
    if unexpected:
        parts.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if wrong:
        parts.append("wrong shapes " + ", ".join(f"{k}: {tuple(found[k])} != expected {tuple(expected[k])}"
                                                 for k in wrong[:5]))
    return "; ".join(parts) or None


def read_weights(path: str | Path) -> dict[str, Any]:
    """The content of one weights file: a flat {name: tensor} dict for safetensors, or
    whatever dict of dicts / tensors / numbers a torch pickle holds."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; expected a weights file (.safetensors, .pt, .pth)")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix in PICKLE_SUFFIXES:
        return _read_pickle(path)
    raise CheckpointError(f"{path}: unknown weights file type {path.suffix!r} "
                          f"(expected .safetensors or one of {', '.join(PICKLE_SUFFIXES)})")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types (SafetensorError, OSError)
        raise CheckpointError(f"{path}: cannot read safetensors, the file is truncated or not "
                              f"safetensors ({exc})") from exc


def _read_pickle(path: Path) -> dict[str, Any]:
    def load(mmap: bool):
        # mmap: a 10 GB training checkpoint (generator + critic + EMA) is paged in on use
        # instead of being read into memory whole; only the zip format supports it.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            content = load(mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            content = load(mmap=False)  # the legacy (pre-zip) torch.save format
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: holds Python objects other than weights; only tensors and plain "
                              f"containers are loaded (torch.load weights_only=True): {exc}") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read torch checkpoint, the file is truncated or not a "
                              f"checkpoint ({exc})") from exc
    if not isinstance(content, dict):
        raise CheckpointError(f"{path}: holds a {type(content).__name__}, expected a dict of weights")
    return content


def read_safetensors_dir(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a diffusers/transformers model folder: `*.safetensors.index.json` with
    its shards, or the folder's single safetensors file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such directory")
    indexes = sorted(directory.glob("*.safetensors.index.json"))
    if indexes:
        try:
            weight_map: dict[str, str] = json.loads(indexes[0].read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{indexes[0]}: not a readable shard index ({exc})") from exc
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not (directory / shard).is_file():
                raise CheckpointError(f"{directory / shard}: shard listed in {indexes[0].name} is missing")
            state.update(_read_safetensors(directory / shard))
        missing = sorted(set(weight_map) - set(state))
        if missing:
            raise CheckpointError(f"{directory}: tensors listed in {indexes[0].name} are absent from the shards: "
                                  f"{missing[:5]}")
        return state
    files = sorted(directory.glob("*.safetensors"))
    if len(files) != 1:
        raise CheckpointError(f"{directory}: expected one .safetensors file or a *.safetensors.index.json, "
                              f"found {len(files)} safetensors files")
    return _read_safetensors(files[0])


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def save_weights(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, then the mode any new file gets (0644 under the usual umask
    022): safetensors writes 0600, and a model converted by one user must be readable by
    the server's (the GPU image runs as uid 10001)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    try:  # Linux reports it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
