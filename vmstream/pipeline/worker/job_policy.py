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
  A local file is opened with FFmpeg's `protocol_whitelist` "file" (unless the worker's
  `ffmpeg` sets one), so a playlist under a root cannot make FFmpeg fetch from the network.

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

    def admit(self, source: Source, uri: str) -> Source:
        """`source` (built from a job whose uri field was `uri`) as the worker may run it."""
        scheme = uri_scheme(uri) or "file"
        if scheme not in self.schemes:
            raise JobRefused(f"job refused: uri scheme {scheme!r} is not allowed by this worker (kafka.jobs.schemes)")
        self._check_options(source.options)
        forced = dict(self.ffmpeg)
        if scheme == "file":
            real = self._local_path(source.uri)
            source = dataclasses.replace(source, uri=real)
            # A local file that is a playlist (HLS) must not reach past the file system.
            forced.setdefault("protocol_whitelist", "file")
        elif scheme != "pipe":
            self._check_host(urlsplit(source.uri).hostname)
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
                raise JobRefused(f"job refused: FFmpeg option {name!r} is not one a job may set here "
                                 "(kafka.jobs.ffmpeg_options)")

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
