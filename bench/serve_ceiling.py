"""The HTTP stack's ceiling: a raw ASGI app that reads the request body and answers a fixed
JSON of about 200 bytes, under the uvicorn settings a Nimbus replica uses (httptools, uvloop,
no access log, one worker). No model, no parsing: no inference server on this stack can
answer faster.

``--protocol nimbus`` runs it under the replica's own HTTP protocol instead of uvicorn's
(read timeouts, and each response sent in one write): the ceiling of that stack. ``--protocol
fast`` under the replica's fast-path protocol (:mod:`nimbus.serving.fastpath`), with a handler
that takes every POST and answers the same fixed JSON without ASGI: the ceiling of the path a
replica's inference requests take (uvicorn's server, loop and HTTP parser, no ASGI cycle).

    python bench/serve_ceiling.py [--port 8003] [--protocol uvicorn|nimbus|fast]
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson
import uvicorn

from nimbus.serving import asgi
from nimbus.serving.fastpath import Reply, fast_protocol
from nimbus.serving.timeouts import timeout_protocol

ANSWER = orjson.dumps(
    {
        "model_name": "cnn",
        "model_version": "1",
        "outputs": [
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [1, 10],
                "data": [0.0714029, 0.1066686, 0.0917714, 0.1117388, 0.0850207] * 2,
            }
        ],
    }
)
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))]


async def ceiling_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI: drain the body, answer :data:`ANSWER`."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


class FixedAnswer:
    """A fast-path handler: every POST is answered :data:`ANSWER`."""

    def accepts(self, method: str, path: str, headers: asgi.Headers) -> bool:
        return method == "POST"

    def handle(self, path: str, headers: asgi.Headers, body: bytes, reply: Reply) -> None:
        reply(200, ANSWER, asgi.JSON, [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8003)
    parser.add_argument("--protocol", choices=("uvicorn", "nimbus", "fast"), default="uvicorn")
    args = parser.parse_args()
    protocol: Any = {
        "uvicorn": "httptools",
        "nimbus": timeout_protocol(),
        "fast": fast_protocol(FixedAnswer()),
    }[args.protocol]
    uvicorn.run(
        ceiling_app,
        host="127.0.0.1",
        port=args.port,
        http=protocol,
        loop="uvloop",
        lifespan="on",
        access_log=False,
        server_header=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
