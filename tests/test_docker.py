"""docker/: the images and the compose file cannot be built here (no Docker engine), so
this reads them as Docker would and checks what can go wrong without one: every command
they run is a real vmstream command with valid arguments (the real argparse parsers),
every config file they mount exists and is a valid pipeline config, every path they copy
or build from exists, and versions are pinned."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*[!e]"))  # not the .dockerignore files
COMPOSE = DOCKER / "compose.yaml"
# Bind mounts of user data, which need not exist in the repo (Docker creates them).
DATA_MOUNTS = {"/data/videos"}


# ------------------------------------------------------------------------- parsing


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, f"{path.name}: dangling line continuation"
    return out


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell line (split at && || ; | and parentheses)."""
    cmds, cur = [], []
    lex = shlex.shlex(script, posix=True, punctuation_chars=";&|()")
    lex.whitespace_split = True
    for tok in lex:
        if tok and set(tok) <= set(";&|()"):
            if cur:
                cmds.append(cur)
            cur = []
        else:
            cur.append(tok)
    if cur:
        cmds.append(cur)
    # `if X; then Y; fi`: Y is a command too; `A=1 B=2 cmd`: the command is cmd.
    keywords = {"if", "then", "else", "elif", "do", "!"}

    def lead(t: str) -> bool:
        return t in keywords or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", t) is not None

    cmds = [c[next((i for i, t in enumerate(c) if not lead(t)), len(c)) :] for c in cmds]
    return [c for c in cmds if c and c != ["fi"] and c != ["done"]]


def vmstream_invocation(argv: list[str]):
    """If argv runs vmstream, (which parser, its arguments); else None."""
    if not argv:
        return None
    prog = Path(argv[0]).name
    if prog == "vmstream":
        return "cli", argv[1:]
    if re.fullmatch(r"python(3(\.\d+)?)?", prog) and argv[1:2] == ["-m"] and argv[2].startswith("vmstream"):
        return argv[2], argv[3:]
    return None


def check_vmstream_argv(kind: str, args: list[str]):
    """Parse with the real parser; returns the parsed namespace or fails the test."""
    if kind == "cli":
        from vmstream.cli import build_parser
    elif kind == "vmstream.cli.kafka_topics":
        from vmstream.cli.kafka_topics import build_parser
    else:
        pytest.fail(f"`python -m {kind}` is not a vmstream entry point the images may run")
    try:
        ns = build_parser().parse_args(args)
    except SystemExit as e:
        pytest.fail(f"invalid vmstream command line {args!r} (argparse exit {e.code})")
    if kind == "cli":
        assert ns.command is not None, f"{args!r}: no subcommand"
    return ns


def unpinned_packages(argv: list[str]) -> list[str]:
    """Requirements of a `pip install` without an exact version (`.` is the project,
    whose own pins are in pyproject.toml)."""
    if argv[:2] != ["pip", "install"]:
        return []
    out, skip = [], False
    for tok in argv[2:]:
        if skip:
            skip = False
        elif tok.startswith("-"):
            skip = tok in ("--index-url", "--extra-index-url", "-i", "-c", "-r", "--constraint")
        elif tok != "." and "==" not in tok:
            out.append(tok)
    return out


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # resolves the <<: merge keys


def resolve_env_default(text: str) -> str:
    """${VAR:-default} -> default (what compose uses when VAR is unset)."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", text)


def bind_mounts(service: dict) -> dict[str, Path]:
    """container path -> host path of a service's bind mounts."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            if v.get("type") != "bind":
                continue
            src, dst = v["source"], v["target"]
        else:
            parts = resolve_env_default(v).split(":")
            src, dst = parts[0], parts[1]
            if not (src.startswith(".") or src.startswith("/")):
                continue  # a named volume
        out[dst] = (DOCKER / resolve_env_default(src)).resolve()
    return out


def host_path(container_path: str, mounts: dict[str, Path]) -> Path:
    for dst, src in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
        if container_path == dst or container_path.startswith(dst.rstrip("/") + "/"):
            return src / container_path[len(dst) :].lstrip("/")
    pytest.fail(f"{container_path} is not inside any bind mount {sorted(mounts)}")


def our_services() -> dict[str, dict]:
    """Services that run vmstream images (built from our Dockerfiles)."""
    return {
        n: s for n, s in compose()["services"].items() if "build" in s or str(s.get("image", "")).startswith("vmstream")
    }


# --------------------------------------------------------------------------- tests


def test_the_files_exist():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.cpu", "Dockerfile.gpu"}
    assert COMPOSE.is_file()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_commands_copies_and_pins(dockerfile):
    ins = dockerfile_instructions(dockerfile)
    args = {}
    for word, rest in ins:
        if word == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k] = v.strip('"')
    froms = [rest for word, rest in ins if word == "FROM"]
    assert len(froms) == 1
    image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], froms[0])
    name, _, tag = image.rpartition(":")
    assert name and tag and tag != "latest" and re.search(r"\d", tag), f"base image not pinned: {image}"

    ran = []
    for word, rest in ins:
        if word in ("CMD", "ENTRYPOINT"):
            argv = json.loads(rest)  # exec form only: no shell in between
            assert isinstance(argv, list)
            if argv:
                inv = vmstream_invocation(argv)
                assert inv, f"{dockerfile.name}: {word} {argv} is not a vmstream command"
                check_vmstream_argv(*inv)
                ran.append(argv)
        elif word == "RUN":
            for argv in shell_commands(rest):
                assert not unpinned_packages(argv), f"{dockerfile.name}: unpinned {unpinned_packages(argv)}"
                inv = vmstream_invocation(argv)
                if inv:
                    check_vmstream_argv(*inv)
                    ran.append(argv)
        elif word == "COPY":
            *srcs, _dst = shlex.split(rest)
            for s in srcs:
                if not s.startswith("--"):
                    assert (REPO / s).exists(), f"{dockerfile.name}: COPY {s} does not exist in the repo"
    assert ran, f"{dockerfile.name} runs no vmstream command at all"
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert ignore.is_file(), "without it the whole repo (.venv, caches) is sent as build context"


