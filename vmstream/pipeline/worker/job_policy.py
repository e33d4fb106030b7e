"""What a job may make the worker read: the `kafka.jobs` section of its config.

A worker is a service: it runs with its own rights (often root in a container), and a
job is a message anyone who can write to the jobs topic can send. So a job reads only
what the worker's operator offered:

- its URI scheme is one of `schemes` (a local path counts as "file");
- a local file lies under one of `roots`, after every symlink is resolved; `/dev`,
  `/proc` and `/sys` never, even under a root (a root of "/" included);
- a network source names one of `hosts`: a host name (or `*.example.com`), an IP
  address or a network (`10.0.0.0/8`; a host name then has to resolve into it);
- a job sets only the option keys in `options` (by default `reconnect` and `timeout`:
  never FFmpeg's raw options, which can loosen FFmpeg's own protocol and file
  restrictions, nor a forced demuxer), and under `options.ffmpeg` only the names in
  `ffmpeg_options`; the worker's own `ffmpeg` options are set on every job and win.
  A local file is opened with FFmpeg's `protocol_whitelist` "file", an http(s) source
  with "http,https,tcp,tls" (unless the worker's `ffmpeg` sets one);
- its container format, as FFmpeg probes it from the data (never from the name), is
  one of `formats` (FFmpeg's `format_whitelist`): by default single-file containers
  only. Playlists (HLS m3u8, DASH, concat/ffconcat, ...) make FFmpeg open the files and
  URLs written inside them, past every rule above, so they are refused unless the
  operator lists them (and then trusts whoever writes the playlists);
- an http(s) source's redirects pass the same rules: the worker follows them itself,
  each hop checked (scheme, host), and hands FFmpeg the final URL with redirects off
  (`max_redirects` 0), so a server that redirects FFmpeg elsewhere fails the job.

A refused job is dead-lettered with a reason that says which rule refused it and never
what exists on the machine: a path outside the roots gets the same message whether it
is missing, a file, a directory, a device or a symlink out of a root.

`vmstream run` does not apply this: its user is the operator.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from typing import Optional
from urllib.parse import urlsplit

from vmstream.stages.media import Source, uri_scheme

# Never readable by a job, whatever the roots say: devices, kernel and process state.
FORBIDDEN_ROOTS = ("/dev", "/proc", "/sys")

_LOCAL_REFUSED = "job refused: its local path is not under a directory this worker serves (kafka.jobs.roots)"
_HOST_REFUSED = "job refused: its host is not one this worker may connect to (kafka.jobs.hosts)"
_REDIRECT_REFUSED = "job refused: its URL redirects to a host or scheme this worker may not use (kafka.jobs)"
_HTTP = ("http", "https")
# Hops the worker follows for one job, and how long each may take: the redirects are
# resolved when the job is taken, on the worker's main thread.
MAX_REDIRECTS = 5
REDIRECT_TIMEOUT_S = 5.0


class JobRefused(ValueError):
    """A job the policy does not allow; the message is safe to publish."""


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class JobPolicy:
    """`admit(source, scheme)` returns the source to run (its uri resolved, the
    worker's FFmpeg options added) or raises JobRefused."""

    def __init__(self, cfg):  # cfg: pipeline.config.JobPolicyConfig
        self.schemes = frozenset(cfg.schemes)
        # Roots compared after symlinks, the same way paths are.
        self.roots = tuple(os.path.realpath(r) for r in cfg.roots)
        self.host_names: list[str] = []
        self.networks: list = []
        for h in cfg.hosts:
            try:
                self.networks.append(ipaddress.ip_network(h, strict=False))
            except ValueError:
                self.host_names.append(h.lower())
        self.options = frozenset(cfg.options)
        self.ffmpeg_options = frozenset(cfg.ffmpeg_options)
        self.ffmpeg = dict(cfg.ffmpeg)
        self.allow_replace = bool(cfg.allow_replace)
        self.formats = tuple(cfg.formats)

    def admit(self, source: Source, uri: str) -> Source:
        """`source` (built from a job whose uri field was `uri`) as the worker may run it."""
        scheme = uri_scheme(uri) or "file"
        if scheme not in self.schemes:
            raise JobRefused(f"job refused: uri scheme {scheme!r} is not allowed by this worker (kafka.jobs.schemes)")
        self._check_options(source.options)
        forced = dict(self.ffmpeg)
        # Containers that open other files or URLs (playlists) only where listed.
        forced.setdefault("format_whitelist", ",".join(self.formats))
        if scheme == "file":
            real = self._local_path(source.uri)
            source = dataclasses.replace(source, uri=real)
            # A local file must not reach past the file system.
            forced.setdefault("protocol_whitelist", "file")
        elif scheme != "pipe":
            self._check_host(urlsplit(source.uri).hostname)
        if scheme in _HTTP:
            forced.setdefault("protocol_whitelist", "http,https,tcp,tls")
            forced["max_redirects"] = "0"
            final = self._follow_redirects(source.uri)
            if final != source.uri:
                source = dataclasses.replace(source, uri=final)
        if forced:
            opts = dict(source.options)
            opts["ffmpeg"] = {**dict(opts.get("ffmpeg") or {}), **forced}
            source = dataclasses.replace(source, options=opts)
        return source

    # -- the rules ----------------------------------------------------------------
    def _check_options(self, options) -> None:
        for key in sorted(options):
            if key not in self.options:
                raise JobRefused(f"job refused: option {key!r} is not one a job may set here (kafka.jobs.options)")
        for name in sorted(options.get("ffmpeg") or {}):
            if name not in self.ffmpeg_options:
                raise JobRefused(
                    f"job refused: FFmpeg option {name!r} is not one a job may set here (kafka.jobs.ffmpeg_options)"
                )

    def _local_path(self, path: str) -> str:
        """The resolved path of an allowed local file; JobRefused (one message for
        every reason) otherwise. Nothing here tells whether the path exists."""
        if not os.path.isabs(path):
            raise JobRefused(_LOCAL_REFUSED)
        real = os.path.realpath(path)
        for p in (os.path.normpath(path), real):
            if any(_under(p, f) for f in FORBIDDEN_ROOTS):
                raise JobRefused(_LOCAL_REFUSED)
        if not any(_under(real, r) for r in self.roots):
            raise JobRefused(_LOCAL_REFUSED)
        return real

    def _check_host(self, host: Optional[str]) -> None:
        if not host:
            raise JobRefused(_HOST_REFUSED)
        host = host.lower().rstrip(".")
        for name in self.host_names:
            if host == name or (name.startswith("*.") and host.endswith(name[1:])):
                return
        if not self.networks:
            raise JobRefused(_HOST_REFUSED)
        try:
            addrs = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = socket.getaddrinfo(host, None)
            except OSError:
                raise JobRefused(_HOST_REFUSED) from None
            addrs = [ipaddress.ip_address(i[4][0].split("%")[0]) for i in infos]
        if not addrs or not all(any(a in n for n in self.networks) for a in addrs):
            raise JobRefused(_HOST_REFUSED)

    def _follow_redirects(self, url: str) -> str:
        """The URL an http(s) source ends at, every hop checked against the rules;
        JobRefused when one leaves them. A server that cannot be reached is left to
        the decoder (the job fails there, or a live feed retries)."""
        import http.client
        import urllib.error
        import urllib.request
        from urllib.parse import urljoin

        class _NoFollow(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None  # the 3xx comes back as an HTTPError, checked below

        opener = urllib.request.build_opener(_NoFollow)
        for _ in range(MAX_REDIRECTS + 1):
            req = urllib.request.Request(url, headers={"Range": "bytes=0-0", "User-Agent": "vmstream-worker"})
            try:
                opener.open(req, timeout=REDIRECT_TIMEOUT_S).close()
                return url
            except urllib.error.HTTPError as e:
                location = e.headers.get("Location") if e.code in (301, 302, 303, 307, 308) else None
                e.close()
                if not location:
                    return url
            except (OSError, ValueError, http.client.HTTPException):
                return url
            nxt = urljoin(url, location)
            scheme = uri_scheme(nxt)
            if scheme not in _HTTP or scheme not in self.schemes:
                raise JobRefused(_REDIRECT_REFUSED)
            try:
                self._check_host(urlsplit(nxt).hostname)
            except JobRefused:
                raise JobRefused(_REDIRECT_REFUSED) from None
            url = nxt
        raise JobRefused(f"job refused: its URL redirects more than {MAX_REDIRECTS} times")
