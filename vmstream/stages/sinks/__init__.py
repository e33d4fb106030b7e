"""Where results go: Parquet, the FAISS store, the console timeline, Kafka."""

from .base import Sink, SinkRecord

__all__ = ["Sink", "SinkRecord"]
