"""Bad input to the `vmstream` command, run as a person runs it (a subprocess, as from a
shell): each case ends in ONE line on stderr naming the input and what is wrong, exit
code 2 (1 where the README's exit-code table says a stream failed), never a traceback.
Issue 20 item 1 and 8, issue 25 item 5."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch

from tests.fixtures.videomamba import make_tiny_model
from tests.fixtures.videotext import TINY_VOCAB, make_tiny_videotext

pytestmark = pytest.mark.skipif(not shutil.which("ffmpeg"), reason="needs the ffmpeg CLI")

VMSTREAM = [sys.executable, "-m", "vmstream.cli"]
VOCAB = TINY_VOCAB
# The tiny video-text model's BERT has 60 word embeddings (tests/fixtures/videotext.py).
BIG_VOCAB = VOCAB + [f"word{i}" for i in range(100)]
SMALL = ["--fps", "4", "--set", "decode.img_size=32", "--no-progress", "--set", "output.console=false"]
# vmstream's own INFO notices (decoder and scan backend choice) are not error lines.
_INFO = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO ")


def vmstream(*args, env=None, timeout=300, **kw) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("TRITON_INTERPRET", None)  # conftest's, for in-process Triton tests; a user has none
    argv = [*VMSTREAM, *(a if isinstance(a, bytes) else str(a) for a in args)]
    return subprocess.run(argv, capture_output=True, env=full_env, timeout=timeout, **kw)


def error_lines(res) -> list[str]:
    err = res.stderr.decode(errors="replace")
    assert "Traceback" not in err, err
    return [ln for ln in err.splitlines() if ln.strip() and not _INFO.match(ln)]


def one_line(res, *needles, code: int = 2) -> str:
    lines = error_lines(res)
    assert res.returncode == code, res.stderr.decode(errors="replace")
    assert len(lines) == 1, "\n".join(lines)
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory, h264_mp4):
    """Checkpoints of a tiny classifier and a tiny video-text model, vocabularies, and the
    outputs of a run of each (made through the CLI in-process: they are the setting)."""
    from vmstream.cli import main

    d = tmp_path_factory.mktemp("oneline")
    torch.save({"model": make_tiny_videotext(seed=3).state_dict()}, d / "vt.pth")
    torch.save({"model": make_tiny_model(seed=5).state_dict()}, d / "cls.pth")
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (d / "big_vocab.txt").write_text("\n".join(BIG_VOCAB) + "\n")
    (d / "binary.txt").write_bytes(bytes(range(256)) * 8)
    assert main(["run", h264_mp4, "--checkpoint", str(d / "cls.pth"), "--out", str(d / "cls_out"), *SMALL]) == 0
    assert (
        main(
            [
                "run",
                h264_mp4,
                "--checkpoint",
                str(d / "vt.pth"),
                "--out",
                str(d / "vt_out"),
                "--vocab",
                str(d / "vocab.txt"),
                *SMALL,
            ]
        )
        == 0
    )
    return d


# --------------------------------------------------------------- issue 20, item 1


def test_search_text_with_a_vocabulary_larger_than_the_models(files):
    res = vmstream("search", "--index", files / "vt_out", "--text", "a dog", "--vocab", files / "big_vocab.txt")
    one_line(res, "vmstream search:", str(files / "big_vocab.txt"), f"has {len(BIG_VOCAB)} tokens", "knows 60")


def test_run_labels_with_a_vocabulary_larger_than_the_models(files, h264_mp4, tmp_path):
    res = vmstream(
        "run",
        h264_mp4,
        "--checkpoint",
        files / "vt.pth",
        "--out",
        tmp_path / "out",
        "--vocab",
        files / "big_vocab.txt",
        "--labels",
        "a dog,cooking",
        *SMALL,
    )
    one_line(res, "vmstream run:", str(files / "big_vocab.txt"), "knows 60")


def test_eval_retrieval_with_a_vocabulary_larger_than_the_models(files, h264_mp4, tmp_path):
    vids = tmp_path / "videos"
    vids.mkdir()
    shutil.copy(h264_mp4, vids / "a.mp4")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([{"video": "a.mp4", "caption": "a dog catches the frisbee"}]))
    res = vmstream(
        "eval-retrieval",
        "--checkpoint",
        files / "vt.pth",
        "--annotations",
        ann,
        "--videos",
        vids,
        "--vocab",
        files / "big_vocab.txt",
        "--max-text-len",
        "16",
    )
    one_line(res, "vmstream eval-retrieval:", str(files / "big_vocab.txt"), "knows 60")


def test_search_video_that_does_not_exist_is_refused_before_the_model_loads(files, tmp_path):
    # The store's model is gone: had the model loaded first, the error would name it.
    out = tmp_path / "out"
    shutil.copytree(files / "cls_out", out)
    manifest = json.loads((out / "run.json").read_text())
    manifest["config"]["model"]["checkpoint"] = str(tmp_path / "gone.pth")
    (out / "run.json").write_text(json.dumps(manifest))
    res = vmstream("search", "--index", out, "--video", "nosuch.mp4")
    one_line(res, "vmstream search:", "--video nosuch.mp4", "no such file")


def test_run_into_an_out_holding_another_models_store(files, h264_mp4):
    res = vmstream(
        "run",
        h264_mp4,
        "--checkpoint",
        files / "vt.pth",
        "--out",
        files / "cls_out",
        "--vocab",
        files / "vocab.txt",
        *SMALL,
    )
    one_line(res, "vmstream run:", str(files / "cls_out"), "32-dim", "dim=16", "another --out")


@pytest.mark.parametrize(
    "recipe, extra",
    [
        ("configs/train/k400/videomamba_tiny_f16x224.yaml", []),
        (
            "configs/pretrain/k400/videomamba_middle_mask_pt_f8x224.yaml",
            ["--set", "pretrain.clip_teacher_weights=/weights/vit_b16.pth"],
        ),
    ],
)
def test_the_readmes_training_commands_without_the_data(tmp_path, recipe, extra):
    data = tmp_path / "k400"
    res = vmstream(
        "train",
        "--config",
        recipe,
        "--set",
        f"data_path={data}",
        "--set",
        f"prefix={data}/videos",
        "--set",
        f"output_dir={tmp_path / 'out'}",
        *extra,
    )
    one_line(res, "vmstream train:", "annotation list", str(data))


def test_gpu_check_dry_run_without_triton_skips_its_checks_in_one_line_each(tmp_path):
    # The runtime venv has no Triton (an extra): the same as a triton that cannot be imported.
    (tmp_path / "triton.py").write_text("raise ImportError('No module named triton (test stand-in)')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--dry-run"], capture_output=True, text=True, env=env, timeout=900
    )
    assert "Traceback" not in res.stdout + res.stderr, res.stderr
    skips = [ln for ln in res.stdout.splitlines() if ln.strip().startswith("SKIP Triton")]
    # scan and conv parity, and the scan's speed against the reference
    assert len(skips) == 3 and all("triton not importable" in ln for ln in skips), res.stdout
    assert res.returncode == 0 and "gpu_check_ok=1" in res.stdout, res.stdout[-3000:]


# --------------------------------------------------------------- issue 20, item 8


def test_a_synthetic_proof_that_misses_its_threshold_says_why(tmp_path):
    res = vmstream(
        "train",
        "--config",
        "configs/train/synthetic_memory.yaml",
        "--set",
        "epochs=1",
        "--set",
        "synthetic.train_videos=32",
        "--set",
        "synthetic.val_videos=32",
        "--set",
        "synthetic.train_reset_control=false",
        "--set",
        "synthetic.seed=1",
    )
    lines = error_lines(res)
    assert res.returncode == 1
    assert lines[-1].startswith("vmstream train: the proof failed: carried_state_accuracy="), lines
    assert "under its threshold 0.9000" in lines[-1]


def test_search_id_with_at_is_an_error(files):
    one_line(
        vmstream("search", "--index", files / "cls_out", "--id", "1", "--at", "3"), "vmstream search:", "--at 3", "--id"
    )


def test_json_hits_say_id_as_the_text_does_and_keep_uid(files):
    from vmstream.store import VideoStore

    store = VideoStore(files / "cls_out" / "index", readonly=True)
    uid = int(store.ids.table.column("uid").to_pylist()[0])
    text = vmstream("search", "--index", files / "cls_out", "--id", uid, "-k", "1")
    js = vmstream("search", "--index", files / "cls_out", "--id", uid, "-k", "1", "--json")
    assert text.returncode == js.returncode == 0, js.stderr
    hit = json.loads(js.stdout.decode().splitlines()[0])
    assert hit["id"] == hit["uid"] and isinstance(hit["id"], int)
    assert f"id {hit['id']}" in text.stdout.decode()


def test_control_characters_in_queries_are_never_echoed_raw(files):
    res = vmstream(
        "search",
        "--index",
        files / "vt_out",
        "--text",
        "a \x1b[31mdog\x1b[0m",
        "--text",
        "cooking",
        "--vocab",
        files / "vocab.txt",
        "-k",
        "1",
    )
    out = res.stdout.decode()
    assert res.returncode == 0 and "\x1b" not in out, res.stderr
    assert "query: a \\x1b[31mdog\\x1b[0m" in out
    line = one_line(
        vmstream("search", "--index", files / "cls_out", "--video", "\x1b]0;pwned\x07x.mp4"),
        "--video",
        "\\x1b]0;pwned\\x07x.mp4",
    )
    assert "\x1b" not in line and "\x07" not in line


# --------------------------------------------------------------- issue 25, item 5


def test_a_checkpoint_with_a_flipped_bit_is_refused_naming_its_member(files, h264_mp4, tmp_path):
    data = bytearray((files / "cls.pth").read_bytes())
    data[len(data) // 2] ^= 0x10  # inside the tensors' bytes, which torch.load does not check
    bad = tmp_path / "flipped.pth"
    bad.write_bytes(bytes(data))
    res = vmstream("run", h264_mp4, "--checkpoint", bad, "--out", tmp_path / "out", *SMALL)
    one_line(res, "vmstream run:", str(bad), "is damaged", "its member", "CRC-32")


def test_checkpoint_crc_check_passes_a_sound_file_and_names_the_damaged_member(files, tmp_path):
    from vmstream.models.archive_check import DamagedArchive, check_archive

    assert check_archive(files / "cls.pth") is True
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    assert check_archive(legacy) is False  # the pre-1.6 format has no CRCs to check
    import zipfile

    with zipfile.ZipFile(files / "cls.pth") as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data = bytearray((files / "cls.pth").read_bytes())
    data[start + info.file_size - 1] ^= 1  # the member's last byte
    bad = tmp_path / "bad.pth"
    bad.write_bytes(bytes(data))
    with pytest.raises(DamagedArchive, match=re.escape(info.filename)):
        check_archive(bad)


def test_a_fifo_as_input_is_not_opened(files, tmp_path):
    fifo = tmp_path / "live.mp4"
    os.mkfifo(fifo)
    res = vmstream("run", fifo, "--checkpoint", files / "cls.pth", "--out", tmp_path / "out", *SMALL, timeout=120)
    lines = error_lines(res)
    assert res.returncode == 1, lines
    failed = [ln for ln in lines if "FAILED" in ln]
    assert failed == [f"  FAILED {fifo}: not a regular file (a FIFO); only files and URLs are read as media"]


def test_a_fifo_among_a_folders_files_fails_alone(files, h264_mp4, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(h264_mp4, folder / "a.mp4")
    os.mkfifo(folder / "b.mp4")
    res = vmstream("run", folder, "--checkpoint", files / "cls.pth", "--out", tmp_path / "out", *SMALL, timeout=120)
    lines = error_lines(res)
    assert res.returncode == 1, lines
    assert [ln.strip() for ln in lines if "FAILED" in ln] == [
        f"FAILED {folder / 'b.mp4'}: not a regular file (a FIFO); only files and URLs are read as media"
    ]
    assert any(ln.startswith("run: 2 streams (1 failed)") for ln in lines), lines


@pytest.mark.parametrize(
    "setting, limit",
    [
        ("decode.threads=100000", "less than or equal to 64"),
        ("decode.uniform_frames=1000000000", "less than or equal to 1024"),
        ("decode.img_size=8192", "less than or equal to 1024"),
        ("decode.max_frame_pixels=1000000000000", "less than or equal to 268435456"),
    ],
)
def test_settings_that_allocate_have_an_upper_bound(files, h264_mp4, tmp_path, setting, limit):
    res = vmstream(
        "run", h264_mp4, "--checkpoint", files / "cls.pth", "--out", tmp_path / "out", "--no-progress", "--set", setting
    )
    one_line(res, "vmstream run:", setting.split("=")[0], limit)


def test_non_utf8_bytes_in_text_and_labels(files, h264_mp4, tmp_path):
    res = vmstream("search", "--index", files / "vt_out", "--text", b"a \xff dog", "--vocab", files / "vocab.txt")
    one_line(res, "vmstream search:", "text query 1", "not valid UTF-8", "0xff")
    res = vmstream(
        "run",
        h264_mp4,
        "--checkpoint",
        files / "vt.pth",
        "--out",
        tmp_path / "out",
        "--vocab",
        files / "vocab.txt",
        "--labels",
        b"a \xfe dog,cooking",
        *SMALL,
    )
    one_line(res, "vmstream run:", "--labels", "not valid UTF-8", "0xfe")


def test_binary_files_as_vocab_and_as_labels(files, h264_mp4, tmp_path):
    binary = files / "binary.txt"
    res = vmstream("search", "--index", files / "vt_out", "--text", "a dog", "--vocab", binary)
    one_line(res, "vmstream search:", str(binary), "not a BERT WordPiece vocabulary")
    res = vmstream(
        "run", h264_mp4, "--checkpoint", files / "cls.pth", "--out", tmp_path / "o1", "--labels", binary, *SMALL
    )
    one_line(res, "vmstream run:", "model.labels", str(binary), "not a text file")
    res = vmstream(
        "run",
        h264_mp4,
        "--checkpoint",
        files / "vt.pth",
        "--out",
        tmp_path / "o2",
        "--vocab",
        files / "vocab.txt",
        "--labels",
        binary,
        *SMALL,
    )
    one_line(res, "vmstream run:", str(binary), "not a text file")


@pytest.mark.parametrize(
    "backend, says",
    [
        ("bogus", "model.scan_backend: Input should be 'auto', 'ref'"),
        ("cuda", "model.scan_backend: scan backend 'cuda' was removed with vmstream's mamba-ssm backend"),
        ("triton", "model.scan_backend: scan backend 'triton'"),
    ],
)
def test_a_scan_backend_that_cannot_run_here(files, h264_mp4, tmp_path, backend, says):
    if backend == "triton" and torch.cuda.is_available():
        pytest.skip("a GPU is here: the backend can run")
    choose = ("--set", f"model.scan_backend={backend}")
    res = vmstream("run", h264_mp4, "--checkpoint", files / "cls.pth", "--out", tmp_path / "out", *SMALL, *choose)
    one_line(res, "vmstream run:", says)
    res = vmstream("search", "--index", files / "cls_out", "--video", h264_mp4, *choose)
    one_line(res, "vmstream search:", says)


def test_store_repair_on_a_read_only_directory(files, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(files / "cls_out", out)
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(out), str(ro)], capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot bind-mount here (needs root) to make a read-only directory")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        res = vmstream("store", "repair", "--force", ro)
        one_line(res, "vmstream store:", f"cannot repair the store {ro / 'index'}", "Read-only file system")
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_a_second_run_on_an_out_another_run_is_writing(files, h264_mp4, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    # The first run reads a live feed from its stdin, which the test holds open: it is writing
    # its --out until the feed ends.
    first = subprocess.Popen(
        [*VMSTREAM, "run", "pipe:0", "--checkpoint", str(files / "cls.pth"), "--out", str(out), *SMALL],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        lock = out / "segments" / ".lock"
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text().strip()):
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline, "the first run never took its --out"
            time.sleep(0.2)
        res = vmstream("run", h264_mp4, "--checkpoint", files / "cls.pth", "--out", out, *SMALL)
        one_line(res, "vmstream run:", str(out), f"locked by another run (pid {first.pid})")
    finally:
        first.stdin.close()
        try:
            first.wait(timeout=60)
        except subprocess.TimeoutExpired:
            first.kill()
            first.wait()
        first.stderr.close()


def test_a_checkpoint_head_of_another_width_names_the_width(tmp_path):
    ckpt = tmp_path / "w32.pth"
    torch.save({"model": make_tiny_model(num_classes=4, embed_dim=32).state_dict()}, ckpt)
    res = vmstream(
        "train", "--config", "configs/train/synthetic_memory.yaml", "--set", f"finetune={ckpt}", "--set", "epochs=1"
    )
    one_line(res, "vmstream train:", "both have 4 classes", "input width is 32", "the model's is 64")


def test_a_device_as_checkpoint_is_not_a_regular_file(h264_mp4, tmp_path):
    res = vmstream("run", h264_mp4, "--checkpoint", "/dev/zero", "--out", tmp_path / "out", *SMALL)
    one_line(res, "vmstream run:", "/dev/zero", "is not a regular file")


@pytest.mark.parametrize("value", ["5", "ssl", "TLS"])
def test_kafka_security_protocol_is_validated(files, h264_mp4, tmp_path, value):
    res = vmstream(
        "run",
        h264_mp4,
        "--checkpoint",
        files / "cls.pth",
        "--out",
        tmp_path / "out",
        *SMALL,
        "--set",
        f"kafka.client.security_protocol={value}",
    )
    one_line(res, "vmstream run:", "kafka.client", "'security_protocol'", "PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL")


@pytest.mark.parametrize(
    "args, says",
    [
        (["-k", "1000000000"], "argument -k: 1000000000 hits: at most 100000"),
        (["--rerank", "5000"], "argument --rerank: 5000 hits: at most 1000"),
    ],
)
def test_search_counts_have_an_upper_bound(files, args, says):
    res = vmstream("search", "--index", files / "vt_out", "--text", "a dog", *args)
    err = res.stderr.decode()
    assert res.returncode == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"vmstream search: error: {says}", err  # argparse: usage, then this


@pytest.mark.parametrize(
    "option, value, says", [("--num-frames", "100000", "at most 1024"), ("--k-test", "1000000000", "at most 100000")]
)
def test_eval_retrieval_counts_have_an_upper_bound(files, tmp_path, option, value, says):
    ann = tmp_path / "ann.json"
    ann.write_text("[]")
    res = vmstream(
        "eval-retrieval", "--checkpoint", files / "vt.pth", "--annotations", ann, "--videos", tmp_path, option, value
    )
    one_line(res, "vmstream eval-retrieval:", f"{option} {value}", says)


def test_a_character_device_as_input_is_not_opened(files, tmp_path):
    res = vmstream(
        "run", "/dev/zero", "--checkpoint", files / "cls.pth", "--out", tmp_path / "out", *SMALL, timeout=120
    )
    lines = error_lines(res)
    assert res.returncode == 1, lines
    assert [ln.strip() for ln in lines if "FAILED" in ln] == [
        "FAILED /dev/zero: not a regular file (a character device); only files and URLs are read as media"
    ]


def test_special_files_as_labels_are_not_read(files, h264_mp4, tmp_path):
    fifo = tmp_path / "labels.txt"
    os.mkfifo(fifo)
    res = vmstream(
        "run",
        h264_mp4,
        "--checkpoint",
        files / "cls.pth",
        "--out",
        tmp_path / "o1",
        "--labels",
        "/dev/zero",
        *SMALL,
        timeout=120,
    )
    one_line(res, "vmstream run:", "model.labels: /dev/zero is not a regular file")
    res = vmstream(
        "run",
        h264_mp4,
        "--checkpoint",
        files / "vt.pth",
        "--out",
        tmp_path / "o2",
        "--vocab",
        files / "vocab.txt",
        "--labels",
        fifo,
        *SMALL,
        timeout=120,
    )
    one_line(res, "vmstream run:", f"labels file {fifo} is not a regular file")


def test_train_with_a_scan_backend_that_does_not_exist():
    res = vmstream(
        "train",
        "--config",
        "configs/train/synthetic_memory.yaml",
        "--set",
        "epochs=1",
        "--set",
        "scan_backend=bogus",
    )
    one_line(res, "vmstream train:", "scan_backend: unknown scan backend 'bogus'")


def test_train_with_a_scan_backend_that_cannot_run_here():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the backend can run")
    res = vmstream(
        "train",
        "--config",
        "configs/train/synthetic_memory.yaml",
        "--set",
        "epochs=1",
        "--set",
        "scan_backend=triton",
    )
    one_line(res, "vmstream train:", "scan_backend: scan backend 'triton' needs CUDA tensors")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_to_a_broker_that_is_not_there_says_so_in_seconds(files, h264_mp4, tmp_path):
    """Nothing listens on the port: one line within the probe's window (3 s), not after
    kafka-python's 30 s bootstrap timeout. Time is bounded by the subprocess timeout only
    (tests assert no wall-clock times); the message says which case it found."""
    port = _free_port()
    res = vmstream(
        "run",
        h264_mp4,
        "--checkpoint",
        files / "cls.pth",
        "--out",
        tmp_path / "o",
        "--kafka",
        f"127.0.0.1:{port}",
        *SMALL,
        timeout=25,
    )
    one_line(res, f"Kafka at 127.0.0.1:{port}", "connection refused, nothing listens there")


def test_nothing_listens_tells_refused_and_missing_hosts_from_a_listening_port():
    import socket

    from vmstream.kafka.client import nothing_listens

    port = _free_port()
    assert "connection refused" in nothing_listens(f"127.0.0.1:{port}", window_s=0)
    assert "no such host" in nothing_listens("no-such-host.invalid:9092", window_s=0)
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        live = srv.getsockname()[1]
        assert nothing_listens(f"127.0.0.1:{port},127.0.0.1:{live}", window_s=0) is None
        assert nothing_listens([f"[::1]:{port}", f"localhost:{live}"], window_s=0) is None
