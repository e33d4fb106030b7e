"""The recurrent mode of the video-text vision encoder, pinned like the classifier's
(tests/models/test_model_streaming.py): one segment == the clip forward; K segments ==
the one-pass oracle (forward scan across segments, backward scan restarted in each);
states survive bytes, batch and split; and each segment's joint-space embedding is the
mean of its per-frame normalised features, so its inner product with a text feature is
the official similarity of that segment."""

import pytest
import torch

from tests.fixtures.videomamba import oracle_embed, oracle_forward, random_segments, stream_segments
from tests.fixtures.videotext import make_tiny_videotext
from tests.models.test_videotext import ref_pool
from vmstream.models import StateError, StreamState

TOL = dict(atol=3e-5, rtol=1e-4)


def _oracle_embeddings(model, clips):
    """Per-segment embeddings from one pass over the concatenated segments' tokens."""
    sd = {k: v.double() for k, v in model.state_dict().items()}
    vis = {k[len("vision_encoder.") :]: v for k, v in sd.items() if k.startswith("vision_encoder.")}
    vis["norm_f.weight"] = vis["norm.weight"]
    pieces = [oracle_embed(vis, c, model.num_frames) for c in clips]
    bounds, start = [], 0
    for p in pieces:
        bounds.append((start, start + p.shape[1]))
        start += p.shape[1]
    hidden = oracle_forward(vis, torch.cat(pieces, dim=1), len(model.vision_encoder.layers), segments=bounds)
    embs = []
    for (s, e), clip in zip(bounds, clips):
        _, _, feats = ref_pool(sd, hidden[:, s:e], clip.shape[2])
        embs.append(feats.mean(1))
    return embs


def test_one_segment_equals_the_clip_forward():
    model = make_tiny_videotext(seed=1)
    clip = random_segments(1)[0]
    with torch.no_grad():
        seg = model.forward_segment(clip, model.init_state(2))
        enc, _ = model.encode_segment(clip)
        full = model.encode_video(clip)
    torch.testing.assert_close(enc.features, full.features, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(enc.tokens, full.tokens, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(seg.features, full.features.mean(1), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(seg.features.double(), _oracle_embeddings(model, [clip])[0], **TOL)


def test_a_stream_of_segments_equals_the_one_pass_oracle():
    model = make_tiny_videotext(seed=2, vision=dict(depth=3))
    clips = random_segments(3, seed=1) + [torch.randn(2, 3, 2, 32, 32)]  # the last one is short
    outs = stream_segments(model, clips)
    for out, ref in zip(outs, _oracle_embeddings(model, clips)):
        torch.testing.assert_close(out.features.double(), ref, **TOL)
    # the carried state matters: a segment from zero differs
    with torch.no_grad():
        alone = model.forward_segment(clips[2]).features
    assert not torch.allclose(alone, outs[2].features, atol=1e-4)


def test_state_round_trip_batch_and_split():
    model = make_tiny_videotext(seed=3)
    a, b = random_segments(2, b=1, seed=4)
    with torch.no_grad():
        s1 = model.forward_segment(a).state
        restored = StreamState.from_bytes(s1.to_bytes(), expect=model.state_spec())
        direct = model.forward_segment(b, s1)
        resumed = model.forward_segment(b, restored)
        batched = model.forward_segment(torch.cat([b, b]), StreamState.stack([s1, model.init_state(1)]))
        fresh = model.forward_segment(b)
    assert torch.equal(direct.features, resumed.features)
    torch.testing.assert_close(batched.features[0], direct.features[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched.features[1], fresh.features[0], atol=1e-5, rtol=1e-5)


def test_a_state_from_other_weights_is_refused():
    model = make_tiny_videotext(seed=4)
    model.card = model.card.replace(checkpoint_digest="aaaa")
    assert model.init_state(1).tag == "aaaa"
    other = model.init_state(1).with_tag("bbbb")
    with torch.no_grad(), pytest.raises(StateError, match="different weights"):
        model.forward_segment(random_segments(1, b=1)[0], other)


def test_segment_embedding_scores_are_the_official_similarity():
    model = make_tiny_videotext(seed=5)
    clip = random_segments(1)[0]
    ids = torch.randint(1, 60, (3, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        emb = model.forward_segment(clip).features
        t = model.encode_text(ids)
        official = model.similarity(model.encode_video(clip).features, t.features)
    torch.testing.assert_close(emb @ t.features.T, official, **TOL)
