"""`vmstream info`: versions, devices, and which optional backends are usable, and why not."""

from __future__ import annotations

import importlib
import platform
import shutil


def _version(mod: str) -> str:
    try:
        m = importlib.import_module(mod)
    except Exception as e:  # noqa: BLE001 - any import failure is the answer
        return f"not usable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return getattr(m, "__version__", "installed")


def collect_info() -> dict:
    import torch

    info: dict = {}
    import vmstream

    info["vmstream"] = vmstream.__version__
    info["python"] = platform.python_version()
    info["platform"] = platform.platform()
    info["torch"] = torch.__version__
    info["torchaudio"] = _version("torchaudio")
    info["av (PyAV)"] = _version("av")
    info["pyarrow"] = _version("pyarrow")
    info["faiss"] = _version("faiss")
    info["kafka-python"] = _version("kafka")
    info["cpu threads"] = str(torch.get_num_threads())
    cuda = torch.cuda.is_available()
    if cuda:
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda"] = f"{torch.version.cuda}: " + ", ".join(names)
    else:
        info["cuda"] = "no CUDA device" + ("" if torch.version.cuda else " (torch built without CUDA)")

    backends: dict[str, str] = {}
    from vmstream.models.ops import available_backends

    for name, why in available_backends().items():
        backends[f"scan: {name}"] = why
    # DALI
    try:
        import nvidia.dali as dali  # noqa: F401

        backends["decode: dali"] = (
            f"ok ({dali.__version__}, NVDEC)"
            if cuda
            else f"CPU variant only ({dali.__version__}): VP8/VP9/MJPEG, no H.264; PyAV is used by default"
        )
    except Exception as e:  # noqa: BLE001
        backends["decode: dali"] = f"not installed (pip install 'vmstream[dali]'): {type(e).__name__}"
    backends["decode: pyav"] = "ok" if not info["av (PyAV)"].startswith("not") else info["av (PyAV)"]
    # faiss-gpu
    try:
        import faiss

        ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if not hasattr(faiss, "StandardGpuResources"):
            backends["index: faiss-gpu"] = "faiss-cpu installed (pip install 'vmstream[gpu]' for faiss-gpu)"
        elif ngpu == 0:
            backends["index: faiss-gpu"] = "faiss-gpu installed but no GPU visible"
        else:
            backends["index: faiss-gpu"] = f"ok ({ngpu} GPUs)"
    except Exception as e:  # noqa: BLE001
        backends["index: faiss-gpu"] = f"faiss not usable: {e}"
    info["backends"] = backends
    info["ffmpeg CLI"] = shutil.which("ffmpeg") or "not found (only needed for tests/benchmarks)"
    return info


def print_info() -> int:
    info = collect_info()
    backends = info.pop("backends")
    width = max(len(k) for k in list(info) + list(backends))
    for k, v in info.items():
        print(f"{k:<{width}}  {v}")
    print("backends:")
    for k, v in backends.items():
        print(f"  {k:<{width - 2}}  {v}")
    return 0
