"""The recurrent (streaming) mode pinned against one-pass references (docs/design.md).

1. one segment covering the whole clip == forward_features (== the official oracle);
2. K segments == a one-pass oracle: forward scan across all segments, backward scan
   restarted in each, a cls token at each segment start;
3. bimamba=False: a token sequence in pieces == one pass;
4. a state survives bytes and the stream continues identically; states of several
   streams stack into one batch and split again.
"""

import torch

from tests.fixtures.videomamba import (
    make_tiny_model,
    oracle_embed,
    oracle_features,
    oracle_forward,
    random_segments,
    stream_segments,
)
from vmstream.models import StreamState

TOL = dict(atol=3e-5, rtol=1e-4)


def _oracle_stream(model, clips):
    """Per-segment cls features from one pass over the concatenated segment tokens."""
    sd = model.state_dict()
    pieces = [oracle_embed(sd, c, model.num_frames) for c in clips]
    bounds, start = [], 0
    for p in pieces:
        bounds.append((start, start + p.shape[1]))
        start += p.shape[1]
    hidden = oracle_forward(sd, torch.cat(pieces, dim=1), len(model.layers), bimamba=model.bimamba, segments=bounds)
    return [hidden[:, s] for s, _ in bounds]


def test_1_one_segment_equals_forward_features_and_the_official_oracle():
    model = make_tiny_model(seed=4)
    clip = random_segments(1)[0]
    with torch.no_grad():
        seg = model.forward_segment(clip, model.init_state(2))
        full = model.forward_features(clip)
        logits = model(clip)
    torch.testing.assert_close(seg.features, full, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(seg.logits, logits, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(seg.features.double(), oracle_features(model, clip), **TOL)


def test_2_stream_of_segments_equals_the_one_pass_oracle():
    model = make_tiny_model(seed=5, depth=3)
    clips = random_segments(4, seed=1)
    outs = stream_segments(model, clips)
    ref = _oracle_stream(model, clips)
    for k, (out, want) in enumerate(zip(outs, ref)):
        torch.testing.assert_close(out.features.double(), want, **TOL, msg=f"segment {k}")
        torch.testing.assert_close(out.logits, model.head(out.features), msg=f"segment {k}")


def test_2b_the_state_matters_and_the_backward_reset_matters():
    """Guards that make test 2 meaningful: dropping the carried state, or letting the
    backward scan run across segment boundaries, changes the features far beyond the
    tolerance."""
    model = make_tiny_model(seed=5, depth=3)
    clips = random_segments(3, seed=1)
    outs = stream_segments(model, clips)
    with torch.no_grad():
        fresh = model.forward_segment(clips[2]).features
    assert (outs[2].features - fresh).abs().max() > 1e-2
    sd = model.state_dict()
    tokens = torch.cat([oracle_embed(sd, c, model.num_frames) for c in clips], dim=1)
    unreset = oracle_forward(sd, tokens, 3)  # backward across the whole stream
    seg_len = tokens.shape[1] // 3
    assert (unreset[:, seg_len] - outs[1].features.double()).abs().max() > 1e-2


def test_2c_short_last_segment_resamples_temporal_positions():
    model = make_tiny_model(seed=6)
    clips = random_segments(2, seed=2) + [torch.randn(2, 3, 2, 32, 32)]  # the last one has 2 of 4 frames
    outs = stream_segments(model, clips)
    ref = _oracle_stream(model, clips)
    torch.testing.assert_close(outs[-1].features.double(), ref[-1], **TOL)
    longer = torch.randn(2, 3, 6, 32, 32)  # and a longer one
    with torch.no_grad():
        out = model.forward_segment(longer, outs[-1].state)
    sd = model.state_dict()
    assert out.features.shape == (2, 32)
    # One-segment check of the resampled positions against the oracle.
    with torch.no_grad():
        alone = model.forward_segment(longer).features
    want = oracle_forward(sd, oracle_embed(sd, longer, model.num_frames), 2)[:, 0]
    torch.testing.assert_close(alone.double(), want, **TOL)


def test_3_without_bimamba_pieces_equal_one_pass():
    model = make_tiny_model(seed=7, bimamba=False, depth=3)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(2, 41, 32, generator=g)
    with torch.no_grad():
        whole, whole_state = model.forward_tokens(tokens)
        # Uneven pieces, including ones shorter than the conv tail (d_conv - 1 = 3).
        state, parts = None, []
        for s, e in [(0, 1), (1, 3), (3, 17), (17, 18), (18, 41)]:
            h, state = model.forward_tokens(tokens[:, s:e], state)
            parts.append(h)
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state.ssm, whole_state.ssm, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state.conv, whole_state.conv, atol=1e-6, rtol=1e-6)
    # ... and the one pass is the official causal forward.
    ref = oracle_forward(model.state_dict(), tokens, 3, bimamba=False)
    torch.testing.assert_close(whole.double(), ref, **TOL)


def test_4_state_round_trip_through_bytes_continues_identically():
    model = make_tiny_model(seed=8)
    a, b, c = random_segments(3, seed=4)
    with torch.no_grad():
        s1 = model.forward_segment(a).state
        blob = s1.to_bytes()
        restored = StreamState.from_bytes(blob, expect=model.state_spec())
        assert torch.equal(restored.conv, s1.conv) and torch.equal(restored.ssm, s1.ssm)
        direct = stream_segments(model, [b, c], s1)
        resumed = stream_segments(model, [b, c], restored)
    for x, y in zip(direct, resumed):
        assert torch.equal(x.features, y.features) and torch.equal(x.logits, y.logits)
        assert torch.equal(x.state.ssm, y.state.ssm)


def test_4b_streams_with_different_histories_batch_and_split():
    model = make_tiny_model(seed=9)
    g = torch.Generator().manual_seed(5)
    clip = lambda: torch.randn(1, 3, 4, 32, 32, generator=g)  # noqa: E731
    hist_a, hist_b = [clip()], [clip(), clip(), clip()]
    next_a, next_b = clip(), clip()
    state_a = stream_segments(model, hist_a)[-1].state
    state_b = stream_segments(model, hist_b)[-1].state
    with torch.no_grad():
        alone_a = model.forward_segment(next_a, state_a)
        alone_b = model.forward_segment(next_b, state_b)
        batched = model.forward_segment(torch.cat([next_a, next_b]), StreamState.stack([state_a, state_b]))
    torch.testing.assert_close(batched.features[0], alone_a.features[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched.features[1], alone_b.features[0], atol=1e-5, rtol=1e-5)
    split_a, split_b = batched.state.split()
    torch.testing.assert_close(split_a.ssm, alone_a.state.ssm, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(split_b.conv, alone_b.state.conv, atol=1e-5, rtol=1e-5)
    # A fresh stream joins a batch of old ones: its row equals a stream started alone.
    with torch.no_grad():
        mixed = model.forward_segment(torch.cat([next_b, next_a]), StreamState.stack([state_b, model.init_state(1)]))
        fresh = model.forward_segment(next_a)
    torch.testing.assert_close(mixed.features[1], fresh.features[0], atol=1e-5, rtol=1e-5)


def test_forward_segment_does_not_modify_the_given_state():
    model = make_tiny_model(seed=10)
    a, b = random_segments(2, seed=6)
    with torch.no_grad():
        s = model.forward_segment(a).state
        before = s.clone()
        model.forward_segment(b, s)
    assert torch.equal(before.conv, s.conv) and torch.equal(before.ssm, s.ssm)


def test_gradients_flow_through_the_carried_state():
    model = make_tiny_model(seed=11).train()
    a, b = random_segments(2, b=1, seed=7)
    first = model.forward_segment(a)
    state = first.state
    second = model.forward_segment(b, state)
    (grad_conv, grad_ssm) = torch.autograd.grad(second.logits.sum(), [state.conv, state.ssm])
    assert grad_conv.abs().sum() > 0 and grad_ssm.abs().sum() > 0
    detached = model.forward_segment(b, state.detach())
    assert detached.state.ssm.grad_fn is not None  # still differentiable w.r.t. the weights
