"""Loading and converting released Wan checkpoints: Wan2.1 in diffusers format (teacher and
base), and the streaming students in the original Wan layout (Self-Forcing, CausVid,
Reward Forcing, LongLive with its LoRA, Rolling Forcing). See docs/checkpoints.md.

    from engine.checkpoints import ConvertOptions, convert, describe
    config = convert(ConvertOptions(format="self-forcing", input=Path("self_forcing_dmd.pt"),
                                    base=Path("Wan2.1-T2V-1.3B-Diffusers"), output=Path("models/sf")))
    describe(config)   # {"name": ..., "width": 832, "height": 480, "fps": 16.0, ...}
"""

import importlib

# Names resolve on first use (PEP 562), so importing a light submodule of this package
# (the CLI's registration, the error types) does not load torch.
_LAZY = {
    "ConvertOptions": ".convert",
    "check_against_model": ".convert",
    "convert": ".convert",
    "select_lora": ".convert",
    "select_state_dict": ".convert",
    "describe": ".describe",
    "transformer_parameters": ".describe",
    "read_safetensors_dir": ".files",
    "read_weights": ".files",
    "ALL_FORMATS": ".formats",
    "DIFFUSERS_FORMAT": ".formats",
    "FORMATS": ".formats",
    "StudentFormat": ".formats",
    "teacher_config": ".wan_diffusers",
    "transformer_config": ".wan_diffusers",
    "transformer_weights": ".wan_diffusers",
    "check_original": ".wan_layout",
    "infer_transformer_config": ".wan_layout",
    "merge_lora": ".wan_layout",
    "original_key_shapes": ".wan_layout",
    "strip_prefixes": ".wan_layout",
    "to_diffusers": ".wan_layout",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = ["ConvertOptions", "convert", "describe", "transformer_parameters", "check_against_model",
           "select_state_dict", "select_lora", "read_weights", "read_safetensors_dir", "FORMATS", "ALL_FORMATS",
           "DIFFUSERS_FORMAT", "StudentFormat", "teacher_config", "transformer_config", "transformer_weights",
           "check_original", "infer_transformer_config", "merge_lora", "original_key_shapes", "strip_prefixes",
           "to_diffusers"]
