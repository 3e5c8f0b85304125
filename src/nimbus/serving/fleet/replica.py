"""One serving replica: a process serving one model version, started by the supervisor.

    python -m nimbus.serving.fleet.replica --model-dir D --name N --version V (--fd FD | --port P)
        [--admin-fd FD] [--max-batch-size B] [--max-delay-ms D] [--runtime onnx|torch]
        [--threads T] [--public] [--token-file PATH] [--drain-seconds S]
        [--max-batch-rows R] [--max-tensor-elements E] [--header-timeout S] [--body-timeout S]
        [--home DIR --control-plane URL [--orphan-seconds S]]

``--fd`` is a listening socket inherited from the supervisor and shared by every replica of
the deployment; ``--port`` binds one here instead (with SO_REUSEPORT, so several replicas
started by hand can share it too). ``--admin-fd`` is this replica's private listening socket,
where the supervisor checks its health. SIGTERM drains (see :mod:`nimbus.serving.fleet.drain`).
With ``--home`` and ``--control-plane`` (the supervisor passes both), the replica also drains
and exits once that home is gone and that control plane has not answered for
``--orphan-seconds`` (see :mod:`nimbus.serving.fleet.orphan`).

Unless ``--public``, every route but health needs a bearer token whose SHA-256 is in
``NIMBUS_REPLICA_TOKEN_HASHES`` or in ``--token-file`` (see :mod:`nimbus.serving.access`).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from nimbus.errors import NimbusError
from nimbus.serving.access import TOKEN_HASHES_ENV, TokenHashes, read_hashes_file
from nimbus.serving.app import create_app, uvicorn_config
from nimbus.serving.fleet.deployment import RUNTIMES
from nimbus.serving.fleet.drain import DEFAULT_DRAIN_SECONDS, DrainGate, DrainingServer
from nimbus.serving.fleet.orphan import DEFAULT_ORPHAN_SECONDS, Lifeline, OrphanWatch
from nimbus.serving.fleet.sockets import open_listener
from nimbus.serving.memory import tune_allocator
from nimbus.serving.protocol import DEFAULT_MAX_BATCH_ROWS, DEFAULT_MAX_TENSOR_ELEMENTS
from nimbus.serving.timeouts import DEFAULT_READ_TIMEOUTS, ReadTimeouts
from nimbus.system import exit_now

log = logging.getLogger("nimbus.serving.fleet.replica")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nimbus.serving.fleet.replica", description="Serve one model version."
    )
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--name", required=True, help="the model name clients use")
    parser.add_argument("--version", default="1")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--fd", type=int, help="inherited listening socket")
    where.add_argument("--port", type=int, help="port to bind on --host")
    parser.add_argument("--host", default="127.0.0.1", help="with --port")
    parser.add_argument("--admin-fd", type=int, help="inherited private health socket")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-delay-ms", type=float, default=2.0)
    parser.add_argument("--runtime", choices=RUNTIMES, default="onnx")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--public", action="store_true", help="no token needed")
    parser.add_argument("--token-file", type=Path, help="file of allowed token hashes (0600)")
    parser.add_argument("--tokens-id", help=argparse.SUPPRESS)  # set by the supervisor
    parser.add_argument("--drain-seconds", type=float, default=DEFAULT_DRAIN_SECONDS)
    parser.add_argument(
        "--max-batch-rows",
        type=int,
        default=DEFAULT_MAX_BATCH_ROWS,
        help="most rows in one request (413 past it)",
    )
    parser.add_argument(
        "--max-tensor-elements",
        type=int,
        default=DEFAULT_MAX_TENSOR_ELEMENTS,
        help="most elements in one input tensor (413 past it)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=DEFAULT_READ_TIMEOUTS.header_timeout,
        help="seconds a client has to send a request's headers",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=DEFAULT_READ_TIMEOUTS.body_timeout,
        help="seconds a client has to send a body, plus one per min-body-rate bytes",
    )
    parser.add_argument("--home", type=Path, help="the supervising control plane's home")
    parser.add_argument("--control-plane", help="the supervising control plane's URL")
    parser.add_argument(
        "--orphan-seconds",
        type=float,
        default=DEFAULT_ORPHAN_SECONDS,
        help="exit once --home is gone and --control-plane silent for this long",
    )
    return parser


def _lifeline(args: argparse.Namespace) -> Lifeline | None:
    if args.home is None or args.control_plane is None:
        return None
    return Lifeline(args.home, args.control_plane, args.orphan_seconds)


def _auth(args: argparse.Namespace) -> TokenHashes:
    if args.token_file is not None:
        read_hashes_file(args.token_file)  # unreadable or unsafe: refuse to start
    auth = TokenHashes.from_environment(dict(os.environ), args.token_file)
    if args.token_file is None and not os.environ.get(TOKEN_HASHES_ENV):
        log.warning("no token hashes given: every request but health will be refused")
    return auth


def _sockets(args: argparse.Namespace) -> list[socket.socket]:
    if args.fd is not None:
        shared = socket.socket(fileno=args.fd)
    else:
        shared = open_listener(args.host, args.port)
    if args.admin_fd is None:
        return [shared]
    return [shared, socket.socket(fileno=args.admin_fd)]


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; a model that cannot be loaded exits non-zero."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format=f"%(asctime)s replica {os.getpid()} %(levelname)s %(message)s"
    )
    tune_allocator()
    try:
        timeouts = ReadTimeouts(header_timeout=args.header_timeout, body_timeout=args.body_timeout)
        auth = None if args.public else _auth(args)
        app = create_app(
            args.model_dir,
            args.name,
            args.version,
            max_batch_size=args.max_batch_size,
            max_delay_ms=args.max_delay_ms,
            runtime=args.runtime,
            threads=args.threads,
            auth=auth,
            public=args.public,
            max_batch_rows=args.max_batch_rows,
            max_tensor_elements=args.max_tensor_elements,
        )
        sockets = _sockets(args)
    except (NimbusError, OSError, ValueError) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, NimbusError) else 1
    gate = DrainGate(app)
    config = uvicorn_config(
        app,
        args.host,
        sockets[0].getsockname()[1],
        timeouts,
        fast_while=lambda: not gate.draining,  # draining answers go through the gate
    )
    config.app = gate  # the same settings, the drain gate in front
    server = DrainingServer(config, gate, args.drain_seconds)
    lifeline = _lifeline(args)
    if lifeline is not None:

        def orphaned() -> None:
            server.should_exit = True  # uvicorn's loop notices, then drains as on SIGTERM

        OrphanWatch(lifeline, orphaned).start()
    gc.freeze()  # the model and everything loaded so far live as long as the process
    server.run(sockets=sockets)
    return 0


if __name__ == "__main__":
    exit_now(main())  # drained: gone at once, not after the interpreter's teardown
