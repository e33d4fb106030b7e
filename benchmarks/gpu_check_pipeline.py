"""The pipeline step of benchmarks/gpu_check.py: N parallel streams end to end (decode,
model, sinks) against each stage alone, measured in one run.

  decode-only  the pipeline's decoder + segmenter on all N streams at once (N threads)
  model-only   those segments through the inference stage on the device, one segment of
               every stream per step (batched across streams, as the runner does)
  pipeline     the runner: decode, inference and sinks (Parquet + FAISS) in their threads

The runner overlaps the stages, so its segments per second should approach the slowest
stage's. Decoding is DALI (NVDEC) where it imports and a GPU is there, else PyAV.
"""

from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from gpu_check_decode import make_video


@dataclass(frozen=True)
class PipelinePlan:
    streams: int
    video: tuple  # width, height, fps, seconds
    sample_fps: float
    frames: int  # segment length T
    model: str  # a model name of the gpu_check plan


def _decode_all(decoder, sources, policy, size, frames: int) -> list:
    from vmstream.records import Segment
    from vmstream.stages.segmenter import Segmenter

    def one(src):
        items = Segmenter(frames).segments(decoder.frames(src, policy, size), uri=src.uri)
        return [s for s in items if isinstance(s, Segment)]

    with ThreadPoolExecutor(len(sources)) as pool:
        return list(pool.map(one, sources))


def _model_only(stage, per_stream: list, device: str, sync) -> float:
    """Seconds to run every stream's segments, one segment of each stream per step."""
    from vmstream.records import Segment

    first = per_stream[0][0]
    stage.process([Segment("warm", 0, 0, 0, first.pixels)])  # builds/compiles the kernels
    stage.drop("warm")
    sync(device)
    t0 = time.perf_counter()
    for k in range(max(len(s) for s in per_stream)):
        stage.process([segs[k] for segs in per_stream if k < len(segs)])
    sync(device)
    return time.perf_counter() - t0


def pipeline_step(rep, plan, pp: PipelinePlan, build_model, sync) -> None:
    try:
        from vmstream.pipeline.assembly import build_runner
        from vmstream.pipeline.config import load_config
        from vmstream.stages.decode import make_decoder
        from vmstream.stages.decode.dali import dali_available
        from vmstream.stages.inference import InferenceStage
        from vmstream.stages.media import FrameSize
        from vmstream.stages.sampling import FpsSampling
        from vmstream.stages.sinks.faiss_store import FaissSink
        from vmstream.stages.sinks.parquet import ParquetSink
        from vmstream.stages.sources import resolve_sources
    except ImportError as e:
        rep.skip("pipeline", f"a package of the pipeline is missing ({e})", "pipeline_seg_per_s")
        return
    backend = "dali" if plan.device == "cuda" and dali_available() else "pyav"
    key = f"pipeline_{pp.streams}x{pp.video[1]}p"
    with tempfile.TemporaryDirectory() as d:
        clip = os.path.join(d, "clip.mp4")
        make_video(clip, "libx264", *pp.video)
        paths = []
        for i in range(pp.streams):  # one file per stream: streams are named after them
            paths.append(os.path.join(d, f"stream_{i:02d}.mp4"))
            os.link(clip, paths[-1])
        sources = resolve_sources(paths)
        model = build_model(plan, pp.model, pp.frames)
        size = FrameSize(model.card.img_size, model.card.img_size)
        t0 = time.perf_counter()
        per_stream = _decode_all(make_decoder(backend), sources, FpsSampling(pp.sample_fps), size, pp.frames)
        t_decode = time.perf_counter() - t0
        n = sum(len(s) for s in per_stream)
        stage = InferenceStage(model, device=plan.device)
        t_model = _model_only(stage, per_stream, plan.device, sync)
        del per_stream, stage
        out = os.path.join(d, "out")
        cfg = load_config(
            overrides={
                "model": {"name": None, "checkpoint": None, "device": plan.device, "max_batch": pp.streams},
                "decode": {"backend": backend, "fps": pp.sample_fps},
                "segment": {"frames": pp.frames},
                "output": {"dir": out, "console": False},
                "runner": {"progress": False, "snapshot_every": 0, "max_streams": pp.streams},
            }
        )
        sinks = [ParquetSink(out), FaissSink(os.path.join(out, "index"), dim=model.embed_dim)]
        runner = build_runner(cfg, model=model, sinks=sinks)
        t0 = time.perf_counter()
        report = runner.run(sources)
        t_pipe = time.perf_counter() - t0
    if report.segments != n:
        raise RuntimeError(f"the pipeline made {report.segments} segments, decode-only {n}")
    slowest = max(t_decode, t_model)
    rep.line(
        f"{pp.streams} streams {pp.video[0]}x{pp.video[1]}, {backend} decoding, {pp.model} "
        f"{pp.frames}x{model.card.img_size}: {n} segments"
    )
    rep.line(
        f"decode-only {n / t_decode:8.2f} segments/s   model-only {n / t_model:8.2f} segments/s   "
        f"pipeline {n / t_pipe:8.2f} segments/s = {slowest / t_pipe:.0%} of the slowest stage"
    )
    rep.figure(f"{key}_seg_per_s", n / t_pipe)
    rep.figure(f"{key}_vs_slowest_stage", slowest / t_pipe)
