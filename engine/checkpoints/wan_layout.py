"""The original Wan key layout (Wan2.1's own repository, and every student built on it:
Self-Forcing, CausVid, Reward Forcing, LongLive, Rolling Forcing) and its conversion to
diffusers' names through diffusers' own mapping.

Original layout of a text-to-video Wan model (dim D, L blocks; norm1, norm2 and the
head's norm have no parameters):

    patch_embedding.{weight,bias}                    Conv3d(in, D, patch)
    text_embedding.{0,2}.{weight,bias}               Linear, GELU(tanh), Linear
    time_embedding.{0,2}.{weight,bias}               Linear(freq_dim, D), SiLU, Linear
    time_projection.1.{weight,bias}                  SiLU, Linear(D, 6D)
    blocks.i.modulation                              [1, 6, D]
    blocks.i.self_attn.{q,k,v,o}.{weight,bias}, blocks.i.self_attn.norm_{q,k}.weight
    blocks.i.norm3.{weight,bias}                     cross_attn_norm (affine LayerNorm)
    blocks.i.cross_attn.{q,k,v,o}.{weight,bias}, blocks.i.cross_attn.norm_{q,k}.weight
    blocks.i.ffn.{0,2}.{weight,bias}                 Linear(D, ffn), GELU(tanh), Linear
    head.head.{weight,bias}, head.modulation         [1, 2, D]

The research repos save the network inside a wrapper (`WanDiffusionWrapper.model`), so
their keys carry a `model.` prefix, and FSDP / activation checkpointing / torch.compile
may leave `_fsdp_wrapped_module.` / `_checkpoint_wrapped_module.` / `_orig_mod.` in names.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from ..config import TransformerConfig
from ..errors import CheckpointError
from .files import describe_mismatch

# Path segments that distributed training and compilation wrappers insert into names.
WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
# Training-only heads some generators carry beside the network (Self-Forcing's GAN variant
# adds a classifier branch to the generator wrapper); inference never reads them.
TRAINING_ONLY_PREFIXES = ("_cls_pred_branch.", "_gan_ca_blocks.", "_register_tokens.")
ANCHOR = "patch_embedding.weight"  # every Wan transformer has it; what precedes it is the prefix


def _linear(out: int, inp: int, prefix: str) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (out, inp), f"{prefix}.bias": (out,)}


def original_key_shapes(t: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter of a text-to-video Wan transformer in the original layout, with its shape."""
    d, p = t.inner_dim, t.patch_size
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (d, t.in_channels, *p), "patch_embedding.bias": (d,),
        **_linear(d, t.text_dim, "text_embedding.0"), **_linear(d, d, "text_embedding.2"),
        **_linear(d, t.freq_dim, "time_embedding.0"), **_linear(d, d, "time_embedding.2"),
        **_linear(6 * d, d, "time_projection.1"),
        **_linear(t.out_channels * math.prod(p), d, "head.head"), "head.modulation": (1, 2, d),
    }
    for i in range(t.num_layers):
        b = f"blocks.{i}"
        shapes[f"{b}.modulation"] = (1, 6, d)
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                shapes.update(_linear(d, d, f"{b}.{attn}.{proj}"))
            if t.qk_norm:
                shapes[f"{b}.{attn}.norm_q.weight"] = (d,)
                shapes[f"{b}.{attn}.norm_k.weight"] = (d,)
        if t.cross_attn_norm:
            shapes[f"{b}.norm3.weight"] = (d,)
            shapes[f"{b}.norm3.bias"] = (d,)
        shapes.update(_linear(t.ffn_dim, d, f"{b}.ffn.0"))
        shapes.update(_linear(d, t.ffn_dim, f"{b}.ffn.2"))
    return shapes


