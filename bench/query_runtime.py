"""Query-runtime check: serve-path text queries encoded in torch and in ONNX Runtime must agree.

The service encodes queries in ONNX Runtime while the catalogue vectors come from torch (`marketsearch
embed`), so `text_runtime_agreement` loads the pipeline in-process and runs the benchmark queries, one at a
time as served, with the text tower in torch and then in ONNX Runtime: cosine of the query vectors and
agreement of the full pipeline's top-20 results (same filters, re-ranker as loaded), plus the encode p50
of each runtime.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from api.config import Settings
from api.state import load_state
from bench.http_load import percentile
from search.filters import SearchFilters


def text_runtime_agreement(workspace: Path, bodies: list[dict], threads: int = 1) -> dict:
    """Serve-path queries encoded in torch and in ONNX Runtime (what the service uses), one at a time as
    served: cosine of the two query vectors and agreement of the full pipeline's top-20 (same filters,
    re-ranker as loaded). The catalogue vectors were computed in torch, so this is the consistency check."""
    import torch

    torch.set_num_threads(threads)
    # no live follower: a read-only check, and a compaction it started would keep encoding in this process
    # during the HTTP measurements that follow
    state = load_state(Settings(workspace=workspace, text_runtime="torch", torch_threads=threads, live_follow=False))
    if state.searcher is None:
        raise SystemExit(f"cannot load the search pipeline: {state.searcher_error}")
    searcher, model = state.searcher, state.searcher.model
    try:

        def run() -> tuple[np.ndarray, list[list[str]], list[float]]:
            vectors, rankings, encode_ms = [], [], []
            for body in bodies:
                start = time.perf_counter()
                vectors.append(model.encode_texts([body["query"]])[0])
                encode_ms.append((time.perf_counter() - start) * 1000)
                result = searcher.search(text=body["query"], k=20, filters=SearchFilters(**body.get("filters", {})))
                rankings.append([hit.listing_id for hit in result.hits])
            return np.stack(vectors), rankings, encode_ms

        torch_vectors, torch_rankings, torch_ms = run()
        model.text_tower.use_onnxruntime(threads=threads)
        fast_vectors, fast_rankings, fast_ms = run()
    finally:
        state.close()
    cosine = np.sum(torch_vectors * fast_vectors, axis=1)
    overlap = [len(set(a) & set(b)) / max(len(a), 1) for a, b in zip(torch_rankings, fast_rankings)]
    return {
        "queries": len(bodies),
        "reranker": searcher.ranker is not None,
        "cosine_min": float(cosine.min()),
        "cosine_p1": float(np.percentile(cosine, 1)),
        "cosine_median": float(np.median(cosine)),
        "max_abs_diff": float(np.abs(torch_vectors - fast_vectors).max()),
        "top20_identical": float(np.mean([a == b for a, b in zip(torch_rankings, fast_rankings)])),
        "top20_overlap_mean": float(np.mean(overlap)),
        "top1_identical": float(np.mean([a[:1] == b[:1] for a, b in zip(torch_rankings, fast_rankings)])),
        "encode_p50_ms": {"torch": percentile(torch_ms, 50), "onnxruntime": percentile(fast_ms, 50)},
    }
