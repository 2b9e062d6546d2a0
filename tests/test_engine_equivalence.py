"""Cached streaming equals uncached full forwards (CONVENTIONS: equivalences over snapshots)."""

import pytest
import torch
from diffusers import WanTransformer3DModel

from engine.errors import InvalidInput, ShapeMismatch
from engine.reference import generate_recompute
from tests.engine_helpers import ExplicitWindowAttention, tiny_model

PROMPT = "a red ball bouncing on a blue background"


def stream_latents(model, chunks, seed=3, prompt=PROMPT):
    session = model.open_session(prompt, seed=seed)
    return torch.cat([session.next_chunk().latents for _ in range(chunks)], dim=2)


def test_full_attention_is_diffusers_wan_forward():
    model = tiny_model()
    reference = WanTransformer3DModel.from_config(model.transformer.config).eval()
    reference.load_state_dict(model.transformer.state_dict())
    x, t, text = torch.randn(2, 16, 4, 8, 8), torch.tensor([500.0, 900.0]), torch.randn(2, 5, 32)
    with torch.no_grad():
        expected = reference(x, t, text, return_dict=False)[0]
        got = model.transformer.denoise(x, t, model.transformer.embed_text(text),
                                        model.transformer.full_attention(4))
    assert got.abs().mean() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_cached_equals_block_causal_full_forward():
    # plain causal: no sink, a window longer than the stream
    model = tiny_model(policy="sink_window", sink_frames=0, window_frames=64)
    cached = stream_latents(model, chunks=6)
    full = generate_recompute(model, PROMPT, seed=3, chunks=6)
    assert cached.shape == full.shape == (1, 16, 12, 8, 8)
    assert (cached - full).abs().max() < 1e-4


def test_sliding_window_without_sink_equals_masked_forward():
    model = tiny_model(policy="sink_window", sink_frames=0, window_frames=3)
    cached = stream_latents(model, chunks=6)
    full = generate_recompute(model, PROMPT, seed=3, chunks=6)
    assert (cached - full).abs().max() < 1e-4


def test_window_and_sink_equal_explicit_reference():
    model = tiny_model(policy="sink_window", sink_frames=2, window_frames=4)
    cached = stream_latents(model, chunks=7)
    reference = generate_recompute(model, PROMPT, seed=3, chunks=7,
                                   attention_for=lambda frames: ExplicitWindowAttention(model, frames))
    assert (cached - reference).abs().max() < 1e-4
    # and the window really evicts: the plain causal model over the same weights differs late
    causal = tiny_model(policy="sink_window", sink_frames=0, window_frames=64)
    causal.transformer.load_state_dict(model.transformer.state_dict())
    assert (stream_latents(causal, 7)[:, :, -2:] - cached[:, :, -2:]).abs().max() > 1e-3


def test_uneven_sink_and_chunk_sizes_equal_explicit_reference():
    model = tiny_model(policy="sink_window", chunk_frames=2, sink_frames=3, window_frames=3)
    cached = stream_latents(model, chunks=6)
    reference = generate_recompute(model, PROMPT, seed=3, chunks=6,
                                   attention_for=lambda frames: ExplicitWindowAttention(model, frames))
    assert (cached - reference).abs().max() < 1e-4


def test_skipping_the_refresh_changes_the_context_but_keeps_it_bounded():
    base = tiny_model()
    cfg = base.config.model_copy(update={"sampler": base.config.sampler.model_copy(update={"refresh_context": False})})
    from engine.model import StreamModel
    skip = StreamModel(cfg, base.transformer, base.text_encoder, base.decoder)
    a, b = stream_latents(base, 3), stream_latents(skip, 3)
    assert (a[:, :, :2] - b[:, :, :2]).abs().max() < 1e-6  # first chunk has no context
    assert (a[:, :, 2:] - b[:, :, 2:]).abs().max() > 1e-4  # later chunks see noisy-step K/V


