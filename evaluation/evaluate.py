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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from matplotlib.figure import Figure
from ranx import Qrels as RanxQrels
from ranx import Run as RanxRun
from ranx import compare, evaluate
from tqdm.auto import tqdm

from core.files import write_text_atomic
from core.workspace import new_stamped_dir
from evaluation.judgments import EvalQuery, Qrels, write_qrels, write_queries
from index.fusion import reciprocal_rank_fusion
from ranking.features import build_features
from ranking.types import Candidates, ListingTable, QueryContext

logger = logging.getLogger(__name__)

# Graded metrics read the graded qrels (the wanted listing 2, same full category path 1); known-item metrics
# read qrels where only the wanted listing is relevant, as IR papers define MRR and recall for known-item search.
# hit_rate@1 is the share of queries whose first result is the wanted listing.
GRADED_METRICS: tuple[str, ...] = ("ndcg@10", "map")
KNOWN_ITEM_METRICS: tuple[str, ...] = ("mrr@10", "recall@100", "hit_rate@1")
METRICS: tuple[str, ...] = ("ndcg@10", "mrr@10", "recall@100", "hit_rate@1", "map")
# 1: every metric on the graded qrels (MRR@10 and Recall@100 counted any same-category listing);
# 2: known-item metrics on the wanted listing only. Reports of an older version are marked superseded.
METRICS_VERSION = 2
STAGES: tuple[str, ...] = ("bm25", "vector", "photo", "hybrid", "reranked")
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

    bm25, vector and photo rank only the candidates their retriever returned; hybrid ranks all candidates by
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
    if candidates.photo_rank is not None:
        photo_rank = np.asarray(candidates.photo_rank, dtype=np.float64)
        stages["photo"] = _ordered_scores(ids, [-photo_rank], np.isfinite(photo_rank))
    if rerank_scores is not None:
        stages["reranked"] = _ordered_scores(ids, [np.asarray(rerank_scores, dtype=np.float64), rrf], everything)
    return stages


def scores_from_ranking(ranked_ids: Sequence[str]) -> dict[str, float]:
    """Run entry for a plain ranked list (best first), e.g. a baseline computed outside the pipeline."""
    n = len(ranked_ids)
    return {listing_id: float(n - position) for position, listing_id in enumerate(ranked_ids)}


def rrf_run(runs: Sequence[Mapping[str, Mapping[str, float]]], *, k: int = 60, depth: int = 100
            ) -> dict[str, dict[str, float]]:
    """Reciprocal rank fusion of ``runs``, query by query, cut to ``depth``: the service's own RRF
    (``index.fusion.reciprocal_rank_fusion``), the standard way to combine a lexical and a dense ranking into one
    anchor. (ranx's ``fuse`` needs every run to rank every query; here a run with no result for a query, e.g.
    BM25 for a query none of whose words occur, simply adds nothing.)"""
    fused: dict[str, dict[str, float]] = {}
    for query_id in dict.fromkeys(q for run in runs for q in run):
        rankings = [sorted(docs, key=lambda i, docs=docs: (-docs[i], i))
                    for docs in (run.get(query_id, {}) for run in runs)]
        hits = reciprocal_rank_fusion(rankings, k=k)[:depth]
        if hits:
            fused[query_id] = scores_from_ranking([listing_id for listing_id, _ in hits])
    return fused


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
    progress: bool = True,
) -> Iterator[QueryCandidates]:
    """Run each query through the first stage and compute its candidates' features (the serving code path);
    ``description`` names the progress bar, which ``progress=False`` hides."""
    for query_id, query in tqdm(queries.items(), desc=description, unit="query", leave=False, disable=not progress):
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
    progress: bool = True,
) -> Runs:
    """Stage runs (``{stage: {query_id: {listing_id: score}}}``) for every query.

    Stages that returned nothing for every query (BM25 when all queries are images) are left out.
    """
    runs: Runs = {}
    for item in iter_query_candidates(source, queries, depth=depth, load_image=load_image, description="evaluate",
                                      progress=progress):
        rerank = ranker.predict(item.features) if ranker is not None and len(item.candidates) else None
        if ranker is not None and rerank is None:
            rerank = np.zeros(0)
        for stage, scores in stage_scores(item.candidates, rerank).items():
            runs.setdefault(stage, {})[item.query_id] = scores
    # a stage that ranked nothing at all (BM25 for image-only queries) is left out
    return {stage: run for stage, run in runs.items() if any(run.values())}


