"""Builders for tests/test_checkpoints.py, written from the released repositories' layouts
(not from engine/checkpoints): tiny Wan weights under the original key names, a tiny Wan2.1
folder in diffusers format, and a plain-torch reference forward of Wan's original network.

Tiny sizes: width 48 (2 heads of 24), 2 blocks, ffn 64, text width 32, 16 latent channels.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

DIM, HEADS, LAYERS, FFN, TEXT_DIM, FREQ_DIM, CHANNELS = 48, 2, 2, 64, 32, 256, 16
PATCH = (1, 2, 2)
WORDS = "a red ball bouncing on blue background square moving left slowly the green".split()


# --- original-layout weights ------------------------------------------------------------------

def original_wan_weights(seed: int, layers: int = LAYERS, dim: int = DIM) -> dict[str, torch.Tensor]:
    """A text-to-video Wan transformer's parameters under Wan2.1's own names (wan/modules/model.py)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=None):
        scale = scale if scale is not None else 1 / math.sqrt(shape[-1] if len(shape) > 1 else 8)
        return torch.randn(*shape, generator=g) * scale

    def linear(name, out, inp):
        return {f"{name}.weight": rnd(out, inp), f"{name}.bias": rnd(out, scale=0.05)}

    w = {"patch_embedding.weight": rnd(dim, CHANNELS, *PATCH, scale=0.2), "patch_embedding.bias": rnd(dim, scale=0.05)}
    w |= linear("text_embedding.0", dim, TEXT_DIM) | linear("text_embedding.2", dim, dim)
    w |= linear("time_embedding.0", dim, FREQ_DIM) | linear("time_embedding.2", dim, dim)
    w |= linear("time_projection.1", 6 * dim, dim)
    for i in range(layers):
        b = f"blocks.{i}"
        w[f"{b}.modulation"] = rnd(1, 6, dim, scale=dim ** -0.5)
        for attn in ("self_attn", "cross_attn"):
            for p in "qkvo":
                w |= linear(f"{b}.{attn}.{p}", dim, dim)
            w[f"{b}.{attn}.norm_q.weight"] = 1 + rnd(dim, scale=0.1)
            w[f"{b}.{attn}.norm_k.weight"] = 1 + rnd(dim, scale=0.1)
        w[f"{b}.norm3.weight"] = 1 + rnd(dim, scale=0.1)
        w[f"{b}.norm3.bias"] = rnd(dim, scale=0.1)
        w |= linear(f"{b}.ffn.0", FFN, dim) | linear(f"{b}.ffn.2", dim, FFN)
    w |= linear("head.head", CHANNELS * math.prod(PATCH), dim)
    w["head.modulation"] = rnd(1, 2, dim, scale=dim ** -0.5)
    return w


