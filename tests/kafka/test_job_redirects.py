"""A job's http(s) redirects pass the job policy (kafka.jobs): real HTTP servers on
127.0.0.1 (allowed) and 127.0.0.2 (a host the policy does not allow)."""

from __future__ import annotations

import pytest

from tests.fixtures.http_files import http_servers  # noqa: F401  (fixture)
from vmstream.pipeline.config import JobPolicyConfig
from vmstream.pipeline.worker.job_policy import JobPolicy, JobRefused
from vmstream.stages.sources import source_from_job

pytestmark = pytest.mark.timeout(120)


def admit(policy: JobPolicy, uri: str):
    return policy.admit(source_from_job({"stream_id": "s", "uri": uri}), uri)


@pytest.fixture
def policy():
    return JobPolicy(JobPolicyConfig(schemes=["http"], hosts=["127.0.0.1"]))


def test_a_redirect_to_a_refused_host_is_refused(policy, http_servers, h264_mp4):
    other = http_servers("127.0.0.2")
    other.files["/v.mp4"] = open(h264_mp4, "rb").read()
    allowed = http_servers("127.0.0.1")
    allowed.redirects["/v.mp4"] = other.url("/v.mp4")
    allowed.redirects["/to-file.mp4"] = "file:///etc/passwd"
    with pytest.raises(JobRefused, match=r"redirects .*kafka\.jobs"):
        admit(policy, allowed.url("/v.mp4"))
    with pytest.raises(JobRefused, match=r"redirects"):
        admit(policy, allowed.url("/to-file.mp4"))
    assert other.hits == {}  # the refused host was never asked


def test_redirects_within_the_policy_are_followed_and_ffmpeg_follows_none(policy, http_servers, h264_mp4):
    from vmstream.stages.decode.pyav import PyAVDecoder
    from vmstream.stages.media import VideoInputError

    srv = http_servers("127.0.0.1")
    srv.files["/v.mp4"] = open(h264_mp4, "rb").read()
    srv.redirects["/old.mp4"] = "/mid.mp4"
    srv.redirects["/mid.mp4"] = srv.url("/v.mp4")
    s = admit(policy, srv.url("/old.mp4"))
    assert s.uri == srv.url("/v.mp4") and s.options["ffmpeg"]["max_redirects"] == "0"
    assert PyAVDecoder().probe(s.uri, s.options).width > 0
    # A server that redirects FFmpeg and not the worker's check (it changed its mind, or
    # it tells them apart): FFmpeg does not follow, the job fails.
    other = http_servers("127.0.0.2")
    other.files["/v.mp4"] = srv.files["/v.mp4"]
    srv.redirects["/v.mp4"] = other.url("/v.mp4")
    with pytest.raises(VideoInputError):
        PyAVDecoder().probe(s.uri, s.options)
    assert other.hits == {}
