"""Offline ranking evaluation with ranx: one run per stage, compared with paired significance tests.

The stages come from the same first-stage candidates the service uses:
``bm25`` (BM25 alone), ``vector`` (the shared vector index alone), ``hybrid`` (their reciprocal rank
fusion, what the service returns without a re-ranker) and ``reranked`` (the LightGBM re-ranker
over the hybrid candidates). Extra baseline runs (e.g. frozen pretrained image features) can be
added by name.

Outputs, under ``<eval_dir>/<timestamp>/``: one TREC run file per stage (``run.<stage>.trec``), the
qrels and queries used, ``report.json``, ``report.md`` (a Markdown table with significance marks)
and PNG plots.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from matplotlib.figure import Figure
from ranx import Qrels as RanxQrels
from ranx import Run as RanxRun
from ranx import compare, evaluate
from tqdm.auto import tqdm

from core.workspace import new_stamped_dir
from evaluation.judgments import EvalQuery, Qrels, write_qrels, write_queries
from ranking.features import build_features
from ranking.types import Candidates, ListingTable, QueryContext

logger = logging.getLogger(__name__)

METRICS: tuple[str, ...] = ("ndcg@10", "mrr@10", "recall@100", "map")
STAGES: tuple[str, ...] = ("bm25", "vector", "hybrid", "reranked")
DEFAULT_DEPTH = 100

# run[query_id][listing_id] = score (higher first)
Runs = dict[str, dict[str, dict[str, float]]]


class CandidateSource(Protocol):
    """What evaluation and training need from a searcher (``search.pipeline.Searcher`` provides it)."""

    listings: ListingTable

    def query_context(self, text: str | None = None, image: Any = None) -> QueryContext: ...

    def candidates(self, query: QueryContext, *, depth: int = DEFAULT_DEPTH, filters: Any = None) -> Candidates: ...


class Scorer(Protocol):
    def predict(self, X: np.ndarray) -> np.ndarray: ...


# -- runs from candidates -------------------------------------------------------------------------
def _ordered_scores(listing_ids: Sequence[str], keys: Sequence[np.ndarray], keep: np.ndarray) -> dict[str, float]:
    """Listing -> score that reproduces our order exactly: sorted by ``keys`` (first is primary), descending.

    The score written is ``n - position`` so ranx and the TREC files see no ties.
    """
    index = np.flatnonzero(keep)
    if index.size == 0:
        return {}
    # np.lexsort sorts ascending by the last key first
    order = np.lexsort(tuple(-np.nan_to_num(k[index], nan=-np.inf) for k in reversed(keys)))
    ranked = index[order]
    n = len(ranked)
    return {listing_ids[i]: float(n - position) for position, i in enumerate(ranked)}


def stage_scores(candidates: Candidates, rerank_scores: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """One query's ranking for each stage, from its first-stage candidates.

    bm25 and vector rank only the candidates their retriever returned; hybrid ranks all candidates by
    RRF score; reranked ranks all candidates by the re-ranker (ties broken by RRF score).
    """
    ids = candidates.listing_ids
    vector_rank = np.asarray(candidates.vector_rank, dtype=np.float64)
    bm25_rank = np.asarray(candidates.bm25_rank, dtype=np.float64)
    rrf = np.asarray(candidates.rrf_score, dtype=np.float64)
    everything = np.ones(len(ids), dtype=bool)
    stages = {
        "bm25": _ordered_scores(ids, [-bm25_rank], np.isfinite(bm25_rank)),
        "vector": _ordered_scores(ids, [-vector_rank], np.isfinite(vector_rank)),
        "hybrid": _ordered_scores(ids, [rrf], everything),
    }
    if rerank_scores is not None:
        stages["reranked"] = _ordered_scores(ids, [np.asarray(rerank_scores, dtype=np.float64), rrf], everything)
    return stages


def scores_from_ranking(ranked_ids: Sequence[str]) -> dict[str, float]:
    """Run entry for a plain ranked list (best first), e.g. a baseline computed outside the pipeline."""
    n = len(ranked_ids)
    return {listing_id: float(n - position) for position, listing_id in enumerate(ranked_ids)}


# -- running queries through a searcher -----------------------------------------------------------
@dataclass
class QueryCandidates:
    query_id: str
    query: QueryContext
    candidates: Candidates
    features: np.ndarray
    feature_names: list[str]


def iter_query_candidates(
    source: CandidateSource,
    queries: Mapping[str, EvalQuery],
    *,
    depth: int = DEFAULT_DEPTH,
    load_image: Callable[[EvalQuery], Any] | None = None,
    description: str = "queries",
) -> Iterator[QueryCandidates]:
    """Run each query through the first stage and compute its candidates' features (the serving code path)."""
    for query_id, query in tqdm(queries.items(), desc=description, unit="query", leave=False):
        image = None
        if query.image_path is not None or query.image_id is not None:
            if load_image is None:
                raise ValueError(f"query {query_id!r} has an image but no load_image function was given")
            image = load_image(query)
        context = source.query_context(text=query.text, image=image)
        candidates = source.candidates(context, depth=depth)
        X, names = build_features(context, candidates, source.listings)
        yield QueryCandidates(query_id, context, candidates, X, names)


