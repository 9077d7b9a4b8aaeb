"""POST /search/image: photos are judged by their bytes; size, pixel, type and corruption limits hold."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib

import pytest
from PIL import Image

from api.main import MULTIPART_OVERHEAD_BYTES, create_app
from tests.api.conftest import jpeg_bytes


def upload(client, data: bytes, *, content_type: str = "image/jpeg", filename: str = "photo.jpg", **fields):
    return client.post("/search/image", files={"file": (filename, data, content_type)}, data=fields)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels but carries almost no data (a decompression bomb's header)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_photo_search_passes_an_rgb_image(fake_client, fake_state):
    response = upload(fake_client, jpeg_bytes((64, 48)), k="2", sort="price_asc", category="Home")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query_type"] == "image"
    assert body["count"] == 2
    assert "decode" in body["timings_ms"] and "service_total" in body["timings_ms"]
    call = fake_state.searcher.calls[-1]
    assert call["text"] is None and call["k"] == 2 and call["sort"] == "price_asc"
    assert call["filters"].category == "Home"
    assert call["image"].mode == "RGB" and call["image"].size == (64, 48)


def test_photo_plus_words(fake_client, fake_state):
    response = upload(fake_client, jpeg_bytes(), text="  in red ")
    assert response.status_code == 200
    assert response.json()["query_type"] == "image+text"
    assert fake_state.searcher.calls[-1]["text"] == "in red"


def test_png_with_alpha_and_a_lying_content_type_is_accepted(fake_client, fake_state):
    buffer = io.BytesIO()
    Image.new("RGBA", (20, 30), (255, 0, 0, 128)).save(buffer, format="PNG")
    response = upload(fake_client, buffer.getvalue(), content_type="application/octet-stream", filename="x.bin")
    assert response.status_code == 200, response.text
    assert fake_state.searcher.calls[-1]["image"].mode == "RGB"


def test_exif_orientation_is_applied(fake_client, fake_state):
    image = Image.new("RGB", (60, 20), "white")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert upload(fake_client, buffer.getvalue()).status_code == 200
    assert fake_state.searcher.calls[-1]["image"].size == (20, 60)


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"hello, I am text pretending to be a photo", "image/jpeg"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj", "image/png"),
        (b"\x00" * 1000, "image/jpeg"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "image/svg+xml"),
    ],
)
def test_files_that_are_not_images_are_415(fake_client, fake_state, data, content_type):
    response = upload(fake_client, data, content_type=content_type)
    assert response.status_code == 415, response.text
    assert "JPEG" in response.json()["detail"]
    assert fake_state.searcher.calls == []


def test_image_formats_we_do_not_take_are_415(fake_client):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="TIFF")
    response = upload(fake_client, buffer.getvalue(), content_type="image/tiff")
    assert response.status_code == 415
    assert "TIFF" in response.json()["detail"]


def test_truncated_jpeg_is_422(fake_client):
    data = jpeg_bytes((400, 300))
    response = upload(fake_client, data[: len(data) // 2])
    assert response.status_code == 422, response.text
    assert "truncated or corrupt" in response.json()["detail"][0]["msg"]


def test_corrupt_png_is_422(fake_client):
    buffer = io.BytesIO()
    Image.new("RGB", (50, 50), "red").save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[60:90] = b"\xff" * 30  # inside the compressed image data
    response = upload(fake_client, bytes(data), content_type="image/png")
    assert response.status_code in (415, 422), response.text
    assert response.json()["detail"]


def test_empty_file_is_422(fake_client):
    response = upload(fake_client, b"")
    assert response.status_code == 422
    assert "empty" in response.json()["detail"][0]["msg"]


def test_missing_file_is_422(fake_client):
    response = fake_client.post("/search/image", data={"text": "red"})
    assert response.status_code == 422
    assert "file" in response.text


def test_json_instead_of_multipart_is_422(fake_client):
    assert fake_client.post("/search/image", json={"query": "red"}).status_code == 422


def test_many_pixels_are_413_before_decoding(fake_client, fake_settings):
    response = upload(fake_client, png_header_only(2000, 1000), content_type="image/png")  # 2 MP > 1 MP limit
    assert response.status_code == 413, response.text
    assert f"{fake_settings.max_image_pixels:,}" in response.json()["detail"]


def test_decompression_bomb_beyond_pillow_limit_is_413(fake_client):
    response = upload(fake_client, png_header_only(100_000, 100_000), content_type="image/png")
    assert response.status_code == 413, response.text


def test_declared_content_length_over_the_limit_is_413(fake_client, fake_settings):
    data = b"\xff\xd8" + b"\0" * (fake_settings.max_upload_bytes + 100_000)
    response = upload(fake_client, data)
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


def test_file_just_over_the_limit_is_413_from_the_bounded_read(fake_client, fake_settings):
    # Within the multipart allowance of the body limit, so the per-file bounded read is what refuses it.
    data = b"\xff\xd8" + b"\0" * (fake_settings.max_upload_bytes + 10)
    response = upload(fake_client, data)
    assert response.status_code == 413
    assert f"limit is {fake_settings.max_upload_bytes:,} bytes" in response.json()["detail"]


def test_streamed_body_without_content_length_is_413(fake_client, fake_state):
    boundary = "xyz"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()

    def body():
        yield head
        for _ in range(100):  # 6.4 MB, far over the 200 kB limit
            yield b"\0" * 65536

    response = fake_client.post(
        "/search/image", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert response.status_code == 413
    assert fake_state.searcher.calls == []


def test_streamed_body_stops_being_read_at_the_limit(fake_settings, fake_state):
    """At the ASGI level (TestClient buffers bodies): chunks after the limit are never pulled."""
    app = create_app(fake_settings, state=fake_state)
    chunks_pulled = 0
    sent: list[dict] = []

    async def receive():
        nonlocal chunks_pulled
        chunks_pulled += 1
        if chunks_pulled == 1:
            head = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
            return {"type": "http.request", "body": head, "more_body": True}
        return {"type": "http.request", "body": b"\0" * 65536, "more_body": chunks_pulled < 1000}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/search/image",
        "raw_path": b"/search/image",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"multipart/form-data; boundary=xyz")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    asyncio.run(app(scope, receive, send))
    limit_chunks = (fake_settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES) // 65536 + 2  # + the head
    assert chunks_pulled == limit_chunks
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert b"limit" in sent[1]["body"]


@pytest.mark.parametrize(
    "fields",
    [
        {"k": "0"},
        {"k": "500"},
        {"k": "many"},
        {"sort": "random"},
        {"min_price": "9", "max_price": "1"},
        {"min_price": "nan"},
        {"text": "w" * 513},
    ],
)
def test_invalid_form_options_are_422(fake_client, fake_state, fields):
    response = upload(fake_client, jpeg_bytes(), **fields)
    assert response.status_code == 422, response.text
    assert fake_state.searcher.calls == []


def test_photos_with_a_side_under_the_catalogue_minimum_are_422(fake_client, fake_state):
    response = upload(fake_client, jpeg_bytes((6, 40)))
    assert response.status_code == 422, response.text
    assert "too small (6x40, minimum side 8)" in response.json()["detail"][0]["msg"]
    assert fake_state.searcher.calls == []
