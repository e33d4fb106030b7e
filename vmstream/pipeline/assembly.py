"""Assembly: a validated config in, wired objects out (model, decoder, sampling policy,
segmenter, sinks, runner). Every command and the Kafka worker build pipelines here, so
they build them the same way; no command logic lives here."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from vmstream.errors import UserError
from vmstream.pipeline.config import PipelineConfig


def resolve_device(name: str):
    """The torch device a config names (models.resolve_device), as a user error."""
    from vmstream.models import resolve_device as _resolve

    try:
        return _resolve(name)
    except ValueError as e:
        raise UserError(f"model.device: {e}") from None


def load_pipeline_model(cfg: PipelineConfig):
    """The model the config names (a checkpoint file wins over a registry name), on the
    config's scan backend and precision (the model's own, nothing process-wide)."""
    from vmstream.models import CheckpointError, CheckpointNotFound, load_model
    from vmstream.models.ops.dispatch import check_backend

    backend = scan_backend(cfg)
    try:
        check_backend(backend, resolve_device(cfg.model.device))
    except ValueError as e:
        raise UserError(f"model.scan_backend: {e}") from None
    ref = cfg.model.checkpoint or cfg.model.name
    if not ref:
        raise UserError("no model: pass --model NAME or --checkpoint PATH (see configs/)")
    overrides = {}
    if cfg.decode.img_size:
        overrides["img_size"] = cfg.decode.img_size
    try:
        model = load_model(ref, scan_backend=backend, precision=cfg.model.precision, **overrides)
    except (CheckpointNotFound, CheckpointError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    if cfg.model.labels and is_videotext(model):
        set_open_labels(model, cfg)
    elif cfg.model.labels:
        p = Path(cfg.model.labels)
        if p.exists() and not p.is_file():  # a directory, FIFO or device: reading one may never end
            raise UserError(f"model.labels: {p} is not a regular file")
        if not p.is_file():
            if "," in cfg.model.labels or not cfg.model.labels.endswith(".txt"):
                raise UserError(
                    f"--labels {cfg.model.labels!r}: open-vocabulary labels need a video-text model "
                    f"(e.g. videomamba_m16_25M_f8_res224); model {model.card.name!r} is a classifier, "
                    "whose labels are a file naming its classes"
                )
            raise UserError(f"model.labels: {p} does not exist")
        try:
            names = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except UnicodeDecodeError as e:
            raise UserError(
                f"model.labels: {p} is not a text file of class names (not valid UTF-8: byte "
                f"0x{e.object[e.start]:02x} at offset {e.start})"
            ) from None
        n = model.head.out_features if hasattr(model.head, "out_features") else None
        if n is not None and len(names) != n:
            raise UserError(f"model.labels: {p} has {len(names)} names, the model has {n} classes")
        model.card = model.card.replace(class_names=tuple(names))
    return model


def scan_backend(cfg: PipelineConfig):
    """The scan backend `model.scan_backend` names (None for "auto": by the device)."""
    return None if cfg.model.scan_backend == "auto" else cfg.model.scan_backend


def is_videotext(model) -> bool:
    from vmstream.models.text_query import is_videotext as _is

    return _is(model)


def make_tokenizer(vocab=None):
    """The video-text tokenizer, its missing vocabulary a user error."""
    from vmstream.models.tokenizer import BertTokenizer, VocabularyNotFound

    try:
        return BertTokenizer(vocab)
    except (VocabularyNotFound, ValueError, ImportError) as e:
        raise UserError(str(e)) from None


def set_open_labels(model, cfg: PipelineConfig) -> None:
    """Encode the configured label prompts; segments get softmax(similarity / temp) labels."""
    from vmstream.models.text_query import encode_queries, parse_labels

    try:
        names, prompts = parse_labels(cfg.model.labels, cfg.model.label_template)
        feats = encode_queries(model, prompts, tokenizer=make_tokenizer(cfg.model.vocab))
    except ValueError as e:
        raise UserError(f"--labels: {e}") from None
    model.set_label_prompts(feats, names)


def sampling_policy(cfg: PipelineConfig):
    from vmstream.stages.sampling import make_policy

    d = cfg.decode
    return make_policy(d.sampling, fps=d.fps, num_frames=d.uniform_frames)


def data_config(cfg: PipelineConfig, model):
    """The model's preprocessing (its card), with what the config sets winning."""
    from vmstream.models.card import resolve_data_config

    return resolve_data_config(model, img_size=cfg.decode.img_size, crop=cfg.decode.resize)


def make_size(cfg: PipelineConfig, model):
    from vmstream.stages.decode import FrameSize

    dc = data_config(cfg, model)
    return FrameSize(dc.img_size, dc.img_size, dc.crop, interpolation=dc.interpolation.upper())


def make_decoder(cfg: PipelineConfig):
    from vmstream.stages.decode import make_decoder as _make

    kwargs = {"max_frame_pixels": cfg.decode.max_frame_pixels, "gop_workers": cfg.decode.gop_workers}
    if cfg.decode.threads:
        kwargs["threads"] = cfg.decode.threads
    return _make(cfg.decode.backend, **kwargs)


def segment_frames(cfg: PipelineConfig, model) -> int:
    return int(cfg.segment.frames or model.card.num_frames)


