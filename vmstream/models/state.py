"""StreamState: what VideoMamba's recurrent mode carries from one segment to the next.

Per layer, only the forward direction has a past: its causal-conv tail (the last
`d_conv - 1` inputs of the conv, [B, d_inner, d_conv-1]) and its SSM state
[B, d_inner, d_state]. The backward direction restarts inside every segment, so it
carries nothing. Both are kept stacked over layers, in float32:

    conv: [n_layers, B, d_inner, d_conv - 1]
    ssm:  [n_layers, B, d_inner, d_state]

The state is a value: the model returns a new one and never mutates the one it was
given, so a failed segment can be retried from the previous state.

Serialised form (`to_bytes`), little-endian, no pickle (a state may come from another
worker or a Kafka topic, and unpickling untrusted bytes runs code):

    b"VMSTATE\\0" | u32 format version | u32 header length | JSON header | payload

The JSON header names dtype, shapes, payload length, a CRC32 of the payload and the
`tag`; the payload is `conv` then `ssm`, raw.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

MAGIC = b"VMSTATE\x00"
FORMAT_VERSION = 1
_SUPPORTED_VERSIONS = (1,)
# Only float32 is written today; the others are accepted so a future writer storing
# half-precision states stays readable without a format bump.
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_PREFIX = struct.Struct("<8sII")
# A header is a few hundred bytes; anything far larger is corruption, not a state.
_MAX_HEADER = 1 << 16


class StateError(ValueError):
    """A state that cannot be used: bad bytes, wrong version, or shapes that do not match."""


@dataclass(frozen=True)
class StreamState:
    conv: Tensor  # [n_layers, B, d_inner, d_conv - 1]
    ssm: Tensor  # [n_layers, B, d_inner, d_state]
    # Free-form identity of what produced the state (e.g. the checkpoint digest), so a
    # resumed stream can refuse a state made by another model. Stacking requires equal tags.
    tag: str = ""

    def __post_init__(self):
        if self.conv.dim() != 4 or self.ssm.dim() != 4:
            raise StateError(
                f"StreamState needs conv [layers, B, d_inner, d_conv-1] and ssm [layers, B, d_inner, d_state]; "
                f"got conv {tuple(self.conv.shape)} and ssm {tuple(self.ssm.shape)}"
            )
        if self.conv.shape[:3] != self.ssm.shape[:3]:
            raise StateError(
                f"StreamState conv {tuple(self.conv.shape)} and ssm {tuple(self.ssm.shape)} disagree on "
                "layers, batch or d_inner"
            )
        if self.conv.device != self.ssm.device:
            raise StateError(f"StreamState conv on {self.conv.device} but ssm on {self.ssm.device}")

    # ----------------------------------------------------------------- construction
    @classmethod
    def zeros(
        cls,
        n_layers: int,
        batch_size: int,
        d_inner: int,
        d_conv: int,
        d_state: int,
        device=None,
        dtype: torch.dtype = torch.float32,
        tag: str = "",
    ) -> "StreamState":
        if batch_size < 1:
            raise StateError(f"batch_size must be >= 1, got {batch_size}")
        return cls(
            conv=torch.zeros(n_layers, batch_size, d_inner, d_conv - 1, device=device, dtype=dtype),
            ssm=torch.zeros(n_layers, batch_size, d_inner, d_state, device=device, dtype=dtype),
            tag=tag,
        )

    # ------------------------------------------------------------------- properties
    @property
    def n_layers(self) -> int:
        return int(self.conv.shape[0])

    @property
    def batch_size(self) -> int:
        return int(self.conv.shape[1])

    @property
    def d_inner(self) -> int:
        return int(self.conv.shape[2])

    @property
    def d_conv(self) -> int:
        return int(self.conv.shape[3]) + 1

    @property
    def d_state(self) -> int:
        return int(self.ssm.shape[3])

    @property
    def device(self) -> torch.device:
        return self.conv.device

    @property
    def dtype(self) -> torch.dtype:
        return self.ssm.dtype

    @property
    def nbytes(self) -> int:
        """Size of the tensors in bytes (what memory and the wire carry, header aside)."""
        return self.conv.numel() * self.conv.element_size() + self.ssm.numel() * self.ssm.element_size()

    def layer(self, i: int) -> tuple[Tensor, Tensor]:
        """(conv tail [B, d_inner, d_conv-1], ssm state [B, d_inner, d_state]) of layer i."""
        return self.conv[i], self.ssm[i]

    def __repr__(self) -> str:
        return (
            f"StreamState(layers={self.n_layers}, batch={self.batch_size}, d_inner={self.d_inner}, "
            f"d_conv={self.d_conv}, d_state={self.d_state}, dtype={self.dtype}, device={self.device}, "
            f"nbytes={self.nbytes}, tag={self.tag!r})"
        )

    # --------------------------------------------------------------------- movement
    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "StreamState":
        return StreamState(self.conv.to(device=device, dtype=dtype), self.ssm.to(device=device, dtype=dtype), self.tag)

    def detach(self) -> "StreamState":
        """Cut the autograd history (truncated backprop through time in training)."""
        return StreamState(self.conv.detach(), self.ssm.detach(), self.tag)

    def clone(self) -> "StreamState":
        return StreamState(self.conv.clone(), self.ssm.clone(), self.tag)

    def with_tag(self, tag: str) -> "StreamState":
        return StreamState(self.conv, self.ssm, tag)

    # ------------------------------------------------------------ batching streams
    @classmethod
    def stack(cls, states: Sequence["StreamState"]) -> "StreamState":
        """Concatenate the streams of several states into one batch (in the given order).

        Streams may have entirely different histories: each batch row is independent.
        """
        states = list(states)
        if not states:
            raise StateError("StreamState.stack needs at least one state")
        first = states[0]
        for k, s in enumerate(states[1:], start=1):
            if (s.n_layers, s.d_inner, s.d_conv, s.d_state) != (
                first.n_layers,
                first.d_inner,
                first.d_conv,
                first.d_state,
            ):
                raise StateError(
                    f"cannot stack state {k} (layers={s.n_layers}, d_inner={s.d_inner}, d_conv={s.d_conv}, "
                    f"d_state={s.d_state}) with state 0 (layers={first.n_layers}, d_inner={first.d_inner}, "
                    f"d_conv={first.d_conv}, d_state={first.d_state}): they come from different models"
                )
            if s.tag != first.tag:
                raise StateError(f"cannot stack state {k} tagged {s.tag!r} with state 0 tagged {first.tag!r}")
            if s.device != first.device or s.dtype != first.dtype:
                raise StateError(
                    f"cannot stack state {k} ({s.dtype} on {s.device}) with state 0 "
                    f"({first.dtype} on {first.device}); move them first with .to()"
                )
        return cls(torch.cat([s.conv for s in states], dim=1), torch.cat([s.ssm for s in states], dim=1), first.tag)

    def split(self, split_size_or_sections: Union[int, Sequence[int]] = 1) -> list["StreamState"]:
        """Split the batch back into states (like `torch.split` on the batch axis).

        The pieces are copies, so one stream's later updates never alias another's.
        """
        convs = torch.split(self.conv, split_size_or_sections, dim=1)
        ssms = torch.split(self.ssm, split_size_or_sections, dim=1)
        return [StreamState(c.clone(), s.clone(), self.tag) for c, s in zip(convs, ssms)]

    def select(self, indices: Union[int, Iterable[int]]) -> "StreamState":
        """The streams at `indices` (batch rows), as a new state."""
        if isinstance(indices, int):
            indices = [indices]
        idx = torch.as_tensor(list(indices), dtype=torch.long, device=self.device)
        if idx.numel() == 0:
            raise StateError("StreamState.select needs at least one index")
        if int(idx.min()) < -self.batch_size or int(idx.max()) >= self.batch_size:
            raise StateError(f"StreamState.select indices {idx.tolist()} out of range for batch {self.batch_size}")
        return StreamState(
            self.conv.index_select(1, idx % self.batch_size), self.ssm.index_select(1, idx % self.batch_size), self.tag
        )

    # ---------------------------------------------------------------- serialisation
    def to_bytes(self) -> bytes:
        conv = self.conv.detach().to("cpu").contiguous()
        ssm = self.ssm.detach().to("cpu").contiguous()
        dtype_name = _dtype_name(self.dtype)
        payload = _tensor_bytes(conv) + _tensor_bytes(ssm)
        header = json.dumps(
            {
                "dtype": dtype_name,
                "conv_shape": list(conv.shape),
                "ssm_shape": list(ssm.shape),
                "payload_bytes": len(payload),
                "crc32": zlib.crc32(payload),
                "tag": self.tag,
            },
            sort_keys=True,
        ).encode()
        return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header + payload

    @classmethod
    def from_bytes(cls, data: bytes, device=None, expect: Optional[dict] = None) -> "StreamState":
        """Parse `to_bytes` output. Every check failure is a StateError saying what is wrong.

        `expect` optionally pins fields, e.g. `{"n_layers": 24, "d_inner": 384, "tag": "ab12"}`
        (see `VideoMamba.state_spec()`), so a state from another model is refused here.
        """
        data = bytes(data)
        if len(data) < _PREFIX.size:
            raise StateError(f"state bytes too short ({len(data)} bytes): not a serialised StreamState")
        magic, version, header_len = _PREFIX.unpack_from(data, 0)
        if magic != MAGIC:
            raise StateError(f"not a serialised StreamState (magic {magic!r}, expected {MAGIC!r})")
        if version not in _SUPPORTED_VERSIONS:
            raise StateError(
                f"StreamState format version {version} is not supported by this vmstream "
                f"(reads versions {list(_SUPPORTED_VERSIONS)})"
            )
        if header_len > _MAX_HEADER or _PREFIX.size + header_len > len(data):
            raise StateError(f"StreamState header length {header_len} is invalid for {len(data)} bytes (truncated?)")
        try:
            header = json.loads(data[_PREFIX.size : _PREFIX.size + header_len].decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StateError(f"StreamState header is not valid JSON: {e}") from None
        for key in ("dtype", "conv_shape", "ssm_shape", "payload_bytes", "crc32"):
            if key not in header:
                raise StateError(f"StreamState header lacks {key!r}")
        dtype_name = header["dtype"]
        if dtype_name not in _DTYPES:
            raise StateError(f"StreamState dtype {dtype_name!r} is not one of {sorted(_DTYPES)}")
        dtype = _DTYPES[dtype_name]
        conv_shape, ssm_shape = header["conv_shape"], header["ssm_shape"]
        for name, shape in (("conv_shape", conv_shape), ("ssm_shape", ssm_shape)):
            if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(n, int) and n >= 0 for n in shape)):
                raise StateError(f"StreamState {name} {shape!r} is not four non-negative ints")
        if conv_shape[:3] != ssm_shape[:3]:
            raise StateError(
                f"StreamState conv_shape {conv_shape} and ssm_shape {ssm_shape} disagree on layers, batch or d_inner"
            )
        itemsize = torch.empty((), dtype=dtype).element_size()
        n_conv = int(np.prod(conv_shape)) * itemsize
        n_ssm = int(np.prod(ssm_shape)) * itemsize
        payload = data[_PREFIX.size + header_len :]
        if header["payload_bytes"] != n_conv + n_ssm or len(payload) != n_conv + n_ssm:
            raise StateError(
                f"StreamState payload is {len(payload)} bytes; shapes {conv_shape} + {ssm_shape} "
                f"of {dtype_name} need {n_conv + n_ssm} (truncated or corrupt)"
            )
        if zlib.crc32(payload) != header["crc32"]:
            raise StateError("StreamState payload checksum mismatch (corrupt bytes)")
        conv = _tensor_from(payload[:n_conv], dtype, conv_shape)
        ssm = _tensor_from(payload[n_conv:], dtype, ssm_shape)
        state = cls(conv, ssm, str(header.get("tag", "")))
        if expect:
            state.check(**expect)
        return state.to(device) if device is not None else state

    def check(
        self,
        n_layers: Optional[int] = None,
        d_inner: Optional[int] = None,
        d_conv: Optional[int] = None,
        d_state: Optional[int] = None,
        batch_size: Optional[int] = None,
        tag: Optional[str] = None,
    ) -> None:
        """Raise StateError naming every field that differs from the given expectations."""
        wrong = []
        for name, want in (
            ("n_layers", n_layers),
            ("d_inner", d_inner),
            ("d_conv", d_conv),
            ("d_state", d_state),
            ("batch_size", batch_size),
            ("tag", tag),
        ):
            if want is not None and getattr(self, name) != want:
                wrong.append(f"{name}={getattr(self, name)!r} (expected {want!r})")
        if wrong:
            raise StateError("StreamState does not fit: " + ", ".join(wrong))


def _dtype_name(dtype: torch.dtype) -> str:
    for name, dt in _DTYPES.items():
        if dt == dtype:
            return name
    raise StateError(f"StreamState dtype {dtype} cannot be serialised (one of {sorted(_DTYPES)})")


def _tensor_bytes(t: Tensor) -> bytes:
    # bfloat16 has no numpy dtype: go through its bit pattern. Little-endian is what
    # every platform torch runs on; assert rather than silently write the other order.
    assert np.little_endian, "StreamState serialisation assumes a little-endian host"
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def _tensor_from(buf: bytes, dtype: torch.dtype, shape) -> Tensor:
    if dtype == torch.bfloat16:
        arr = np.frombuffer(buf, dtype=np.int16).copy()
        return torch.from_numpy(arr).view(torch.bfloat16).reshape(shape)
    np_dtype = {torch.float32: np.float32, torch.float16: np.float16}[dtype]
    return torch.from_numpy(np.frombuffer(buf, dtype=np_dtype).copy()).reshape(shape)
