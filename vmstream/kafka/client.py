"""Kafka client settings and connection errors, shared by every vmstream Kafka client.

`client_options` checks user settings (SSL, SASL, ...) before any client is made;
`UNREACHABLE` and `connect_error` turn kafka-python's "cannot bootstrap" into one
ConnectionError message; `admin_client` and `topic_message_limit` are the admin calls
the sink, the state store and the topics step all need. `nothing_listens` tells, in
seconds, the case no wait cures soon (no such host, or every address refuses), which
kafka-python would otherwise wait its whole bootstrap timeout to report.
"""

from __future__ import annotations

import difflib
import socket
import time
from typing import Any, Mapping, Optional, Sequence, Union

# The broker's message.max.bytes default: what a topic takes when its limit cannot be read.
DEFAULT_MESSAGE_LIMIT = 1_048_588


def client_options(config: Optional[Mapping[str, Any]], client: str = "producer") -> dict[str, Any]:
    """Validated kafka-python options for `client` ("producer", "consumer", "admin").

    Accepts kafka-python names and their dotted spellings (`security.protocol`).
    An unknown name raises ValueError naming it and the closest valid names, so a
    typo in a security setting fails at start instead of silently connecting without
    it.
    """
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    valid = {
        "producer": KafkaProducer.DEFAULT_CONFIG,
        "consumer": KafkaConsumer.DEFAULT_CONFIG,
        "admin": KafkaAdminClient.DEFAULT_CONFIG,
    }[client]
    out = {}
    for key, value in (config or {}).items():
        name = str(key).replace(".", "_").replace("-", "_")
        if name not in valid:
            close = difflib.get_close_matches(name, list(valid), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"unknown Kafka {client} setting {key!r}{hint}")
        if name in (
            "bootstrap_servers",
            "key_serializer",
            "value_serializer",
            "key_deserializer",
            "value_deserializer",
        ):
            raise ValueError(f"Kafka setting {key!r} is set by vmstream, not by client_config")
        out[name] = value
    return out


def _unreachable_errors() -> tuple:
    from kafka import errors as E

    # kafka-python 3 says "cannot bootstrap" with KafkaTimeoutError; 2.x had NoBrokersAvailable.
    return tuple({E.KafkaTimeoutError, getattr(E, "NoBrokersAvailable", E.KafkaTimeoutError)})


# What kafka-python raises from a client's constructor when no broker answers: catch it
# and raise ConnectionError(connect_error(...)).
UNREACHABLE = _unreachable_errors()


def connect_error(bootstrap: Any, timeout_s: float, config: Optional[Mapping[str, Any]], exc: BaseException) -> str:
    """The message for a client that could not connect to `bootstrap` in `timeout_s`."""
    # kafka-python reports a refused login the same way as no broker at all (it logs the
    # real reason and keeps trying until the bootstrap timeout), so say both.
    msg = f"cannot connect to Kafka at {bootstrap} within {timeout_s:.0f}s ({exc})"
    proto = dict(client_options(config, "producer")).get("security_protocol", "PLAINTEXT")
    return msg + (
        f": is the broker running and listening for {proto} there?"
        + (" Are the SASL/SSL settings (sasl_*, ssl_*) right?" if proto != "PLAINTEXT" else "")
    )


def admin_client(
    bootstrap_servers: Union[str, Sequence[str]],
    client_config: Optional[Mapping[str, Any]] = None,
    timeout_s: float = 30.0,
    request_timeout_s: Optional[float] = None,
):
    """A kafka-python admin client with vmstream's option checking; ConnectionError
    when no broker answers within `timeout_s`. Requests time out after
    `request_timeout_s` (default: `timeout_s`)."""
    from kafka import KafkaAdminClient

    request_s = timeout_s if request_timeout_s is None else request_timeout_s
    opts: dict[str, Any] = dict(
        bootstrap_servers=bootstrap_servers,
        bootstrap_timeout_ms=int(timeout_s * 1000),
        request_timeout_ms=int(request_s * 1000),
    )
    opts.update(client_options(client_config, "admin"))
    try:
        return KafkaAdminClient(**opts)
    except UNREACHABLE as e:
        raise ConnectionError(connect_error(bootstrap_servers, timeout_s, client_config, e)) from e


def topic_message_limit(admin: Any, topic: str) -> int:
    """The effective `max.message.bytes` of `topic` (topic override or broker default)."""
    from kafka.admin import ConfigResource, ConfigResourceType

    res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, None)], config_filter="all")
    cfg = res["topic"][topic]
    return int(cfg["max.message.bytes"]["value"])


def create_hint(bootstrap_servers: Any) -> str:
    """How to make vmstream's topics, for errors about a missing one."""
    return (
        f"create them with `vmstream kafka-topics --bootstrap {bootstrap_servers}` "
        "or vmstream.kafka.topics.ensure_topics()"
    )


def _addresses(bootstrap: Union[str, Sequence[str]]) -> list[tuple[str, int]]:
    items = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
    out = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        host, _, port = item.rpartition(":")
        if not host:  # "host" alone: kafka-python's default port
            host, port = item, "9092"
        host = host.strip("[]")  # [::1]:9092
        try:
            out.append((host, int(port)))
        except ValueError:
            continue
    return out


def nothing_listens(bootstrap: Union[str, Sequence[str]], window_s: float = 3.0) -> Optional[str]:
    """Why no broker can be at `bootstrap`, when for `window_s` seconds every address
    either has no such host or refuses TCP connections (nothing is listening there);
    None as soon as one accepts, or does not answer at all (a firewall or a slow
    network: the client's own timeout decides those). The window lets a broker that is
    just starting open its port."""
    addresses = _addresses(bootstrap)
    if not addresses:
        return None
    deadline = time.monotonic() + window_s
    while True:
        reasons = []
        for host, port in addresses:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as e:
                reasons.append(f"{host}: no such host ({e.strerror})")
                continue
            for family, kind, proto, _name, addr in infos:
                with socket.socket(family, kind, proto) as s:
                    s.settimeout(1.0)
                    try:
                        s.connect(addr)
                        return None
                    except ConnectionRefusedError:
                        reasons.append(f"{host}:{port}: connection refused, nothing listens there")
                    except OSError:
                        return None  # timed out or unreachable: not known to be empty
        if time.monotonic() >= deadline:
            return "; ".join(dict.fromkeys(reasons))
        time.sleep(0.5)