# -- comparing runs -------------------------------------------------------------------------------
def is_known_item_metric(metric: str) -> bool:
    """MRR, recall and hit rate (any cut-off) are known-item metrics: they read the wanted-listing qrels."""
    return metric.split("@")[0] in {m.split("@")[0] for m in KNOWN_ITEM_METRICS}


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
    metric_qrels: dict[str, str] = field(default_factory=dict)  # metric -> "graded" or "wanted listing"
    info: dict[str, Any] = field(default_factory=dict)

    def significant(self, stage: str, other: str, metric: str) -> bool:
        """True when ``stage`` beats ``other`` on ``metric`` with p below ``max_p``."""
        p = self.p_values[stage][other][metric]
        return self.scores[stage][metric] > self.scores[other][metric] and p < self.max_p

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "metrics_version": METRICS_VERSION,
            "metrics": self.metrics,
            "metric_qrels": self.metric_qrels,
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
        wanted = [m for m in self.metrics if self.metric_qrels.get(m) == "wanted listing"]
        if wanted:
            graded = [m for m in self.metrics if m not in wanted]
            lines.append(f"{', '.join(wanted)}: only the wanted listing is relevant; "
                         f"{', '.join(graded) or 'no metric'}: graded judgments.")
        return "\n".join(lines)


def compare_runs(
    qrels: Qrels,
    runs: Mapping[str, Mapping[str, Mapping[str, float]]],
    *,
    wanted: Qrels | None = None,
    metrics: Sequence[str] = METRICS,
    stat_test: str = "student",
    max_p: float = 0.01,
    name: str = "evaluation",
) -> EvaluationReport:
    """Evaluate every run with ranx and test each pair of runs for significance.

    Graded metrics read ``qrels``. Known-item metrics (``is_known_item_metric``: MRR, recall, hit rate)
    read ``wanted``, the wanted listing of each query (``judgments.wanted_listing_qrels``), when given;
    without it (judgments that name no wanted listing) they read ``qrels`` too. ``wanted`` must judge the
    same queries as ``qrels``. Queries of the qrels missing from a run count as empty rankings (score 0);
    run queries without judgments are ignored. Inputs are not modified.
    """

    if not qrels:
        raise ValueError("qrels are empty: nothing to evaluate against")
    if not runs:
        raise ValueError("no runs to evaluate")
    if wanted is not None and set(wanted) != set(qrels):
        missing = sorted(set(qrels) ^ set(wanted))[:5]
        raise ValueError(f"the wanted-listing qrels and the graded qrels judge different queries (e.g. {missing})")
    metrics = list(metrics)
    metric_qrels = {m: "wanted listing" if wanted is not None and is_known_item_metric(m) else "graded"
                    for m in metrics}
    groups = [(qrels, [m for m in metrics if metric_qrels[m] == "graded"]),
              (wanted, [m for m in metrics if metric_qrels[m] == "wanted listing"])]
    logger.info("scoring %d runs with ranx and paired %s tests (the first evaluation after an install "
                "compiles ranx's numba kernels: up to a minute)", len(runs), stat_test)
    stages: list[str] = []
    scores: dict[str, dict[str, float]] = {}
    p_values: dict[str, dict[str, dict[str, float]]] = {}
    per_query: dict[str, dict[str, list[float]]] = {}
    for judged, group_metrics in groups:
        if not group_metrics:
            continue
        ranx_qrels = RanxQrels.from_dict({q: dict(docs) for q, docs in judged.items()})
        ranx_runs = []
        for stage, run in runs.items():
            entries = {q: dict(docs) for q, docs in run.items() if q in judged and docs}
            if not entries:
                raise ValueError(f"run {stage!r} has no ranked listing for any judged query")
            ranx_runs.append(RanxRun.from_dict(entries, name=stage))
        report = compare(ranx_qrels, ranx_runs, metrics=group_metrics, stat_test=stat_test, max_p=max_p,
                         make_comparable=True)
        stages = list(report.model_names)
        for stage in stages:
            scores.setdefault(stage, {}).update({m: float(report.results[stage][m]) for m in group_metrics})
            for other in stages:
                if other != stage:
                    p_values.setdefault(stage, {}).setdefault(other, {}).update(
                        {m: _clean_p(report.comparisons[stage, other][m]["p_value"]) for m in group_metrics})
        for run in ranx_runs:
            values = evaluate(ranx_qrels, run, group_metrics, return_mean=False, make_comparable=True)
            if len(group_metrics) == 1:
                values = {group_metrics[0]: values}
            # ranx orders per-query scores like its qrels' (sorted) query ids
            per_query.setdefault(run.name, {}).update({m: [float(v) for v in values[m]] for m in group_metrics})
    return EvaluationReport(
        name=name,
        metrics=metrics,
        stages=stages,
        scores={stage: {m: scores[stage][m] for m in metrics} for stage in stages},
        p_values={stage: {other: {m: by_metric[m] for m in metrics}
                          for other, by_metric in p_values.get(stage, {}).items()} for stage in stages},
        per_query={stage: {m: per_query[stage][m] for m in metrics} for stage in stages},
        query_ids=sorted(qrels),
        stat_test=stat_test,
        max_p=max_p,
        metric_qrels=metric_qrels,
    )


