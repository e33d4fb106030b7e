"""`vmstream serve`: one store as an HTTP search API and a web page (vmstream/serve/)."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

from vmstream.cli.common import add_common
from vmstream.errors import UserError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_REQUEST_HEAD = 2 << 20


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"{v} is not a port number (0-65535)")
    return v


def _megabytes(text: str) -> int:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of megabytes") from None
    if not 0 < v <= 100_000:
        raise argparse.ArgumentTypeError(f"{text!r}: give a size in MB above 0")
    return int(v * (1 << 20))


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a store: an HTTP search API and a web page (text, more-like-this, clips)",
        description="Serve one store (a `vmstream run` --out) over HTTP: the page at /, the JSON API under "
        "/api (OpenAPI at /docs), /healthz, /readyz, /metrics. The store's model is loaded once "
        "from OUT/run.json; a run writing the same store is picked up as it commits.",
    )
    p.add_argument("--index", required=True, metavar="DIR", help="the store: a run's --out (or its index/ dir)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; any other needs --token-file or --insecure)",
    )
    p.add_argument("--port", type=_port, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--token-file", metavar="F", help="a file holding the bearer token every request must send")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-local bind without a token (anyone who reaches the port can search)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=_megabytes,
        default=64 << 20,
        metavar="MB",
        help="largest query clip accepted by POST /api/search (default 64)",
    )
    p.add_argument("--cache-dir", metavar="DIR", help="where cut clips are kept (default: a temp dir)")
    p.add_argument(
        "--cache-mb",
        type=_megabytes,
        default=512 << 20,
        metavar="MB",
        help="most disk the clip cache uses (default 512)",
    )
    p.add_argument(
        "--vocab",
        metavar="FILE",
        help="bert-base-uncased vocab.txt for text search (default: the run's, $VMSTREAM_BERT_VOCAB or the hub cache)",
    )
    p.add_argument("--device", help="device for the model (default: the run's)")
    add_common(p)
    p.set_defaults(handler=main)


def out_dirs(given: str) -> tuple[Path, Path]:
    """(the run's OUT, its store dir) from --index (OUT or OUT/index)."""
    p = Path(given)
    if (p / "index").is_dir():
        return p, p / "index"
    if (p / "CURRENT").exists() or p.name == "index":
        return p.parent, p
    if not p.exists():
        raise UserError(f"--index {given}: no such directory")
    raise UserError(f"--index {given}: not a store (no index/ dir and no CURRENT file); give a `vmstream run` --out")


def read_token(path: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise UserError(f"--token-file {path}: {e.strerror or e}") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise UserError(f"--token-file {path}: the token must be one word of at least 16 characters")
    return token


def check_bind(host: str, token: bool, insecure: bool) -> None:
    local = host in LOCAL_HOSTS
    if not local:
        try:
            local = ipaddress.ip_address(host).is_loopback
        except ValueError:
            local = False
    if not local and not token and not insecure:
        raise UserError(
            f"--host {host} exposes the store beyond this machine: give --token-file F (a bearer "
            "token every request must send) or --insecure"
        )


def main(args) -> int:
    check_bind(args.host, bool(args.token_file), args.insecure)
    token = read_token(args.token_file) if args.token_file else None
    out, index = out_dirs(args.index)

    import uvicorn

    from vmstream.serve.app import create_app
    from vmstream.serve.model_loader import load_store_model
    from vmstream.serve.state import Limits
    from vmstream.store import open_store
    from vmstream.store.files import StoreCorruptError

    meta = {}
    try:
        store = open_store(index, readonly=True, use_gpu=False)  # FAISS' option; Milvus ignores it
        meta = dict(store.meta)
        store.close()
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    except StoreCorruptError as e:  # serve anyway: /readyz and every query say why (it may be repaired)
        print(f"vmstream serve: {e}", file=sys.stderr)
    cfg, model, tokenizer, why = load_store_model(
        out, meta, sets=getattr(args, "sets", []), device=args.device, vocab=args.vocab
    )
    app = create_app(
        out,
        index_dir=index,
        model=model,
        tokenizer=tokenizer,
        cfg=cfg,
        model_error=why,
        token=token,
        limits=Limits(max_upload_bytes=args.max_upload_mb),
        cache_dir=args.cache_dir,
        cache_bytes=args.cache_mb,
    )
    # h11 with room for a long query string: an over-long text= is answered by the app
    # (400 naming the field), not cut off by the HTTP parser with a bare 400.
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        http="h11",
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD,
    )
    server = uvicorn.Server(config)
    text = "text search on" if tokenizer is not None else f"no text search: {why}"
    _announce(server, args.host, f"model {model.card.name}, {text}")
    server.run()
    return 0


def _announce(server, host: str, what: str) -> None:
    """Print the URL once the socket is bound (port 0: the one the kernel chose)."""
    original = server.startup

    async def startup(sockets=None):
        await original(sockets=sockets)
        port = next((s.getsockname()[1] for srv in getattr(server, "servers", []) for s in srv.sockets), None)
        shown = f"[{host}]" if ":" in host else host
        print(f"vmstream serve: http://{shown}:{port}/ ({what})", flush=True)

    server.startup = startup
