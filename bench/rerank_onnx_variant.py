"""The re-ranker scored by ONNX Runtime (a graph converted with onnxmltools) against LightGBM's C library.

    .venv/bin/uv pip install --python .venv/bin/python onnxmltools     # not a project dependency
    .venv/bin/python -m bench.rerank_onnx_variant --workspace workspace/demo

On the `bench.bench_service.text_queries` of a built workspace (their candidates' feature matrices): p50 of
predict per query with `ranking.booster.NativeBooster` (what the service runs), the same on one row (the fixed
cost of a call), `lightgbm.Booster.predict` and the ONNX Runtime session (1 thread), interleaved query by query;
then how many queries keep the same order under the ONNX scores, and the largest score difference. The reason
the service does not use the graph is in docs/evaluation.md, "Serving without the lightgbm package".
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightgbm
import numpy as np
import onnxruntime as ort
from onnxmltools import convert_lightgbm
from onnxmltools.convert.common.data_types import FloatTensorType

from bench.bench_service import text_queries
from core.workspace import Workspace
from ranking.booster import NativeBooster
from ranking.features import build_features
from search.pipeline import Searcher


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("workspace/demo"))
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    workspace = Workspace.at(args.workspace)
    searcher = Searcher.from_workspace(workspace, load_ranker=False)
    snap = searcher.snapshot
    matrices = []
    for body in text_queries(args.workspace, args.queries, seed=0):
        query = searcher.query_context(body["query"])
        candidates = searcher.candidates(query, snapshot=snap)
        if len(candidates):
            matrices.append(build_features(query, candidates, snap.listings)[0])

    model_file = workspace.ranker_dir / "model.txt"
    native, booster = NativeBooster.from_file(model_file), lightgbm.Booster(model_file=str(model_file))
    graph = convert_lightgbm(booster, initial_types=[("X", FloatTensorType([None, native.num_feature]))],
                             target_opset=15, zipmap=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    runs = {
        "native": lambda X: native.predict(X),
        "native_one_row": lambda X: native.predict(X[:1]),
        "lightgbm_package": lambda X: booster.predict(X, num_threads=1),
        "onnxruntime": lambda X: session.run(None, {"X": X})[0],
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for X in matrices:
            for name, run in runs.items():
                start = time.perf_counter()
                run(X)
                times[name].append((time.perf_counter() - start) * 1e3)
    same_order, largest = 0, 0.0
    for X in matrices:
        exact, approx = native.predict(X), session.run(None, {"X": X})[0].ravel()
        largest = max(largest, float(np.abs(exact - approx).max()))
        same_order += np.array_equal(np.argsort(-exact, kind="stable"), np.argsort(-approx, kind="stable"))
    print(f"{len(matrices)} queries, p50 candidates {np.median([len(X) for X in matrices]):.0f}")
    for name, values in times.items():
        print(f"{name:18s} predict p50 {np.median(values):.3f} ms")
    print(f"onnxruntime: same order in {same_order} of {len(matrices)} queries, "
          f"largest |score difference| {largest:.2e}")


if __name__ == "__main__":
    main()
