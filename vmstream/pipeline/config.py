"""Pipeline configuration: one validated tree, from YAML presets and CLI flags.

pydantic does the validation so that an unknown key or a bad value is an error that
names the key path and what is wrong (`decode.fps: Input should be greater than 0`),
before any work starts. Presets live in `configs/`; CLI flags override them. Reading,
merging and `--set KEY=VALUE` parsing are `vmstream.config_loader`'s, shared with the
training recipes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vmstream import config_loader
from vmstream.config_loader import ConfigError, parse_override
from vmstream.scan_backend_names import ScanBackendSetting, check_backend_name
from vmstream.stages.sampling_kinds import SAMPLING_KINDS

__all__ = ["PipelineConfig", "ConfigError", "load_config", "parse_override"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    # A registry name (downloaded from the Hugging Face hub into its cache) or a local
    # checkpoint file; a checkpoint wins when both are given.
    name: Optional[str] = "videomamba_t16_k400_f16_res224"
    checkpoint: Optional[str] = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    scan_backend: ScanBackendSetting = "auto"
    top_k: int = Field(5, ge=1, le=100)
    # Video-level answer of a finite stream: the last segment's logits (they have seen
    # the whole video through the carried state) or the mean over segments.
    summary: Literal["last", "mean"] = "last"
    # Segments of up to this many different streams are stacked into one forward; "auto":
    # the size with the most segments/s on this machine, measured on a first run's own
    # segments (starting at 1, no wait) and cached (pipeline/batch_size.py).
    max_batch: Union[int, Literal["auto"]] = "auto"
    # Classifier: a label names file (one per line) overriding the checkpoint's class list.
    # Video-text model: open-vocabulary labels, "a,b,c" or a file with one prompt a line.
    labels: Optional[str] = None
    # Video-text labels: a prompt template such as "a video of {}".
    label_template: Optional[str] = None
    # Video-text models: the bert-base-uncased vocab.txt (default: $VMSTREAM_BERT_VOCAB or the hub cache).
    vocab: Optional[str] = None
    # Matmul precision: fp32 (exact to the official outputs) or bf16 (about twice the
    # matmul speed on CPUs with AVX512-BF16/AMX; scan, state and norms stay fp32;
    # its drift is in the README).
    precision: Literal["fp32", "bf16"] = "fp32"

    @field_validator("scan_backend", mode="before")
    @classmethod
    def _removed_backend(cls, v):
        if v == "cuda":  # old configs: say where it went, not just what is allowed
            check_backend_name(v)
        return v

    @field_validator("max_batch", mode="before")
    @classmethod
    def _max_batch(cls, v):
        if v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 256:
            raise ValueError(f"must be 'auto' or a whole number from 1 to 256, got {v!r}")
        return v


class DecodeConfig(_Strict):
    backend: Literal["auto", "pyav", "dali"] = "auto"
    # `stages.sampling.make_policy`'s names: "fps": frames at a target rate (archives,
    # live); "uniform": N (uniform_frames) frames spread over a file; "tsn": N chunks, the
    # centre frame of each (the official evaluation sampling); "keyframes": keyframes only
    # (fast, approximate in time); "all": every frame.
    sampling: Literal[SAMPLING_KINDS] = "fps"
    fps: float = Field(1.0, gt=0, le=1000)
    # Upper bounds on what allocates per stream (frames held, pixels per frame, threads):
    # past them a typo costs gigabytes (1e9 frames, 8192-pixel frames, 100000 threads).
    uniform_frames: int = Field(16, ge=1, le=1024)
    # Frame size and resize mode: unset = the model card's (its training preprocessing).
    img_size: Optional[int] = Field(None, ge=16, le=1024)
    resize: Optional[Literal["short_side_crop", "direct"]] = None
    audio: bool = False
    threads: int = Field(0, ge=0, le=64)  # decoder threads; 0 = automatic
    # H.264 files: runs of GOPs decoded this many at once, each on its own decoder
    # (stages/decode/gop_pool.py); 1 = one decoder, as before the pool.
    gop_workers: int = Field(2, ge=1, le=16)
    # Inputs declaring larger frames (width x height) are refused when probed; the
    # default 8192x8192 admits 8K video (see stages/decode/frame_bound.py).
    max_frame_pixels: int = Field(8192 * 8192, ge=1, le=16384 * 16384)  # FFmpeg's own limit

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


class StoreConfig(_Strict):
    """Where a run's, a worker's or an indexer's store lives (`output.store`)."""

    # faiss: the embedded store under output.dir (FAISS index + Parquet result tables);
    # milvus: the vectors in Milvus at `uri` (the Parquet tables stay under output.dir);
    # none: no local store (a fleet's workers, whose results go to Kafka and one
    # `vmstream index` keeps the one store).
    backend: Literal["faiss", "milvus", "none"] = "faiss"
    # Milvus: ./store.db (a file: milvus-lite, embedded) or http://host:19530 (a server).
    uri: Optional[str] = None
    collection: str = "vmstream_segments"

    @model_validator(mode="after")
    def _milvus_uri(self):
        if self.backend == "milvus" and not self.uri:
            raise ValueError(
                "the milvus backend needs output.store.uri (./store.db for milvus-lite, http://host:19530 for a server)"
            )
        return self


