"""``/predict`` takes forms: curl -F / requests files=, HTML forms, text fields; the limits
hold while the form streams in. A real replica on a port, real HTTP clients and sockets."""

from __future__ import annotations

import io
import socket
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from nimbus.serving.app import create_app
from nimbus.serving.forms import image_size
from tests.serving.test_server import running

MAX_BODY = 64 * 1024
MAX_PIXELS = 10_000


def png(size: tuple[int, int] = (20, 14), seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def png_header(width: int, height: int) -> bytes:
    """The first bytes of a PNG of ``width x height``: signature and IHDR."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + crc


@pytest.fixture(scope="module")
def image(image_model_dir: Path) -> Iterator[str]:
    app = create_app(image_model_dir, "cnn", max_body_bytes=MAX_BODY, max_image_pixels=MAX_PIXELS)
    with running(app) as url:
        yield url


@pytest.fixture(scope="module")
def text(text_model_dir: Path) -> Iterator[str]:
    with running(create_app(text_model_dir, "text")) as url:
        yield f"http://{url}/v2/models/text/predict"


def predict_url(host: str) -> str:
    return f"http://{host}/v2/models/cnn/predict"


def test_a_curl_like_file_upload_answers_as_the_raw_body(image: str) -> None:
    photo = png()
    raw = httpx.post(predict_url(image), content=photo)
    assert raw.status_code == 200, raw.text
    # what `curl -F file=@digit.png` and `requests.post(url, files=...)` send
    form = httpx.post(predict_url(image), files={"file": ("digit.png", photo, "image/png")})
    assert form.status_code == 200, form.text
    assert form.json() == raw.json()
    # any field name will do, and text fields beside the file are ignored
    other = httpx.post(
        predict_url(image), files={"image": ("x.png", photo)}, data={"note": "from a form"}
    )
    assert other.status_code == 200 and other.json() == raw.json()


def test_an_html_form_body_as_a_browser_sends_it(image: str) -> None:
    photo = png(seed=1)
    boundary = b"----WebKitFormBoundary7MA4YWxkTrZu0gW"
    body = (
        b"--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="caption"\r\n\r\n'
        b"my cat\r\n"
        b"--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="photo"; filename="IMG 0001.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + photo + b"\r\n"
        b"--" + boundary + b"--\r\n"
    )
    response = httpx.post(
        predict_url(image),
        content=body,
        headers={"Content-Type": "multipart/form-data; boundary=" + boundary.decode()},
    )
    assert response.status_code == 200, response.text
    assert response.json() == httpx.post(predict_url(image), content=photo).json()


def test_curl_data_binary_keeps_working_though_it_says_urlencoded(image: str, text: str) -> None:
    """``curl --data-binary @photo.png`` and ``curl -d '{"text": ...}'`` send
    ``Content-Type: application/x-www-form-urlencoded``: the body is still the file."""
    photo = png(seed=2)
    raw = httpx.post(predict_url(image), content=photo).json()
    curl = httpx.post(predict_url(image), content=photo, headers={"Content-Type": URLENCODED})
    assert curl.status_code == 200 and curl.json() == raw
    want = httpx.post(text, json={"text": "good movie"}).json()
    curl = httpx.post(text, content=b'{"text": "good movie"}', headers={"Content-Type": URLENCODED})
    assert curl.status_code == 200 and curl.json() == want


def test_an_oversized_form_is_refused_while_it_streams(image: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
        for _ in range(MAX_BODY // 4096 + 2):
            yield b"\0" * 4096

    response = httpx.post(
        predict_url(image),
        content=chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code == 413 and "limit" in response.json()["error"]
    declared = httpx.post(
        predict_url(image),
        content=b"x" * (MAX_BODY + 1),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert declared.status_code == 413


def test_too_many_pixels_are_refused_from_the_header_before_the_rest_arrives(
    image: str,
) -> None:
    """Only the first bytes of the form are sent; the answer comes before the rest."""
    host, port = image.split(":")
    head = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
        + png_header(200, 200)
        + b"\0" * 512
    )
    request = (
        b"POST /v2/models/cnn/predict HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: %d\r\n\r\n" % (MAX_BODY - 1)
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request + head)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"40000 pixels" in answer


def test_a_text_model_takes_a_text_field(text: str) -> None:
    want = httpx.post(text, json={"text": "good movie"}).json()
    multipart = httpx.post(text, files={"text": (None, "good movie")})
    assert multipart.status_code == 200, multipart.text
    assert multipart.json() == want
    # an HTML form without enctype sends application/x-www-form-urlencoded
    urlencoded = httpx.post(text, data={"text": "good movie"})
    assert urlencoded.status_code == 200 and urlencoded.json() == want
    as_file = httpx.post(text, files={"text": ("review.txt", b"good movie", "text/plain")})
    assert as_file.status_code == 200 and as_file.json() == want


def test_a_tabular_model_takes_a_features_field(tabular_model_dir: Path) -> None:
    with running(create_app(tabular_model_dir, "mlp")) as url:
        base = f"http://{url}/v2/models/mlp/predict"
        want = httpx.post(base, json={"features": [1.0, 2.0, 3.0]}).json()
        got = httpx.post(base, files={"features": (None, "[1.0, 2.0, 3.0]")})
        assert got.status_code == 200 and got.json() == want
        bad = httpx.post(base, files={"features": (None, "1.0; 2")})
        assert bad.status_code == 400 and "'features' is not JSON" in bad.json()["error"]


@pytest.mark.parametrize(
    ("content_type", "body", "problem"),
    [
        ("multipart/form-data", b"--b--\r\n", "no boundary"),
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n--b--\r\n',
            "no file part",
        ),
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="a"; filename="a.png"\r\n\r\nx\r\n'
            b'--b\r\nContent-Disposition: form-data; name="b"; filename="b.png"\r\n\r\ny\r\n'
            b"--b--\r\n",
            "2 files ('a', 'b')",
        ),
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nxyz',
            "ends before its closing boundary",
        ),
        ("multipart/form-data; boundary=b", b"this is not a form", "malformed multipart"),
        (
            "multipart/form-data; boundary=b",
            b"--b\r\nContent-Type: image/png\r\n\r\nxyz\r\n--b--\r\n",
            "no 'Content-Disposition: form-data; name=...' header",
        ),
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
            b"not an image\r\n--b--\r\n",
            "not a PNG or JPEG image",
        ),
        ("application/x-www-form-urlencoded", b"file=abc", "enctype"),
    ],
)
def test_a_bad_form_is_a_400_naming_the_problem(
    image: str, content_type: str, body: bytes, problem: str
) -> None:
    response = httpx.post(predict_url(image), content=body, headers={"Content-Type": content_type})
    assert response.status_code == 400, response.text
    assert problem in response.json()["error"]


def test_a_text_form_without_its_field_is_a_400(text: str) -> None:
    response = httpx.post(text, files={"txt": (None, "good movie")})
    assert response.status_code == 400
    assert "no 'text' field (fields: ['txt'])" in response.json()["error"]
    gzipped = httpx.post(
        text,
        content=b"text=x",
        headers={"Content-Type": URLENCODED, "Content-Encoding": "gzip"},
    )
    assert gzipped.status_code == 400 and "cannot be compressed" in gzipped.json()["error"]


URLENCODED = "application/x-www-form-urlencoded"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_image_size_is_read_from_the_first_bytes(fmt: str) -> None:
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x010E] = "x" * 3000  # a long description: the JPEG's size comes after it
    Image.new("RGB", (123, 45)).save(out, fmt, exif=exif)
    data = out.getvalue()
    assert image_size(data) == (123, 45)
    assert image_size(data[:20]) is None
    assert image_size(b"GIF89a" + data) is None