def peft_lora(seed: int, rank: int = 4, layers: int = LAYERS) -> dict[str, torch.Tensor]:
    """LongLive's adapter as get_peft_model_state_dict saves it: every nn.Linear inside the
    attention blocks, under the PeftModel's `base_model.model.` prefix."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(layers):
        targets = [(f"blocks.{i}.{a}.{p}", DIM, DIM) for a in ("self_attn", "cross_attn") for p in "qkvo"]
        targets += [(f"blocks.{i}.ffn.0", FFN, DIM), (f"blocks.{i}.ffn.2", DIM, FFN)]
        for name, o, inp in targets:
            out[f"base_model.model.{name}.lora_A.weight"] = torch.randn(rank, inp, generator=g) / math.sqrt(inp)
            out[f"base_model.model.{name}.lora_B.weight"] = torch.randn(o, rank, generator=g) * 0.1
    return out


# --- a plain-torch forward of Wan's original network ------------------------------------------

def _rope_angles(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Wan's rope_params: angle[p, i] = p / 10000^(2i/dim), float64."""
    inv = 1.0 / torch.pow(10000.0, torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return torch.outer(positions.double(), inv)


def _rope(x: torch.Tensor, f: int, h: int, w: int) -> torch.Tensor:
    """Wan's rope_apply: consecutive pairs as complex numbers, head split [t | h | w] as
    d - 4(d//6), 2(d//6), 2(d//6). x: [B, N, H, D]."""
    d = x.shape[-1]
    t_dim, s_dim = d - 4 * (d // 6), 2 * (d // 6)
    ang = torch.cat([
        _rope_angles(torch.arange(f), t_dim)[:, None, None].expand(f, h, w, -1),
        _rope_angles(torch.arange(h), s_dim)[None, :, None].expand(f, h, w, -1),
        _rope_angles(torch.arange(w), s_dim)[None, None, :].expand(f, h, w, -1),
    ], dim=-1).reshape(f * h * w, 1, -1)
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * torch.polar(torch.ones_like(ang), ang)).flatten(-2).float()


def _rms(x, weight, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def reference_wan_forward(w: dict[str, torch.Tensor], latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                          heads: int = HEADS, lora: dict[str, torch.Tensor] | None = None,
                          lora_scale: float = 1.0) -> torch.Tensor:
    """Wan2.1's WanModel.forward for text-to-video from original-layout weights, with an
    optional runtime LoRA (y = x W^T + b + scale * (x A^T) B^T, as PEFT applies it).
    latents [B, C, F, H, W], t [B], text [B, L, TEXT_DIM] -> flow [B, C, F, H, W]."""

    def lin(name, x):
        y = F.linear(x, w[f"{name}.weight"], w[f"{name}.bias"])
        key = f"base_model.model.{name}.lora_A.weight"
        if lora is not None and key in lora:
            y = y + lora_scale * F.linear(F.linear(x, lora[key]), lora[key.replace("lora_A", "lora_B")])
        return y

    def attention(prefix, x, ctx, grid=None):
        b, n, dim = x.shape
        q = _rms(lin(f"{prefix}.q", x), w[f"{prefix}.norm_q.weight"]).view(b, n, heads, -1)
        k = _rms(lin(f"{prefix}.k", ctx), w[f"{prefix}.norm_k.weight"]).view(b, ctx.shape[1], heads, -1)
        v = lin(f"{prefix}.v", ctx).view(b, ctx.shape[1], heads, -1)
        if grid is not None:
            q, k = _rope(q, *grid), _rope(k, *grid)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return lin(f"{prefix}.o", out.transpose(1, 2).reshape(b, n, dim))

    b, c, f, h, wd = latents.shape
    grid = (f // PATCH[0], h // PATCH[1], wd // PATCH[2])
    x = F.conv3d(latents, w["patch_embedding.weight"], w["patch_embedding.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)  # [B, N, D]
    dim = x.shape[-1]
    half = FREQ_DIM // 2
    freqs = torch.outer(t.double(), torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half))
    sinusoid = torch.cat([freqs.cos(), freqs.sin()], dim=1).float()  # [B, FREQ_DIM]
    e = F.linear(F.silu(F.linear(sinusoid, w["time_embedding.0.weight"], w["time_embedding.0.bias"])),
                 w["time_embedding.2.weight"], w["time_embedding.2.bias"])  # [B, D]
    e0 = F.linear(F.silu(e), w["time_projection.1.weight"], w["time_projection.1.bias"]).view(b, 6, dim)
    ctx = F.linear(F.gelu(F.linear(text, w["text_embedding.0.weight"], w["text_embedding.0.bias"]),
                          approximate="tanh"), w["text_embedding.2.weight"], w["text_embedding.2.bias"])
    layers = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("blocks."))
    for i in range(layers):
        p = f"blocks.{i}"
        m = (w[f"{p}.modulation"] + e0).chunk(6, dim=1)  # each [B, 1, D]
        normed = F.layer_norm(x, (dim,), eps=1e-6) * (1 + m[1]) + m[0]
        y = attention(f"{p}.self_attn", normed, normed, grid)
        x = x + y * m[2]
        x = x + attention(f"{p}.cross_attn", F.layer_norm(x, (dim,), w[f"{p}.norm3.weight"], w[f"{p}.norm3.bias"],
                                                          eps=1e-6), ctx)
        hidden = F.layer_norm(x, (dim,), eps=1e-6) * (1 + m[4]) + m[3]
        x = x + lin(f"{p}.ffn.2", F.gelu(lin(f"{p}.ffn.0", hidden), approximate="tanh")) * m[5]
    shift, scale = (w["head.modulation"] + e[:, None]).chunk(2, dim=1)
    x = F.linear(F.layer_norm(x, (dim,), eps=1e-6) * (1 + scale) + shift, w["head.head.weight"], w["head.head.bias"])
    # unpatchify: [B, f*h*w, C*pt*ph*pw] -> [B, C, F, H, W]
    x = x.view(b, *grid, *PATCH, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, c, f, h, wd)


# --- a tiny Wan2.1 folder in diffusers format ---------------------------------------------------

def tiny_tokenizer(directory: Path) -> None:
    """A word-level tokenizer built offline, with T5's conventions: <pad> 0, </s> 1 appended."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {word: 3 + i for i, word in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(str(directory))


def tiny_wan_diffusers(root: Path, seed: int = 0) -> Path:
    """transformer/ (WanTransformer3DModel), vae/ (AutoencoderKLWan), text_encoder/ (UMT5EncoderModel),
    tokenizer/, scheduler/ — what Wan-AI/Wan2.1-T2V-1.3B-Diffusers holds, at toy size."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    WanTransformer3DModel(patch_size=PATCH, num_attention_heads=HEADS, attention_head_dim=DIM // HEADS,
                          in_channels=CHANNELS, out_channels=CHANNELS, text_dim=TEXT_DIM, freq_dim=FREQ_DIM,
                          ffn_dim=FFN, num_layers=LAYERS, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                          eps=1e-6, rope_max_seq_len=1024
                          ).save_pretrained(str(root / "transformer"), max_shard_size="200KB")  # sharded, as 14B is
    AutoencoderKLWan(base_dim=8, z_dim=CHANNELS, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                     temperal_downsample=[False, True, True]).save_pretrained(str(root / "vae"))
    UMT5EncoderModel(UMT5Config(vocab_size=len(WORDS) + 3, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2,
                                num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                feed_forward_proj="gated-gelu", is_encoder_decoder=False)
                     ).save_pretrained(str(root / "text_encoder"))
    tiny_tokenizer(root / "tokenizer")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "UniPCMultistepScheduler", "flow_shift": 3.0}))
    return root


