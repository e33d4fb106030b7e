"""`vmstream run`: analyse files, directories, globs and live URLs."""

from __future__ import annotations

import sys
from pathlib import Path

from vmstream.cli.common import add_common, add_model_args, config_from_args, make_output_dirs
from vmstream.errors import UserError
from vmstream.stages.sampling_kinds import SAMPLING_KINDS


def add_parser(sub) -> None:
    run = sub.add_parser(
        "run",
        help="analyse videos: files, directories, globs, live URLs",
        description="Decode SOURCEs into segments, run VideoMamba carrying its state from "
        "segment to segment, write Parquet + a FAISS index under --out "
        "(and Kafka with --kafka), print a per-segment timeline.",
    )
    run.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="video file, directory (each file its own stream), glob, or URL (rtsp://, http://, tcp://, ...)",
    )
    run.add_argument("--config", help="YAML config (see configs/); flags override it")
    add_model_args(run)
    run.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        help="matmul precision (default fp32, exact; bf16 is faster on CPUs with AVX512-BF16/AMX, "
        "with a small drift, see the README)",
    )
    run.add_argument("--out", help="output directory (Parquet, index, snapshots); default runs/latest")
    run.add_argument("--kafka", metavar="BOOTSTRAP", help="also publish results to Kafka at host:port")
    run.add_argument("--fps", type=float, help="frames sampled per second of video (default 1)")
    run.add_argument(
        "--sampling",
        choices=SAMPLING_KINDS,
        help="frame sampling (default fps; keyframes is fast but approximate in time)",
    )
    run.add_argument("--segment-frames", type=int, metavar="T", help="frames per segment (default: the model's)")
    run.add_argument("--decoder", choices=["auto", "pyav", "dali"], help="decoding backend (default auto)")
    run.add_argument("--audio", action="store_true", default=None, help="attach per-segment audio log-mel features")
    run.add_argument("--summary", choices=["last", "mean"], help="video-level labels from the last segment or the mean")
    run.add_argument("--top-k", type=int, help="labels kept per segment (default 5)")
    run.add_argument("--max-streams", type=int, help="streams decoded concurrently (default 2)")
    run.add_argument("--plot", action="store_true", default=None, help="write a timeline plot per video at the end")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument(
        "--labels",
        metavar="LIST|FILE",
        help="classifier: a file naming its classes; video-text model: open-vocabulary labels, "
        '"cooking,riding a bike" or a file with one prompt a line',
    )
    run.add_argument(
        "--label-template", metavar="TEXT", help='video-text labels: prompt template, e.g. "a video of {}"'
    )
    run.add_argument(
        "--vocab",
        metavar="FILE",
        help="video-text models: bert-base-uncased vocab.txt (default $VMSTREAM_BERT_VOCAB or the hub cache)",
    )
    add_common(run)
    run.set_defaults(handler=main)


def main(args) -> int:
    from vmstream.pipeline.assembly import build_runner, build_sinks, load_pipeline_model, with_live_options
    from vmstream.pipeline.disk_full import disk_full
    from vmstream.pipeline.manifest import write_manifest
    from vmstream.pipeline.progress import Progress
    from vmstream.pipeline.signals import StopSignals
    from vmstream.stages.sources import SourceSpecError, resolve_sources

    cfg = config_from_args(args)
    make_output_dirs(cfg)
    try:
        sources = resolve_sources(list(args.sources))
    except (SourceSpecError, ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    if not sources:
        raise UserError(f"no video found in {' '.join(args.sources)}")
    sources = with_live_options(cfg, sources)
    model = load_pipeline_model(cfg)
    progress = Progress(enabled=cfg.runner.progress)
    try:
        sinks = build_sinks(cfg, model, console_stream=progress)
        runner = build_runner(cfg, model=model, sinks=sinks, progress=progress)
        _warn_on_mixed_precision(cfg)
        write_manifest(cfg.output.dir, model.card, cfg.model_dump(mode="json"), sources)
    except OSError as e:
        full = disk_full(e, "the run's output", cfg.output.dir)
        if full is None:
            raise
        raise full from None
    with StopSignals(runner.stop, what="flushing sinks, saving snapshots") as signals, progress.logging_above():
        try:
            report = runner.run(sources)
        finally:
            progress.close()
    print(report.format(), file=sys.stderr)
    if cfg.output.plot:
        _plots(Path(cfg.output.dir))
    for sid, status in report.statuses.items():
        if status == "truncated":
            print(
                f"warning: {sid}: the data ends before the container's duration (truncated); "
                "its results cover what could be decoded",
                file=sys.stderr,
            )
    if report.streams_stopped:
        where = runner.snapshots.location
        print(
            f"stopped: {report.streams_stopped} of {report.streams} streams did not finish; run the same "
            f"command again to resume them" + (f" (snapshots in {where})" if where else ""),
            file=sys.stderr,
        )
        return 130
    if signals.received:
        print(f"{signals.received} came after every stream had finished: nothing left to resume", file=sys.stderr)
    return 1 if report.streams_failed else 0


def _warn_on_mixed_precision(cfg) -> None:
    """bf16 embeddings are close to fp32 ones, not equal (README, Precision): adding one
    precision's results to a store of the other is allowed, but said."""
    from vmstream.pipeline.manifest import read_manifest

    out = Path(cfg.output.dir)
    try:
        before = read_manifest(out)
    except (OSError, ValueError):
        return
    if not before or not (out / "segments").exists():
        return
    was = ((before.get("config") or {}).get("model") or {}).get("precision") or "fp32"
    now = cfg.model.precision
    if was != now:
        print(
            f"warning: {out} holds {was} results; this run adds {now} ones to the same store (close to "
            f"{was}, not equal) and run.json will say {now}; use another --out to keep them apart",
            file=sys.stderr,
        )


def _plots(out: Path) -> None:
    from vmstream.stages.sinks.plot import plot_timeline

    try:
        paths = plot_timeline(out, out / "plots" / "timeline.png")
    except ValueError as e:  # nothing to plot (every stream failed)
        print(f"plot: {e}", file=sys.stderr)
        return
    for path in paths:
        print(f"plot: {path}", file=sys.stderr)
