"""Pipeline configuration: one validated tree, from YAML presets and CLI flags.

pydantic does the validation so that an unknown key or a bad value is an error that
names the key path and what is wrong (`decode.fps: Input should be greater than 0`),
before any work starts. Presets live in `configs/`; CLI flags override them. Reading,
merging and `--set KEY=VALUE` parsing are `vmstream.config_loader`'s, shared with the
training recipes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vmstream import config_loader
from vmstream.config_loader import ConfigError, parse_override

__all__ = ["PipelineConfig", "ConfigError", "load_config", "parse_override"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    # A registry name (downloaded from the Hugging Face hub into its cache) or a local
    # checkpoint file; a checkpoint wins when both are given.
    name: Optional[str] = "videomamba_t16_k400_f16_res224"
    checkpoint: Optional[str] = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    scan_backend: Literal["auto", "ref", "cpu", "numba", "triton", "cuda"] = "auto"
    top_k: int = Field(5, ge=1, le=100)
    # Video-level answer of a finite stream: the last segment's logits (they have seen
    # the whole video through the carried state) or the mean over segments.
    summary: Literal["last", "mean"] = "last"
    # Segments of this many different streams are stacked into one forward.
    max_batch: int = Field(4, ge=1, le=256)
    # Label names file (one per line) overriding the checkpoint's class list.
    labels: Optional[str] = None


class DecodeConfig(_Strict):
    backend: Literal["auto", "pyav", "dali"] = "auto"
    # "fps": frames at a target rate (archives, live); "uniform": N frames spread over a
    # file; "keyframes": keyframes only (fast, approximate in time); "all": every frame.
    sampling: Literal["fps", "uniform", "keyframes", "all"] = "fps"
    fps: float = Field(1.0, gt=0, le=1000)
    uniform_frames: int = Field(16, ge=1)
    # Frame size and resize mode: unset = the model card's (its training preprocessing).
    img_size: Optional[int] = Field(None, ge=16)
    resize: Optional[Literal["short_side_crop", "direct"]] = None
    audio: bool = False
    threads: int = Field(0, ge=0)  # decoder threads; 0 = automatic

    @field_validator("img_size")
    @classmethod
    def _patch_multiple(cls, v: Optional[int]) -> Optional[int]:
        if v is not None and v % 16:
            raise ValueError(f"must be a multiple of the patch size 16, got {v}")
        return v


class LiveConfig(_Strict):
    reconnect: bool = True
    backoff_initial: float = Field(0.5, gt=0)
    backoff_max: float = Field(30.0, gt=0)
    # Give up after this many seconds without a frame (0 = never).
    give_up_after: float = Field(0.0, ge=0)
    open_timeout: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _order(self):
        if self.backoff_max < self.backoff_initial:
            raise ValueError("backoff_max must be >= backoff_initial")
        return self


class SegmentConfig(_Strict):
    # Frames per segment; None = the model's own num_frames.
    frames: Optional[int] = Field(None, ge=1, le=1024)
    drop_last: bool = False


class OutputConfig(_Strict):
    dir: str = "runs/latest"
    parquet: bool = True
    faiss: bool = True
    faiss_kind: Literal["auto", "flat", "ivfpq", "hnsw"] = "auto"
    console: bool = True
    plot: bool = False


class KafkaConfig(_Strict):
    bootstrap: Optional[str] = None
    results_topic: str = "vmstream.segments"
    events_topic: str = "vmstream.events"
    summaries_topic: str = "vmstream.summaries"
    jobs_topic: str = "vmstream.jobs"
    state_topic: str = "vmstream.state"
    dead_letter_topic: str = "vmstream.dead-letter"
    group_id: str = "vmstream-workers"
    # Passed through to kafka-python (security_protocol, ssl_*, sasl_* ...).
    client: dict[str, Any] = Field(default_factory=dict)
    # Passed to the worker's jobs consumer only, on top of `client`: group timing
    # (session_timeout_ms, heartbeat_interval_ms, max_poll_interval_ms), which the
    # producers and admin clients that also take `client` would refuse.
    consumer: dict[str, Any] = Field(default_factory=dict)


class RunnerConfig(_Strict):
    queue_size: int = Field(8, ge=1, le=1024)
    # Streams decoded concurrently (each in its own thread).
    max_streams: int = Field(2, ge=1, le=1024)
    # Flush sinks and snapshot every stream's state every N segments (0 = only at end).
    snapshot_every: int = Field(10, ge=0)
    # Where snapshots go without Kafka; None = <output.dir>/state.
    state_dir: Optional[str] = None
    progress: bool = True


class PipelineConfig(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    live: LiveConfig = Field(default_factory=LiveConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)


def load_config(
    path: Optional[str | Path] = None,
    overrides: Optional[dict] = None,
    sets: tuple[str, ...] | list[str] = (),
) -> PipelineConfig:
    """Defaults <- YAML file <- `overrides` (nested dict, e.g. from CLI flags) <- `sets`
    (`key.path=value` strings; `key.path=` sets null)."""
    data: dict = {}
    origin = "defaults"
    if path is not None:
        data = config_loader.read_yaml(path, "config file")
        origin = str(path)
    if overrides:
        data = config_loader.deep_merge(data, overrides)
        origin += " + command-line flags"
    if sets:
        data = config_loader.deep_merge(data, config_loader.parse_overrides(sets))
        origin += " + --set"
    return config_loader.validate(PipelineConfig, data, origin)