def test_masked_text_padding_reads_only_the_prompts_words():
    """attention.text_padding: mask. A prompt padded to any length gives what diffusers' Wan
    gives for its words alone (no padding); an all-zero (unconditional) context still
    works; the default ('attend') keeps diffusers' behaviour, in which padding counts."""
    model = tiny_model(text_padding="mask")
    reference = WanTransformer3DModel.from_config(model.transformer.config).eval()
    reference.load_state_dict(model.transformer.state_dict())
    x, t = torch.randn(2, 16, 4, 8, 8), torch.tensor([500.0, 900.0])
    words = torch.randn(2, 5, 32)
    padded = torch.cat([words, torch.zeros(2, 11, 32)], dim=1)
    padded[1, 3:] = 0  # the second prompt has 3 words
    tr = model.transformer
    with torch.no_grad():
        got = tr.denoise(x, t, tr.embed_text(padded), tr.full_attention(4))
        expected = torch.cat([reference(x[:1], t[:1], words[:1], return_dict=False)[0],
                              reference(x[1:], t[1:], words[1:, :3], return_dict=False)[0]])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        uncond = tr.denoise(x, t, tr.embed_text(torch.zeros(2, 16, 32)), tr.full_attention(4))
        assert torch.isfinite(uncond).all() and not torch.allclose(uncond, got, atol=1e-3)
        attend = tiny_model()
        attend.transformer.load_state_dict(tr.state_dict())
        plain = attend.transformer.denoise(x, t, attend.transformer.embed_text(padded), tr.full_attention(4))
        assert (plain - got).abs().max() > 1e-3
    # a streaming session of the masked model: finite chunks, and the same frames from the cache
    cached = stream_latents(model, chunks=3)
    assert torch.isfinite(cached).all()
    assert (cached - generate_recompute(model, PROMPT, seed=3, chunks=3)).abs().max() < 1e-4


