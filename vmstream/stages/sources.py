"""Sources: what the pipeline reads, resolved from the user's inputs.

    resolve_sources(["a.mp4", "archive/", "clips/*.webm", "rtsp://cam1/stream",
                     {"stream_id": "cam-7", "uri": "tcp://10.0.0.7:9000", "options": {}}])

- a local file: one stream, id = its absolute path (stable across runs and workers);
- a directory (recursively) or a glob: each video file its own stream, sorted;
- a URL FFmpeg opens (rtsp, rtmp, srt, tcp, udp, rtp, http(s), HLS, pipe:): a live
  stream, id = the URL without credentials; an http(s) URL of a video file
  (".../clip.mp4") is a finite remote file, not live; `{"live": ...}` overrides;
- a job dict (the Kafka worker's message): {"stream_id", "uri", "options", "live"},
  validated with errors that name the field.

`probe_sources` opens each source before any work and separates the usable ones from
the broken ones (missing, not a video, no video track), so a directory run can report
and skip the broken files while the others proceed.
"""

from __future__ import annotations

import glob as globlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Protocol, Sequence, Union
from urllib.parse import urlsplit, urlunsplit

from vmstream.stages.media import (
    InputNotFoundError,
    Source,
    SourceSpecError,
    StreamInfo,
    VideoInputError,
    check_source_options,
    uri_scheme,
    valid_stream_id,
)

__all__ = [
    "DECODER_OPTION_KEYS",
    "LIVE_SCHEMES",
    "VIDEO_EXTENSIONS",
    "ProbeReport",
    "Source",
    "SourceSpecError",
    "file_stream_id",
    "is_live_uri",
    "probe_sources",
    "redact_uri",
    "resolve_sources",
    "source_from_job",
    "source_from_uri",
]

log = logging.getLogger(__name__)

# Files picked up from directories and globs. Anything else there is ignored (and
# counted in the log), so thumbnails and sidecar files do not fail a run.
VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .ts .mts .m2ts .mpg .mpeg .flv .wmv .3gp .ogv .mxf "
    ".h264 .264 .h265 .hevc .ivf .y4m".split()
)
LIVE_SCHEMES = frozenset("rtsp rtsps rtmp rtmps rtmpt srt tcp udp rtp mms mmsh http https hls".split())
# Options the decoders read from `Source.options` (anything else is passed along for
# later stages and must only be JSON-like).
DECODER_OPTION_KEYS = frozenset({"ffmpeg", "reconnect", "format", "timeout"})

_JOB_KEYS = frozenset({"stream_id", "uri", "options", "live"})


def redact_uri(uri: str) -> str:
    """The URI without user:password (stream ids and logs must not carry secrets)."""
    if not uri_scheme(uri) or uri_scheme(uri) in ("file", "pipe"):
        return uri
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def file_stream_id(path: str) -> str:
    """Stable id of a local file: its absolute, normalised path."""
    return os.path.abspath(os.path.expanduser(path))


def is_live_uri(uri: str) -> bool:
    scheme = uri_scheme(uri)
    if scheme in ("", "file"):
        return False
    if scheme in ("http", "https"):
        # A URL of a video file is a finite remote file; playlists and bare paths
        # (camera endpoints) are live.
        ext = os.path.splitext(urlsplit(uri).path)[1].lower()
        return ext not in VIDEO_EXTENSIONS
    return scheme in LIVE_SCHEMES or scheme == "pipe"


def source_from_uri(
    uri: str,
    *,
    stream_id: Optional[str] = None,
    live: Optional[bool] = None,
    options: Optional[Mapping[str, Any]] = None,
) -> Source:
    """A Source for one file path or URL (no globbing, no directory walk)."""
    options = dict(options or {})
    if uri_scheme(uri) == "file":
        uri = urlsplit(uri).path
    if not uri_scheme(uri):
        path = os.path.expanduser(uri)
        # "live" on a regular file is ignored: a file has an end (read as a feed, it
        # would be replayed forever). Devices and FIFOs may be feeds.
        live = bool(live) and not os.path.isfile(path)
        return Source(stream_id or file_stream_id(path), os.path.abspath(path), live=live, options=options)
    return Source(
        stream_id or redact_uri(uri), uri, live=is_live_uri(uri) if live is None else bool(live), options=options
    )