# --- TAEHV weights under taew2_1's key names -----------------------------------------------------

def taehv_weights(seed: int, widths=(8, 8, 8, 8), growth=(1, 2, 2), latent=CHANNELS) -> dict[str, torch.Tensor]:
    """decoder.N names of madebyollin/taehv's TAEHV decoder Sequential: 1 conv in; 3-5, 9-11, 15-17
    MemBlocks (conv.0/2/4); 7, 13, 19 TGrow (conv, no bias); 8, 14, 20 convs without bias; 22 conv
    out. Plus a few encoder.* tensors the decoder must ignore."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g) / math.sqrt(math.prod(shape[1:]))

    w = {"decoder.1.weight": rnd(widths[0], latent, 3, 3), "decoder.1.bias": rnd(widths[0]) * 0.1,
         "encoder.0.weight": rnd(64, 3, 3, 3), "encoder.0.bias": rnd(64)}
    for stage, first in enumerate((3, 9, 15)):
        c = widths[stage]
        for i in range(first, first + 3):
            for j, c_in in ((0, 2 * c), (2, c), (4, c)):
                w[f"decoder.{i}.conv.{j}.weight"] = rnd(c, c_in, 3, 3)
                w[f"decoder.{i}.conv.{j}.bias"] = rnd(c) * 0.1
        w[f"decoder.{first + 4}.conv.weight"] = rnd(c * growth[stage], c, 1, 1)
        w[f"decoder.{first + 5}.weight"] = rnd(widths[stage + 1], c, 3, 3)
    w["decoder.22.weight"] = rnd(3, widths[3], 3, 3)
    w["decoder.22.bias"] = torch.full((3,), 0.5)
    return w