def compare_slice(
    qrels: Qrels,
    runs: Mapping[str, Mapping[str, Mapping[str, float]]],
    query_ids: Iterable[str],
    *,
    wanted: Qrels | None = None,
    **options: Any,
) -> EvaluationReport | None:
    """``compare_runs`` over the queries ``query_ids`` only (None when none of them is judged).

    Stages that rank nothing for those queries are left out of the slice."""
    keep = set(query_ids) & set(qrels)
    if not keep:
        return None

    def only(mapping: Mapping[str, Any]) -> dict[str, Any]:
        return {q: value for q, value in mapping.items() if q in keep}

    sliced = {stage: only(run) for stage, run in runs.items()}
    sliced = {stage: run for stage, run in sliced.items() if any(run.values())}
    if not sliced:
        return None
    return compare_runs(only(qrels), sliced, wanted=None if wanted is None else only(wanted), **options)


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
        write_text_atomic(path, "".join(lines))
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
    wanted: Qrels | None = None,
) -> dict[str, Path]:
    """Write run files, qrels (graded, and ``qrels.wanted.txt`` for the known-item metrics when given),
    queries, report.json, report.md and plots for one evaluation."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {f"run.{stage}": path for stage, path in write_runs(runs, out_dir, prefix).items()}
    written["qrels"] = write_qrels(qrels, out_dir / f"{prefix}qrels.txt")
    if wanted is not None:
        written["qrels.wanted"] = write_qrels(wanted, out_dir / f"{prefix}qrels.wanted.txt")
    if queries is not None:
        written["queries"] = write_queries(queries, out_dir / f"{prefix}queries.tsv")
    report_json = out_dir / f"{prefix}report.json"
    write_text_atomic(report_json, json.dumps(report.to_dict(), indent=2))
    written["report.json"] = report_json
    report_md = out_dir / f"{prefix}report.md"
    write_text_atomic(report_md, f"# {report.name}\n\n{report.to_markdown()}\n")
    written["report.md"] = report_md
    for path in plot_report(report, out_dir, prefix):
        written[path.stem] = path
    logger.info("evaluation written to %s", out_dir)
    return written


SUPERSEDED_NOTE = (
    "> **Superseded** (metrics version {version}, now {current}): MRR@10 and Recall@100 in this report count every "
    "listing of the wanted listing's category path as relevant. `marketsearch evaluate` now scores them on the "
    "wanted listing only (known-item definition); re-run it for comparable figures.\n\n"
)


def mark_superseded(eval_root: str | os.PathLike) -> list[Path]:
    """Prefix the Markdown of every evaluation under ``eval_root`` written with an older metrics version with a
    note saying so (once). Returns the folders marked now."""
    marked = []
    for folder in sorted(p for p in Path(eval_root).glob("*") if p.is_dir()):
        reports = sorted(folder.glob("*report.json"))
        versions = set()
        for path in reports:
            try:
                versions.add(int(json.loads(path.read_text(encoding="utf-8")).get("metrics_version", 1)))
            except (OSError, ValueError, AttributeError):
                continue
        if not versions or min(versions) >= METRICS_VERSION:
            continue
        note = SUPERSEDED_NOTE.format(version=min(versions), current=METRICS_VERSION)
        for path in [*folder.glob("*report.md"), folder / "summary.md"]:
            if not path.is_file():
                continue
            text = path.read_text(encoding="utf-8")
            if text.startswith("> **Superseded**"):
                continue
            write_text_atomic(path, note + text)
            marked.append(folder)
    return sorted(set(marked))
