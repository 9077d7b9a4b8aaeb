"""Static int8 variants of the image backbone graph, each judged like `export-onnx` judges the bundle's graph.

    .venv/bin/python -m bench.image_int8_variants --workspace WS [--variants minmax,percentile,...] [--json out]

Needs WS/model/onnx/image.fp32.onnx (`marketsearch export-onnx`). For every variant: quantise the fp32 graph
(``encoders.runtime.quantize_image_graph`` with the variant's ``ImageQuantisation``), run the known-item image
protocol on the test products with queries encoded by that graph as the service encodes them (the whole tower,
``encoders.served.ServedImageTower``; the fp32 run is computed once), and time the graph (``session.run`` on one
photo, 1 thread) interleaved with the fp32 graph. Prints one line per variant: NDCG@10 drop in points (gate:
<= 1), top-20 overlap, fp32 / int8 graph p50 (the JSON's ``backbone_*`` keys, named before the graphs held the
whole tower).

    .venv/bin/python -m bench.image_int8_variants --workspace WS --speed-only --variants A,B [--rounds N]

times the whole image tower graph of the fp32 export and of every listed variant (and of the bundle's recipe,
also under other session settings: ``SESSION_VARIANTS``), interleaved photo by photo on 8 photos, no gate:
a screen for which variants are worth gating.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from core.workspace import Workspace
from encoders.runtime import (
    GraphSet,
    ImageQuantisation,
    calibration_batches,
    graph_dir,
    graph_name,
    image_quantisation_for,
    open_session,
    quantize_image_graph,
)
from encoders.served import ServedImageTower
from evaluation.evaluate import collect_runs, compare_runs
from evaluation.judgments import wanted_listing_qrels
from evaluation.protocol import ProtocolBuilder
from evaluation.runtime_gate import MAX_DROP_POINTS, STAGE, agreement, tower_replaced

VARIANTS = {
    "minmax": ImageQuantisation(),
    "percentile": ImageQuantisation(method="Percentile"),
    "entropy": ImageQuantisation(method="Entropy"),
    "minmax-256": ImageQuantisation(photos=256),
    "minmax-skip-first-last": ImageQuantisation(keep_fp32=("first_conv", "last_conv")),
    "minmax-skip-depthwise": ImageQuantisation(keep_fp32=("depthwise",)),
    "minmax-skip-first-last-depthwise": ImageQuantisation(keep_fp32=("first_conv", "last_conv", "depthwise")),
    "minmax-qoperator": ImageQuantisation(quant_format="QOperator"),
    "minmax-skip-first-3-convs": ImageQuantisation(keep_first_convs=3),
    "minmax-skip-first-6-convs": ImageQuantisation(keep_first_convs=6),
    "minmax-skip-first-6-convs-last": ImageQuantisation(keep_first_convs=6, keep_fp32=("last_conv",)),
    "minmax-skip-first-9-convs": ImageQuantisation(keep_first_convs=9),
    "minmax-skip-first-6-convs-qoperator": ImageQuantisation(keep_first_convs=6, quant_format="QOperator"),
    "minmax-skip-first-depthwise": ImageQuantisation(keep_fp32=("first_conv", "depthwise")),
    "minmax-skip-last-depthwise": ImageQuantisation(keep_fp32=("last_conv", "depthwise")),
    "minmax-skip-first-last-depthwise-qoperator": ImageQuantisation(keep_fp32=("first_conv", "last_conv", "depthwise"),
                                                                     quant_format="QOperator"),
    "minmax-s8s8": ImageQuantisation(activations="QInt8"),
    # around the recipe (first 6 convs fp32): other kernels, calibrations, per-tensor weights
    "percentile-skip-first-6-convs": ImageQuantisation(keep_first_convs=6, method="Percentile"),
    "entropy-skip-first-6-convs": ImageQuantisation(keep_first_convs=6, method="Entropy"),
    "minmax-skip-first-6-convs-per-tensor": ImageQuantisation(keep_first_convs=6, per_channel=False),
    "minmax-skip-first-6-convs-qoperator-per-tensor": ImageQuantisation(keep_first_convs=6, quant_format="QOperator",
                                                                         per_channel=False),
    # which of the recipe's six fp32 convs the gate needs (0 stem; 1-2 block 1: depthwise, projection; 3-5 block 2:
    # expansion, depthwise, projection), cheapest first: the block-2 expansion is the costliest of the six in fp32
    "qoperator-keep-convs-0-1-2-4-5": ImageQuantisation(keep_convs=(0, 1, 2, 4, 5), quant_format="QOperator"),
    "qoperator-keep-convs-0-1-2-3-5": ImageQuantisation(keep_convs=(0, 1, 2, 3, 5), quant_format="QOperator"),
    "qoperator-keep-convs-0-1-2-5": ImageQuantisation(keep_convs=(0, 1, 2, 5), quant_format="QOperator"),
    "qoperator-keep-convs-0-1-2": ImageQuantisation(keep_convs=(0, 1, 2), quant_format="QOperator"),
    "qoperator-keep-convs-1-2-3-4-5": ImageQuantisation(keep_convs=(1, 2, 3, 4, 5), quant_format="QOperator"),
    "qoperator-keep-convs-0-1-2-3": ImageQuantisation(keep_convs=(0, 1, 2, 3), quant_format="QOperator"),
    "qoperator-keep-convs-0-2-3": ImageQuantisation(keep_convs=(0, 2, 3), quant_format="QOperator"),
    "qoperator-keep-convs-0-1-3": ImageQuantisation(keep_convs=(0, 1, 3), quant_format="QOperator"),
    "qoperator-keep-convs-0-3": ImageQuantisation(keep_convs=(0, 3), quant_format="QOperator"),
    "qoperator-keep-convs-0-3-4": ImageQuantisation(keep_convs=(0, 3, 4), quant_format="QOperator"),
    # the recipe with the projection head's two Gemm nodes int8 (0.19 ms of the int8 graph's 4.6 in fp32)
    "minmax-skip-first-6-convs-qoperator-int8-head": ImageQuantisation(keep_first_convs=6, quant_format="QOperator",
                                                                       int8_head=True),
    "minmax-skip-first-6-convs-int8-head": ImageQuantisation(keep_first_convs=6, int8_head=True),
}

# session settings tried on the fp32 graph and the recipe's int8 graph (--speed-only): name -> (level, spinning)
SESSION_VARIANTS = {"": ("ORT_ENABLE_ALL", "0"), " ORT_ENABLE_EXTENDED": ("ORT_ENABLE_EXTENDED", "0"),
                    " spinning": ("ORT_ENABLE_ALL", "1")}


def backbone_p50_ms(fp32_session, int8_session, pixels: np.ndarray, repeats: int = 60) -> tuple[float, float]:
    """Interleaved p50 of the two sessions on one photo (so both see the same machine load)."""
    feed = {"pixel_values": pixels}
    fp32_session.run(None, feed), int8_session.run(None, feed)
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    for _ in range(repeats):
        for name, session in (("fp32", fp32_session), ("int8", int8_session)):
            start = time.perf_counter()
            session.run(None, feed)
            times[name].append((time.perf_counter() - start) * 1000)
    return float(np.median(times["fp32"])), float(np.median(times["int8"]))


def session(path: Path, level: str = "ORT_ENABLE_ALL", spinning: str = "0"):
    """One intra-op thread, as served (``encoders.graphs.session_options``), at this optimisation level."""
    import onnxruntime as ort

    from encoders.graphs import session_options

    options = session_options(1)
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    return open_session(path, options=options)


def speed_screen(fp32_path: Path, variants: list[str], photos: list[Path], image_tower, rounds: int) -> dict:
    """Tower p50 ms (``session.run`` on one photo, 1 thread) of the fp32 graph and every variant's int8 graph
    (the recipe's also under each ``SESSION_VARIANTS`` setting), interleaved photo by photo; no gate."""
    recipe = next(name for name, how in VARIANTS.items() if how == image_quantisation_for("mobilenet_v2"))
    pixels = calibration_batches(image_tower, photos[-8:], batch_size=1)
    with tempfile.TemporaryDirectory() as scratch:
        paths = {"fp32": fp32_path}
        for name in dict.fromkeys([recipe, *variants]):
            variant = VARIANTS[name]
            step = max(len(photos) // variant.photos, 1)
            paths[name] = Path(scratch) / f"{name}.onnx"
            quantize_image_graph(fp32_path, paths[name], calibration_batches(image_tower, photos[::step][
                : variant.photos]), variant)
        sessions = {name: session(path) for name, path in paths.items()}
        for suffix, (level, spinning) in SESSION_VARIANTS.items():
            if suffix:
                for name in ("fp32", recipe):
                    sessions[name + suffix] = session(paths[name], level, spinning)
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(rounds):
            for photo in pixels:
                for name, sess in sessions.items():
                    start = time.perf_counter()
                    sess.run(None, {"pixel_values": photo})
                    times[name].append((time.perf_counter() - start) * 1000)
    p50 = {name: float(np.median(values)) for name, values in times.items()}
    for name, ms in p50.items():
        print(f"{name:52s} p50 {ms:6.2f} ms  fp32 / this x{p50['fp32'] / ms:.2f}", flush=True)
    return p50


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--max-queries", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--speed-only", action="store_true",
                        help="time every variant's graph interleaved with fp32 and the recipe's, no gate")
    parser.add_argument("--rounds", type=int, default=10, help="--speed-only: x 8 photos per graph")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    ws = Workspace.at(args.workspace)
    builder = ProtocolBuilder(ws, progress=False)
    model = builder.model
    fp32_path = graph_dir(ws.model_dir) / graph_name("image", "fp32")
    photos = [path for listing in builder.listings(("train",)) for image_id in listing.image_ids
              if (path := builder.catalog.image_path(image_id)) is not None and path.is_file()]
    if args.speed_only:
        p50 = speed_screen(fp32_path, args.variants.split(","), photos, model.image_tower, args.rounds)
        if args.json:
            args.json.write_text(json.dumps(p50, indent=2))
        builder.close()
        return [p50]
    protocol = builder.image_protocol(("test",), max_queries=args.max_queries)
    wanted = wanted_listing_qrels(protocol.queries)

    manifest = GraphSet.open(graph_dir(ws.model_dir), model.fingerprint).manifest

    def run_with(session, precision):  # queries through the whole tower graph, as served
        tower = ServedImageTower(session, manifest["image_preprocessing"], precision, manifest["embed_dim"],
                                 manifest["pooled_dim"]["image"])
        with tower_replaced(model, tower):
            return collect_runs(protocol.searcher, protocol.queries, depth=100, load_image=protocol.load_image)[STAGE]

    fp32_session = open_session(fp32_path, 1)
    fp32_run = run_with(fp32_session, "fp32")
    probe = calibration_batches(model.image_tower, photos[-1:])[0]
    results = []
    for name in args.variants.split(","):
        variant = VARIANTS[name]
        step = max(len(photos) // variant.photos, 1)
        batches = calibration_batches(model.image_tower, photos[::step][: variant.photos])
        with tempfile.TemporaryDirectory() as scratch:
            int8_path = Path(scratch) / "image.int8.onnx"
            started = time.perf_counter()
            quantize_image_graph(fp32_path, int8_path, batches, variant)
            quantise_s = time.perf_counter() - started
            int8_session = open_session(int8_path, 1)
            size = int8_path.stat().st_size
        int8_run = run_with(int8_session, "int8")
        report = compare_runs(protocol.qrels, {"fp32": fp32_run, "int8": int8_run}, wanted=wanted,
                              metrics=("ndcg@10",), name=name)
        fp32, int8 = report.scores["fp32"]["ndcg@10"], report.scores["int8"]["ndcg@10"]
        overlap, top1 = agreement(fp32_run, int8_run)
        fp32_ms, int8_ms = backbone_p50_ms(fp32_session, int8_session, probe[:1])
        row = {"variant": name, "config": asdict(variant), "queries": len(protocol.queries), "ndcg10_fp32": fp32,
               "ndcg10_int8": int8, "drop_points": (fp32 - int8) * 100,
               "passes": (fp32 - int8) * 100 <= MAX_DROP_POINTS["image"], "top20_overlap": overlap,
               "top1_identical": top1, "backbone_p50_ms_fp32": fp32_ms, "backbone_p50_ms_int8": int8_ms,
               "backbone_speedup": fp32_ms / int8_ms, "graph_bytes": size, "quantise_s": quantise_s}
        results.append(row)
        print(f"{name:34s} drop {row['drop_points']:+.2f} pts ({int8:.4f} vs {fp32:.4f}) overlap {overlap:.3f} "
              f"top1 {top1:.3f} | graph p50 {fp32_ms:.2f} / {int8_ms:.2f} ms = x{fp32_ms / int8_ms:.2f} "
              f"| {size / 1e6:.1f} MB", flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    builder.close()
    return results


if __name__ == "__main__":
    main()
