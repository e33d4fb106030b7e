"""StreamState: construction, sizes, batching, serialisation and its error messages."""

import json
import struct

import pytest
import torch

from tests.fixtures.videomamba import make_tiny_model
from vmstream.models import StateError, StreamState, create_model
from vmstream.models.state import FORMAT_VERSION, MAGIC


def _random_state(layers=2, batch=3, d_inner=8, d_conv=4, d_state=5, seed=0, tag=""):
    g = torch.Generator().manual_seed(seed)
    return StreamState(
        torch.randn(layers, batch, d_inner, d_conv - 1, generator=g),
        torch.randn(layers, batch, d_inner, d_state, generator=g),
        tag,
    )


def test_sizes_of_the_official_models_states():
    tiny = create_model("videomamba_tiny", device="meta").init_state(1)
    middle = create_model("videomamba_middle", device="meta").init_state(1)
    assert tiny.nbytes == 24 * 384 * (3 + 16) * 4  # ~0.7 MB
    assert middle.nbytes == 32 * 1152 * (3 + 16) * 4  # ~2.8 MB
    assert (tiny.n_layers, tiny.d_inner, tiny.d_conv, tiny.d_state) == (24, 384, 4, 16)


def test_init_state_is_zeros_float32_with_model_shapes():
    model = make_tiny_model()
    s = model.init_state(3)
    assert s.batch_size == 3 and s.dtype == torch.float32
    assert torch.count_nonzero(s.conv) == 0 and torch.count_nonzero(s.ssm) == 0
    assert (s.n_layers, s.d_inner, s.d_conv, s.d_state) == (2, 64, 4, 8)
    s.check(**model.state_spec())


def test_bytes_round_trip_is_exact_and_keeps_the_tag():
    s = _random_state(tag="abc123")
    blob = s.to_bytes()
    assert blob.startswith(MAGIC)
    r = StreamState.from_bytes(blob)
    assert torch.equal(r.conv, s.conv) and torch.equal(r.ssm, s.ssm) and r.tag == "abc123"
    assert len(blob) < s.nbytes + 400  # the header is small


def test_half_precision_states_round_trip():
    for dtype in (torch.float16, torch.bfloat16):
        s = _random_state().to(dtype=dtype)
        r = StreamState.from_bytes(s.to_bytes())
        assert r.dtype == dtype and torch.equal(r.ssm, s.ssm)


def _rewrite_header(blob, **changes):
    magic, version, n = struct.unpack_from("<8sII", blob, 0)
    header = json.loads(blob[16 : 16 + n])
    header.update(changes)
    new = json.dumps(header).encode()
    return struct.pack("<8sII", magic, version, len(new)) + new + blob[16 + n :]


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda b: b"NOTSTATE" + b[8:], "not a serialised StreamState"),
        (lambda b: b[:5], "too short"),
        (lambda b: b[:8] + struct.pack("<I", FORMAT_VERSION + 7) + b[12:], "version 8 is not supported"),
        (lambda b: b[:-10], "truncated or corrupt"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]), "checksum mismatch"),
        (lambda b: _rewrite_header(b, dtype="float64"), "dtype 'float64'"),
        (lambda b: _rewrite_header(b, conv_shape=[2, 3, 8]), "conv_shape"),
        (lambda b: _rewrite_header(b, ssm_shape=[2, 4, 8, 5]), "disagree"),
        (lambda b: b[:16] + b"{not json" + b[25:], "not valid JSON"),
    ],
)
def test_bad_bytes_are_refused_with_a_clear_error(mutate, message):
    blob = _random_state().to_bytes()
    with pytest.raises(StateError, match=message):
        StreamState.from_bytes(mutate(blob))


def test_expectations_name_every_mismatch():
    blob = _random_state(tag="x").to_bytes()
    with pytest.raises(StateError, match=r"n_layers=2 \(expected 24\).*d_inner=8 \(expected 384\).*tag='x'"):
        StreamState.from_bytes(blob, expect={"n_layers": 24, "d_inner": 384, "d_state": 5, "tag": "y"})


def test_stack_split_select():
    a, b = _random_state(batch=1, seed=1), _random_state(batch=2, seed=2)
    ab = StreamState.stack([a, b])
    assert ab.batch_size == 3
    parts = ab.split()
    assert len(parts) == 3 and torch.equal(parts[0].ssm, a.ssm) and torch.equal(parts[2].conv, b.conv[:, 1:])
    parts[0].ssm.zero_()  # split pieces are copies
    assert torch.count_nonzero(ab.ssm[:, 0]) > 0
    first, rest = ab.split([1, 2])
    assert torch.equal(rest.ssm, b.ssm)
    picked = ab.select([2, 0])
    assert torch.equal(picked.conv[:, 0], b.conv[:, 1]) and torch.equal(picked.conv[:, 1], a.conv[:, 0])
    with pytest.raises(StateError, match="out of range"):
        ab.select(3)


def test_stack_refuses_states_of_other_models_or_tags():
    with pytest.raises(StateError, match="different models"):
        StreamState.stack([_random_state(d_inner=8), _random_state(d_inner=16)])
    with pytest.raises(StateError, match="tagged"):
        StreamState.stack([_random_state(tag="a"), _random_state(tag="b")])
    with pytest.raises(StateError, match="at least one"):
        StreamState.stack([])


def test_model_refuses_a_state_that_does_not_fit():
    model = make_tiny_model()
    clip = torch.randn(2, 3, 4, 32, 32)
    with pytest.raises(StateError, match=r"batch_size=1 \(expected 2\)"):
        model.forward_segment(clip, model.init_state(1))
    with pytest.raises(StateError, match="d_state=5"):
        model.forward_segment(clip, _random_state(batch=2, d_inner=64))
    with pytest.raises(TypeError, match="StreamState"):
        model.forward_segment(clip, {"conv": None})
    model.card = model.card.replace(checkpoint_digest="0123abcd")
    foreign = model.init_state(2).with_tag("ffff0000")
    with pytest.raises(StateError, match="different weights"):
        model.forward_segment(clip, foreign)
    assert model.init_state(2).tag == "0123abcd"


def test_to_detach_clone():
    s = _random_state().to(dtype=torch.float64)
    assert s.dtype == torch.float64 and s.conv.dtype == torch.float64
    req = StreamState(s.conv.requires_grad_(), s.ssm)
    assert not req.detach().conv.requires_grad
    c = s.clone()
    c.ssm.zero_()
    assert torch.count_nonzero(s.ssm) > 0
    assert "layers=2" in repr(s)


def test_constructor_checks_shapes():
    with pytest.raises(StateError, match="disagree"):
        StreamState(torch.zeros(2, 1, 8, 3), torch.zeros(2, 1, 9, 5))
    with pytest.raises(StateError, match="needs conv"):
        StreamState(torch.zeros(1, 8, 3), torch.zeros(2, 1, 8, 5))