def test_rope_theta_sets_the_rotation_frequencies():
    """attention.rope_theta: the tables rotate pair i of each axis by theta^(-2i/dim) per
    position (Wan's layout with another base); the default is diffusers' Wan (tested above);
    a small base changes what a model computes and keeps the cache equal to recompute."""
    model = tiny_model(rope_theta=10.0, policy="sink_window", sink_frames=0, window_frames=64)
    tables = model.transformer.rope_tables
    head = model.config.transformer.attention_head_dim
    h_dim = 2 * (head // 6)
    t_dim = head - 2 * h_dim
    t_freq = 10.0 ** -(torch.arange(0, t_dim, 2, dtype=torch.float64) / t_dim)
    torch.testing.assert_close(tables.t_cos[1], t_freq.cos().float())
    torch.testing.assert_close(tables.t_sin[3], (3 * t_freq).sin().float())
    h_freq = 10.0 ** -(torch.arange(0, h_dim, 2, dtype=torch.float64) / h_dim)
    w = tables.grid_w
    torch.testing.assert_close(tables.s_cos[2 * w + 1], torch.cat([(2 * h_freq).cos(), h_freq.cos()]).float())
    cached = stream_latents(model, chunks=4)
    assert (cached - generate_recompute(model, PROMPT, seed=3, chunks=4)).abs().max() < 1e-4
    wan = tiny_model(policy="sink_window", sink_frames=0, window_frames=64)
    wan.transformer.load_state_dict(model.transformer.state_dict())
    assert (stream_latents(wan, chunks=4) - cached).abs().max() > 1e-3


def test_features_are_the_tokens_a_full_forward_has_after_that_block():
    """features(layers=k) computes alone what denoise's forward holds after block k (DMD2's
    head reads them from the critic)."""
    model = tiny_model()
    tr = model.transformer
    gen = torch.Generator().manual_seed(0)
    lat = model.config.latent
    x = torch.randn(2, lat.channels, 2, lat.latent_height, lat.latent_width, generator=gen)
    t = torch.tensor([900.0, 200.0])
    ctx = tr.embed_text(torch.randn(2, 4, model.config.transformer.text_dim, generator=gen))
    att = tr.full_attention(2)
    seen = []
    hook = tr.blocks[0].register_forward_hook(lambda module, args, out: seen.append(out))
    with torch.no_grad():
        tr.denoise(x, t, ctx, att)
        hook.remove()
        alone = tr.features(x, t, ctx, att, layers=1)
        deeper = tr.features(x, t, ctx, att, layers=len(tr.blocks))
    torch.testing.assert_close(seen[0], alone)
    assert alone.shape[0] == 2 and alone.shape[-1] == tr.config.num_attention_heads * tr.config.attention_head_dim
    assert (deeper - alone).abs().max() > 1e-3


def test_output_refiner_starts_as_a_no_op_and_keeps_frames_apart():
    """output_refiner: zero-initialised it leaves the forward exactly as it was; trained
    (weights made non-zero), it changes the prediction, each frame only from that frame (a
    change in one frame's latents leaves the other frames' refinement alone), and the cache
    still equals recompute, per-frame timesteps included."""
    base = tiny_model(policy="sink_window", sink_frames=0, window_frames=64)
    cfg = base.config.updated(output_refiner=16)
    from engine.components import build_decoder, build_text_encoder
    from engine.model import StreamModel
    from engine.transformer import build_transformer
    model = StreamModel(cfg, build_transformer(cfg), build_text_encoder(cfg, None, "cpu"), build_decoder(cfg, None, "cpu"))
    tr = model.transformer
    missing = tr.load_state_dict(base.transformer.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("output_refiner.") for k in missing)
    x, t = torch.randn(2, 16, 4, 8, 8), torch.tensor([[500.0] * 4, [900.0, 900.0, 300.0, 300.0]])
    ctx = torch.randn(2, 5, 32)
    with torch.no_grad():
        att = tr.full_attention(4)
        plain = base.transformer.denoise(x, t, base.transformer.embed_text(ctx), att)
        torch.testing.assert_close(tr.denoise(x, t, tr.embed_text(ctx), att), plain)
        torch.nn.init.normal_(tr.output_refiner.conv_out.weight, std=0.2)
        refined = tr.denoise(x, t, tr.embed_text(ctx), att)
        assert (refined - plain).abs().max() > 1e-2
        # the refiner alone, on a flow that differs in frame 0 only: frames 1-3 are untouched
        tokens = torch.randn(2, 4 * 4 * 4, tr.config.num_attention_heads * tr.config.attention_head_dim)
        flow = torch.randn(2, 16, 4, 8, 8)
        other = flow.clone()
        other[:, :, 0] += 1.0
        a = tr.output_refiner(tokens, flow, x, t, 4, 4, 4)
        b = tr.output_refiner(tokens, other, x, t, 4, 4, 4)
        assert (a[:, :, 0] - b[:, :, 0]).abs().max() > 1e-3 and (a[:, :, 1:] - b[:, :, 1:]).abs().max() == 0
    cached = stream_latents(model, chunks=4)
    assert (cached - generate_recompute(model, PROMPT, seed=3, chunks=4)).abs().max() < 1e-4


def test_absolute_positions_start_as_a_no_op_and_tell_places_apart():
    """absolute_positions: zero-initialised, the table leaves the forward exactly as it was;
    trained (made non-zero), it changes what each place of a frame gives, the same way in every
    frame; the cache still equals recompute."""
    base = tiny_model(policy="sink_window", sink_frames=0, window_frames=64)
    cfg = base.config.updated(absolute_positions=True)
    from engine.components import build_decoder, build_text_encoder
    from engine.model import StreamModel
    from engine.transformer import build_transformer
    model = StreamModel(cfg, build_transformer(cfg), build_text_encoder(cfg, None, "cpu"), build_decoder(cfg, None, "cpu"))
    tr = model.transformer
    missing = tr.load_state_dict(base.transformer.state_dict(), strict=False).missing_keys
    assert missing == ["spatial_position.table"]
    flat = torch.zeros(1, 16, 3, 8, 8)  # three identical frames
    t, ctx = torch.tensor([500.0]), torch.randn(1, 5, 32)
    with torch.no_grad():
        att = tr.full_attention(3)
        plain = base.transformer.denoise(flat, t, base.transformer.embed_text(ctx), att)
        torch.testing.assert_close(tr.denoise(flat, t, tr.embed_text(ctx), att), plain)
        torch.nn.init.normal_(tr.spatial_position.table, std=0.5)
        placed = tr.denoise(flat, t, tr.embed_text(ctx), att)
        assert (placed - plain).abs().max() > 1e-2
        tokens = torch.randn(2, 3 * 16, tr.spatial_position.table.shape[1])
        added = (tr.spatial_position(tokens, 16) - tokens).view(2, 3, 16, -1)  # the same table in every frame
        torch.testing.assert_close(added, tr.spatial_position.table.expand(2, 3, -1, -1))
        with pytest.raises(ShapeMismatch, match="position table"):
            tr.denoise(torch.zeros(1, 16, 1, 8, 16), t, tr.embed_text(ctx), tr.full_attention(1))
    cached = stream_latents(model, chunks=4)
    assert (cached - generate_recompute(model, PROMPT, seed=3, chunks=4)).abs().max() < 1e-4


def test_pooled_text_conditions_every_block_through_the_time_embedding():
    """text_pooling: mean. Zero-initialised it is a no-op (diffusers' Wan forward exactly);
    trained, it carries the prompt to the modulation: with the cross-attention cut off, the
    prompt still changes the output (and does not without it); the cache still equals
    recompute, per-frame timesteps included."""
    base = tiny_model(policy="sink_window", sink_frames=0, window_frames=64)
    cfg = base.config.updated(text_pooling="mean")
    from engine.components import build_decoder, build_text_encoder
    from engine.model import StreamModel
    from engine.transformer import build_transformer
    model = StreamModel(cfg, build_transformer(cfg), build_text_encoder(cfg, None, "cpu"), build_decoder(cfg, None, "cpu"))
    tr = model.transformer
    missing = tr.load_state_dict(base.transformer.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("pooled_text_embedder.") for k in missing)
    x, t = torch.randn(2, 16, 4, 8, 8), torch.tensor([[500.0] * 4, [900.0, 900.0, 300.0, 300.0]])
    a, b = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    with torch.no_grad():
        att = tr.full_attention(4)
        torch.testing.assert_close(tr.denoise(x, t, tr.embed_text(a), att),
                                   base.transformer.denoise(x, t, base.transformer.embed_text(a), att))
        torch.nn.init.normal_(tr.pooled_text_embedder[2].weight, std=0.5)
        for m in (tr, base.transformer):  # cut the cross-attention: text reaches only the modulation
            for block in m.blocks:
                block.attn2.to_out[0].weight.zero_()
                block.attn2.to_out[0].bias.zero_()
        pooled = tr.denoise(x, t, tr.embed_text(a), att) - tr.denoise(x, t, tr.embed_text(b), att)
        plain = (base.transformer.denoise(x, t, base.transformer.embed_text(a), att)
                 - base.transformer.denoise(x, t, base.transformer.embed_text(b), att))
    assert pooled.abs().max() > 1e-2 and plain.abs().max() < 1e-6
    cached = stream_latents(model, chunks=4)
    assert (cached - generate_recompute(model, PROMPT, seed=3, chunks=4)).abs().max() < 1e-4


def test_sample_prediction_turns_the_networks_clean_estimate_into_a_flow():
    """prediction: sample. The same weights as a flow model, read as x0: denoise returns
    (x_t - x0) / s per sample or per frame, with s clipped at SAMPLE_MIN_SIGMA (clean
    context frames stay finite); the cache still equals recompute; a refiner is refused."""
    from engine.transformer import SAMPLE_MIN_SIGMA, build_transformer

    base = tiny_model(policy="sink_window", sink_frames=0, window_frames=64)
    cfg = base.config.updated(prediction="sample")
    from engine.components import build_decoder, build_text_encoder
    from engine.model import StreamModel
    model = StreamModel(cfg, build_transformer(cfg), build_text_encoder(cfg, None, "cpu"), build_decoder(cfg, None, "cpu"))
    tr = model.transformer
    tr.load_state_dict(base.transformer.state_dict())
    x, t = torch.randn(2, 16, 4, 8, 8), torch.tensor([[500.0] * 4, [900.0, 0.0, 300.0, 20.0]])
    ctx = torch.randn(2, 5, 32)
    with torch.no_grad():
        att = tr.full_attention(4)
        x0 = base.transformer.denoise(x, t, base.transformer.embed_text(ctx), att)  # the raw output
        flow = tr.denoise(x, t, tr.embed_text(ctx), att)
        s = (t / 1000).clamp_min(SAMPLE_MIN_SIGMA)[:, None, :, None, None]
        torch.testing.assert_close(flow, (x - x0) / s)
        assert torch.isfinite(flow).all() and (flow - x0).abs().max() > 1e-2
        one = torch.tensor([250.0, 1000.0])  # one timestep per sample
        torch.testing.assert_close(tr.denoise(x, one, tr.embed_text(ctx), att),
                                   (x - base.transformer.denoise(x, one, base.transformer.embed_text(ctx), att))
                                   / (one / 1000)[:, None, None, None, None])
    cached = stream_latents(model, chunks=4)
    assert (cached - generate_recompute(model, PROMPT, seed=3, chunks=4)).abs().max() < 1e-4
    with pytest.raises(ValueError, match="output_refiner"):
        base.config.updated(prediction="sample", output_refiner=8)


def test_a_lone_frame_knows_its_place_in_the_clip_only_through_frame_time():
    """Rotary positions cancel between the tokens of one frame, so a frame denoised on its own
    gives the same flow at place 0 and place 5 (what a frames-only teacher without the table
    learnt: no motion). With `frame_time` (trained: non-zero) the places differ; zero, the
    table is a no-op; and `clip_attention` over a clip equals each frame denoised alone at its
    place. Such a teacher is not streamed: a cache mode is refused."""
    base = tiny_model(policy="sink_window", sink_frames=0, window_frames=64)
    cfg = base.config.updated(frame_time=6)
    from engine.transformer import build_transformer
    plain, tr = base.transformer, build_transformer(cfg)
    missing = tr.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["frame_time.table"]
    x, t = torch.randn(2, 16, 1, 8, 8), torch.tensor([500.0, 500.0])
    ctx = torch.randn(2, 5, 32)
    at = {place: torch.tensor([[place], [place]]) for place in (0, 5)}
    with torch.no_grad():
        lone = [plain.denoise(x, t, plain.embed_text(ctx), plain.full_attention(1, positions=at[p])) for p in (0, 5)]
        torch.testing.assert_close(lone[0], lone[1])  # the rotary place alone changes nothing
        zero = tr.denoise(x, t, tr.embed_text(ctx), tr.full_attention(1, positions=at[5]))
        torch.testing.assert_close(zero, lone[1])
        torch.nn.init.normal_(tr.frame_time.table, std=0.5)
        told = [tr.denoise(x, t, tr.embed_text(ctx), tr.full_attention(1, positions=at[p])) for p in (0, 5)]
        assert (told[0] - told[1]).abs().max() > 1e-2
        clip = torch.randn(2, 16, 4, 8, 8)
        whole = tr.denoise(clip, t, tr.embed_text(ctx), tr.clip_attention(4))
        for f in range(4):
            alone = tr.denoise(clip[:, :, f : f + 1], t, tr.embed_text(ctx),
                               tr.full_attention(1, positions=torch.tensor([[f], [f]])))
            torch.testing.assert_close(whole[:, :, f : f + 1], alone, atol=1e-5, rtol=1e-4)
        with pytest.raises(ShapeMismatch, match="past this teacher's 6 places"):
            tr.denoise(torch.randn(1, 16, 7, 8, 8), t[:1], tr.embed_text(ctx[:1]), tr.clip_attention(7))
        # a model without the table sees the clip whole: clip_attention is plain full attention
        assert plain.clip_attention(4).mask is None
    from engine.components import build_decoder, build_text_encoder
    from engine.model import StreamModel
    teacher = StreamModel(cfg, tr, build_text_encoder(cfg, None, "cpu"), build_decoder(cfg, None, "cpu"))
    with pytest.raises(InvalidInput, match="frames-only teacher"):
        teacher.open_session(PROMPT, seed=0)
    from engine.attention import FullAttention
    unplaced = tr.full_attention(1)
    with pytest.raises(ShapeMismatch, match="not streamed"):  # an attention that does not say the places
        tr.denoise(x, t, tr.embed_text(ctx), FullAttention(unplaced.cos, unplaced.sin))
