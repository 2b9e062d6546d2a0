"""Training on many processes under torchrun, with torch's own FSDP2 (`fully_shard`).

    torchrun --nproc_per_node 8 -m framecast distill student ...   # NCCL on GPUs, gloo on CPUs

One process per device. Every network of a run (student, critic, frozen teacher, the
student's EMA, a large reward model) is sharded over the processes per transformer block
and at its root: each process keeps 1/N of every parameter, gradient and optimiser state,
and a block's full weights exist only while it runs (all-gathered on forward, again on
backward, gradients reduce-scattered). `shard_size` k < N shards within groups of k
processes and replicates across the groups (HSDP: shard within a node, replicate across
nodes); k = 1 keeps whole copies everywhere and averages gradients, as DDP does. With
one process the modules stay plain modules on the device and nothing here is in the way.

Three things the streaming student needs beyond a plain FSDP recipe:
- A rollout calls the student many times before one backward (every denoising step of
  every chunk, through the KV cache). FSDP2 allows that, but every process must make the
  same forwards in the same order: the choices that decide them (exit steps, prompt
  switches) are drawn from a generator every process shares (distill/student.py).
- `denoise` and `embed_text` are not `forward`: they are registered as FSDP forward
  methods, so calling them gathers the root's parameters.
- Activation checkpointing recomputes a block in backward, after later chunks of the
  rollout have overwritten cache slots that the block read (ring eviction, the EMA sink,
  a re-cache after a prompt switch); the checkpointed forward therefore gets its own copy
  of its layer's cached context (`frozen_context`), so it recomputes what it computed.

bf16 mixed precision is FSDP2's MixedPrecisionPolicy (bf16 parameters in forward and
backward, float32 master weights, optimiser states and gradient reduction) together
with bf16 autocast for the forwards. Inputs are not cast by FSDP (`cast_forward_inputs`
off): its cast would copy the attention-mode object, whose cache writes must land in the
real cache.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors.torch import load_file
from torch.utils.checkpoint import checkpoint

from .common import Checkpointer, native_bf16, resolve_device


@dataclass(frozen=True)
class Parallel:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    mesh: object = None  # a DeviceMesh when the modules are sharded (world size > 1), else None

    @property
    def sharded(self) -> bool:
        return self.mesh is not None


def init_parallel(shard_size: int = 0, device: str = "auto") -> Parallel:
    """Join the torchrun process group (NCCL with GPUs, gloo without) and build the device
    mesh: shard over all processes (shard_size 0), or over groups of shard_size."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size == 1 and not dist.is_initialized():
        return Parallel(device=dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    from torch.distributed.device_mesh import init_device_mesh

    rank, world_size = dist.get_rank(), dist.get_world_size()
    group = shard_size or world_size
    if world_size % group:
        raise ValueError(f"shard_size {shard_size} does not divide the {world_size} processes")
    if group == world_size:
        mesh = init_device_mesh(dev.type, (world_size,), mesh_dim_names=("shard",))
    else:
        mesh = init_device_mesh(dev.type, (world_size // group, group), mesh_dim_names=("replicate", "shard"))
    return Parallel(rank, world_size, dev, mesh)


def leave_process_group(wait: bool = True) -> None:
    """Leave the torchrun process group (a no-op without one): once every process is done
    with `wait` (rank 0 may still be exporting the model), at once without (after an error,
    when the others may never arrive). A process that exits with its gloo group still alive
    can abort in the group's destructor ("terminate called without an active exception",
    SIGABRT) after its work is done, failing the whole torchrun; every distill command ends here."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


# --- placing the networks ----------------------------------------------------------------------

def mixed_precision(enabled: bool):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if not enabled:
        return MixedPrecisionPolicy(cast_forward_inputs=False)
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)


def place_transformer(transformer: nn.Module, config, par: Parallel, bf16: bool = False,
                      checkpointing: bool = False) -> nn.Module:
    """The shared transformer on this process's device, sharded per block and at the root
    under torchrun (bf16 parameters in forward and backward with `bf16`), its blocks
    activation-checkpointed with `checkpointing`. Build optimisers after this: sharding
    replaces the parameters."""
    if checkpointing:
        checkpoint_blocks(transformer)
    if par.sharded:
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        policy = mixed_precision(bf16 and native_bf16(par.device.type))
        for block in transformer.blocks:
            fully_shard(block, mesh=par.mesh, mp_policy=policy)
        # The root resharded after forward too (FSDP2 keeps it gathered for the backward by default):
        # the frozen teacher has no backward, and a rollout's forwards are mostly without one.
        fully_shard(transformer, mesh=par.mesh, mp_policy=policy, reshard_after_forward=True)
        for method in ("denoise", "embed_text"):  # called instead of forward: they gather the root too
            register_fsdp_forward_method(transformer, method)
    else:
        transformer.to(par.device)
    return transformer.enable_streaming(config)  # the RoPE tables on the device


def place_reward(reward: nn.Module, par: Parallel) -> nn.Module:
    """A reward model on the device. A pretrained vision-language backbone (billions of
    parameters) is sharded like the transformer, per layer of each of its stacks; the small
    Shapes reward is kept whole by every process."""
    from distill.rewards.pretrained import PretrainedVideoReward

    reward.to(par.device)
    if par.sharded and isinstance(reward, PretrainedVideoReward):
        from torch.distributed.fsdp import fully_shard

        stacks: list[str] = []  # the outermost ModuleLists (the vision blocks, the language layers)
        for name, module in reward.backbone.named_modules():
            if isinstance(module, nn.ModuleList) and not any(name.startswith(s + ".") for s in stacks):
                stacks.append(name)
        for name in stacks:
            for layer in reward.backbone.get_submodule(name):
                fully_shard(layer, mesh=par.mesh)
        fully_shard(reward.backbone, mesh=par.mesh)
    return reward


# --- activation checkpointing over the KV cache --------------------------------------------------

def checkpoint_blocks(transformer: nn.Module) -> None:
    """Recompute each block's activations in backward instead of keeping them (forwards
    without gradient are left alone). In place, so parameter names do not change."""
    for layer, block in enumerate(transformer.blocks):
        block.forward = functools.partial(_checkpointed_block, block.forward, layer)


def _checkpointed_block(forward, layer: int, hidden_states, encoder_hidden_states, temb, rotary_emb):
    if not torch.is_grad_enabled():
        return forward(hidden_states, encoder_hidden_states, temb, rotary_emb)
    return checkpoint(forward, hidden_states, encoder_hidden_states, temb, frozen_context(rotary_emb, layer),
                      use_reentrant=False)


def frozen_context(mode, layer: int):
    """The attention mode with its own copy of `layer`'s cached keys, values and policy
    state, for a forward that will be recomputed in backward (bidirectional modes read no
    cache and come back as they are). The copy is what the forward's attention would keep
    for backward anyway."""
    from engine.step import CachedAttention

    if not isinstance(mode, CachedAttention) or mode.write_in_place:
        return mode

    def own(t: torch.Tensor) -> torch.Tensor:  # [layers, ...] -> this layer copied, at every layer index
        return t[layer : layer + 1].clone().expand_as(t)

    return dataclasses.replace(mode, cache_k=own(mode.cache_k), cache_v=own(mode.cache_v),
                               state={name: own(t) for name, t in mode.state.items()})


# --- numbers and weights across processes ---------------------------------------------------------

def mean_over_processes(values: dict[str, float], par: Parallel) -> dict[str, float]:
    if not par.sharded or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=par.device)
    dist.all_reduce(t)
    return dict(zip(values, (t / par.world_size).tolist()))


def gather_batch(t: torch.Tensor, par: Parallel) -> torch.Tensor:
    """Every process's [B, ...] as one [world * B, ...], in rank order (all processes get it)."""
    if not par.sharded:
        return t
    parts = [torch.empty_like(t) for _ in range(par.world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def full_state_dict(module: nn.Module, par: Parallel, everywhere: bool = False) -> dict[str, torch.Tensor]:
    """The module's whole state dict on the CPU: on rank 0 only (others get {}), or on every
    process with `everywhere`."""
    if not par.sharded:
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True,
                                                                  cpu_offload=not everywhere))
    return {k: v.detach().cpu() for k, v in state.items()}


def weights_digest(module: nn.Module, par: Parallel) -> str:
    """sha256 of the module's whole weights as this process sees them (gathered if sharded)."""
    digest = hashlib.sha256()
    for key, value in sorted(full_state_dict(module, par, everywhere=True).items()):
        digest.update(key.encode())
        digest.update(value.float().numpy().tobytes())
    return digest.hexdigest()


def same_everywhere(text: str, par: Parallel) -> bool:
    if not par.sharded:
        return True
    gathered: list[str | None] = [None] * par.world_size
    dist.all_gather_object(gathered, text)
    return all(g == gathered[0] for g in gathered)


# --- checkpoints ------------------------------------------------------------------------------------

def _owner(opt: torch.optim.Optimizer, modules: dict[str, nn.Module]) -> nn.Module:
    """The module whose parameters an optimiser steps."""
    first = opt.param_groups[0]["params"][0]
    for module in modules.values():
        if any(p is first for p in module.parameters()):
            return module
    raise ValueError("an optimiser steps parameters of none of the checkpointed modules")


class DistCheckpointer(Checkpointer):
    """Checkpoints that resume on any number of processes.

    One process: Checkpointer's run_dir/checkpoint-<step>.safetensors (+ .json), unchanged.
    Under torchrun: run_dir/checkpoint-<step>/, a torch.distributed.checkpoint (DCP) folder
    to which every process writes its own shards, + checkpoint-<step>.json (step, extra, and
    "format": "dcp"). Either format loads into either kind of run: DCP reshards onto any
    number of processes (one included, without a process group), and a one-process
    safetensors checkpoint loads into sharded modules as full state dicts."""

    def __init__(self, run_dir: str | Path, par: Parallel, keep: int = 2):
        super().__init__(run_dir, keep)
        self.par = par

    def _found(self) -> list[tuple[int, Path]]:
        found = []
        for json_path in self.run_dir.glob("checkpoint-*.json"):
            step = int(json_path.stem.split("-")[1])
            dcp_dir = json_path.with_suffix("")
            if dcp_dir.is_dir() and json.loads(json_path.read_text()).get("format") == "dcp":
                found.append((step, dcp_dir))
            elif json_path.with_suffix(".safetensors").is_file():
                found.append((step, json_path.with_suffix(".safetensors")))
        return sorted(found)

    def latest(self) -> Path | None:
        found = self._found()
        return found[-1][1] if found else None

    def save(self, step: int, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
             extra: dict | None = None) -> Path:
        if not self.par.sharded:
            path = super().save(step, modules, optimizers, extra)
            self._prune()  # a run continued on one process drops the sharded checkpoints it came from too
            return path
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        # An optimiser that has not stepped yet is left out: reading its state would initialise it.
        stepped = [name for name, opt in optimizers.items() if opt.state]
        state = {f"module.{name}": get_model_state_dict(m) for name, m in modules.items()}
        state |= {f"optimizer.{name}": get_optimizer_state_dict(_owner(optimizers[name], modules), optimizers[name])
                  for name in stepped}
        path = self.run_dir / f"checkpoint-{step:07d}"
        tmp = path.with_suffix(".tmp")
        if self.par.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        dist.barrier()
        dcp.save(state, checkpoint_id=str(tmp))
        if self.par.rank == 0:
            shutil.rmtree(path, ignore_errors=True)
            tmp.rename(path)
            # The JSON is written last: latest() never sees half a checkpoint.
            meta = {"step": step, "extra": extra or {}, "format": "dcp", "optimizers": stepped,
                    "world_size": self.par.world_size}
            path.with_suffix(".json").write_text(json.dumps(meta))
            self._prune()
        dist.barrier()
        return path

    def _prune(self) -> None:
        for _, old in self._found()[: -self.keep]:
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)

    def load(self, path: Path, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
             optional: tuple[str, ...] = ()) -> tuple[int, dict]:
        meta = json.loads(path.with_suffix(".json").read_text())
        if meta.get("format") == "dcp":
            self._load_dcp(path, meta, modules, optimizers)
        elif self.par.sharded:
            self._load_full(path, meta, modules, optimizers)
        else:
            return super().load(path, modules, optimizers, optional)
        return meta["step"], meta["extra"]

    def _load_dcp(self, path: Path, meta: dict, modules, optimizers) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                             set_model_state_dict, set_optimizer_state_dict)

        state = {f"module.{name}": get_model_state_dict(m) for name, m in modules.items()}
        state |= {f"optimizer.{name}": get_optimizer_state_dict(_owner(optimizers[name], modules), optimizers[name])
                  for name in meta["optimizers"]}
        with warnings.catch_warnings():  # on one process DCP warns that there is no process group: that is the point
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=str(path), no_dist=not self.par.sharded)
        for name, module in modules.items():
            set_model_state_dict(module, state[f"module.{name}"])
        for name in meta["optimizers"]:
            set_optimizer_state_dict(_owner(optimizers[name], modules), optimizers[name], state[f"optimizer.{name}"])

    def _load_full(self, path: Path, meta: dict, modules, optimizers) -> None:
        """A one-process safetensors checkpoint into sharded modules: every process reads the
        whole file and keeps its shards."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        tensors = load_file(path)
        full = StateDictOptions(full_state_dict=True)
        for name, module in modules.items():
            prefix = f"{name}."
            set_model_state_dict(module, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)},
                                 options=full)
        for name, opt in optimizers.items():
            saved = meta["optimizers"][name]
            owner = _owner(opt, modules)
            names = [n for n, _ in owner.named_parameters()]  # the safetensors format numbers them in this order
            state: dict[str, dict] = {}
            prefix = f"opt_{name}.state."
            for key, value in tensors.items():
                if key.startswith(prefix):
                    idx, slot = key[len(prefix):].split(".", 1)
                    state.setdefault(names[int(idx)], {})[slot] = value
            for key, value in saved["scalars"].items():
                idx, slot = key.split(".", 1)
                state.setdefault(names[int(idx)], {})[slot] = value
            if not state:
                continue  # never stepped in that run: stays fresh here too
            groups = [{**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]]
            set_optimizer_state_dict(owner, opt, {"state": state, "param_groups": groups}, options=full)


__all__ = ["DistCheckpointer", "Parallel", "init_parallel", "place_reward", "place_transformer"]
