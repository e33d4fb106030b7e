"""Assembly: a validated config in, a wired runner out; and the `run` / `search` commands.

Everything that turns configuration into objects lives here, so the CLI, the Kafka
worker and tests build pipelines the same way.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from vmstream.pipeline.cli import UserError
from vmstream.pipeline.config import ConfigError, PipelineConfig, load_config

log = logging.getLogger(__name__)

RUN_MANIFEST = "run.json"


# --------------------------------------------------------------------------- model


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA device (see `vmstream info`)")
    return name


def load_pipeline_model(cfg: PipelineConfig):
    """The model the config names (a checkpoint file wins over a registry name)."""
    from vmstream.models import CheckpointError, CheckpointNotFound, load_model

    if cfg.model.scan_backend != "auto":
        os.environ["VMSTREAM_SCAN_BACKEND"] = cfg.model.scan_backend
    ref = cfg.model.checkpoint or cfg.model.name
    if not ref:
        raise UserError("no model: pass --model NAME or --checkpoint PATH (see configs/)")
    overrides = {}
    if cfg.decode.img_size:
        overrides["img_size"] = cfg.decode.img_size
    try:
        model = load_model(ref, **overrides)
    except (CheckpointNotFound, CheckpointError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    if cfg.model.labels:
        p = Path(cfg.model.labels)
        if not p.is_file():
            raise UserError(f"model.labels: {p} does not exist")
        names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
        n = model.head.out_features if hasattr(model.head, "out_features") else None
        if n is not None and len(names) != n:
            raise UserError(f"model.labels: {p} has {len(names)} names, the model has {n} classes")
        model.default_cfg["class_names"] = names
    return model


# --------------------------------------------------------------------------- stages


def make_policy(cfg: PipelineConfig):
    from vmstream.stages.sampling import AllFrames, FpsSampling, UniformSampling

    d = cfg.decode
    if d.sampling == "fps":
        return FpsSampling(d.fps)
    if d.sampling == "uniform":
        return UniformSampling(d.uniform_frames)
    if d.sampling == "keyframes":
        return AllFrames(keyframes_only=True)
    return AllFrames()


def make_size(cfg: PipelineConfig):
    from vmstream.stages.decode import FrameSize

    return FrameSize(cfg.decode.img_size, cfg.decode.img_size, cfg.decode.resize)


def make_decoder(cfg: PipelineConfig):
    from vmstream.stages.decode import make_decoder as _make

    kwargs = {}
    if cfg.decode.threads:
        kwargs["threads"] = cfg.decode.threads
    return _make(cfg.decode.backend, **kwargs)


def segment_frames(cfg: PipelineConfig, model) -> int:
    return int(cfg.segment.frames or model.default_cfg.get("num_frames") or model.num_frames)


def make_segmenter_factory(cfg: PipelineConfig, num_frames: int):
    from vmstream.stages.segmenter import Segmenter

    def factory(source):
        return Segmenter(num_frames=num_frames, drop_last=cfg.segment.drop_last)

    return factory


def make_audio_factory(cfg: PipelineConfig):
    if not cfg.decode.audio:
        return None
    from vmstream.stages.audio import AudioFeatures

    return AudioFeatures.factory()


def build_sinks(cfg: PipelineConfig, model, *, console_stream=None) -> list:
    from vmstream.stages.sinks.console import ConsoleSink

    out = Path(cfg.output.dir)
    sinks = []
    if cfg.output.parquet:
        from vmstream.stages.sinks.parquet import ParquetSink

        sinks.append(ParquetSink(out))
    if cfg.output.faiss:
        from vmstream.stages.sinks.faiss_store import FaissSink

        kind = None if cfg.output.faiss_kind == "auto" else cfg.output.faiss_kind
        sinks.append(FaissSink(out / "index", dim=int(model.embed_dim), kind=kind))
    if cfg.kafka.bootstrap:
        sinks.append(make_kafka_sink(cfg))
    if cfg.output.console:
        # Through the progress bar's writer, so timeline lines do not tear the bar.
        writer = console_stream.write if console_stream is not None else None
        sinks.append(ConsoleSink(writer=writer))
    return sinks


def make_kafka_sink(cfg: PipelineConfig, *, create_topics: bool = True):
    """The Kafka results sink; the results/events/summaries topics are created first
    when missing (the project's admin step; auto-creation is off on the broker)."""
    from vmstream.kafka.topics import TopicNames, ensure_topics, vmstream_topics
    from vmstream.stages.sinks.kafka import KafkaSink

    names = TopicNames.from_config(cfg.kafka)
    if create_topics:
        wanted = set(names.sink_topics().values())
        specs = [s for s in vmstream_topics(names) if s.name in wanted]
        try:
            ensure_topics(cfg.kafka.bootstrap, specs, client_config=cfg.kafka.client)
        except (ConnectionError, OSError) as e:
            raise UserError(f"Kafka at {cfg.kafka.bootstrap}: {e}") from None
    return KafkaSink(cfg.kafka.bootstrap, topics=names.sink_topics(), client_config=cfg.kafka.client,
                     spill_dir=Path(cfg.output.dir) / "kafka-spill")


def build_runner(cfg: PipelineConfig, *, model=None, sinks=None, state_store=None, progress=None,
                 flush_on_stream_end: bool = False):
    """A ready (not started) runner for `cfg`. Pass `model`/`sinks`/`state_store` to
    reuse or replace the configured ones (tests, the worker)."""
    from vmstream.pipeline.runner import Runner
    from vmstream.pipeline.snapshots import LocalStateStore
    from vmstream.stages.inference import InferenceStage

    if model is None:
        model = load_pipeline_model(cfg)
    device = resolve_device(cfg.model.device)
    inference = InferenceStage(model, device=device, top_k=cfg.model.top_k, summary=cfg.model.summary)
    if sinks is None:
        sinks = build_sinks(cfg, model)
    if state_store is None:
        state_store = LocalStateStore(cfg.runner.state_dir or Path(cfg.output.dir) / "state")
    return Runner(
        decoder=make_decoder(cfg),
        policy=make_policy(cfg),
        size=make_size(cfg),
        segmenter_factory=make_segmenter_factory(cfg, segment_frames(cfg, model)),
        audio_factory=make_audio_factory(cfg),
        inference=inference,
        sinks=sinks,
        state_store=state_store,
        queue_size=cfg.runner.queue_size,
        max_streams=cfg.runner.max_streams,
        max_batch=cfg.model.max_batch,
        snapshot_every=cfg.runner.snapshot_every,
        flush_on_stream_end=flush_on_stream_end,
        progress=progress,
    )


# --------------------------------------------------------------------------- progress


class Progress:
    """A tqdm bar over the known duration of all finite streams (seconds of video done),
    with segments/s; live streams count segments only. Called from runner threads."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and sys.stderr.isatty() or enabled == "force"
        self._bar = None
        self._total = 0.0
        self._done: dict[str, float] = {}
        self._start: dict[str, float] = {}
        self._lock = threading.Lock()
        self.segments = 0

    def __call__(self, item) -> None:
        from vmstream.records import SegmentResult

        with self._lock:
            if isinstance(item, tuple) and item[0] == "stream":
                _, sid, info = item
                if info.duration and not info.live:
                    self._total += float(info.duration)
                    self._start[sid] = float(info.start_time or 0.0)
                if self.enabled:
                    self._ensure_bar()
                    self._bar.total = round(self._total, 1) or None
                    self._bar.refresh()
                return
            if isinstance(item, SegmentResult):
                self.segments += 1
                if self._bar is None:
                    return
                sid = item.stream_id
                if sid in self._start:
                    done = max(0.0, item.t_end - self._start[sid])
                    delta = done - self._done.get(sid, 0.0)
                    self._done[sid] = done
                    self._bar.update(round(max(delta, 0.0), 1))
                self._bar.set_postfix(segments=self.segments, refresh=False)

    def _ensure_bar(self) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=None, unit="s", unit_scale=False, desc="video", dynamic_ncols=True,
                             bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s "
                                        "[{elapsed}<{remaining}, {postfix}]")

    def write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# --------------------------------------------------------------------------- run


def config_from_args(args) -> PipelineConfig:
    over: dict[str, Any] = {}

    def put(path: str, value) -> None:
        if value is None:
            return
        d = over
        parts = path.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = value

    put("model.checkpoint", getattr(args, "checkpoint", None))  # wins over model.name
    put("model.name", getattr(args, "model", None))
    put("model.device", getattr(args, "device", None))
    put("output.dir", getattr(args, "out", None))
    put("kafka.bootstrap", getattr(args, "kafka", None))
    put("decode.fps", getattr(args, "fps", None))
    put("decode.sampling", getattr(args, "sampling", None))
    put("decode.backend", getattr(args, "decoder", None))
    put("decode.audio", getattr(args, "audio", None))
    put("segment.frames", getattr(args, "segment_frames", None))
    put("model.summary", getattr(args, "summary", None))
    put("model.top_k", getattr(args, "top_k", None))
    put("runner.max_streams", getattr(args, "max_streams", None))
    put("output.plot", getattr(args, "plot", None))
    if getattr(args, "no_progress", False):
        put("runner.progress", False)
    try:
        return load_config(getattr(args, "config", None), overrides=over, sets=getattr(args, "sets", []))
    except ConfigError as e:
        raise UserError(str(e)) from None


def write_manifest(cfg: PipelineConfig, model, sources: Sequence) -> None:
    out = Path(cfg.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "model": model.default_cfg.get("name"),
        "checkpoint": model.default_cfg.get("checkpoint"),
        "checkpoint_digest": model.default_cfg.get("checkpoint_digest"),
        "config": cfg.model_dump(mode="json"),
        "sources": [s.uri for s in sources],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = out / (RUN_MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out / RUN_MANIFEST)


class _Signals:
    """SIGINT/SIGTERM stop the runner cleanly (flush sinks, save the index and the
    streams' snapshots); a second signal exits at once."""

    def __init__(self, runner):
        self.runner = runner
        self.count = 0
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.count += 1
        if self.count > 1:
            print("\nvmstream: second signal, exiting without cleanup", file=sys.stderr)
            os._exit(130)
        print(f"\nvmstream: {signal.Signals(signum).name}: stopping (flushing sinks, saving snapshots; "
              "again to abort)", file=sys.stderr)
        self.runner.stop()

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def with_live_options(cfg: PipelineConfig, sources: Sequence) -> list:
    """Live sources get the config's reconnect policy and timeout unless their own
    options (e.g. a Kafka job's) set them."""
    import dataclasses

    live = cfg.live
    policy = {
        "initial": live.backoff_initial,
        "max_delay": live.backoff_max,
        "give_up_after": live.give_up_after or None,
    }
    if not live.reconnect:
        policy["max_tries"] = 0
    out = []
    for s in sources:
        if s.live:
            opts = dict(s.options)
            opts.setdefault("reconnect", policy)
            opts.setdefault("timeout", live.open_timeout)
            s = dataclasses.replace(s, options=opts)
        out.append(s)
    return out


def cmd_run(args) -> int:
    from vmstream.stages.sources import SourceSpecError, resolve_sources

    cfg = config_from_args(args)
    try:
        sources = resolve_sources(list(args.sources))
    except (SourceSpecError, ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    if not sources:
        raise UserError(f"no video found in {' '.join(args.sources)}")
    sources = with_live_options(cfg, sources)
    model = load_pipeline_model(cfg)
    progress = Progress(enabled=cfg.runner.progress)
    sinks = build_sinks(cfg, model, console_stream=progress)
    runner = build_runner(cfg, model=model, sinks=sinks, progress=progress)
    write_manifest(cfg, model, sources)
    with _Signals(runner):
        try:
            report = runner.run(sources)
        finally:
            progress.close()
    print(report.format(), file=sys.stderr)
    if cfg.output.plot:
        _plots(cfg, report)
    if report.stopped:
        print(f"stopped; run the same command again to resume (snapshots in {Path(cfg.output.dir) / 'state'})",
              file=sys.stderr)
        return 130
    return 1 if report.streams_failed else 0


def _plots(cfg: PipelineConfig, report) -> None:
    from vmstream.stages.sinks.plot import plot_timeline

    out = Path(cfg.output.dir)
    try:
        paths = plot_timeline(out, out / "plots" / "timeline.png")
    except ValueError as e:  # nothing to plot (every stream failed)
        print(f"plot: {e}", file=sys.stderr)
        return
    for path in paths:
        print(f"plot: {path}", file=sys.stderr)


# --------------------------------------------------------------------------- search


def _store_dir(path: str) -> Path:
    p = Path(path)
    if (p / "index" / "CURRENT").exists():
        return p / "index"
    return p


def embed_video(cfg: PipelineConfig, model, uri: str):
    """Segment embeddings [n, D], their (t_start, t_end), of one video, as the run would
    compute them (same decoding, segmenting and carried state)."""
    import numpy as np

    from vmstream.records import SegmentResult
    from vmstream.stages.decode.base import probe_for_policy
    from vmstream.stages.inference import InferenceStage
    from vmstream.stages.sources import resolve_sources

    (src,) = resolve_sources([uri])
    decoder, policy = make_decoder(cfg), make_policy(cfg)
    try:
        info = probe_for_policy(decoder, src.uri, src.options, policy)
    except ValueError as e:  # VideoInputError included: the message names the input
        raise UserError(str(e)) from None
    stage = InferenceStage(model, device=resolve_device(cfg.model.device), top_k=cfg.model.top_k)
    seg = make_segmenter_factory(cfg, segment_frames(cfg, model))(src)
    items = seg.segments(decoder.frames(src, policy, make_size(cfg), info=info), uri=src.uri)
    embs, spans = [], []
    for r in stage.run(items):
        if isinstance(r, SegmentResult):
            embs.append(r.embedding)
            spans.append((r.t_start, r.t_end))
    if not embs:
        raise UserError(f"{uri}: no segment could be made from this video")
    return np.stack(embs), spans


def cmd_search(args) -> int:
    from vmstream.stages.sinks.store import VideoStore

    store_dir = _store_dir(args.index)
    try:
        store = VideoStore(store_dir, readonly=True)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    k = args.k
    if args.id is not None:
        if store.get(args.id) is None:
            raise UserError(f"id {args.id} is not in the store {store_dir}")
        hits = store.search_id(args.id, k)
    elif args.stream is not None:
        if args.at is None:
            raise UserError("--stream needs --at SECONDS")
        if args.stream not in store.streams():
            raise UserError(f"stream {args.stream!r} is not in the store {store_dir}")
        hits = store.search_at(args.stream, args.at, k)
    else:
        cfg = _search_config(args, store, store_dir)
        model = load_pipeline_model(cfg)
        digest = store.meta.get("checkpoint_digest") or ""
        if digest and model.default_cfg.get("checkpoint_digest") and digest != model.default_cfg["checkpoint_digest"]:
            raise UserError(f"the store was built with checkpoint {digest[:12]}…, the query model is "
                            f"{model.default_cfg['checkpoint_digest'][:12]}…; embeddings would not be comparable")
        embs, spans = embed_video(cfg, model, args.video)
        if args.at is not None:
            i = min(range(len(spans)), key=lambda j: 0 if spans[j][0] <= args.at <= spans[j][1]
                    else min(abs(spans[j][0] - args.at), abs(spans[j][1] - args.at)))
            hits = store.search(embs[i], k)
        else:
            hits = store.search_video(embs, k)
    _print_hits(hits, as_json=args.json)
    return 0


def _search_config(args, store, store_dir: Path) -> PipelineConfig:
    """Embed the query video with the store's decoding and segmenting (its embeddings are
    comparable only then), and with the store's model unless --model/--checkpoint name it
    (e.g. the checkpoint file moved; the digest check catches a different model). A
    --config replaces the store's settings; --set overrides either."""
    manifest = store_dir.parent / RUN_MANIFEST
    if getattr(args, "config", None) or not manifest.exists():
        return config_from_args(args)
    run_cfg = json.loads(manifest.read_text()).get("config", {})
    data = {k: dict(run_cfg[k]) for k in ("model", "decode", "segment") if k in run_cfg}
    model = data.setdefault("model", {})
    if getattr(args, "checkpoint", None) or getattr(args, "model", None):
        model["checkpoint"] = getattr(args, "checkpoint", None)
        model["name"] = getattr(args, "model", None) or model.get("name")
    if getattr(args, "device", None):
        model["device"] = args.device
    try:
        return load_config(overrides=data, sets=getattr(args, "sets", []))
    except ConfigError as e:
        raise UserError(f"{manifest}: {e}") from None


def _print_hits(hits, as_json: bool = False) -> None:
    for rank, h in enumerate(hits, 1):
        if as_json:
            print(json.dumps({"rank": rank, "uid": h.uid, "score": round(float(h.score), 6), "stream_id": h.stream_id,
                              "segment_index": h.segment_index, "t_start": h.t_start, "t_end": h.t_end,
                              "uri": h.uri, "labels": list(h.labels)}))
        else:
            label = f"  {h.label}" if h.labels else ""
            print(f"{rank:3d}. {h.score:.4f}  {h.stream_id}  [{_hms(h.t_start)}-{_hms(h.t_end)}]  "
                  f"segment {h.segment_index}  id {h.uid}{label}")
    if not hits:
        print("no hits")


def _hms(t: float) -> str:
    t = max(0.0, float(t))
    h, rem = divmod(t, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h)}:{int(m):02d}:{s:04.1f}" if h else f"{int(m)}:{s:04.1f}"
