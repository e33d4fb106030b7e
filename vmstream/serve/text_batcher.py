"""The warm text encoder behind a bounded queue: queries that arrive together are
encoded in one batch (one forward pass for 16 clients instead of 16).

One thread owns the model. It takes the first waiting query, then whatever else has
arrived within `linger_s` (up to `max_batch`), encodes them together and answers each
future. The queue holds at most `max_queue` queries; a query that finds it full gets
`QueueFull` (the API's 503): memory and latency stay bounded under any load.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future

import numpy as np


class QueueFull(Exception):
    pass


class TextBatcher:
    def __init__(self, model, tokenizer, *, max_batch: int = 32, max_queue: int = 256, linger_s: float = 0.002):
        from vmstream.models.text_query import require_videotext

        require_videotext(model, "text search")
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.linger_s = int(max_batch), float(linger_s)
        self.max_length = min(tokenizer.max_length or model.max_text_len, model.max_text_len)
        self._q: queue.Queue = queue.Queue(maxsize=int(max_queue))
        self.batches = 0
        self.encoded = 0
        self._thread = threading.Thread(target=self._loop, name="text-encoder", daemon=True)
        self._thread.start()

    def check(self, text: str) -> str | None:
        """Why `text` cannot be a query (too many tokens), or None."""
        batch = self.tokenizer([text], max_length=self.max_length, warn=False)
        if batch.truncated[0]:
            return f"{batch.lengths[0]} tokens; the model reads at most {self.max_length} (shorten it)"
        return None

    def submit(self, text: str) -> Future:
        fut: Future = Future()
        try:
            self._q.put_nowait((text, fut))
        except queue.Full:
            raise QueueFull(f"the text encoder's queue is full ({self._q.maxsize} queries waiting)") from None
        return fut

    @property
    def waiting(self) -> int:
        return self._q.qsize()

    def _loop(self) -> None:
        from vmstream.models.text_query import encode_queries

        while True:
            item = self._q.get()
            if item is None:
                return
            items = [item]
            deadline = time.perf_counter() + self.linger_s
            while len(items) < self.max_batch:
                try:
                    more = (
                        self._q.get_nowait()
                        if time.perf_counter() >= deadline
                        else self._q.get(timeout=max(0.0, deadline - time.perf_counter()))
                    )
                except queue.Empty:
                    break
                if more is None:
                    self._q.put(None)
                    break
                items.append(more)
            live = [(t, f) for t, f in items if f.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                feats = (
                    encode_queries(
                        self.model, [t for t, _ in live], tokenizer=self.tokenizer, max_length=self.max_length
                    )
                    .cpu()
                    .numpy()
                    .astype(np.float32)
                )
            except Exception as e:
                for _, f in live:
                    f.set_exception(e)
                continue
            self.batches += 1
            self.encoded += len(live)
            for (_, f), v in zip(live, feats):
                f.set_result(v)

    def close(self) -> None:
        try:
            self._q.put(None, timeout=1)
        except queue.Full:
            pass