def collect_runs(
    source: CandidateSource,
    queries: Mapping[str, EvalQuery],
    *,
    ranker: Scorer | None = None,
    depth: int = DEFAULT_DEPTH,
    load_image: Callable[[EvalQuery], Any] | None = None,
) -> Runs:
    """Stage runs (``{stage: {query_id: {listing_id: score}}}``) for every query.

    Stages that returned nothing for every query (BM25 when all queries are images) are left out.
    """
    runs: Runs = {}
    for item in iter_query_candidates(source, queries, depth=depth, load_image=load_image, description="evaluate"):
        rerank = ranker.predict(item.features) if ranker is not None and len(item.candidates) else None
        if ranker is not None and rerank is None:
            rerank = np.zeros(0)
        for stage, scores in stage_scores(item.candidates, rerank).items():
            runs.setdefault(stage, {})[item.query_id] = scores
    # a stage that ranked nothing at all (BM25 for image-only queries) is left out
    return {stage: run for stage, run in runs.items() if any(run.values())}


# -- comparing runs -------------------------------------------------------------------------------
@dataclass
class EvaluationReport:
    """Scores of each stage, pairwise p-values and per-query scores (plain values, JSON-ready)."""

    name: str
    metrics: list[str]
    stages: list[str]
    scores: dict[str, dict[str, float]]  # stage -> metric -> mean
    p_values: dict[str, dict[str, dict[str, float]]]  # stage -> other stage -> metric -> p
    per_query: dict[str, dict[str, list[float]]]  # stage -> metric -> scores in query_ids order
    query_ids: list[str]
    stat_test: str
    max_p: float
    table: str  # ranx's text table with significance superscripts
    info: dict[str, Any] = field(default_factory=dict)

    def significant(self, stage: str, other: str, metric: str) -> bool:
        """True when ``stage`` beats ``other`` on ``metric`` with p below ``max_p``."""
        p = self.p_values[stage][other][metric]
        return self.scores[stage][metric] > self.scores[other][metric] and p < self.max_p

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "metrics": self.metrics,
            "stages": self.stages,
            "scores": self.scores,
            "p_values": self.p_values,
            "stat_test": self.stat_test,
            "max_p": self.max_p,
            "queries": len(self.query_ids),
            "info": self.info,
        }

    def to_markdown(self) -> str:
        letters = "abcdefghijklmnopqrstuvwxyz"
        header = "| | stage | " + " | ".join(self.metrics) + " |"
        lines = [header, "|---|---|" + "---:|" * len(self.metrics)]
        for i, stage in enumerate(self.stages):
            cells = []
            for metric in self.metrics:
                marks = "".join(
                    letters[j] for j, other in enumerate(self.stages)
                    if other != stage and self.significant(stage, other, metric)
                )
                cells.append(f"{self.scores[stage][metric]:.4f}" + (f"<sup>{marks}</sup>" if marks else ""))
            lines.append(f"| {letters[i]} | {stage} | " + " | ".join(cells) + " |")
        test = {"student": "two-sided paired Student's t-test", "fisher": "Fisher's randomization test"}
        lines.append("")
        lines.append(
            f"{len(self.query_ids)} queries. A superscript letter marks a significant improvement over that "
            f"row ({test.get(self.stat_test, self.stat_test)}, p < {self.max_p})."
        )
        return "\n".join(lines)


