"""Released checkpoint -> Framecast model directory (model.json + transformer.safetensors,
with references to the base model's text encoder and VAE folders), which
`engine.load_model(dir)` and `framecast serve --model dir` load.

    convert(ConvertOptions(format="self-forcing", input=Path("self_forcing_dmd.pt"),
                           base=Path("Wan2.1-T2V-1.3B-Diffusers"), output=Path("models/self-forcing")))
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import DecoderConfig, ModelConfig, SamplerConfig
from ..errors import CheckpointError
from . import wan_diffusers
from .files import read_weights, save_weights
from .formats import ALL_FORMATS, DIFFUSERS_FORMAT, FORMATS, StudentFormat
from .wan_layout import check_original, infer_transformer_config, merge_lora, strip_prefixes, to_diffusers

WEIGHTS_NAME = "transformer.safetensors"  # what engine.model.load_model reads


@dataclass(frozen=True)
class ConvertOptions:
    format: str
    input: Path  # the student's file, or the diffusers folder for wan-diffusers
    output: Path
    base: Path | None = None  # the Wan2.1 diffusers folder (text encoder, tokenizer, VAE, config)
    lora: Path | None = None  # LongLive's lora.pt (or any PEFT LoRA of the blocks' Linears)
    lora_alpha: float | None = None  # overrides the format's published alpha
    weights: str | None = None  # which state dict inside the file: generator_ema, generator, ...
    name: str | None = None
    size: tuple[int, int] = (wan_diffusers.WAN_WIDTH, wan_diffusers.WAN_HEIGHT)  # width, height
    timesteps: tuple[float, ...] | None = None  # overrides the format's published schedule
    shift: float | None = None
    taehv: Path | None = None  # use the tiny TAEHV decoder from this weights file instead of the VAE
    force: bool = False  # write into a non-empty output directory


def convert(options: ConvertOptions) -> ModelConfig:
    """Convert, check every key and shape against the model the config builds, and write the
    model directory. Returns the written config."""
    if options.format not in ALL_FORMATS:
        raise CheckpointError(f"unknown checkpoint format {options.format!r}; known: {', '.join(ALL_FORMATS)}")
    _check_output(options.output, options.force)
    decoder = _decoder(options)
    if options.format == DIFFUSERS_FORMAT:
        if options.lora or options.weights or options.timesteps or options.shift is not None:
            raise CheckpointError("--lora, --weights, --timesteps and --shift apply to the students, "
                                  "not to the wan-diffusers teacher")
        config = wan_diffusers.teacher_config(options.input, name=options.name or "wan2.1-t2v", size=options.size,
                                              decoder=decoder)
        state = wan_diffusers.transformer_weights(options.input)
        provenance = {"format": DIFFUSERS_FORMAT, "source": str(options.input.resolve())}
    else:
        config, state, provenance = _convert_student(FORMATS[options.format], options, decoder)
    config = config.model_copy(update={"provenance": {**provenance, "converted_by": "framecast convert"}})
    check_against_model(state, config, str(options.input))
    _write(options.output, config, state)
    return config


# --- students in the original Wan layout -----------------------------------------------------

def _convert_student(spec: StudentFormat, options: ConvertOptions,
                     decoder: DecoderConfig | None) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    if options.base is None:
        raise CheckpointError(f"--base is required for {options.format}: the Wan2.1-T2V diffusers folder whose "
                              "umT5 text encoder, tokenizer and VAE the student uses")
    if spec.lora_alpha is not None and options.lora is None:
        raise CheckpointError(f"{options.format} is a base checkpoint plus a LoRA: pass --lora (e.g. lora.pt)")
    base_t = wan_diffusers.transformer_config(options.base)
    source = str(options.input)
    content = read_weights(options.input)
    key, raw = select_state_dict(content, spec.state_dict_keys if options.weights is None else (options.weights,),
                                 source)
    state = strip_prefixes(raw, source)
    if options.lora is not None:
        lora = select_lora(read_weights(options.lora), str(options.lora))
        alpha = options.lora_alpha if options.lora_alpha is not None else spec.lora_alpha
        state = merge_lora(state, lora, alpha, str(options.lora))
    found = infer_transformer_config(state, base_t.num_attention_heads, source)
    differs = {f: (getattr(found, f), getattr(base_t, f)) for f in type(found).model_fields
               if f not in ("eps", "rope_max_seq_len") and getattr(found, f) != getattr(base_t, f)}
    if differs:
        raise CheckpointError(f"{source}: the checkpoint does not match the base model {options.base}: " +
                              ", ".join(f"{f} {a} != base {b}" for f, (a, b) in differs.items()))
    check_original(state, base_t, source)
    sampler = spec.sampler
    if options.timesteps is not None or options.shift is not None:
        timesteps = options.timesteps or sampler.timesteps
        sampler = _sampler(timesteps, options.shift if options.shift is not None else sampler.shift)
    try:
        config = ModelConfig(
            name=options.name or spec.name,
            description=spec.description,
            transformer=base_t,
            attention=spec.attention,
            sampler=sampler,
            latent=wan_diffusers.latent_config(options.size, channels=base_t.in_channels),
            text_encoder=wan_diffusers.text_encoder_config(options.base),
            decoder=decoder or wan_diffusers.vae_config(options.base),
            dtype="bfloat16",
        )
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from exc
    provenance = {"format": options.format, "source": str(options.input.resolve()), "state_dict": key or "(file)",
                  "base": str(options.base.resolve()), "settings_from": spec.source}
    if options.lora is not None:
        provenance["lora"] = str(options.lora.resolve())
    if spec.notes:
        provenance["notes"] = spec.notes
    return config, to_diffusers(state), provenance


def _sampler(timesteps: tuple[float, ...], shift: float) -> SamplerConfig:
    try:
        return SamplerConfig(timesteps=tuple(timesteps), shift=shift, steps_per_chunk=(len(timesteps),))
    except ValueError as exc:
        raise CheckpointError(f"bad sampler override: {exc}") from exc


def select_state_dict(content: dict[str, Any], keys: tuple[str, ...], source: str) -> tuple[str, dict]:
    """The generator's state dict inside a released file: the first of `keys` present ("" =
    the file itself is the state dict)."""
    for key in keys:
        if key == "" and _is_state_dict(content):
            return key, content
        if key and _is_state_dict(content.get(key)):
            return key, content[key]
    top = ", ".join(sorted(map(str, content))[:6])
    wanted = " or ".join(repr(k) if k else "a bare state dict" for k in keys)
    raise CheckpointError(f"{source}: no generator weights: looked for {wanted}; the file holds {top} ...")


def select_lora(content: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    """LongLive saves {'generator_lora': ..., 'critic_lora': ..., 'step': n}; a bare PEFT
    adapter state dict works too."""
    if _is_state_dict(content.get("generator_lora")):
        return content["generator_lora"]
    if _is_state_dict(content):
        return content
    raise CheckpointError(f"{source}: no LoRA weights (no 'generator_lora' and not a bare adapter state dict)")


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


# --- checking and writing --------------------------------------------------------------------

def check_against_model(state: dict[str, torch.Tensor], config: ModelConfig, source: str) -> None:
    """Every key and shape of the transformer `config` builds (built on the meta device: no
    memory, no init), in diffusers' names, so loading later cannot fail."""
    from ..transformer import CausalWanTransformer

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in
                    CausalWanTransformer.from_config(config.transformer.model_dump()).state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        raise CheckpointError(f"{source}: after conversion: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                              f"wrong shapes {wrong[:5]}")
    bad = [k for k, v in state.items() if not v.is_floating_point()]
    if bad:
        raise CheckpointError(f"{source}: non-float weights {bad[:5]}")


def _decoder(options: ConvertOptions) -> DecoderConfig | None:
    if options.taehv is None:
        return None
    if not options.taehv.is_file():
        raise CheckpointError(f"{options.taehv}: no such TAEHV weights file")
    return DecoderConfig(kind="taehv", path=str(options.taehv.resolve()))


def _check_output(output: Path, force: bool) -> None:
    if output.exists() and not output.is_dir():
        raise CheckpointError(f"{output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise CheckpointError(f"{output} is not empty; pass --force to overwrite its model.json and weights")


def _write(output: Path, config: ModelConfig, state: dict[str, torch.Tensor]) -> None:
    """Weights first through a temporary name, model.json last: a directory with a model.json
    is always complete, even if a conversion is interrupted."""
    output.mkdir(parents=True, exist_ok=True)
    (output / "model.json").unlink(missing_ok=True)
    tmp = output / (WEIGHTS_NAME + ".partial")
    tensors = {k: v.contiguous() for k, v in state.items()}
    save_weights(tensors, tmp, metadata={"format": "diffusers-wan", "source": config.provenance.get("format", "")})
    os.replace(tmp, output / WEIGHTS_NAME)
    config.save(output / "model.json")