class OutputConfig(_Strict):
    dir: str = "runs/latest"
    store: StoreConfig = Field(default_factory=StoreConfig)
    parquet: bool = True
    faiss: bool = True
    faiss_kind: Literal["auto", "flat", "ivfpq", "ivfsq8", "hnsw"] = "auto"  # store.index.KINDS, or auto
    console: bool = True
    plot: bool = False


# The demuxers of single-file video containers (FFmpeg's names; "mov" covers mp4, m4v,
# 3gp, "matroska" covers webm) and of camera feeds (rtsp, rtp, MJPEG over http): none of
# them opens a file or URL named inside the data.
DEFAULT_JOB_FORMATS = (
    "mov",
    "matroska",
    "mpegts",
    "avi",
    "flv",
    "mpeg",
    "asf",
    "ogg",
    "ivf",
    "mxf",
    "h264",
    "hevc",
    "m4v",
    "mpegvideo",
    "yuv4mpegpipe",
    "obu",
    "av1",
    "rtsp",
    "rtp",
    "mpjpeg",
    "mjpeg",
)


class JobPolicyConfig(_Strict):
    """What the worker's jobs may read (`kafka.jobs`); see the README's Kafka section.
    Jobs only: `vmstream run` reads whatever its operator names."""

    # URI schemes a job may name ("file" for local paths, "rtsp", "http", ...).
    schemes: list[str] = Field(default_factory=lambda: ["file"])
    # Directories a local job must be under (after symlinks); none: no local file.
    roots: list[str] = Field(default_factory=list)
    # Hosts (names, IP addresses or networks such as 10.0.0.0/8) a network job may name.
    hosts: list[str] = Field(default_factory=list)
    # Job option keys a job may set: of "reconnect", "timeout", "format", "ffmpeg".
    options: list[str] = Field(default_factory=lambda: ["reconnect", "timeout"])
    # FFmpeg option names a job may set under options.ffmpeg (when "ffmpeg" is allowed).
    ffmpeg_options: list[str] = Field(default_factory=list)
    # FFmpeg options the worker sets for every job (a job's own cannot override them).
    ffmpeg: dict[str, str] = Field(default_factory=dict)
    # A job may reuse a stream id known with another uri (replacing that stream's results).
    allow_replace: bool = False
    # FFmpeg demuxers a job's input may be read with (its container format, as FFmpeg
    # probes it, whatever the file is named). Single-file containers only by default:
    # playlist formats (hls, dash, concat, ...) open the URLs written inside them, which
    # the rules above never see; list one here only if every playlist a job can name is trusted.
    formats: list[str] = Field(default_factory=lambda: list(DEFAULT_JOB_FORMATS))

    @field_validator("schemes")
    @classmethod
    def _schemes(cls, v: list[str]) -> list[str]:
        for s in v:
            if not isinstance(s, str) or not s.replace("+", "").replace("-", "").replace(".", "").isalnum():
                raise ValueError(f"{s!r} is not a URI scheme (e.g. file, rtsp, https)")
        return [s.lower() for s in v]

    @field_validator("roots")
    @classmethod
    def _roots(cls, v: list[str]) -> list[str]:
        for r in v:
            if not r.startswith("/"):
                raise ValueError(f"{r!r} must be an absolute directory")
        return v

    @field_validator("options")
    @classmethod
    def _options(cls, v: list[str]) -> list[str]:
        known = ("reconnect", "timeout", "format", "ffmpeg")
        for k in v:
            if k not in known:
                raise ValueError(f"{k!r} is not a job option (one of {', '.join(known)})")
        return v

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: list[str]) -> list[str]:
        import re

        for f in v:
            if not isinstance(f, str) or not re.fullmatch(r"[a-z0-9_]+", f):
                raise ValueError(f"{f!r} is not an FFmpeg demuxer name (e.g. mov, matroska, mpegts)")
        if not v:
            raise ValueError("no format at all would refuse every job; list the demuxers jobs may use")
        return v

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        import ipaddress
        import re

        for h in v:
            try:
                ipaddress.ip_network(h, strict=False)
            except ValueError:
                if not re.fullmatch(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", h):
                    raise ValueError(f"{h!r} is neither a host name, an IP address nor a network") from None
        return [h.lower() for h in v]


class KafkaConfig(_Strict):
    bootstrap: Optional[str] = None
    results_topic: str = "vmstream.segments"
    events_topic: str = "vmstream.events"
    summaries_topic: str = "vmstream.summaries"
    jobs_topic: str = "vmstream.jobs"
    state_topic: str = "vmstream.state"
    dead_letter_topic: str = "vmstream.dead-letter"
    group_id: str = "vmstream-workers"
    # The consumer group `vmstream index` reports its progress under (the offsets it
    # resumes from are the ones its store holds; the group's are a hint for monitoring).
    indexer_group_id: str = "vmstream-indexer"
    # Passed through to kafka-python (security_protocol, ssl_*, sasl_* ...).
    client: dict[str, Any] = Field(default_factory=dict)
    # Passed to the worker's jobs consumer only, on top of `client`: group timing
    # (session_timeout_ms, heartbeat_interval_ms, max_poll_interval_ms), which the
    # producers and admin clients that also take `client` would refuse.
    consumer: dict[str, Any] = Field(default_factory=dict)
    jobs: JobPolicyConfig = Field(default_factory=JobPolicyConfig)

    @field_validator("client")
    @classmethod
    def _client_names(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _kafka_options(v, "client", ("producer", "consumer", "admin"))

    @field_validator("consumer")
    @classmethod
    def _consumer_names(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _kafka_options(v, "consumer", ("consumer",))


# The values kafka-python accepts (its KafkaProducer/KafkaConsumer docs); anything else
# fails only when a connection is made, far from the config that set it.
_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")

# Set by vmstream itself from kafka.bootstrap and its record formats.
_KAFKA_OWN = ("bootstrap_servers", "key_serializer", "value_serializer", "key_deserializer", "value_deserializer")


def _kafka_options(options: dict[str, Any], field: str, clients: tuple[str, ...]) -> dict[str, Any]:
    """Check option names against kafka-python's own lists, with or without a bootstrap:
    a typo in a security setting must fail here, not connect without it later.
    `kafka.client` goes to producers, consumers and admin clients alike, so its names
    must suit all three."""
    try:
        from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    except ImportError:  # without kafka-python nothing uses these options
        return options
    import difflib

    known = {
        "producer": KafkaProducer.DEFAULT_CONFIG,
        "consumer": KafkaConsumer.DEFAULT_CONFIG,
        "admin": KafkaAdminClient.DEFAULT_CONFIG,
    }
    every = set().union(*known.values())
    for key in options:
        name = str(key).replace(".", "_").replace("-", "_")
        if name in _KAFKA_OWN:
            raise ValueError(f"{key!r} is set by vmstream (kafka.bootstrap), not here")
        if name not in every:
            close = difflib.get_close_matches(name, sorted(every), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"unknown kafka-python option {key!r}{hint}")
        refusing = [c for c in clients if name not in known[c]]
        if refusing:
            takers = [c for c in known if name in known[c]]
            where = (
                "goes to Kafka producers, consumers and admin clients alike"
                if field == "client"
                else "goes to the worker's jobs consumer"
            )
            raise ValueError(
                f"{key!r} is an option of the Kafka {' and '.join(takers)} only, and kafka.{field} "
                f"{where}"
                + ("; put consumer options under kafka.consumer" if field == "client" and "consumer" in takers else "")
            )
        if name == "security_protocol" and options[key] not in _SECURITY_PROTOCOLS:
            raise ValueError(f"{key!r} is {options[key]!r}; kafka-python accepts {', '.join(_SECURITY_PROTOCOLS)}")
    return options


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
