"""The decoding step of benchmarks/gpu_check.py: DALI (NVDEC on a GPU) against PyAV on
the same clips, for each sampling policy (timestamps equal, pixel error), and decode
speed. The clips are made here with PyAV's encoders (x264, x265, libvpx), so nothing
but PyAV is needed to make them.
"""

from __future__ import annotations

import os
import tempfile

import torch


def make_video(path: str, encoder: str, w: int, h: int, fps: int, seconds: int) -> None:
    """A clip with moving structure and noise (compresses like footage), keyframe every second."""
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    base = (xx % 256 + yy // 2) % 256
    img = np.stack([base, (base + 85) % 256, 255 - base], axis=-1)
    # three noisy frames, scrolled 4 px per frame: cheap to make at 1080p (~5 ms a frame)
    noisy = [np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8) for _ in range(3)]
    with av.open(path, "w") as out:
        s = out.add_stream(encoder, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.gop_size = fps
        if encoder in ("libx264", "libx265"):
            s.options = {"preset": "ultrafast"}
        for i in range(fps * seconds):
            frame = np.roll(noisy[i % 3], -4 * i, axis=1)
            for pkt in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)


def decode_all(decoder, path: str, policy, size) -> list:
    from vmstream.stages.sources import source_from_uri

    frames = []
    for item in decoder.frames(source_from_uri(path), policy, size):
        if getattr(item, "kind", None) == "end":
            continue
        img = item.image
        frames.append((item.t, img.cpu().numpy() if hasattr(img, "cpu") else img))
    return frames


def _dali_decoder(plan):
    """DALIDecoder for this plan, or (None, why not)."""
    try:
        from vmstream.stages.decode.dali import DALIDecoder, dali_available
    except ImportError as e:  # PyAV or pyarrow missing
        return None, f"vmstream's DALI backend does not import ({e})"
    if not dali_available():
        return None, "nvidia-dali not installed (benchmarks/gpu_check_wheels.txt)"
    if plan.device == "cuda" and not torch.cuda.is_available():
        return None, "no CUDA device"
    return DALIDecoder(device=plan.dali_device, fallback=False), None


def decoding(rep, plan, median_time) -> None:
    try:
        import av  # noqa: F401

        from vmstream.stages.decode.pyav import PyAVDecoder
        from vmstream.stages.media import FrameSize
        from vmstream.stages.sampling import parse_policy
    except ImportError as e:
        rep.skip("decoding", f"PyAV (or pyarrow) not installed ({e})", "decode_nvdec_fps", "decode_pyav_fps")
        return
    dali, why = _dali_decoder(plan)
    size = FrameSize(plan.img, plan.img)
    pyav = PyAVDecoder()
    with tempfile.TemporaryDirectory() as d:
        for label, encoder, suffix in plan.codecs:
            path = os.path.join(d, f"clip_{label}{suffix}")
            make_video(path, encoder, *plan.video)
            if dali is None:
                rep.skip(f"DALI {plan.dali_device} against PyAV on {label}", why, f"decode_{label}_pixel_mae")
                continue
            worst_mae, ts_equal = 0.0, True
            for spec in plan.policies:
                policy = parse_policy(spec)
                ref, got = decode_all(pyav, path, policy, size), decode_all(dali, path, policy, size)
                same_t = len(ref) == len(got) and all(abs(a[0] - b[0]) < 1e-6 for a, b in zip(ref, got))
                mae = max(
                    (float(abs(a[1].astype("int16") - b[1].astype("int16")).mean()) for a, b in zip(ref, got)),
                    default=0.0,
                )
                ts_equal &= same_t
                worst_mae = max(worst_mae, mae)
                rep.line(
                    f"{label} {spec:16s} frames {len(got):4d}/{len(ref):4d} timestamps "
                    f"{'equal' if same_t else 'DIFFER'}  pixel MAE {mae:.2f}"
                )
            rep.figure(f"decode_{label}_timestamps_equal", float(ts_equal))
            rep.check(f"decode_{label}_pixel_mae", worst_mae, 8.0)
            if not ts_equal:
                rep.failures += 1
        decode_speed(rep, plan, d, pyav, dali, why, size, median_time)


def decode_speed(rep, plan, d: str, pyav, dali, why, size, median_time) -> None:
    from vmstream.stages.sampling import AllFrames

    if rep.out_of_time("decode speed"):
        return
    label, encoder, suffix = plan.codecs[0]
    w, h, fps, seconds = plan.video_fps_test
    path = os.path.join(d, f"speed_{label}{suffix}")
    make_video(path, encoder, w, h, fps, seconds)
    n = fps * seconds
    t_pyav = median_time(lambda: decode_all(pyav, path, AllFrames(), size), "cpu", repeats=2, warmup=0)
    rep.figure("decode_pyav_fps", n / t_pyav)
    rep.line(f"{label} {w}x{h}: PyAV {n / t_pyav:.0f} fps on {os.cpu_count()} CPUs")
    if dali is None:
        rep.skip(f"DALI {plan.dali_device} decode speed", why, "decode_nvdec_fps")
        return
    if plan.dali_device == "cpu":
        rep.skip("DALI decode speed", "dry run: DALI's CPU variant has no H.264", "decode_nvdec_fps")
        return
    t_dali = median_time(lambda: decode_all(dali, path, AllFrames(), size), plan.device, repeats=2, warmup=1)
    rep.figure("decode_nvdec_fps", n / t_dali)
    rep.line(f"{label} {w}x{h}: NVDEC {n / t_dali:.0f} fps ({t_pyav / t_dali:.1f}x PyAV)")
