"""Text backbone graph variants (optimiser, quantisation options, threads), timed in one run, int8 ones gated.

    .venv/bin/python -m bench.text_int8_variants --workspace WS [--gate] [--json out]

Needs WS/model/onnx/text.fp32.onnx (`marketsearch export-onnx`). Every variant is a graph plus session
settings; all are timed interleaved on the same 40 short queries, one at a time (as served): the backbone
alone (``session.run``) and the text tower's whole encode (tokenise, backbone graph, pooling and head in torch).
With ``--gate``, every int8 variant also runs the known-item text protocol against the fp32 graph (NDCG@10
drop in points, gate <= 0.5, top-20 overlap).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from core.workspace import Workspace
from encoders.runtime import graph_dir, graph_name, open_session, session_options

QUERIES = ["nike air max trainers size 9", "ikea desk", "vintage leather jacket brown medium",
           "iphone 12 pro max 256gb unlocked", "kids bike 16 inch", "lego star wars millennium falcon",
           "wooden dining table and 4 chairs", "sony headphones", "baby pram", "north face puffer jacket womens"]


def optimised_fp32(fp32: Path, out: Path) -> Path:
    """``onnxruntime.transformers`` BERT optimiser (SkipLayerNormalization, BiasGelu; attention is not fused
    in the dynamo export: its SDPA pattern has IsNaN/Where guards the fusion does not match)."""
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(str(fp32), model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
    model.save_model_to_file(str(out))
    return out


def dynamic_int8(source: Path, out: Path, *, per_channel: bool = True, reduce_range: bool = False) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from encoders.runtime import _quiet_quantizer

    with _quiet_quantizer():
        quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         per_channel=per_channel, reduce_range=reduce_range)
    return out


def session(path: Path, threads: int = 1, level: str | None = None):
    if level is None:
        return open_session(path, threads)
    import onnxruntime as ort

    options = session_options(threads)
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def timings(model, sessions: dict, rounds: int = 3) -> dict:
    """p50 ms of ``session.run`` and of ``model.encode_texts([query])`` for every session, interleaved query by
    query (every session sees the same moments of the machine's load)."""
    backbone = model.text_tower.backbone
    feeds = [{k: v.numpy() for k, v in backbone.tokenize([q]).items()} for q in QUERIES]
    runs: dict = {name: {"backbone": [], "encode": []} for name in sessions}
    for name, (sess, precision) in sessions.items():  # warm-up
        backbone.attach_session(sess, precision)
        model.encode_texts([QUERIES[0]])
    for _ in range(rounds * 4):
        for feed, query in zip(feeds, QUERIES):
            for name, (sess, precision) in sessions.items():
                backbone.attach_session(sess, precision)
                start = time.perf_counter()
                sess.run(None, feed)
                middle = time.perf_counter()
                model.encode_texts([query])
                runs[name]["backbone"].append((middle - start) * 1000)
                runs[name]["encode"].append((time.perf_counter() - middle) * 1000)
    backbone.detach_session()
    return {name: {k: float(np.median(v)) for k, v in parts.items()} for name, parts in runs.items()}


def gate(builder, sessions: dict, names: list[str]) -> dict:
    from evaluation.evaluate import collect_runs, compare_runs
    from evaluation.judgments import wanted_listing_qrels
    from evaluation.runtime_gate import STAGE, agreement

    backbone = builder.model.text_tower.backbone
    protocol = builder.text_protocol(("test",))
    runs = {}
    for name in ["fp32", *names]:
        sess, precision = sessions[name]
        backbone.attach_session(sess, precision)
        runs[name] = collect_runs(protocol.searcher, protocol.queries, depth=100)[STAGE]
    backbone.detach_session()
    report = compare_runs(protocol.qrels, runs, wanted=wanted_listing_qrels(protocol.queries), metrics=("ndcg@10",))
    fp32 = report.scores["fp32"]["ndcg@10"]
    return {name: {"ndcg10": report.scores[name]["ndcg@10"], "drop_points": (fp32 - report.scores[name]["ndcg@10"])
                   * 100, "top20_overlap": agreement(runs["fp32"], runs[name])[0]} for name in runs}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--gate", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="x 40 encodes per variant")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    from evaluation.protocol import ProtocolBuilder

    torch.set_num_threads(1)
    ws = Workspace.at(args.workspace)
    builder = ProtocolBuilder(ws, progress=False)
    fp32 = graph_dir(ws.model_dir) / graph_name("text", "fp32")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        optimised = optimised_fp32(fp32, scratch / "fp32.opt.onnx")
        graphs = {
            "int8": dynamic_int8(fp32, scratch / "int8.onnx"),
            "int8 per-tensor": dynamic_int8(fp32, scratch / "int8.pt.onnx", per_channel=False),
            "int8 reduce_range": dynamic_int8(fp32, scratch / "int8.rr.onnx", reduce_range=True),
            "int8 of optimised": dynamic_int8(optimised, scratch / "int8.opt.onnx"),
        }
        sessions = {
            "fp32": (session(fp32), "fp32"),
            "fp32 ORT_ENABLE_BASIC": (session(fp32, level="ORT_ENABLE_BASIC"), "fp32"),
            "fp32 optimised": (session(optimised), "fp32"),
            "fp32 2 threads": (session(fp32, threads=2), "fp32"),
            **{name: (session(path), "int8") for name, path in graphs.items()},
            "int8 ORT_ENABLE_BASIC": (session(graphs["int8"], level="ORT_ENABLE_BASIC"), "int8"),
            "int8 2 threads": (session(graphs["int8"], threads=2), "int8"),
        }
        results = {"timings": timings(builder.model, sessions, args.rounds)}
        base = results["timings"]["fp32"]
        for name, row in results["timings"].items():
            print(f"{name:24s} backbone p50 {row['backbone']:6.2f} ms "
                  f"(fp32 / this x{base['backbone'] / row['backbone']:.2f})"
                  f"  encode p50 {row['encode']:6.2f} ms (x{base['encode'] / row['encode']:.2f})", flush=True)
        if args.gate:
            results["gates"] = gate(builder, sessions, list(graphs))
            for name, row in results["gates"].items():
                print(f"{name:24s} NDCG@10 {row['ndcg10']:.4f} drop {row['drop_points']:+.2f} points, "
                      f"top-20 overlap {row['top20_overlap']:.3f}", flush=True)
    builder.close()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
