"""Cost of one photo search by the photo's shape, through the service in-process (FastAPI TestClient).

    .venv/bin/python -m bench.bench_photo_shape --workspace WS --size 20000x1
    /usr/bin/time -v .venv/bin/python -m bench.bench_photo_shape --workspace WS --size 30000x9 --json out.json

Loads the service on the workspace, sends one ordinary photo (256x256 JPEG) to warm it up, then one
PNG of ``--size`` in one colour (a few hundred bytes: what an attacker would send) to ``POST /search/image``.
Prints the status, the wall time of that request and the process's peak resident memory before and
after it (``ru_maxrss``: a high-water mark, so the difference is what that one request added to the
peak). Run one size per process: a peak cannot go down.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import time

import numpy as np
from PIL import Image


def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 60, 30)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def jpeg_bytes(width: int, height: int, seed: int = 1) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--size", required=True, help="WIDTHxHEIGHT of the PNG to send, e.g. 20000x1")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    from fastapi.testclient import TestClient

    from api.config import Settings
    from api.main import create_app

    data = png_bytes(width, height)
    with TestClient(create_app(Settings(workspace=args.workspace)), raise_server_exceptions=False) as client:
        def send(payload: bytes, name: str, kind: str):
            started = time.perf_counter()
            response = client.post("/search/image", files={"file": (name, payload, kind)}, data={"k": "10"})
            return response, time.perf_counter() - started

        warm, _ = send(jpeg_bytes(256, 256), "warm.jpg", "image/jpeg")
        if warm.status_code != 200:
            raise SystemExit(f"warm-up photo search failed: {warm.status_code} {warm.text[:300]}")
        before = peak_rss_mib()
        response, seconds = send(data, "shape.png", "image/png")
        after = peak_rss_mib()
    detail = response.json().get("detail") if response.status_code != 200 else None
    result = {
        "size": f"{width}x{height}",
        "png_bytes": len(data),
        "status": response.status_code,
        "seconds": round(seconds, 3),
        "peak_rss_mib_before": round(before),
        "peak_rss_mib_after": round(after),
        "peak_rss_added_mib": round(after - before),
        "detail": detail,
    }
    print(json.dumps(result))
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