def make_segmenter_factory(cfg: PipelineConfig, model):
    from vmstream.stages.segmenter import Segmenter

    num_frames = segment_frames(cfg, model)
    dc = data_config(cfg, model)

    def factory(source):
        return Segmenter(num_frames=num_frames, drop_last=cfg.segment.drop_last, mean=dc.mean, std=dc.std)

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
    try:
        local_store = cfg.output.store.backend != "none"
        if cfg.output.parquet and local_store:
            from vmstream.stages.sinks.parquet import ParquetSink

            sinks.append(ParquetSink(out))
        if cfg.output.faiss and local_store:
            from vmstream.stages.sinks.faiss_store import FaissSink

            kind = None if cfg.output.faiss_kind == "auto" else cfg.output.faiss_kind
            # A video-text model's segment embeddings are scored by inner product (see models/videotext.py).
            metric = "ip" if is_videotext(model) else None
            try:
                sinks.append(
                    FaissSink(
                        out / "index",
                        store=open_configured_store(
                            cfg, out / "index", dim=int(model.embed_dim), kind=kind, metric=metric
                        ),
                    )
                )
            except UserError:
                raise
            except ValueError as e:  # a store of another model's vectors (dim, kind, metric)
                raise UserError(
                    f"output.dir {out}: {e}; another model's results are there: give this model another --out"
                ) from None
        if cfg.kafka.bootstrap:
            sinks.append(make_kafka_sink(cfg))
    except BaseException:
        # A sink that cannot open (a damaged store, an unreachable broker) must not leave
        # the ones before it open: their locks would outlive the failed start.
        for s in sinks:
            try:
                s.close()
            except Exception:
                pass
        raise
    if cfg.output.console:
        # Through the progress bar's writer, so timeline lines do not tear the bar.
        writer = console_stream.write if console_stream is not None else None
        # The bar is closed before the summary table, so its final state is not drawn again below it.
        sinks.append(ConsoleSink(writer=writer, before_table=getattr(console_stream, "close", None)))
    return sinks


def open_configured_store(cfg: PipelineConfig, path: Path, **options):
    """The store `output.store` names, at `path` (FAISS options pass through; Milvus
    takes dim and metric)."""
    from vmstream.store import open_store

    st = cfg.output.store
    if st.backend == "milvus":
        options = {k: v for k, v in options.items() if k in ("dim", "metric")}
        return open_store(path, backend="milvus", uri=st.uri, collection=st.collection, **options)
    return open_store(path, backend="faiss", **options)


def make_kafka_sink(cfg: PipelineConfig, *, create_topics: bool = True):
    """The Kafka results sink; the results/events/summaries topics are created first
    when missing (the project's admin step; auto-creation is off on the broker)."""
    from vmstream.kafka.client import nothing_listens
    from vmstream.kafka.topics import TopicNames, ensure_topics, vmstream_topics
    from vmstream.stages.sinks.kafka import KafkaSink

    # Without this a run told to use a broker that is not there would wait kafka-python's
    # whole bootstrap timeout (30 s) in silence before saying so.
    why = nothing_listens(cfg.kafka.bootstrap)
    if why:
        raise UserError(f"Kafka at {cfg.kafka.bootstrap}: cannot connect ({why}): is the broker running?")
    names = TopicNames.from_config(cfg.kafka)
    if create_topics:
        wanted = set(names.sink_topics().values())
        specs = [s for s in vmstream_topics(names) if s.name in wanted]
        try:
            ensure_topics(cfg.kafka.bootstrap, specs, client_config=cfg.kafka.client)
        except (ConnectionError, OSError) as e:
            raise UserError(f"Kafka at {cfg.kafka.bootstrap}: {e}") from None
    return KafkaSink(
        cfg.kafka.bootstrap,
        topics=names.sink_topics(),
        client_config=cfg.kafka.client,
        spill_dir=Path(cfg.output.dir) / "kafka-spill",
    )


def build_plan(cfg: PipelineConfig, model):
    """How every stream of a run is decoded and cut into segments (plan.StreamPlan)."""
    from vmstream.pipeline.plan import StreamPlan

    return StreamPlan(
        decoder=make_decoder(cfg),
        policy=sampling_policy(cfg),
        size=make_size(cfg, model),
        segmenter_factory=make_segmenter_factory(cfg, model),
        audio_factory=make_audio_factory(cfg),
    )


def make_inference(cfg: PipelineConfig, model):
    from vmstream.stages.inference import InferenceStage

    return InferenceStage(
        model, device=resolve_device(cfg.model.device), top_k=cfg.model.top_k, summary=cfg.model.summary
    )


def build_runner(
    cfg: PipelineConfig,
    *,
    model=None,
    sinks=None,
    state_store=None,
    progress=None,
    flush_on_stream_end: bool = False,
    allow_replace: bool = True,
):
    """A ready (not started) runner for `cfg`. Pass `model`/`sinks`/`state_store` to
    reuse or replace the configured ones (tests, the worker); `allow_replace=False`
    refuses a stream id already run from another uri (the worker's jobs)."""
    from vmstream.pipeline.batch_size import batch_policy
    from vmstream.pipeline.runner import Runner
    from vmstream.pipeline.snapshot_keeper import SnapshotKeeper
    from vmstream.pipeline.snapshots import LocalStateStore

    if model is None:
        model = load_pipeline_model(cfg)
    inference = make_inference(cfg, model)
    if sinks is None:
        sinks = build_sinks(cfg, model)
    if state_store is None:
        state_store = LocalStateStore(cfg.runner.state_dir or Path(cfg.output.dir) / "state")
    return Runner(
        plan=build_plan(cfg, model),
        inference=inference,
        sinks=sinks,
        snapshots=SnapshotKeeper(state_store, inference, every=cfg.runner.snapshot_every, allow_replace=allow_replace),
        queue_size=cfg.runner.queue_size,
        max_streams=cfg.runner.max_streams,
        max_batch=batch_policy(
            cfg.model.max_batch,
            model=model,
            max_streams=cfg.runner.max_streams,
            device=inference.device,
            frames=segment_frames(cfg, model),
            precision=cfg.model.precision,
        ),
        flush_on_stream_end=flush_on_stream_end,
        progress=progress,
    )


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
