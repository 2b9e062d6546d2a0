"""The public streaming students, each with where its weights sit inside the released file
and the inference settings its authors published (read from their repositories' configs
and inference scripts; cited per entry).

Units: chunk, sink and window are latent frames (1 latent frame = 4 video frames at
16 fps; one 832x480 latent frame is 1560 tokens). Our `window_frames` counts the past frames
kept beside the sink, not the current chunk, so a repo's `local_attn_size` (its whole
attention span in frames, sink and current chunk included) maps to
window = local_attn_size - sink - chunk.

Timesteps: the repos list [1000, 750, 500, 250] with `warp_denoising_step: true`, meaning
the model sees the shift-5 warped value of each (their scheduler's sigma at 1 - t/1000,
shifted); that is exactly our SamplerConfig(timesteps, shift=5).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import AttentionConfig, SamplerConfig

FOUR_STEPS = SamplerConfig(timesteps=(1000.0, 750.0, 500.0, 250.0), shift=5.0, steps_per_chunk=(4,))


@dataclass(frozen=True)
class StudentFormat:
    name: str
    description: str
    # Where the generator's state dict sits in the file, tried in order; "" = the file is it.
    # `--weights` picks one explicitly.
    state_dict_keys: tuple[str, ...]
    attention: AttentionConfig
    sampler: SamplerConfig
    source: str  # the repository files the numbers come from
    lora_alpha: float | None = None  # LoRA formats only: PEFT's lora_alpha from the training config
    notes: str = ""


FORMATS: dict[str, StudentFormat] = {
    # configs/self_forcing_dmd.yaml: denoising_step_list [1000, 750, 500, 250], warp,
    # timestep_shift 5.0, num_frame_per_block 3; local_attn_size -1 (causal over the whole
    # 21-frame training clip: kv cache 32760 tokens = 21 frames), sink_size 0. README runs
    # inference.py with --use_ema, i.e. checkpoint['generator_ema'].
    "self-forcing": StudentFormat(
        name="self-forcing-dmd",
        description="Self-Forcing (DMD) Wan2.1-T2V-1.3B causal student, 4 steps per 3-frame chunk.",
        state_dict_keys=("generator_ema", "generator"),
        attention=AttentionConfig(policy="sink_window", chunk_frames=3, sink_frames=0, window_frames=18),
        sampler=FOUR_STEPS,
        source="github.com/guandeh17/Self-Forcing configs/self_forcing_dmd.yaml, inference.py, "
               "wan/modules/causal_model.py; weights huggingface.co/gdhe17/Self-Forcing "
               "checkpoints/self_forcing_dmd.pt",
        notes="trained on 21-frame clips without a sink; past 21 frames the window slides (positions stay "
              "window-relative)",
    ),
    # configs/wan_causal_dmd.yaml (the released autoregressive_checkpoint): denoising_step_list
    # [1000, 757, 522, 0] without warp: the model sees 1000, 757 and 522 themselves (the trailing
    # 0 only marks the end), so shift 1; num_frame_per_block 3; causal over 21 frames (kv cache
    # 32760 tokens). minimal_inference/autoregressive_inference.py loads checkpoint['generator'].
    "causvid": StudentFormat(
        name="causvid-dmd",
        description="CausVid (DMD) Wan2.1-T2V-1.3B autoregressive student, 3 steps per 3-frame chunk.",
        state_dict_keys=("generator",),
        attention=AttentionConfig(policy="sink_window", chunk_frames=3, sink_frames=0, window_frames=18),
        sampler=SamplerConfig(timesteps=(1000.0, 757.0, 522.0), shift=1.0, steps_per_chunk=(3,)),
        source="github.com/tianweiy/CausVid configs/wan_causal_dmd.yaml, causvid/models/wan/causal_inference.py, "
               "minimal_inference/autoregressive_inference.py; weights huggingface.co/tianweiy/CausVid "
               "autoregressive_checkpoint/model.pt",
        notes="for autoregressive_checkpoint_warp_4step_cfg2 pass --timesteps 1000,750,500,250 --shift 8 "
              "(configs/wan_causal_dmd_warp_4step_cfg2.yaml)",
    ),
    # configs/reward_forcing.yaml: denoising_step_list [1000, 750, 500, 250], warp, shift 5.0,
    # num_frame_per_block 3, local_attn_size 9, sink_size 3; wan/modules/causal_model.py: evicted
    # tokens fused into the sink with compression_alpha 0.999 (sink <- a*sink + (1-a)*evicted).
    # Span 9 = sink 3 + window 3 + chunk 3. inference.py loads the file itself as the state dict.
    "reward-forcing": StudentFormat(
        name="reward-forcing",
        description="Reward Forcing Wan2.1-T2V-1.3B student (Re-DMD) with EMA-Sink attention, 4 steps.",
        state_dict_keys=("", "generator_ema", "generator"),
        attention=AttentionConfig(policy="ema_sink", chunk_frames=3, sink_frames=3, window_frames=3,
                                  ema_decay=0.999),
        sampler=FOUR_STEPS,
        source="github.com/JaydenLyh/Reward-Forcing (read in its copy wangbei1/rlbaseline/Reward-Forcing-main) "
               "configs/reward_forcing.yaml, wan/modules/causal_model.py, inference.py; weights "
               "huggingface.co/JaydenLu666/Reward-Forcing-T2V-1.3B rewardforcing.pt",
    ),
    # configs/longlive_inference.yaml (LongLive-1.3B, before the 2.0 release): [1000, 750, 500,
    # 250], warp, shift 5.0, num_frame_per_block 3, local_attn_size 12, sink_size 3 (span 12 =
    # sink 3 + window 6 + chunk 3), use_ema false -> checkpoint['generator']; adapter: lora
    # rank 256, alpha 256 on every nn.Linear inside CausalWanAttentionBlock (utils/lora_utils.py),
    # lora.pt saved as {'generator_lora': get_peft_model_state_dict(...)}.
    "longlive": StudentFormat(
        name="longlive-1.3b",
        description="LongLive-1.3B (Wan2.1-T2V-1.3B) with its LoRA merged; frame sink + short window, 4 steps.",
        state_dict_keys=("generator", "generator_ema", "model"),
        attention=AttentionConfig(policy="sink_window", chunk_frames=3, sink_frames=3, window_frames=6),
        sampler=FOUR_STEPS,
        lora_alpha=256.0,
        source="github.com/NVlabs/LongLive (commit before 'LongLive 2.0') configs/longlive_inference.yaml, "
               "inference.py, utils/lora_utils.py; weights huggingface.co/Efficient-Large-Model/LongLive-1.3B "
               "models/longlive_base.pt + models/lora.pt",
    ),
    # configs/rolling_forcing_dmd.yaml: denoising_step_list [1000, 800, 600, 400, 200], warp,
    # shift 5.0, num_frame_per_block 3; wan/modules/causal_model.py: attention span 21 frames
    # with the first block (3 frames) kept as sink -> window 21 - 3 - 3 = 15. README runs with
    # --use_ema. Same Self-Forcing file layout.
    "rolling-forcing": StudentFormat(
        name="rolling-forcing-dmd",
        description="Rolling Forcing Wan2.1-T2V-1.3B student, 5 steps per chunk (run chunk by chunk here).",
        state_dict_keys=("generator_ema", "generator"),
        attention=AttentionConfig(policy="sink_window", chunk_frames=3, sink_frames=3, window_frames=15),
        sampler=SamplerConfig(timesteps=(1000.0, 800.0, 600.0, 400.0, 200.0), shift=5.0, steps_per_chunk=(5,)),
        source="github.com/TencentARC/RollingForcing configs/rolling_forcing_dmd.yaml, inference.py, "
               "wan/modules/causal_model.py; weights huggingface.co/TencentARC/RollingForcing "
               "checkpoints/rolling_forcing_dmd.pt",
        notes="the paper denoises a rolling window of 5 chunks jointly at staggered noise levels; this engine "
              "denoises one chunk at a time with the same 5 timesteps, so output differs from the authors' "
              "pipeline",
    ),
}

DIFFUSERS_FORMAT = "wan-diffusers"
ALL_FORMATS = (DIFFUSERS_FORMAT, *FORMATS)