def source_from_job(job: Mapping[str, Any]) -> Source:
    """A Source from a job message: {"uri": ..., "stream_id"?: ..., "options"?: {...},
    "live"?: bool}. Raises SourceSpecError naming the bad field."""
    if not isinstance(job, Mapping):
        raise SourceSpecError(f"job must be a dict, got {type(job).__name__}")
    unknown = set(job) - _JOB_KEYS
    if unknown:
        raise SourceSpecError(f"job has unknown field(s) {sorted(unknown)}; expected {sorted(_JOB_KEYS)}")
    uri = job.get("uri")
    if not isinstance(uri, str) or not uri.strip():
        raise SourceSpecError(f"job field 'uri' must be a non-empty string, got {uri!r}")
    sid = job.get("stream_id")
    if sid is not None and not valid_stream_id(sid):
        raise SourceSpecError(f"job field 'stream_id' must be a non-empty string, got {sid!r}")
    live = job.get("live")
    if live is not None and not isinstance(live, bool):
        raise SourceSpecError(f"job field 'live' must be true or false, got {live!r}")
    opts = job.get("options", {})
    if opts is None:
        opts = {}
    where = f"job {sid or uri!r}"
    check_source_options(opts, where)
    try:
        return source_from_uri(uri.strip(), stream_id=sid, live=live, options=opts)
    except ValueError as e:
        raise SourceSpecError(f"{where}: {e}") from None


def _walk_videos(root: str, extensions: frozenset) -> list[str]:
    found, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() in extensions:
                found.append(os.path.join(dirpath, name))
            else:
                ignored += 1
    if ignored:
        log.info("%s: ignored %d file(s) without a video extension", root, ignored)
    return found


def resolve_sources(
    inputs: Union[str, Mapping, Sequence[Union[str, Mapping]]],
    *,
    extensions: Iterable[str] = VIDEO_EXTENSIONS,
    options: Optional[Mapping[str, Any]] = None,
) -> list[Source]:
    """Sources for files, directories, globs, URLs and job dicts, in input order.

    Raises InputNotFoundError for a path that does not exist or a glob/directory that
    matches no video file, SourceSpecError for a malformed job, and ValueError when
    two inputs resolve to the same stream id (their segments would interleave).
    Files are not opened here; `probe_sources` does that.
    """
    if isinstance(inputs, (str, Mapping)):
        inputs = [inputs]
    exts = frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    out: list[Source] = []
    for item in inputs:
        if isinstance(item, Mapping):
            out.append(source_from_job(item))
            continue
        if isinstance(item, os.PathLike):
            item = os.fspath(item)
        if not isinstance(item, str) or not item.strip():
            raise SourceSpecError(f"input must be a path, URL or job dict, got {item!r}")
        if uri_scheme(item) not in ("", "file"):
            out.append(source_from_uri(item, options=options))
            continue
        path = os.path.expanduser(urlsplit(item).path if uri_scheme(item) == "file" else item)
        if os.path.isdir(path):
            files = _walk_videos(path, exts)
            if not files:
                raise InputNotFoundError(path, f"directory has no video files (looked for {', '.join(sorted(exts))})")
            out.extend(source_from_uri(f, options=options) for f in files)
        elif os.path.exists(path):
            out.append(source_from_uri(path, options=options))
        elif globlib.has_magic(path):
            files = sorted(f for f in globlib.glob(path, recursive=True) if os.path.isfile(f))
            if not files:
                raise InputNotFoundError(path, "no files match this pattern")
            out.extend(source_from_uri(f, options=options) for f in files)
        else:
            raise InputNotFoundError(path, "no such file or directory")
    seen: dict[str, Source] = {}
    for s in out:
        if s.stream_id in seen:
            if seen[s.stream_id].uri == s.uri:
                raise ValueError(f"input {s.uri!r} is given twice")
            raise ValueError(f"inputs {seen[s.stream_id].uri!r} and {s.uri!r} have the same stream id {s.stream_id!r}")
        seen[s.stream_id] = s
    return out


@dataclass
class ProbeReport:
    """The outcome of opening every source before the run."""

    ok: list[tuple[Source, StreamInfo]] = field(default_factory=list)
    failed: list[tuple[Source, VideoInputError]] = field(default_factory=list)

    def raise_if_failed(self) -> None:
        if self.failed:
            raise self.failed[0][1]


class Prober(Protocol):
    """What `probe_sources` needs of a decoder (`decode.base.Decoder` is one)."""

    def probe(self, uri: str, options: Optional[dict] = None) -> StreamInfo: ...


def probe_sources(sources: Sequence[Source], decoder: Prober) -> ProbeReport:
    """Open each source (live ones are not probed: they may not be up yet) and sort
    them into usable and failed; each failure is logged with its reason."""
    rep = ProbeReport()
    for s in sources:
        if s.live:
            rep.ok.append((s, StreamInfo(uri=s.uri, width=0, height=0, codec="", live=True)))
            continue
        try:
            rep.ok.append((s, decoder.probe(s.uri, s.options)))
        except VideoInputError as e:
            log.warning("skipping %s: %s", s.stream_id, e)
            rep.failed.append((s, e))
    return rep