def compare_runs(
    qrels: Qrels,
    runs: Mapping[str, Mapping[str, Mapping[str, float]]],
    *,
    metrics: Sequence[str] = METRICS,
    stat_test: str = "student",
    max_p: float = 0.01,
    name: str = "evaluation",
) -> EvaluationReport:
    """Evaluate every run against ``qrels`` with ranx and test each pair of runs for significance.

    Queries of ``qrels`` missing from a run count as empty rankings (score 0); run queries without
    judgments are ignored. Inputs are not modified.
    """

    if not qrels:
        raise ValueError("qrels are empty: nothing to evaluate against")
    if not runs:
        raise ValueError("no runs to evaluate")
    ranx_qrels = RanxQrels.from_dict({q: dict(docs) for q, docs in qrels.items()})
    ranx_runs = []
    for stage, run in runs.items():
        entries = {q: dict(docs) for q, docs in run.items() if q in qrels and docs}
        if not entries:
            raise ValueError(f"run {stage!r} has no ranked listing for any judged query")
        ranx_runs.append(RanxRun.from_dict(entries, name=stage))
    metrics = list(metrics)
    logger.info("scoring %d runs with ranx and paired %s tests (the first evaluation after an install "
                "compiles ranx's numba kernels: up to a minute)", len(ranx_runs), stat_test)
    report = compare(
        ranx_qrels, ranx_runs, metrics=metrics, stat_test=stat_test, max_p=max_p, make_comparable=True
    )
    stages = list(report.model_names)
    p_values = {
        stage: {
            other: {m: _clean_p(report.comparisons[stage, other][m]["p_value"]) for m in metrics}
            for other in stages if other != stage
        }
        for stage in stages
    }
    query_ids = sorted(qrels)
    per_query: dict[str, dict[str, list[float]]] = {}
    for run in ranx_runs:
        values = evaluate(ranx_qrels, run, metrics, return_mean=False, make_comparable=True)
        if len(metrics) == 1:
            values = {metrics[0]: values}
        # ranx orders per-query scores like its qrels' (sorted) query ids
        per_query[run.name] = {m: [float(v) for v in values[m]] for m in metrics}
    return EvaluationReport(
        name=name,
        metrics=metrics,
        stages=stages,
        scores={stage: {m: float(report.results[stage][m]) for m in metrics} for stage in stages},
        p_values=p_values,
        per_query=per_query,
        query_ids=query_ids,
        stat_test=stat_test,
        max_p=max_p,
        table=report.to_table(),
    )


def target_scores(runs: Mapping[str, Mapping[str, Mapping[str, float]]], queries: Mapping[str, EvalQuery],
                  k: int = 10) -> dict[str, dict[str, float]]:
    """How each stage ranks the wanted listing itself (``EvalQuery.target_id``), other relevant listings aside.

    Per stage: ``found_first`` (share of the queries whose top result is the target) and ``mrr@k`` (mean
    reciprocal rank of the target, 0 beyond rank ``k``), over the queries that name a target; a query
    missing from a run counts as not found. Empty when no query names a target.
    """
    targeted = {q: query.target_id for q, query in queries.items() if query.target_id is not None}
    if not targeted:
        return {}
    scores = {}
    for stage, run in runs.items():
        first, reciprocal = 0, 0.0
        for query_id, target in targeted.items():
            ranked = sorted(run.get(query_id, {}).items(), key=lambda item: (-item[1], item[0]))[:k]
            position = next((i for i, (listing_id, _) in enumerate(ranked, start=1) if listing_id == target), None)
            if position is not None:
                first += position == 1
                reciprocal += 1.0 / position
        scores[stage] = {"found_first": first / len(targeted), f"mrr@{k}": reciprocal / len(targeted)}
    return scores


