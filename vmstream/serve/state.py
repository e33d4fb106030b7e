"""What the server holds for its lifetime: the live store, the warm model and its text
batcher, the clip cache, the limits and the metrics."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .clips import ClipCache
from .live_store import LiveStore
from .media import DecodedThumbs
from .metrics import Metrics
from .text_batcher import TextBatcher


@dataclass
class Limits:
    max_upload_bytes: int = 64 << 20
    max_queue: int = 256
    max_batch: int = 32
    max_video_queries: int = 2  # uploaded clips embedded at once; more waiting -> 503


@dataclass
class ServeState:
    live: LiveStore
    limits: Limits
    metrics: Metrics
    clips: ClipCache
    decoded: DecodedThumbs = field(default_factory=DecodedThumbs)
    model: Any = None  # the store's model, warm (None: id/stream search only)
    cfg: Any = None  # the run's config (decoding, segmenting) for uploaded clips
    batcher: TextBatcher | None = None
    model_error: str = ""  # why text / upload search is unavailable
    token: str | None = None
    video_slots: threading.BoundedSemaphore = field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        if self.video_slots is None:
            self.video_slots = threading.BoundedSemaphore(self.limits.max_video_queries)

    @property
    def out_dir(self) -> Path:
        return self.live.out_dir
