"""KV cache policies against their formulas, and bounded memory."""

import torch

from engine.cache import LinearState, linear_features
from tests.engine_helpers import tiny_model


def fill(cache, row, frames, tpf, layers, heads, dim, gen):
    """Commit `frames` single-frame chunks of random K/V; returns them [frames, L, tpf, H, D]."""
    ks, vs = [], []
    for _ in range(frames):
        k = torch.randn(layers, tpf, heads, dim, generator=gen)
        v = torch.randn(layers, tpf, heads, dim, generator=gen)
        cache.begin_chunk(row, 1)
        cache.store_current([row], k[:, None], v[:, None])  # [L, 1, tpf, H, D]
        cache.commit(row)
        ks.append(k)
        vs.append(v)
    return torch.stack(ks), torch.stack(vs)


def dims(model):
    t = model.config.transformer
    return model.config.tokens_per_frame, t.num_layers, t.num_attention_heads, t.attention_head_dim


def test_ema_sink_matches_formula():
    model = tiny_model(policy="ema_sink", chunk_frames=2, sink_frames=2, window_frames=3, ema_decay=0.9)
    cache = model.new_cache(rows=2)
    tpf, layers, heads, dim = dims(model)
    ks, vs = fill(cache, 1, 9, tpf, layers, heads, dim, torch.Generator().manual_seed(0))
    # frames 0,1 -> sink; 2,3,4 -> ring; 5..8 each evict the oldest ring frame (2,3,4,5)
    # into sink slots 0,1,0,1 in turn.
    sink = slice(cache.sink_offset_frames * tpf, cache.ring_offset_frames * tpf)
    for buffer, frames in ((cache.k, ks), (cache.v, vs)):  # keys and values alike
        expected = [frames[0].clone(), frames[1].clone()]
        for i, evicted in enumerate([2, 3, 4, 5]):
            slot = i % 2
            expected[slot] = 0.9 * expected[slot] + 0.1 * frames[evicted]
        got = buffer[:, 1, sink].unflatten(1, (2, tpf))  # [L, 2, tpf, H, D]
        torch.testing.assert_close(got[:, 0], expected[0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(got[:, 1], expected[1], atol=1e-6, rtol=1e-6)
    # the ring holds the last 3 frames, and row 0 was never touched
    ring = cache.k[:, 1, cache.ring_offset_frames * tpf :].unflatten(1, (3, tpf))
    assert {int(torch.argmin(torch.stack([(ring[:, j] - ks[f]).abs().max() for f in range(9)]))) for j in range(3)} \
        == {6, 7, 8}
    assert cache.k[:, 0].abs().max() == 0


def test_linear_state_matches_direct_computation():
    model = tiny_model(policy="linear_state", chunk_frames=2, sink_frames=1, window_frames=2)
    cache = model.new_cache()
    tpf, layers, heads, dim = dims(model)
    ks, vs = fill(cache, 0, 7, tpf, layers, heads, dim, torch.Generator().manual_seed(1))
    evicted = [1, 2, 3, 4]  # frame 0 is the sink; the ring keeps 5, 6
    phi = linear_features(ks[evicted])  # [E, L, tpf, H, D]
    expected_kv = torch.einsum("xlnhd,xlnhe->lhde", phi, vs[evicted])
    expected_k = phi.sum(dim=(0, 2))
    state = cache.policy.state(slice(0, 1))
    torch.testing.assert_close(state["state_kv"][:, 0], expected_kv, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(state["state_k"][:, 0], expected_k, atol=1e-4, rtol=1e-5)
    # readout: phi(q) S / (phi(q) z)
    q = torch.randn(1, 5, heads, dim)
    readout = LinearState.readout(0, q, state)
    phq = linear_features(q)
    direct = torch.einsum("bnhd,hde->bnhe", phq, expected_kv[0]) / \
        (torch.einsum("bnhd,hd->bnh", phq, expected_k[0])[..., None] + 1e-6)
    torch.testing.assert_close(readout, direct, atol=1e-4, rtol=1e-4)


def test_linear_state_readout_starts_at_zero_and_changes_output_once_trained():
    model = tiny_model(policy="linear_state", sink_frames=1, window_frames=2)
    for block in model.transformer.blocks:
        assert block.attn1.temporal_state_out.weight.abs().max() == 0  # zero-initialised
    a = model.open_session("red ball", seed=0)
    first = [a.next_chunk().latents for _ in range(4)]
    with torch.no_grad():
        for block in model.transformer.blocks:
            block.attn1.temporal_state_out.weight.normal_(0, 0.5)
    b = model.open_session("red ball", seed=0)
    second = [b.next_chunk().latents for _ in range(4)]
    assert (first[0] - second[0]).abs().max() < 1e-6  # nothing evicted yet: state empty
    assert (first[3] - second[3]).abs().max() > 1e-4  # evicted frames now speak through the state


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_memory_is_flat_over_a_long_stream():
    model = tiny_model(policy="ema_sink", sink_frames=2, window_frames=4)
    session = model.open_session("a green triangle moving right", seed=0)
    cache_bytes = session.cache.nbytes()
    for _ in range(50):
        session.next_chunk()
    rss_50, keep_50 = rss_bytes(), len(session.kept)
    for _ in range(450):
        session.next_chunk()
    rss_500 = rss_bytes()
    assert session.chunk_index == 500
    assert session.cache.nbytes() == cache_bytes
    assert len(session.kept) == keep_50
    assert rss_500 <= rss_50 * 1.05, (rss_50, rss_500)
