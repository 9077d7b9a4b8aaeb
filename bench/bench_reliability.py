"""Reliability load: `marketsearch serve` on 127.0.0.1 under concurrent clients for a bounded time, with mixed
text and photo searches, hostile inputs included. Every answer must carry the status the API documents for
its input (docs/api.md, "Errors"), nothing may go unanswered, and the server's peak memory is reported.

    .venv/bin/python -m bench.bench_reliability --workspace workspace/demo            # 8 clients, 30 s
    .venv/bin/python -m bench.bench_reliability --workspace workspace/demo --normal-only  # baseline memory

`tests/api/test_reliability.py` runs it in the default test run on the demo fixture workspace and asserts
zero 5xx, zero unanswered requests, the documented status for every answer and a bound on peak memory.

The hostile photos are in one list, `HOSTILE_PHOTOS`: add new ones there, with the status the API documents.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

from PIL import Image as PILImage

from api.config import Settings
from bench.bench_service import photo_uploads, text_queries
from bench.http_load import Call, free_port, peak_memory_bytes, percentile, run_mixed, serving, status_counts

# What the served app reads too: the server inherits this process's environment.
MAX_UPLOAD_BYTES = Settings().max_upload_bytes


def _encoded(size: tuple[int, int], fmt: str, color=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels in its header and holds no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _photo(name: str, data: bytes, content_type: str, expected: int) -> Call:
    return Call(f"photo: {name}", "/search/image", expected, files={"file": ("photo.jpg", data, content_type)})


_JPEG = _encoded((320, 240), "JPEG")

# Uploads that are not a usable photo of a thing for sale, and the status docs/api.md documents for each.
HOSTILE_PHOTOS: list[Call] = [
    _photo("corrupt JPEG data", _JPEG[:600] + bytes(range(256)) * 20, "image/jpeg", 422),
    _photo("truncated JPEG", _JPEG[: len(_JPEG) // 2], "image/jpeg", 422),
    _photo("decompression bomb header (100000 x 100000 PNG)", _png_header(100_000, 100_000), "image/png", 413),
    _photo("HTML declared as image/jpeg", b"<!doctype html><title>not a photo</title>" * 20, "image/jpeg", 415),
    _photo("upload over the size limit", bytes(MAX_UPLOAD_BYTES + 1), "image/jpeg", 413),
    _photo("empty file", b"", "image/jpeg", 422),
    _photo("1x1 PNG (a side under 8 pixels)", _encoded((1, 1), "PNG"), "image/png", 422),
    _photo("extreme aspect ratio (20000x1 PNG, a few hundred bytes)", _encoded((20_000, 1), "PNG"), "image/png", 422),
    _photo("extreme aspect ratio (9x30000 PNG)", _encoded((9, 30_000), "PNG"), "image/png", 422),
    _photo("widest allowed shape (4000x500 JPEG, 8:1)", _encoded((4_000, 500), "JPEG"), "image/jpeg", 200),
]

# Queries and parameters at and past the documented limits (1..512 characters, a visible character, k 1..100).
HOSTILE_QUERIES: list[Call] = [
    Call("text: empty", "/search/text", 422, json={"query": ""}),
    Call("text: blanks", "/search/text", 422, json={"query": " \t\n "}),
    Call("text: only invisible characters", "/search/text", 422, json={"query": "\u200b\u200d\u2060"}),
    Call("text: 513 characters", "/search/text", 422, json={"query": "bike " * 102 + "bik"}),
    Call("text: 512 characters of emoji and symbols", "/search/text", 200, json={"query": ("🚲€✓漢字" * 103)[:512]}),
    Call("text: SQL and markup", "/search/text", 200, json={"query": "'; DROP TABLE listings; -- <script>%s%n"}),
    Call("text: huge k", "/search/text", 422, json={"query": "sofa", "k": 10**9}),
    Call("text: k = 100 (the most)", "/search/text", 200, json={"query": "table", "k": 100}),
    Call("photo: huge k", "/search/image", 422, files={"file": ("photo.jpg", _JPEG, "image/jpeg")},
         data={"k": "1000000"}),
]  # fmt: skip


def normal_calls(workspace: Path, seed: int = 0) -> list[Call]:
    """What buyers send: typed queries (some filtered) and catalogue photos re-encoded as phone uploads."""
    texts = [Call("text: buyer query", "/search/text", 200, json=body) for body in text_queries(workspace, 24, seed)]
    photos = [
        _photo("catalogue photo", data, "image/jpeg", 200) for data in photo_uploads(workspace, 8, seed, (640, 480))
    ]
    with_words = [
        Call("photo + words", "/search/image", 200, files={"file": ("photo.jpg", data, "image/jpeg")},
             data={"text": "in red"})
        for data in photo_uploads(workspace, 2, seed + 1, (480, 640))
    ]  # fmt: skip
    return texts + photos + with_words


def mixed_calls(workspace: Path, seed: int = 0) -> list[Call]:
    """Normal and hostile requests interleaved: each hostile call between two normal ones."""
    normal = normal_calls(workspace, seed)
    hostile = HOSTILE_PHOTOS + HOSTILE_QUERIES
    mixed: list[Call] = []
    for i, call in enumerate(normal):
        mixed.append(call)
        if i < len(hostile):
            mixed.append(hostile[i])
    return mixed + hostile[len(normal) :]


def run(
    workspace: Path, calls: Sequence[Call], *, clients: int = 8, seconds: float = 30.0, workers: int = 1,
    log_path: Path | None = None,
) -> dict:
    """Serve ``workspace``, send ``calls`` from ``clients`` clients for ``seconds``, and summarise: requests,
    statuses per call, the answers whose status is not the documented one, latency over all answers and the
    server's peak memory (VmHWM, workers included) after the load."""
    expected = {call.name: call.expected for call in calls}
    with serving(workspace, free_port(), workers, startup_timeout=300, log_path=log_path) as (url, _health, pid):
        memory_after_start = peak_memory_bytes(pid)
        samples, wall = run_mixed(url, calls, clients, seconds)
        peak = peak_memory_bytes(pid)
    answered = [s.client_ms for s in samples if s.status]
    unexpected = sorted({f"{s.call}: {s.status} {s.error}"[:300] for s in samples if s.status != expected[s.call]})
    return {
        "clients": clients,
        "server_workers": workers,
        "seconds": round(wall, 1),
        "requests": len(samples),
        "unanswered": sum(1 for s in samples if s.status == 0),
        "server_errors": sum(1 for s in samples if s.status >= 500),
        "statuses": status_counts(samples),
        "unexpected": unexpected,
        "p50_ms": round(percentile(answered, 50), 1),
        "p99_ms": round(percentile(answered, 99), 1),
        "peak_memory_after_start_mb": round(memory_after_start / 2**20),
        "peak_memory_mb": round(peak / 2**20),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, default=Path("workspace/demo"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes of the server")
    parser.add_argument("--normal-only", action="store_true", help="buyers' requests only (the memory baseline)")
    args = parser.parse_args(argv)
    calls = normal_calls(args.workspace, args.seed) if args.normal_only else mixed_calls(args.workspace, args.seed)
    results = run(args.workspace, calls, clients=args.clients, seconds=args.seconds, workers=args.workers)
    print(json.dumps(results, indent=2, ensure_ascii=False))
    return results


if __name__ == "__main__":
    main()