def _clean_p(value: float) -> float:
    value = float(value)
    return 1.0 if math.isnan(value) else value  # identical runs: no evidence of a difference


# -- writing --------------------------------------------------------------------------------------
def new_eval_dir(eval_root: str | os.PathLike) -> Path:
    """A fresh ``<eval_root>/<UTC timestamp>/`` folder."""
    return new_stamped_dir(eval_root, dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"))


def write_runs(runs: Mapping[str, Mapping[str, Mapping[str, float]]], out_dir: str | os.PathLike,
               prefix: str = "") -> dict[str, Path]:
    """Write each run as a TREC run file ``<prefix>run.<stage>.trec`` (``qid Q0 docid rank score stage``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for stage, run in runs.items():
        lines = []
        for query_id in sorted(run):
            ranked = sorted(run[query_id].items(), key=lambda item: (-item[1], item[0]))
            lines.extend(
                f"{query_id} Q0 {listing_id} {rank} {score:.6f} {stage}\n"
                for rank, (listing_id, score) in enumerate(ranked, start=1)
            )
        path = out_dir / f"{prefix}run.{stage}.trec"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(lines), encoding="utf-8")
        os.replace(tmp, path)
        paths[stage] = path
    return paths


def plot_report(report: EvaluationReport, out_dir: str | os.PathLike, prefix: str = "") -> list[Path]:
    """Bar chart of every metric per stage and the per-query NDCG@10 distribution per stage (PNG)."""
    out_dir = Path(out_dir)
    paths = []
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    width = 0.8 / len(report.stages)
    positions = np.arange(len(report.metrics))
    for i, stage in enumerate(report.stages):
        values = [report.scores[stage][m] for m in report.metrics]
        bars = ax.bar(positions + i * width, values, width, label=stage)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
    ax.set_xticks(positions + width * (len(report.stages) - 1) / 2, report.metrics)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_title(f"{report.name}: {len(report.query_ids)} queries")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / f"{prefix}metrics.png"
    fig.savefig(path, dpi=110)
    paths.append(path)

    metric = "ndcg@10" if "ndcg@10" in report.metrics else report.metrics[0]
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    ax.boxplot([report.per_query[stage][metric] for stage in report.stages], showmeans=True)
    ax.set_xticks(np.arange(1, len(report.stages) + 1), report.stages)
    ax.set_ylabel(f"per-query {metric}")
    ax.set_title(f"{report.name}: per-query {metric}")
    fig.tight_layout()
    path = out_dir / f"{prefix}per_query_{metric.replace('@', '_at_')}.png"
    fig.savefig(path, dpi=110)
    paths.append(path)
    return paths


def write_evaluation(
    out_dir: str | os.PathLike,
    report: EvaluationReport,
    runs: Mapping[str, Mapping[str, Mapping[str, float]]],
    qrels: Qrels,
    queries: Mapping[str, EvalQuery] | None = None,
    prefix: str = "",
) -> dict[str, Path]:
    """Write run files, qrels, queries, report.json, report.md and plots for one evaluation."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {f"run.{stage}": path for stage, path in write_runs(runs, out_dir, prefix).items()}
    written["qrels"] = write_qrels(qrels, out_dir / f"{prefix}qrels.txt")
    if queries is not None:
        written["queries"] = write_queries(queries, out_dir / f"{prefix}queries.tsv")
    report_json = out_dir / f"{prefix}report.json"
    tmp = report_json.with_name(f".{report_json.name}.tmp")
    tmp.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    os.replace(tmp, report_json)
    written["report.json"] = report_json
    report_md = out_dir / f"{prefix}report.md"
    tmp = report_md.with_name(f".{report_md.name}.tmp")
    tmp.write_text(f"# {report.name}\n\n{report.to_markdown()}\n", encoding="utf-8")
    os.replace(tmp, report_md)
    written["report.md"] = report_md
    for path in plot_report(report, out_dir, prefix):
        written[path.stem] = path
    logger.info("evaluation written to %s", out_dir)
    return written
