"""The replica's HTTP protocol on the wire: each response in one write, pipelining intact.

A real replica process answers over raw sockets; the writer that joins a response's head and
body is also checked alone, on a real event loop, for what a replica never does (a head
whose body comes later, a close with a head held).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from nimbus.serving.timeouts import CoalescingWriter
from nimbus.system import free_port
from tests.helpers import wait_http
from tests.serving.helpers import body


@pytest.fixture(scope="module")
def replica_port(image_model_dir: Path) -> Iterator[int]:
    port = free_port()
    argv = [sys.executable, "-m", "nimbus.serving.fleet.replica", "--model-dir"]
    argv += [str(image_model_dir), "--name", "m", "--port", str(port), "--public"]
    proc = subprocess.Popen(argv)
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready", 60, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(20)


def infer_request(seed: int) -> bytes:
    payload = orjson.dumps(body(seed))
    return (
        b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
    )


def read_responses(sock: socket.socket, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` complete responses (head, body) from ``sock``, by Content-Length."""
    buffer = b""
    out: list[tuple[bytes, bytes]] = []
    while len(out) < count:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            head = buffer[:end]
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            if len(buffer) >= end + 4 + length:
                out.append((head, buffer[end + 4 : end + 4 + length]))
                buffer = buffer[end + 4 + length :]
                continue
        chunk = sock.recv(65536)
        assert chunk, "the connection closed early"
        buffer += chunk
    return out


def test_a_small_response_arrives_whole_in_one_read(replica_port: int) -> None:
    """uvicorn writes head and body apart: a client blocked in recv() would wake on the head
    alone, and the server would pay two sends. The replica sends them together."""
    with socket.create_connection(("127.0.0.1", replica_port), timeout=10) as sock:
        for seed in range(20):
            sock.sendall(infer_request(seed))
            first = sock.recv(65536)
            head, _, rest = first.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), first[:200]
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            assert len(rest) == length, f"request {seed}: the first read held {len(rest)} bytes"


def test_pipelined_requests_are_answered_in_order(replica_port: int) -> None:
    seeds = list(range(8))
    with socket.create_connection(("127.0.0.1", replica_port), timeout=10) as sock:
        alone = []
        for seed in seeds:
            sock.sendall(infer_request(seed))
            alone.append(read_responses(sock, 1)[0][1])
        sock.sendall(b"".join(infer_request(seed) for seed in seeds))
        together = [payload for _, payload in read_responses(sock, len(seeds))]
    assert together == alone
    assert len(set(alone)) > 1  # the images differ, so does each answer: order is checked


class Recorder:
    """The transport under the writer: records what is sent, in order."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.sent.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def test_the_writer_joins_head_and_body_and_never_holds_a_head_past_one_loop_step() -> None:
    async def scenario() -> Recorder:
        transport = Recorder()
        writer = CoalescingWriter(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        writer.expect_head()
        writer.write(b"head1")
        writer.write(b"body1")
        assert transport.sent == [b"head1body1"]
        writer.write(b"more")  # a second body chunk goes straight out
        writer.expect_head()
        writer.write(b"head2")  # its body comes later (a streaming app)
        assert transport.sent == [b"head1body1", b"more"]
        await asyncio.sleep(0)
        assert transport.sent[-1] == b"head2"
        writer.expect_head()
        writer.write(b"head3")
        writer.close()  # a held head goes out before the connection closes
        assert transport.sent[-1] == b"head3" and transport.closed
        writer.flush()  # nothing is held any more
        return transport

    transport = asyncio.run(scenario())
    assert transport.sent == [b"head1body1", b"more", b"head2", b"head3"]
