"""Text tower graph variants (exporter, BERT optimiser fusions, quantisation options), timed in one run, int8
ones gated.

    .venv/bin/python -m bench.text_int8_variants --workspace WS [--gate] [--rounds N] [--json out]

Needs a workspace with a trained bundle and WS/model/onnx/tokenizer.json (`marketsearch export-onnx`). Every
variant is a whole text tower graph exported here from the bundle's torch tower: the dynamo export (attention
not fused, the recipe before), the TorchScript export with eager attention, that export fused by ONNX
Runtime's BERT optimiser (Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu), and their
dynamic int8 quantisations. All are timed as the service encodes a query (``encoders.served.ServedTextTower``:
tokenise, then the graph), one short query at a time, 1 intra-op thread, interleaved query by query so that
every variant sees the same moments of the machine's load. With ``--gate``, every int8 variant also runs the
known-item text protocol against its own fp32 graph (NDCG@10 drop in points, gate <= 0.5, top-20 overlap).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from core.workspace import Workspace
from encoders.runtime import (
    TEXT_QUANTISATION,
    TOKENIZER,
    TextQuantisation,
    export_text_tower_onnx,
    export_torchscript_text_tower_onnx,
    fuse_text_graph,
    graph_dir,
    open_session,
    quantize_text_graph,
)

QUERIES = ["nike air max trainers size 9", "ikea desk", "vintage leather jacket brown medium",
           "iphone 12 pro max 256gb unlocked", "kids bike 16 inch", "lego star wars millennium falcon",
           "wooden dining table and 4 chairs", "sony headphones", "baby pram", "north face puffer jacket womens"]

# int8 variant -> (the fp32 graph it quantises, its recipe); the dynamo rows are the recipe served before
INT8_VARIANTS = {
    "int8 dynamo (MatMul, 7-bit per-channel)": ("fp32 dynamo", TextQuantisation(op_types=("MatMul",))),
    "int8 torchscript (MatMul, 7-bit per-channel)": ("fp32 torchscript", TextQuantisation(op_types=("MatMul",))),
    "int8 fused (MatMul + QAttention, 7-bit per-channel)": ("fp32 fused", TEXT_QUANTISATION),
    "int8 fused, MatMul only": ("fp32 fused", TextQuantisation(op_types=("MatMul",))),
    "int8 fused, 8-bit weights": ("fp32 fused", TextQuantisation(reduce_range=False)),
    "int8 fused, per-tensor weights": ("fp32 fused", TextQuantisation(per_channel=False)),
}


def fp32_graphs(tower, scratch: Path) -> dict[str, Path]:
    from encoders.runtime import _probe

    probe = _probe(tower)
    graphs = {"fp32 dynamo": scratch / "dynamo.onnx", "fp32 torchscript": scratch / "torchscript.onnx",
              "fp32 fused": scratch / "fused.onnx"}
    graphs["fp32 dynamo"].write_bytes(export_text_tower_onnx(tower, probe))
    graphs["fp32 torchscript"].write_bytes(export_torchscript_text_tower_onnx(tower, probe))
    fused = fuse_text_graph(graphs["fp32 torchscript"], graphs["fp32 fused"], tower.backbone.model.config)
    print(f"BERT optimiser on the TorchScript export: {fused}", flush=True)
    return graphs


def timings(towers: dict, rounds: int) -> dict[str, float]:
    """p50 ms of ``tower.encode([query])`` for every served tower, interleaved query by query."""
    runs: dict = {name: [] for name in towers}
    for tower in towers.values():  # warm-up
        tower.encode(QUERIES[:2])
    for _ in range(rounds * 4):
        for query in QUERIES:
            for name, tower in towers.items():
                start = time.perf_counter()
                tower.encode([query])
                runs[name].append((time.perf_counter() - start) * 1000)
    return {name: float(np.median(values)) for name, values in runs.items()}


def gate(builder, towers: dict, pairs: dict[str, str]) -> dict:
    """NDCG@10 of the known-item text protocol (test products) with queries encoded by each served tower (the whole
    graph in the model's place, as `export-onnx`'s gate), int8 drop against its own fp32 graph."""
    from evaluation.evaluate import collect_runs, compare_runs
    from evaluation.judgments import wanted_listing_qrels
    from evaluation.runtime_gate import STAGE, agreement, tower_replaced

    protocol = builder.text_protocol(("test",))
    runs = {}
    for name in [*dict.fromkeys(pairs.values()), *pairs]:
        with tower_replaced(builder.model, towers[name]):
            runs[name] = collect_runs(protocol.searcher, protocol.queries, depth=100)[STAGE]
    report = compare_runs(protocol.qrels, runs, wanted=wanted_listing_qrels(protocol.queries), metrics=("ndcg@10",))
    scores = {name: report.scores[name]["ndcg@10"] for name in runs}
    out = {name: {"ndcg10": scores[name]} for name in runs}
    for name, base in pairs.items():
        out[name].update(drop_points=(scores[base] - scores[name]) * 100,
                         top20_overlap=agreement(runs[base], runs[name])[0], against=base)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--gate", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="x 40 encodes per variant")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch
    from tokenizers import Tokenizer

    from encoders.served import ServedTextTower
    from evaluation.protocol import ProtocolBuilder

    torch.set_num_threads(1)
    ws = Workspace.at(args.workspace)
    builder = ProtocolBuilder(ws, progress=False)
    text_tower = builder.model.text_tower
    tokenizer = Tokenizer.from_file(str(graph_dir(ws.model_dir) / TOKENIZER))
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        paths = fp32_graphs(text_tower, scratch)
        for index, (name, (source, how)) in enumerate(INT8_VARIANTS.items()):
            paths[name] = scratch / f"int8.{index}.onnx"
            quantize_text_graph(paths[source], paths[name], how)
        towers = {name: ServedTextTower(open_session(path), tokenizer, name.split()[0], builder.model.embed_dim,
                                        text_tower.pooled_dim) for name, path in paths.items()}
        reference = towers["fp32 dynamo"].encode(QUERIES)
        results: dict = {"timings": timings(towers, args.rounds), "cosine_min": {}}
        base = results["timings"]["fp32 dynamo"]
        for name, p50 in results["timings"].items():
            cosine = float((towers[name].encode(QUERIES) * reference).sum(axis=1).min())
            results["cosine_min"][name] = cosine
            own = results["timings"][INT8_VARIANTS[name][0]] if name in INT8_VARIANTS else p50
            print(f"{name:52s} encode p50 {p50:6.2f} ms  fp32 dynamo / this x{base / p50:.2f}  "
                  f"own fp32 / this x{own / p50:.2f}  min cosine to fp32 dynamo {cosine:.4f}", flush=True)
        if args.gate:
            results["gates"] = gate(builder, towers, {name: source for name, (source, _) in INT8_VARIANTS.items()})
            for name, row in results["gates"].items():
                extra = (f" drop {row['drop_points']:+.2f} points vs {row['against']}, top-20 overlap "
                         f"{row['top20_overlap']:.3f}") if "against" in row else ""
                print(f"{name:52s} NDCG@10 {row['ndcg10']:.4f}{extra}", flush=True)
    builder.close()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
