"""Quality gates of the int8 encoder graphs: a known-item protocol run with queries encoded by the served tower
of the fp32 graph and then of the int8 graph (``encoders.served``: the whole tower, its head included, in ONNX
Runtime), against the same catalogue vectors (from `marketsearch embed`), exactly what the service does when it
switches runtimes.

A gate passes when the int8 graph's NDCG@10 on the protocol's vector stage (the stage that only the encoder
moves) is at most ``max_drop`` below the fp32 graph's. Top-20 agreement of the two vector rankings is
reported beside it. The verdict is written into the bundle's graph manifest (``encoders.runtime``) and the
service serves int8 only where it passed.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass

import numpy as np

from encoders.runtime import GraphSet
from encoders.served import served_tower
from evaluation.evaluate import collect_runs, compare_runs
from evaluation.judgments import wanted_listing_qrels

logger = logging.getLogger(__name__)

# NDCG@10 points (x100) the int8 graph may lose against fp32 (issue 15)
MAX_DROP_POINTS = {"text": 0.5, "image": 1.0}
STAGE = "vector"
AGREEMENT_DEPTH = 20


@dataclass
class GateResult:
    modality: str
    passed: bool
    reason: str
    queries: int
    splits: list[str]
    ndcg10_fp32: float
    ndcg10_int8: float
    drop_points: float  # (fp32 - int8) * 100
    max_drop_points: float
    top20_overlap: float  # mean share of the fp32 top 20 that int8 also ranks in its top 20
    top1_identical: float

    def to_dict(self) -> dict:
        return asdict(self)


def top_k(run: dict[str, float], k: int) -> list[str]:
    return [listing_id for listing_id, _ in sorted(run.items(), key=lambda item: -item[1])[:k]]


def agreement(fp32: dict[str, dict[str, float]], int8: dict[str, dict[str, float]], k: int = AGREEMENT_DEPTH
              ) -> tuple[float, float]:
    """(mean top-k overlap, share of identical top-1) of two runs over the queries of the first."""
    overlaps, firsts = [], []
    for query_id, scores in fp32.items():
        a, b = top_k(scores, k), top_k(int8.get(query_id, {}), k)
        overlaps.append(len(set(a) & set(b)) / max(len(a), 1))
        firsts.append(a[:1] == b[:1])
    return float(np.mean(overlaps)) if overlaps else 0.0, float(np.mean(firsts)) if firsts else 0.0


@contextlib.contextmanager
def tower_replaced(model, tower):
    """``model`` (a ``encoders.query_model.QueryModel``) encoding ``tower.modality`` with ``tower`` inside the
    block: the gate's queries go through the served tower, the whole graph the service runs."""
    name = f"{tower.modality}_tower"
    before = getattr(model, name)
    setattr(model, name, tower)
    try:
        yield model
    finally:
        setattr(model, name, before)


def run_gate(builder, graphs: GraphSet, modality: str, *, splits: tuple[str, ...] = ("test",),
             max_queries: int | None = None, threads: int = 1) -> GateResult:
    """The known-item ``modality`` protocol (``evaluation.protocol.ProtocolBuilder``) on ``splits``, queries
    encoded by the fp32 and then the int8 graph of ``graphs``."""
    model = builder.model
    if modality == "text":
        protocol = builder.text_protocol(splits, max_queries=max_queries)
    else:
        protocol = builder.image_protocol(splits, max_queries=max_queries)
    runs = {}
    for precision in ("fp32", "int8"):
        with tower_replaced(model, served_tower(graphs, modality, precision, threads)):
            runs[precision] = collect_runs(protocol.searcher, protocol.queries, depth=100,
                                           load_image=protocol.load_image)[STAGE]
    report = compare_runs(protocol.qrels, runs, wanted=wanted_listing_qrels(protocol.queries),
                          metrics=("ndcg@10",), name=f"{modality} int8 gate")
    fp32, int8 = report.scores["fp32"]["ndcg@10"], report.scores["int8"]["ndcg@10"]
    drop = (fp32 - int8) * 100
    allowed = MAX_DROP_POINTS[modality]
    overlap, top1 = agreement(runs["fp32"], runs["int8"])
    passed = drop <= allowed
    reason = (f"known-item {modality} NDCG@10 {int8:.4f} int8 vs {fp32:.4f} fp32 ({drop:+.2f} points of drop, "
              f"allowed {allowed}); top-20 overlap {overlap:.3f}")
    result = GateResult(modality, passed, reason, len(protocol.queries), list(splits), fp32, int8, drop, allowed,
                        overlap, top1)
    logger.info("int8 %s gate %s: %s", modality, "passed" if passed else "FAILED", reason)
    return result
