"""Issue 15's speed budgets in one run: every ratio against its target, measured on one built workspace.

    .venv/bin/python -m bench.bench_latency                      # workspace/demo (`make demo`)
    .venv/bin/python -m bench.bench_latency --workspace WS --json /tmp/latency.json

1. Encode ratios, in process, one query at a time as served (1 thread): the text tower's encode with the fp32
   ONNX graph over the int8 graph (target >= 2), the image tower's likewise (target >= 1.7); torch beside them.
   The three runtimes are timed interleaved, item by item.
   Needs the bundle's graphs (`marketsearch export-onnx`, a step of `build`).
2. Start time: `marketsearch serve` started, /health polled every 50 ms until 200 (target <= 5 s).
3. Over HTTP on that server: text and photo queries one at a time; p50 of the client latency over the p50 of
   the service's own `encode` stage in the same requests (targets <= 1.3 text, <= 1.2 photo).
4. Catalogue encoding (`embed_catalog` on a copy of the workspace, no feature cache, so every photo is
   decoded; listing texts encoded too; `--embed-listings N`: only the first N listings): photos/s with 1
   and 2 workers over the bare forward throughput of the image tower on preprocessed batches in the same
   runtime (target >= 0.8), end to end and on the photo path alone: the photos of those listings through what
   `embed` does to them (`encoders.embed.photo_transform` in the workers: decoded, and with the graphs encoded
   there too; the colour signatures; `photo_outputs` here), timed from the first photo asked for to the last
   vector, without the texts (and, for reference, with workers that only decode and preprocess while this
   process forwards the pixels in batches: the path before). The encoder is the one `embed` loads
   (`encoders.catalogue_encoder`: the whole-tower fp32 graphs, no torch; `--embed-runtime torch` for the torch
   bundle); the bare forward is timed before and after each run, and each ratio is over their mean.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.bench_service import photo_uploads, text_queries
from bench.http_load import free_port, percentile, run_image, run_text, summarize
from catalog.store import Catalog
from core.workspace import Workspace
from encoders.bundle import MultiModalModel
from encoders.embed import embed_catalog, listing_embeddings
from encoders.photo_stream import load_photo
from encoders.runtime import GraphSet, graph_dir, use_graphs
from encoders.served import served_tower

TARGETS = {  # (ratio, comparison, target)
    "text_int8_speedup": (">=", 2.0),
    "image_int8_speedup": (">=", 1.7),
    "health_start_s": ("<=", 5.0),
    "text_http_over_encode": ("<=", 1.3),
    "photo_http_over_encode": ("<=", 1.2),
    "embed_1_worker_over_forward": (">=", 0.8),
    "embed_2_workers_over_forward": (">=", 0.8),
    # the same runs, photos/s over the time spent on the photo path alone (decoded pixels in, forwards):
    # the listing texts' encode, part of the run above, is left out
    "embed_1_worker_photo_path_over_forward": (">=", 0.8),
    "embed_2_workers_photo_path_over_forward": (">=", 0.8),
}


def encode_ratios(model: MultiModalModel, graphs: GraphSet, texts: list[str], images: list, repeats: int = 2) -> dict:
    """p50 of one-item encodes in torch, the fp32 graph and the int8 graph, interleaved item by item (so the three
    see the same moments of the machine's load; the sessions are checked once by ``use_graphs``)."""
    out: dict = {}
    for modality, items, encode in (("text", texts, lambda t: model.encode_texts([t])),
                                    ("image", images, lambda i: model.encode_images([i]))):
        backbone = (model.text_tower if modality == "text" else model.image_tower).backbone
        sessions = {"torch": None}
        for precision in ("fp32", "int8"):
            if graphs.has(modality, precision):
                use_graphs(model, graphs, modality, precision)  # the checks the service makes
                sessions[precision] = graphs.session(modality, precision)
        # the served model's towers (encoders.served: the whole tower in the graph, tokenizer and pixels without
        # torch): what the service runs when the graphs verify
        served = {f"served_{precision}": served_tower(graphs, modality, precision)
                  for precision in ("fp32", "int8") if graphs.has(modality, precision)}
        runs = {**sessions, **served}
        times: dict[str, list[float]] = {name: [] for name in runs}

        def run(name, item):
            if name in served:
                return served[name].encode([item])
            session = sessions[name]
            backbone.attach_session(session, name) if session is not None else backbone.detach_session()
            return encode(item)

        for name in runs:  # warm-up
            run(name, items[0])
        for _ in range(repeats):
            for item in items:
                for name in runs:
                    start = time.perf_counter()
                    run(name, item)
                    times[name].append((time.perf_counter() - start) * 1000)
        backbone.detach_session()
        timings = {name: percentile(values, 50) for name, values in times.items()}
        out[f"{modality}_encode_p50_ms"] = timings
        if "int8" in timings:
            out[f"{modality}_backbone_int8_speedup"] = timings["fp32"] / timings["int8"]
        if "served_int8" in timings:
            out[f"{modality}_int8_speedup"] = timings["served_fp32"] / timings["served_int8"]
    return out


def start_and_serve(workspace: Path, texts: list[dict], uploads: list[bytes], requests: int) -> dict:
    port = free_port()
    command = [str(Path(sys.executable).parent / "marketsearch"), "serve", "--workspace", str(workspace),
               "--port", str(port), "--log-level", "warning"]
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    log = open(Path(tempfile.gettempdir()) / f"bench-latency-{port}.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        health = None
        while time.monotonic() - started < 300:
            if process.poll() is not None:
                raise SystemExit(f"the server exited with {process.returncode}; see {log.name}")
            try:
                response = httpx.get(url + "/health", timeout=2)
                if response.status_code == 200:
                    health = response.json()
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        start_s = time.monotonic() - started
        if health is None:
            raise SystemExit(f"/health did not answer 200 within 300 s; see {log.name}")
        # the live follower loads its catalogue encoder in the background after start (torch imports included),
        # slowing searches meanwhile: measure the steady service, and report when that load was done
        while not (health.get("live") or {}).get("encoder_loaded", True) and time.monotonic() - started < 300:
            time.sleep(0.2)
            health = httpx.get(url + "/health", timeout=2).json()
        encoder_s = time.monotonic() - started
        text = summarize(run_text(url, texts, requests))
        photo = summarize(run_image(url, uploads, requests))
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    model = health["model"]
    return {
        "health_start_s": start_s,
        "live_encoder_loaded_s": encoder_s,
        "runtimes": {m: f"{model.get(f'{m}_runtime')} {model.get(f'{m}_precision')}" for m in ("text", "image")},
        "runtime_notes": model.get("runtime_notes"),
        "runtime_errors": {m: model.get(f"{m}_runtime_error") for m in ("text", "image")},
        "text_http": text,
        "photo_http": photo,
        "text_http_over_encode": text["p50_ms"] / text["stage_p50_ms"]["encode"],
        "photo_http_over_encode": photo["p50_ms"] / photo["stage_p50_ms"]["encode"],
    }


def encoding_throughput(workspace: Path, threads: int, listings: int | None = None, runtime: str = "onnxruntime"
                        ) -> dict:
    """photos/s and listings/s of `embed_catalog` (no feature cache) with 1 and 2 workers, and of the bare image
    forward on preprocessed batches of 32 in the same runtime, with the catalogue encoder `marketsearch embed`
    loads (``encoders.catalogue_encoder``; by default the whole-tower fp32 graphs, no torch). The bare forward is
    timed before and after each embed run; each ratio is over the mean of the two (the load of a shared machine
    drifts)."""
    import os

    import numpy as np

    from encoders.catalogue_encoder import load_catalogue_encoder

    encoder = load_catalogue_encoder(Workspace.at(workspace).model_dir, runtime=runtime, threads=threads)
    if encoder.image_tower.backbone.runtime == "torch":
        import torch

        torch.set_num_threads(threads)
    out: dict = {"image_runtime": encoder.image_tower.backbone.runtime, "encoder": type(encoder).__name__,
                 "threads": threads, "load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as scratch:
        copy = Workspace.at(Path(scratch) / "ws")
        copy.root.mkdir()
        shutil.copy2(Workspace.at(workspace).db_path, copy.db_path)
        catalog = Catalog(copy.db_url, root=Workspace.at(workspace).root)
        try:
            paths = photo_paths(catalog, 200)[:256]
            transform = encoder.image_tower.eval_transform()
            pixels = np.stack([transform(load_photo(p)) for p in paths])
            encoder.image_tower.encode_pixels_with_pooled(pixels[:32])  # warm-up

            def forward_photos_per_s() -> float:
                start = time.perf_counter()
                encoder.image_tower.encode_pixels_with_pooled(pixels, batch_size=32)
                return len(paths) / (time.perf_counter() - start)

            forwards = [forward_photos_per_s()]
            for workers in (1, 2):
                with catalog.engine.begin() as conn:  # these listings are encoded again, the others are up to date
                    chosen = listing_embeddings.delete()
                    if listings is not None:
                        chosen = chosen.where(listing_embeddings.c.listing_id.in_(catalog.listing_ids()[:listings]))
                    conn.execute(chosen)
                stats = embed_catalog(encoder, catalog, progress=False, workers=workers)
                paths_of_run = photo_paths(catalog, listings)
                photo_path = photo_path_photos_per_s(encoder.image_tower, paths_of_run, workers)
                decode_only = photo_path_photos_per_s(encoder.image_tower, paths_of_run, workers,
                                                      encode_in_workers=False)
                forwards.append(forward_photos_per_s())
                forward = (forwards[-2] + forwards[-1]) / 2
                key = f"embed_{workers}_worker{'s' if workers > 1 else ''}"
                out[key] = {"listings_per_s": stats.encoded / stats.seconds,
                            "photos_per_s": stats.images_encoded / stats.seconds,
                            "photo_path_photos_per_s": photo_path,
                            "photo_path_decode_only_workers_photos_per_s": decode_only,
                            "listings": stats.encoded, "photos": stats.images_encoded, "seconds": stats.seconds,
                            "text_seconds": stats.text_seconds, "photo_seconds": stats.photo_seconds,
                            "forward_photos_per_s": forward}
                out[f"{key}_over_forward"] = out[key]["photos_per_s"] / forward
                out[f"{key}_photo_path_over_forward"] = out[key]["photo_path_photos_per_s"] / forward
                out[key]["decode_only_over_forward"] = decode_only / forward
            out["forward_photos_per_s"] = forwards
        finally:
            catalog.close()
    out["load_after"] = os.getloadavg()[0]
    return out


def photo_paths(catalog: Catalog, listings: int | None) -> list[Path]:
    """The photo files of the first ``listings`` listings (all without it), as `embed` would read them."""
    ids = catalog.listing_ids()
    return [path for listing in catalog.get_listings(ids[:listings] if listings is not None else ids)
            for image_id in listing.image_ids if (path := catalog.image_path(image_id)) is not None and path.is_file()]


def photo_path_photos_per_s(image_tower, paths: list[Path], workers: int, batch_size: int = 32,
                            encode_in_workers: bool = True) -> float:
    """photos/s of `embed`'s photo path alone over ``paths``: the photo stream with ``workers`` (decoding, and with
    the graphs encoding, each photo; its colour signature), then ``photo_outputs`` a batch at a time.
    ``encode_in_workers=False``: the workers only decode and preprocess, this process forwards the pixels in batches
    (the path before the graph ran in the workers, and the torch path's)."""
    from encoders.appearance import AppearancePixels
    from encoders.embed import photo_outputs, photo_transform
    from encoders.photo_stream import PREFETCH_PER_WORKER, photo_pixels

    start = time.perf_counter()
    transform = photo_transform(image_tower, workers) if encode_in_workers else image_tower.eval_transform()
    stream = photo_pixels(paths, AppearancePixels(transform), workers=workers,
                          ahead=2 * batch_size + PREFETCH_PER_WORKER * workers)
    batch: list = []
    for both, failure in stream:
        if failure is None:
            batch.append(both[0])
        if len(batch) == batch_size:
            photo_outputs(image_tower, batch, batch_size)
            batch = []
    if batch:
        photo_outputs(image_tower, batch, batch_size)
    return len(paths) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("workspace/demo"))
    parser.add_argument("--queries", type=int, default=100, help="text queries (and a quarter as many photos)")
    parser.add_argument("--requests", type=int, default=200, help="HTTP requests per query kind")
    parser.add_argument("--threads", type=int, default=2, help="torch / ONNX Runtime threads for the encoding part")
    parser.add_argument("--embed-listings", type=int, default=None,
                        help="catalogue encoding: encode only the first N listings again (default: all)")
    parser.add_argument("--embed-runtime", default="onnxruntime", choices=("onnxruntime", "torch"),
                        help="catalogue encoding: the whole-tower fp32 graphs (as `marketsearch embed`) or torch")
    parser.add_argument("--parts", default="encode,serve,embed",
                        help="which parts to run, comma-separated: encode (1), serve (2 and 3), embed (4)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    import torch

    torch.set_num_threads(1)
    workspace = Workspace.at(args.workspace)
    model = MultiModalModel.load(workspace.model_dir)
    graphs = GraphSet.open(graph_dir(workspace.model_dir), model.fingerprint)
    bodies = text_queries(workspace.root, args.queries, seed=0)
    with Catalog(workspace.db_url, root=workspace.root) as catalog:
        photos = [p for listing in catalog.get_listings(catalog.listing_ids()[::-1][: args.queries]) for i in
                  listing.image_ids if (p := catalog.image_path(i)) is not None and p.is_file()]
    images = [load_photo(p) for p in photos[: max(args.queries // 4, 8)]]
    results: dict = {"workspace": workspace.root.name, "gates": graphs.manifest.get("gates", {})}
    if "encode" in parts:
        results.update(encode_ratios(model, graphs, [b["query"] for b in bodies], images))
    if "serve" in parts:
        results.update(start_and_serve(workspace.root, bodies, photo_uploads(workspace.root, 40, 0, (640, 480)),
                                       args.requests))
    if "embed" in parts:
        results["encoding"] = encoding_throughput(workspace.root, args.threads, args.embed_listings,
                                                  args.embed_runtime)
        results.update({k: v for k, v in results["encoding"].items() if k.endswith("_over_forward")})
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return results


def report(results: dict) -> str:
    lines = ["| ratio | measured | target | met |", "|---|---:|---|---|"]
    for name, (op, target) in TARGETS.items():
        value = results.get(name)
        if value is None:
            lines.append(f"| {name} | not measured | {op} {target} | - |")
            continue
        met = value >= target if op == ">=" else value <= target
        lines.append(f"| {name} | {value:.2f} | {op} {target} | {'yes' if met else 'no'} |")
    if "text_encode_p50_ms" in results:
        encode = {k: {p: round(v, 2) for p, v in results[k].items()} for k in ("text_encode_p50_ms",
                                                                               "image_encode_p50_ms")}
        lines += ["", f"encode p50 ms (1 query, 1 thread): {json.dumps(encode)}"]
    if "text_http" in results:
        lines += [f"served: {json.dumps(results['runtimes'])}; notes: {json.dumps(results['runtime_notes'])}",
                  "HTTP p50 ms text {:.1f} (encode {:.1f}), photo {:.1f} (encode {:.1f})".format(
                      results["text_http"]["p50_ms"], results["text_http"]["stage_p50_ms"]["encode"],
                      results["photo_http"]["p50_ms"], results["photo_http"]["stage_p50_ms"]["encode"]),
                  f"live follower's catalogue encoder loaded {results['live_encoder_loaded_s']:.1f} s after start "
                  "(the searches above were sent after it)"]
    if "encoding" in results:
        lines.append(f"catalogue encoding: {json.dumps(results['encoding'], default=str)}")
    for modality, gate in results.get("gates", {}).items():
        lines.append(f"int8 {modality} gate: {'passed' if gate.get('passed') else 'failed'}: {gate.get('reason')}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