def strip_prefixes(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Remove wrapper segments and the repo's prefix (whatever precedes `patch_embedding.weight`,
    e.g. `model.`), drop training-only heads; anything else outside the prefix is an error."""
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for segment in WRAPPER_SEGMENTS:
            key = key.replace(segment, "")
        cleaned[key.removeprefix("module.")] = value
    anchors = [k for k in cleaned if k == ANCHOR or k.endswith("." + ANCHOR)]
    if len(anchors) != 1:
        found = ", ".join(sorted(cleaned)[:5]) or "no tensors"
        raise CheckpointError(f"{source}: not a Wan transformer state dict: expected one '{ANCHOR}' "
                              f"(under any prefix), found {len(anchors)} (keys: {found} ...)")
    prefix = anchors[0][: -len(ANCHOR)]
    out, stray = {}, []
    for key, value in cleaned.items():
        if key.startswith(prefix):
            out[key[len(prefix):]] = value
        elif not key.startswith(TRAINING_ONLY_PREFIXES):
            stray.append(key)
    if stray:
        raise CheckpointError(f"{source}: unexpected keys outside the '{prefix}' network: {sorted(stray)[:5]}")
    return out


def infer_transformer_config(state: dict[str, torch.Tensor], num_attention_heads: int,
                             source: str) -> TransformerConfig:
    """Architecture from the shapes of an original-layout state dict. The head count is not
    visible in any shape (q, k, v are D x D), so it comes from the caller (the base model's
    config; every Wan2.1 model uses 128-wide heads)."""
    try:
        d, c_in, *patch = state["patch_embedding.weight"].shape
        layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
        ffn = state["blocks.0.ffn.0.weight"].shape[0]
        text_dim = state["text_embedding.0.weight"].shape[1]
        freq_dim = state["time_embedding.0.weight"].shape[1]
        out = state["head.head.weight"].shape[0] // math.prod(patch)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{source}: cannot read the architecture from the weights, missing {exc}") from exc
    if d % num_attention_heads:
        raise CheckpointError(f"{source}: width {d} does not split into {num_attention_heads} heads")
    return TransformerConfig(
        patch_size=tuple(patch), num_attention_heads=num_attention_heads,
        attention_head_dim=d // num_attention_heads, in_channels=c_in, out_channels=out, text_dim=text_dim,
        freq_dim=freq_dim, ffn_dim=ffn, num_layers=layers,
        cross_attn_norm="blocks.0.norm3.weight" in state,
        qk_norm="rms_norm_across_heads" if "blocks.0.self_attn.norm_q.weight" in state else None,
    )


def check_original(state: dict[str, torch.Tensor], t: TransformerConfig, source: str) -> None:
    """Missing keys, unexpected keys and wrong shapes, named in the original layout."""
    problem = describe_mismatch({k: tuple(v.shape) for k, v in state.items()}, original_key_shapes(t))
    if problem:
        raise CheckpointError(f"{source}: {problem}")


def to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original Wan names -> diffusers' WanTransformer3DModel names, by diffusers' own mapping
    (it renames in place, so it gets a shallow copy)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    return convert_wan_transformer_to_diffusers(dict(state))


# --- LoRA (LongLive: PEFT adapters on every Linear inside the attention blocks) ---------------

LORA_KEY = re.compile(r"^(?:.*?\.)?(blocks\.\d+\..+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


def merge_lora(state: dict[str, torch.Tensor], lora: dict[str, Any], alpha: float | None,
               source: str) -> dict[str, torch.Tensor]:
    """W <- W + (alpha / r) * B @ A for every adapted Linear; returns a new dict.

    `lora` holds PEFT's saved adapter: `<prefix>.blocks.i.<module>.lora_A.weight` [r, in] and
    `.lora_B.weight` [out, r] (prefix `base_model.model.`, possibly with an adapter name such
    as `.default` before `.weight`). PEFT does not save alpha, so it comes from the training
    config; None means alpha = r (scale 1)."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in lora.items():
        for segment in WRAPPER_SEGMENTS:
            key = key.replace(segment, "")
        match = LORA_KEY.match(key)
        if match is None:
            if "lora_magnitude_vector" in key:
                raise CheckpointError(f"{source}: DoRA adapters ({key}) are not supported, only plain LoRA")
            raise CheckpointError(f"{source}: not a LoRA weight: {key!r} "
                                  "(expected ...blocks.N.<module>.lora_A/B.weight)")
        pairs.setdefault(match.group(1), {})[match.group(2)] = value
    if not pairs:
        raise CheckpointError(f"{source}: holds no LoRA weights")
    merged = dict(state)
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"{source}: {module} has lora_{''.join(ab)} without its pair")
        target = f"{module}.weight"
        if target not in state:
            raise CheckpointError(f"{source}: LoRA targets {target}, which the base checkpoint does not have")
        a, b, w = ab["A"].float(), ab["B"].float(), state[target]
        rank = a.shape[0]
        if b.shape[1] != rank or (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise CheckpointError(f"{source}: LoRA of {module} has A {tuple(a.shape)} and B {tuple(b.shape)}, which "
                                  f"do not fit its weight {tuple(w.shape)}")
        scale = (alpha if alpha is not None else rank) / rank
        merged[target] = (w.float() + scale * (b @ a)).to(w.dtype)
    return merged
