"""Loading and converting released Wan checkpoints: Wan2.1 in diffusers format (teacher and
base), and the streaming students in the original Wan layout (Self-Forcing, CausVid,
Reward Forcing, LongLive with its LoRA, Rolling Forcing). See docs/checkpoints.md.

    from engine.checkpoints import ConvertOptions, convert, describe
    config = convert(ConvertOptions(format="self-forcing", input=Path("self_forcing_dmd.pt"),
                                    base=Path("Wan2.1-T2V-1.3B-Diffusers"), output=Path("models/sf")))
    describe(config)   # {"name": ..., "width": 832, "height": 480, "fps": 16.0, ...}
"""

from .convert import ConvertOptions, check_against_model, convert, select_lora, select_state_dict
from .describe import describe, transformer_parameters
from .files import read_safetensors_dir, read_weights
from .formats import ALL_FORMATS, DIFFUSERS_FORMAT, FORMATS, StudentFormat
from .wan_diffusers import teacher_config, transformer_config, transformer_weights
from .wan_layout import (check_original, infer_transformer_config, merge_lora, original_key_shapes, strip_prefixes,
                         to_diffusers)

__all__ = ["ConvertOptions", "convert", "describe", "transformer_parameters", "check_against_model",
           "select_state_dict", "select_lora", "read_weights", "read_safetensors_dir", "FORMATS", "ALL_FORMATS",
           "DIFFUSERS_FORMAT", "StudentFormat", "teacher_config", "transformer_config", "transformer_weights",
           "check_original", "infer_transformer_config", "merge_lora", "original_key_shapes", "strip_prefixes",
           "to_diffusers"]
