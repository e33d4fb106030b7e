"""The worker's job policy (kafka.jobs): what a job may make a worker read."""

from __future__ import annotations

import os

import pytest

from vmstream.config_loader import ConfigError
from vmstream.pipeline.config import JobPolicyConfig, load_config
from vmstream.pipeline.worker.job_policy import JobPolicy, JobRefused
from vmstream.stages.sources import source_from_job


def admit(policy: JobPolicy, job: dict):
    return policy.admit(source_from_job(job), job["uri"])


def refusal(policy: JobPolicy, job: dict) -> str:
    with pytest.raises(JobRefused) as e:
        admit(policy, job)
    return str(e.value)


@pytest.fixture
def tree(tmp_path):
    """root/ with a video and a subdirectory; outside/ next to it; symlinks out of root."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "v.mp4").write_bytes(b"x")
    (outside / "secret.mp4").write_bytes(b"x")
    (root / "escape.mp4").symlink_to(outside / "secret.mp4")
    (root / "proc-link").symlink_to("/proc/self")
    (root / "outdir").symlink_to(outside)
    return root, outside


def test_defaults_refuse_every_local_path_and_every_host(tree):
    root, _ = tree
    p = JobPolicy(JobPolicyConfig())
    assert "kafka.jobs.roots" in refusal(p, {"uri": str(root / "v.mp4")})
    assert "scheme 'rtsp'" in refusal(p, {"uri": "rtsp://10.0.0.7/stream"})
    assert "scheme 'https'" in refusal(p, {"uri": "https://example.com/a.mp4"})
    assert "scheme 'pipe'" in refusal(p, {"uri": "pipe:0"})


def test_files_under_a_root_are_admitted_resolved(tree):
    root, _ = tree
    p = JobPolicy(JobPolicyConfig(roots=[str(root)]))
    s = admit(p, {"stream_id": "a", "uri": str(root / "v.mp4")})
    assert s.uri == os.path.realpath(root / "v.mp4") and s.stream_id == "a"
    assert admit(p, {"uri": (root / "v.mp4").as_uri()}).uri == os.path.realpath(root / "v.mp4")


def test_paths_out_of_the_roots_get_one_message_whatever_exists(tree, tmp_path):
    root, outside = tree
    p = JobPolicy(JobPolicyConfig(roots=[str(root)]))
    uris = [
        "/etc/passwd",  # a file
        "file:///etc/shadow",  # a file, as a URL
        "/etc",  # a directory
        "/dev/zero",
        "/dev/sda",  # devices
        "/no/such/file.mp4",  # missing
        str(outside / "secret.mp4"),  # a file next to the root
        str(root / "escape.mp4"),  # a symlink out of the root
        str(root / "outdir" / "secret.mp4"),  # a directory symlink out of the root
        str(root / ".." / "outside" / "secret.mp4"),
        str(root / "proc-link" / "environ"),  # a symlink into /proc
        "/proc/self/environ",
        "/sys/kernel/notes",
    ]
    messages = {refusal(p, {"stream_id": "x", "uri": u}) for u in uris}
    assert len(messages) == 1
    (msg,) = messages
    assert "kafka.jobs.roots" in msg and "exist" not in msg and "directory" in msg  # the rule, not the path's kind


def test_dev_proc_sys_never_even_under_an_allowed_root(tmp_path):
    p = JobPolicy(JobPolicyConfig(roots=["/"]))
    assert admit(p, {"uri": str(tmp_path)}).uri == os.path.realpath(tmp_path)
    for u in ("/dev/zero", "/proc/self/environ", "/sys/kernel/notes", "/proc/1/../self/environ"):
        assert "kafka.jobs.roots" in refusal(p, {"uri": u})
    link = tmp_path / "proc"
    link.symlink_to("/proc")
    assert "kafka.jobs.roots" in refusal(p, {"uri": str(link / "self" / "environ")})
    p = JobPolicy(JobPolicyConfig(roots=["/proc"]))
    assert "kafka.jobs.roots" in refusal(p, {"uri": "/proc/self/environ"})


def test_hosts_names_and_networks():
    cfg = JobPolicyConfig(schemes=["rtsp", "http"], hosts=["cam.example.com", "*.cams.local", "10.0.0.0/8"])
    p = JobPolicy(cfg)
    assert admit(p, {"uri": "rtsp://cam.example.com/s"}).uri == "rtsp://cam.example.com/s"
    admit(p, {"uri": "rtsp://a.cams.local:554/s"})
    admit(p, {"uri": "rtsp://user:pw@10.1.2.3/s"})
    admit(p, {"uri": "http://10.0.0.7:8080/feed"})
    host_msgs = {
        refusal(p, {"uri": u})
        for u in (
            "rtsp://evil.example.com/s",
            "http://192.168.1.1/x.mp4",
            "http://169.254.169.254/latest/meta-data",
            "rtsp://cams.local/s",
            "http://[::1]/x.mp4",
            "http://localhost/x.mp4",
        )
    }
    assert len(host_msgs) == 1 and "kafka.jobs.hosts" in host_msgs.pop()
    assert "scheme 'https'" in refusal(p, {"uri": "https://cam.example.com/x.mp4"})
    assert "scheme 'file'" in refusal(p, {"uri": "/etc/passwd"})


def test_raw_ffmpeg_options_and_forced_formats_are_refused_by_default(tree):
    root, _ = tree
    p = JobPolicy(JobPolicyConfig(roots=[str(root)]))
    v = str(root / "v.mp4")
    rawvideo = {"format": "rawvideo", "ffmpeg": {"video_size": "8x8", "pixel_format": "gray", "framerate": "4"}}
    assert "option 'ffmpeg'" in refusal(p, {"uri": v, "options": rawvideo})
    assert "option 'format'" in refusal(p, {"uri": v, "options": {"format": "rawvideo"}})
    assert "option 'ffmpeg'" in refusal(p, {"uri": v, "options": {"ffmpeg": {"protocol_whitelist": "file,http"}}})
    formats = ",".join(JobPolicyConfig().formats)
    assert admit(p, {"uri": v, "options": {"timeout": 5}}).options == {
        "timeout": 5,
        "ffmpeg": {"protocol_whitelist": "file", "format_whitelist": formats},
    }
    # Allowed by the operator: only the named FFmpeg options; the worker's own win.
    p = JobPolicy(
        JobPolicyConfig(
            roots=[str(root)],
            options=["ffmpeg"],
            ffmpeg_options=["rtsp_transport"],
            ffmpeg={"protocol_whitelist": "file,crypto"},
        )
    )
    s = admit(p, {"uri": v, "options": {"ffmpeg": {"rtsp_transport": "tcp"}}})
    assert s.options["ffmpeg"] == {
        "rtsp_transport": "tcp",
        "protocol_whitelist": "file,crypto",
        "format_whitelist": formats,
    }
    assert "FFmpeg option 'allowed_extensions'" in refusal(
        p, {"uri": v, "options": {"ffmpeg": {"allowed_extensions": "ALL"}}}
    )
    assert admit(p, {"uri": v}).options["ffmpeg"] == {"protocol_whitelist": "file,crypto", "format_whitelist": formats}
    # Network sources get only the worker's own options (and the format limit).
    p = JobPolicy(JobPolicyConfig(schemes=["rtsp"], hosts=["10.0.0.0/8"]))
    assert admit(p, {"uri": "rtsp://10.0.0.7/s"}).options == {"ffmpeg": {"format_whitelist": formats}}


def test_the_config_section_is_validated():
    cfg = load_config(
        sets=[
            "kafka.jobs.roots=[/data]",
            "kafka.jobs.schemes=[FILE, rtsp]",
            "kafka.jobs.hosts=[10.0.0.0/8, cam-1.local]",
        ]
    )
    assert cfg.kafka.jobs.schemes == ["file", "rtsp"] and not cfg.kafka.jobs.allow_replace
    for bad, key in [
        ("kafka.jobs.roots=[data]", "kafka.jobs.roots"),
        ("kafka.jobs.options=[protocol_whitelist]", "kafka.jobs.options"),
        ("kafka.jobs.hosts=['a b']", "kafka.jobs.hosts"),
        ("kafka.jobs.schemes=['fi/le']", "kafka.jobs.schemes"),
        ("kafka.jobs.formats=['hls,concat']", "kafka.jobs.formats"),
        ("kafka.jobs.formats=[]", "kafka.jobs.formats"),
        ("kafka.jobs.rootz=[/data]", "kafka.jobs.rootz"),
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(sets=[bad])


def test_a_playlist_under_a_root_is_refused_by_its_format_not_its_name(tmp_path, h264_ts):
    """Issue 25: root/evil.m3u8 naming a file outside the root read that file."""
    from vmstream.stages.decode.container import FormatRefusedError
    from vmstream.stages.decode.pyav import PyAVDecoder

    root = tmp_path / "root"
    root.mkdir()
    m3u8 = "#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\n{}\n#EXT-X-ENDLIST\n"
    (root / "evil.m3u8").write_text(m3u8.format(h264_ts))  # h264_ts lies outside the root
    (root / "list.ffconcat").write_text(f"ffconcat version 1.0\nfile {h264_ts}\n")
    p = JobPolicy(JobPolicyConfig(roots=[str(root)]))
    for name in ("evil.m3u8", "list.ffconcat"):
        s = admit(p, {"uri": str(root / name)})
        with pytest.raises(FormatRefusedError, match=r"kafka\.jobs\.formats"):
            PyAVDecoder().probe(s.uri, s.options)
    # Listed by the operator, the playlist is read (and trusted).
    p = JobPolicy(JobPolicyConfig(roots=[str(root)], formats=["hls", "mpegts"]))
    s = admit(p, {"uri": str(root / "evil.m3u8")})
    assert PyAVDecoder().probe(s.uri, s.options).width == 320


def test_serve_root_is_the_quick_starts_policy(tree, tmp_path):
    """`vmstream worker --serve-root DIR` (the README's quick start): files under DIR are
    admitted on top of the config's policy, and nothing else is."""
    from vmstream.cli import build_parser
    from vmstream.cli.common import config_from_args
    from vmstream.cli.worker import serve_roots
    from vmstream.errors import UserError

    root, outside = tree
    args = build_parser().parse_args(["worker", "--config", "configs/kafka-worker.yaml", "--serve-root", str(root)])
    cfg = config_from_args(args)
    serve_roots(cfg, args.serve_root)
    assert "file" in cfg.kafka.jobs.schemes and cfg.kafka.jobs.roots[-1] == os.path.realpath(root)
    p = JobPolicy(cfg.kafka.jobs)
    assert admit(p, {"stream_id": "demo", "uri": str(root / "v.mp4")}).uri == os.path.realpath(root / "v.mp4")
    assert "kafka.jobs.roots" in refusal(p, {"stream_id": "x", "uri": str(outside / "secret.mp4")})
    with pytest.raises(UserError, match="not a directory"):
        serve_roots(cfg, [str(root / "v.mp4")])