def test_compose_services_run_real_commands_with_existing_configs():
    from vmstream.pipeline.config import load_config

    services = our_services()
    assert {"topics", "worker-1", "worker-2", "worker-gpu"} <= set(services)
    workers = 0
    for name, svc in services.items():
        build = svc["build"]
        assert (DOCKER / build["context"]).resolve() == REPO, name
        assert (REPO / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} missing"
        argv = svc.get("command")
        assert isinstance(argv, list), f"{name}: use the exec (list) form so no shell reinterprets it"
        inv = vmstream_invocation(argv)
        assert inv, f"{name}: {argv} is not a vmstream command"
        ns = check_vmstream_argv(*inv)
        mounts = bind_mounts(svc)
        for dst, src in mounts.items():
            if dst not in DATA_MOUNTS:
                assert src.exists(), f"{name}: bind mount source {src} does not exist"
        if getattr(ns, "config", None):
            cfg_file = host_path(ns.config, mounts)
            assert cfg_file.is_file(), f"{name}: --config {ns.config} -> {cfg_file} does not exist"
            cfg = load_config(cfg_file, sets=getattr(ns, "sets", []) or [])
            assert cfg.kafka.bootstrap == "kafka:9092", f"{name}: config must point at the compose broker"
        if inv[0] == "cli" and ns.command == "worker":
            workers += 1
            assert ns.config, f"{name}: a worker needs --config"
        for dep in svc.get("depends_on", {}):
            assert dep in compose()["services"], f"{name} depends on unknown service {dep}"
    assert workers >= 2, "scale-out needs at least two workers in the group"


def test_compose_broker_matches_the_tested_broker_and_volumes_are_declared():
    c = compose()
    kafka = c["services"]["kafka"]
    image_version = kafka["image"].split(":")[1]
    script = (REPO / "scripts" / "kafka-local").read_text()
    tested = re.search(r"VMSTREAM_KAFKA_VERSION:-([0-9.]+)", script).group(1)
    assert image_version == tested, "compose runs another Kafka version than the tests"
    env = kafka["environment"]
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "broker" in env["KAFKA_PROCESS_ROLES"] and "controller" in env["KAFKA_PROCESS_ROLES"]
    assert all(p.startswith("127.0.0.1:") for p in kafka.get("ports", [])), "broker port open beyond localhost"
    declared = set(c.get("volumes") or {})
    for name, svc in c["services"].items():
        for v in svc.get("volumes", []):
            src = resolve_env_default(v).split(":")[0] if isinstance(v, str) else v.get("source", "")
            if not (src.startswith(".") or src.startswith("/")):
                assert src in declared, f"{name}: named volume {src} not declared"
    gpu = c["services"]["worker-gpu"]
    assert gpu["build"]["dockerfile"].endswith("Dockerfile.gpu") and "gpu" in gpu.get("profiles", [])


def test_the_parsers_used_here_reject_what_they_should():
    # The checks above are only worth something if a wrong command fails them.
    with pytest.raises(pytest.fail.Exception):
        check_vmstream_argv("cli", ["wrker", "--config", "x.yaml"])
    with pytest.raises(pytest.fail.Exception):
        check_vmstream_argv("cli", ["worker"])  # --config is required
    with pytest.raises(pytest.fail.Exception):
        check_vmstream_argv("vmstream.cli.kafka_topics", ["--partitions", "many"])
    with pytest.raises(pytest.fail.Exception):
        check_vmstream_argv("vmstream.nothing", [])
    assert unpinned_packages(["pip", "install", "--index-url", "$X", "torch==2.11.0", ".", "ninja"]) == ["ninja"]
    assert shell_commands("pip install . && vmstream info || true") == [
        ["pip", "install", "."],
        ["vmstream", "info"],
        ["true"],
    ]
    assert shell_commands('if [ -n "$X" ]; then A=1 pip install y; fi') == [
        ["[", "-n", "$X", "]"],
        ["pip", "install", "y"],
    ]
    assert vmstream_invocation(["python3", "-m", "vmstream.cli.kafka_topics"]) == ("vmstream.cli.kafka_topics", [])


def test_compose_fleet_keeps_one_store_by_one_indexer():
    from vmstream.pipeline.config import load_config

    services = our_services()
    indexers = []
    for name, svc in services.items():
        inv = vmstream_invocation(svc["command"])
        ns = check_vmstream_argv(*inv)
        if inv[0] != "cli" or ns.command not in ("worker", "index"):
            continue
        cfg = load_config(host_path(ns.config, bind_mounts(svc)), sets=ns.sets or [])
        if ns.command == "worker":
            assert cfg.output.store.backend == "none", f"{name}: a fleet's worker keeps no store of its own"
        else:
            indexers.append((name, cfg.output.store.backend, svc.get("profiles")))
    assert ("indexer", "faiss", None) in indexers
    assert ("indexer-milvus", "milvus", ["milvus"]) in indexers
    milvus = compose()["services"]["milvus"]
    assert milvus["profiles"] == ["milvus"] and all(p.startswith("127.0.0.1:") for p in milvus["ports"])
