"""`marketsearch train-ranker` and `marketsearch evaluate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from core.files import write_text_atomic
from core.options import DEFAULT_WORKSPACE, WorkspaceOption, open_workspace

# Commands import their workers inside the function body, not at the top: `marketsearch --help` imports
# every cli module, and the workers pull in torch, FAISS, pandas or SQLAlchemy (seconds of start-up).

ThreadsOption = Annotated[
    int, typer.Option("--threads", min=1, help="CPU threads for torch encoding and LightGBM training. One query "
                      "at a time is encoded, so 1 is usually fastest on a busy machine.")
]
DepthOption = Annotated[
    int, typer.Option("--depth", min=1, max=1000, help="Candidates per retriever (vector, BM25, photo) per query.")
]
MaxQueriesOption = Annotated[
    int | None,
    typer.Option("--max-queries", min=1, help="Sample at most this many queries per protocol and product split "
                 "(seeded); default: train-ranker 1500, evaluate all."),
]


# `marketsearch train-ranker` exits with this code when the trained model ranks worse than the first stage
# on its validation queries (and is not installed); 2 is bad input, as everywhere in the CLI.
GATE_REFUSED_EXIT_CODE = 3


def _splits(value: str) -> tuple[str, ...]:
    parts = tuple(part.strip() for part in value.split(",") if part.strip())
    bad = [part for part in parts if part not in ("train", "val", "test")]
    if bad or not parts:
        raise typer.BadParameter(f"expected a comma-separated list of train, val, test; got {value!r}")
    return parts


PROTOCOL_NAMES = ("text", "image", "self-photo")


def _protocols(value: str) -> tuple[str, ...]:
    """``text``, ``image``, ``self-photo``, a comma-separated list of them, ``both`` (text and image) or ``all``."""
    if value == "both":
        return ("text", "image")
    if value == "all":
        return PROTOCOL_NAMES
    parts = tuple(part.strip() for part in value.split(",") if part.strip())
    bad = [part for part in parts if part not in PROTOCOL_NAMES]
    if bad or not parts:
        raise typer.BadParameter(
            f"expected text, image, self-photo (comma-separated), both or all; got {value!r}"
        )
    return tuple(dict.fromkeys(parts))


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def train_ranker(
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    judgments: Annotated[Path | None, typer.Option(
        "--judgments", help="Graded judgments: TREC qrels ('query_id 0 listing_id grade') or CSV/JSONL with "
        "query_id, listing_id, relevance. Needs --queries. Replaces the self-supervised protocol.")] = None,
    queries: Annotated[Path | None, typer.Option(
        "--queries", help="Queries of --judgments: 'query_id<TAB>text' lines, or CSV/JSONL with query_id, text "
        "and/or image (a path relative to the file).")] = None,
    interactions: Annotated[Path | None, typer.Option(
        "--interactions", help="Logged interactions (CSV/JSONL: query_id, listing_id, event in view, click, save, "
        "purchase -> grades 0-3), joined with the feature log WORKSPACE/logs/features/ of served searches.")] = None,
    protocol: Annotated[str, typer.Option(
        "--protocol", help="Self-supervised known-item protocol(s) used when neither --judgments nor "
        "--interactions is given: text, image, self-photo (a near-duplicate of the listing's own photo: "
        "crop, resize, brightness, JPEG, seeded), a comma-separated list, both (text,image) or all.")] = "all",
    train_splits: Annotated[str, typer.Option(
        "--train-splits", help="Model split(s) whose products give the training queries (comma-separated; "
        "'test' is refused: it is kept for evaluation). Each searches two corpora: the train and val products, and "
        "the products of its own split alone. "
        "Default val: the towers never trained on those products, so their scores behave as on new listings.")
    ] = "val",
    valid_splits: Annotated[str, typer.Option(
        "--valid-splits", help="Model split(s) whose products give the early-stopping queries; empty: a random "
        "fifth of the training queries.")] = "",
    max_queries: MaxQueriesOption = 2000,
    depth: DepthOption = 100,
    n_estimators: Annotated[int, typer.Option("--trees", min=1, help="Maximum number of boosting rounds.")] = 400,
    learning_rate: Annotated[float, typer.Option("--learning-rate", help="LightGBM shrinkage.")] = 0.05,
    num_leaves: Annotated[int, typer.Option("--num-leaves", min=2, help="Leaves per tree.")] = 31,
    threads: ThreadsOption = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of query sampling and of LightGBM.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the training summary as JSON.")] = False,
) -> None:
    """Train the LightGBM LambdaRank re-ranker and save it to WORKSPACE/ranker (model.txt + meta.json).

    Labels come from --judgments (+ --queries), from --interactions (+ the feature log), or by default from
    the known-item protocols on the model's validation products: the query is a listing's title (its
    indexed text is then the description only) or one of its photos (represented by its other photos);
    grade 2 for that listing, 1 for listings with the same full category path; self-photo queries are
    near-duplicates of a listing's own photo. Early stopping uses a held-out fifth of the queries (or
    --valid-splits products); the test products stay unseen for `marketsearch evaluate`.

    Gate: the model is installed only when, for every query type (text, image, self-photo), neither its validation
    NDCG@10 nor the wanted listing's MRR@10 is significantly below the first stage it re-ranks (the RRF of
    vector and BM25 for text, of vector and the photo retriever for photos; one-sided paired t-test, p < 0.05).
    Otherwise nothing is written, the installed re-ranker stays, and the command exits with code 3.
    """
    from evaluation.train import TrainRankerConfig

    ws = open_workspace(workspace)
    _set_threads(threads)
    params = {"n_estimators": n_estimators, "learning_rate": learning_rate, "num_leaves": num_leaves,
              "n_jobs": threads, "random_state": seed}
    if judgments is not None and interactions is not None:
        raise typer.BadParameter("give --judgments or --interactions, not both")
    try:
        if interactions is not None:
            from evaluation.judgments import read_interactions
            from evaluation.train import train_from_interactions
            from ranking.feature_log import FeatureLogger, log_files

            paths = log_files(FeatureLogger.for_workspace(ws).directory)
            if not paths:
                raise FileNotFoundError(
                    f"no feature logs in {FeatureLogger.for_workspace(ws).directory}; serve searches with feature "
                    "logging on to collect them"
                )
            ranker, summary = train_from_interactions(paths, read_interactions(interactions), seed=seed,
                                                      reranker_params=params)
        elif judgments is not None:
            if queries is None:
                raise typer.BadParameter("--judgments needs --queries (the query texts or images)")
            from evaluation.judgments import read_qrels, read_queries
            from evaluation.train import train_from_judgments
            from search.pipeline import Searcher

            searcher = Searcher.from_workspace(ws, load_ranker=False)
            ranker, summary = train_from_judgments(
                searcher, read_queries(queries), read_qrels(judgments), depth=depth, seed=seed,
                load_image=_query_image_loader(searcher), reranker_params=params,
            )
        else:
            from evaluation.train import train_from_protocol

            config = TrainRankerConfig(
                train_splits=_splits(train_splits),
                valid_splits=_splits(valid_splits) if valid_splits.strip() else (),
                protocols=_protocols(protocol), max_queries=max_queries, depth=depth, seed=seed, reranker=params,
            )
            ranker, summary = train_from_protocol(ws, config)
    except (FileNotFoundError, ValueError, LookupError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    from evaluation.train import gate_lines

    gate = summary["gate"]
    summary["installed"] = bool(gate["passed"])
    if not gate["passed"]:
        # never serve a model that does worse than the first stage it re-ranks: keep the installed one
        summary["saved_to"] = None
        previous = "the previously installed re-ranker is left in place" if (ws.ranker_dir / "model.txt").is_file() \
            else "no re-ranker is installed, so searches keep the first-stage order"
        if as_json:
            typer.echo(json.dumps(summary, indent=2, default=str))
        typer.echo(f"error: re-ranker NOT installed in {ws.ranker_dir}: on the validation queries it ranks worse "
                   f"than the first stage it re-ranks; {previous}.", err=True)
        for line in gate_lines(gate):
            typer.echo(f"  {line}", err=True)
        if gate.get("reason"):
            typer.echo(f"  {gate['reason']}", err=True)
        typer.echo("  More or other training queries (--max-queries, --protocol, --judgments) may fix it.", err=True)
        raise typer.Exit(GATE_REFUSED_EXIT_CODE)
    ranker.save(ws.ranker_dir)
    summary["saved_to"] = str(ws.ranker_dir)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    valid = summary["best_score"].get("valid_0", {})
    typer.echo(f"re-ranker saved to {ws.ranker_dir}")
    for line in gate_lines(gate):
        typer.echo(f"  gate:            {line}")
    typer.echo(f"  labels:          {summary['source']}")

    def queries(side: str) -> str:
        count = summary[f"{side}_queries"]
        if len(summary.get("corpora", ())) < 2:
            return f"{count} queries"
        return (f"{summary['distinct_queries'][side]} queries x {len(summary['corpora'])} corpora "
                f"({', '.join(summary['corpora'])}): {count} candidate lists")

    typer.echo(f"  training:        {queries('train')}, {summary['train_rows']} candidate rows")
    typer.echo(f"  early stopping:  {queries('valid')}; best iteration {summary['best_iteration']}"
               + (f", validation NDCG@10 {valid['ndcg@10']:.4f}" if "ndcg@10" in valid else ""))
    top = list(summary["feature_importance"].items())[:8]
    total = sum(summary["feature_importance"].values()) or 1.0
    typer.echo("  top features:    " + ", ".join(f"{name} {value / total:.0%}" for name, value in top))


def _query_image_loader(searcher):
    """Query photos decoded as ingest decodes them (the searcher then prepares them as ingest does)."""
    from catalog.images import load_verified

    def load(query):
        if query.image_path is None:
            raise ValueError(f"query {query.query_id!r} names no image file")
        return load_verified(Path(query.image_path), searcher.photo_config)

    return load


def evaluate(
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    queries: Annotated[Path | None, typer.Option(
        "--queries", help="Your own queries ('query_id<TAB>text' lines, or CSV/JSONL with query_id, text and/or "
        "image). Needs --qrels; searched over the whole catalogue with the workspace's indexes.")] = None,
    qrels: Annotated[Path | None, typer.Option(
        "--qrels", help="Graded judgments of --queries: TREC qrels or CSV/JSONL (query_id, listing_id, "
        "relevance).")] = None,
    protocol: Annotated[str, typer.Option(
        "--protocol", help="Built-in known-item protocol on the model's test products (used without --queries): "
        "text, image, self-photo (the listing's own catalogue photo as the query), a comma-separated list, "
        "both (text,image) or all.")] = "all",
    splits: Annotated[str, typer.Option(
        "--splits", help="Model split(s) whose products the protocol uses. Keep 'test' for honest figures.")] = "test",
    max_queries: MaxQueriesOption = None,
    depth: DepthOption = 100,
    ranker_dir: Annotated[Path | None, typer.Option(
        "--ranker", help="Re-ranker folder to evaluate (default WORKSPACE/ranker; skipped when absent).")] = None,
    no_ranker: Annotated[bool, typer.Option("--no-ranker", help="Evaluate the first stages only.")] = False,
    frozen_baseline: Annotated[bool, typer.Option(
        "--frozen-baseline/--no-frozen-baseline", help="Add the pretrained anchors: frozen ImageNet MobileNetV2 "
        "features searched exactly (image), all-MiniLM-L6-v2 as published searched exactly and its reciprocal "
        "rank fusion with BM25 (text).")] = True,
    stat_test: Annotated[str, typer.Option(
        "--stat-test", help="Paired significance test: student (t-test) or fisher (randomization).")] = "student",
    max_p: Annotated[float, typer.Option("--max-p", help="Significance level.")] = 0.01,
    threads: ThreadsOption = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the reports as JSON.")] = False,
) -> None:
    """Offline evaluation of BM25, vector, photo, hybrid and re-ranked results: NDCG@10 and MAP on graded judgments,
    MRR@10, Recall@100 and hit rate@1 (wanted listing first) on the wanted listing alone.

    The known-item protocols judge the wanted listing 2 and listings of its category path 1 (graded);
    MRR@10, Recall@100 and hit_rate@1 count only the wanted listing, as the known-item literature defines
    them. Slices: one-word titles (text), photos with a near-duplicate in the corpus (image). Paired
    significance tests between every pair of stages (ranx). Writes TREC run files per stage, both qrels,
    report.json, report.md and PNG plots to WORKSPACE/eval/TIMESTAMP/ (one set per protocol, prefixed text. /
    image.), marks older reports that used other metric definitions superseded, and prints a summary table.
    """
    from evaluation.evaluate import (
        collect_runs,
        compare_runs,
        compare_slice,
        mark_superseded,
        new_eval_dir,
        write_evaluation,
    )
    from evaluation.judgments import wanted_listing_qrels
    from ranking.reranker import Reranker

    if stat_test not in ("student", "fisher"):
        raise typer.BadParameter(f"--stat-test must be student or fisher, got {stat_test!r}")
    if (queries is None) != (qrels is None):
        raise typer.BadParameter("--queries and --qrels go together")
    ws = open_workspace(workspace)
    _set_threads(threads)
    ranker = None
    try:
        if not no_ranker:
            folder = ranker_dir or ws.ranker_dir
            if folder.exists():
                ranker = Reranker.load(folder)
            elif ranker_dir is not None:
                raise FileNotFoundError(f"no re-ranker at {ranker_dir}")
            else:
                typer.echo(f"note: no re-ranker in {ws.ranker_dir}; evaluating the first stages only", err=True)
        out_dir = new_eval_dir(ws.eval_dir)
        reports = []
        if queries is not None:
            from evaluation.judgments import read_qrels, read_queries
            from search.pipeline import Searcher

            searcher = Searcher.from_workspace(ws, load_ranker=False)
            judged = read_qrels(qrels)
            query_set = {q: x for q, x in read_queries(queries).items() if q in judged}
            if not query_set:
                raise ValueError(f"no query id of {queries} appears in {qrels}")
            runs = collect_runs(searcher, query_set, ranker=ranker, depth=depth,
                                load_image=_query_image_loader(searcher))
            report = compare_runs(judged, runs, stat_test=stat_test, max_p=max_p, name=queries.stem)
            write_evaluation(out_dir, report, runs, judged, query_set)
            reports.append(report)
        else:
            from evaluation.evaluate import rrf_run
            from evaluation.protocol import FROZEN_TEXT_BASELINE, RRF_TEXT_BASELINE, ProtocolBuilder

            builder = ProtocolBuilder(ws)
            try:
                for name in _protocols(protocol):
                    if name == "text":
                        prot = builder.text_protocol(_splits(splits), max_queries=max_queries,
                                                     frozen_baseline=frozen_baseline)
                    elif name == "image":
                        prot = builder.image_protocol(_splits(splits), max_queries=max_queries,
                                                      frozen_baseline=frozen_baseline)
                    else:
                        prot = builder.self_photo_protocol(_splits(splits), max_queries=max_queries)
                    runs = collect_runs(prot.searcher, prot.queries, ranker=ranker, depth=depth,
                                        load_image=prot.load_image, progress=builder.progress)
                    if name != "text":
                        runs.pop("bm25", None)  # image queries have no BM25 list
                        if "photo" not in runs:  # without the photo retriever, hybrid is the vector ranking itself
                            runs.pop("hybrid", None)
                    runs.update(prot.baseline_runs)
                    if FROZEN_TEXT_BASELINE in runs and "bm25" in runs:
                        runs[RRF_TEXT_BASELINE] = rrf_run([runs["bm25"], runs[FROZEN_TEXT_BASELINE]], depth=depth)
                    wanted = wanted_listing_qrels(prot.queries)
                    report = compare_runs(prot.qrels, runs, wanted=wanted, stat_test=stat_test, max_p=max_p,
                                          name=f"{prot.name} ({'+'.join(prot.splits)} products)")
                    report.info.update({"corpus_size": prot.corpus_size, "splits": list(prot.splits),
                                        "model_fingerprint": builder.model.fingerprint,
                                        "ranker": None if ranker is None else ranker.meta_.get("trained_at"),
                                        "ratios": final_ratios(report), "slices": {}})
                    slice_reports = []
                    for slice_name, slice_ids in prot.slices.items():
                        sliced = compare_slice(prot.qrels, runs, slice_ids, wanted=wanted, stat_test=stat_test,
                                               max_p=max_p, name=f"{report.name}: {slice_name} slice")
                        if sliced is None:
                            continue
                        sliced.info["ratios"] = final_ratios(sliced)
                        report.info["slices"][slice_name] = sliced.to_dict()
                        slice_reports.append(sliced)
                    write_evaluation(out_dir, report, runs, prot.qrels, prot.queries, prefix=f"{name}.",
                                     wanted=wanted)
                    reports += [report, *slice_reports]
            finally:
                builder.close()
    except (FileNotFoundError, ValueError, LookupError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None

    _write_summary(out_dir, reports)
    for folder in mark_superseded(ws.eval_dir):
        typer.echo(f"note: marked {folder.name} superseded (older metric definitions)", err=True)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in reports], indent=2))
        return
    for report in reports:
        typer.echo(f"\n{report.name}: {len(report.query_ids)} queries"
                   + (f", corpus {report.info['corpus_size']} listings" if "corpus_size" in report.info else ""))
        typer.echo(report.to_markdown())
        for line in _ratio_lines(report):
            typer.echo(line)
    typer.echo(f"\nwritten to {out_dir}")


RATIO_METRICS = ("ndcg@10", "mrr@10")


def final_ratios(report) -> dict:
    """NDCG@10 and MRR@10 of the final stage over each other stage, with the p-value of the difference:
    ``{metric: {other stage: {final, ratio, p_value}}}``."""
    final = "reranked" if "reranked" in report.stages else ("hybrid" if "hybrid" in report.stages else None)
    ratios: dict = {}
    if final is None:
        return ratios
    for metric in (m for m in RATIO_METRICS if m in report.metrics):
        for other in report.stages:
            if other == final or report.scores[other][metric] == 0:
                continue
            ratios.setdefault(metric, {})[other] = {
                "final": final,
                "ratio": report.scores[final][metric] / report.scores[other][metric],
                "p_value": report.p_values[final][other][metric],
            }
    return ratios


def _ratio_lines(report) -> list[str]:
    ratios = report.info.get("ratios") or final_ratios(report)
    label = {"ndcg@10": "NDCG@10", "mrr@10": "MRR@10 (wanted listing)"
             if report.metric_qrels.get("mrr@10") == "wanted listing" else "MRR@10"}
    return [
        f"  {label.get(metric, metric)} {value['final']} / {other}: {value['ratio']:.3f}x (p = {value['p_value']:.2g})"
        for metric, by_stage in ratios.items() for other, value in by_stage.items()
    ]


def _write_summary(out_dir: Path, reports) -> None:
    lines = ["# Offline evaluation", ""]
    for report in reports:
        lines += [f"## {report.name}", ""]
        if "corpus_size" in report.info:
            lines += [f"Corpus: {report.info['corpus_size']} listings.", ""]
        lines += [report.to_markdown(), "", *_ratio_lines(report), ""]
    write_text_atomic(out_dir / "summary.md", "\n".join(lines))


def evaluate_recs(
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    split: Annotated[str | None, typer.Option(
        "--split", help="T: fit on the events before it, judge on the events after (ISO 8601, UTC). "
        "Default: --test-days before the newest event.")] = None,
    test_days: Annotated[float, typer.Option(
        "--test-days", min=0.5, help="Test period when --split is not given.")] = 7.0,
    max_users: Annotated[int | None, typer.Option(
        "--max-users", min=1, help="Judge at most this many test users (seeded sample); default all.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (ALS, samples, bootstrap).")] = 0,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Evaluate the recommenders on a global time split: fit before T, judge what users engaged with after T.

    Ranks the whole catalogue (no sampled negatives); ranx Recall@10, NDCG@10, MRR@10 with bootstrap 95 %
    intervals, for all users, users with history, users with at most two events and listings new after T;
    popularity, co-visitation, ALS, content and the hybrid in the same run. Writes WORKSPACE/eval/recs/<stamp>/
    (report.md, report.json, TREC qrels and runs). The saved recommenders (WORKSPACE/recs/) are not touched.
    When served searches were logged (WORKSPACE/logs/features/, e.g. by `simulate --search pipeline`), the
    personal search ranker is trained before T too and judged against today's ranking on the searches after T.
    """
    import datetime as dt

    from catalog.store import Catalog
    from core.workspace import Workspace
    from evaluation.recs import evaluate_recs as run_evaluation
    from evaluation.recs import write_recs_evaluation
    from recommend.cli import parse_time
    from recommend.data import load_items, log_end
    from recommend.folder import workspace_fingerprint
    from recommend.personal_search import load_search_log

    ws = Workspace.at(workspace)
    if not ws.has_catalogue():
        typer.echo(f"error: no catalogue at {ws.db_path}; run `marketsearch build` first", err=True)
        raise typer.Exit(2)
    with Catalog(ws.db_url, root=ws.root) as catalog:
        end = log_end(catalog)
        if end is None:
            typer.echo("error: the workspace has no events; run `marketsearch simulate` (or import events) first",
                       err=True)
            raise typer.Exit(2)
        at = parse_time(split, "--split") or end - dt.timedelta(days=test_days)
        try:
            fingerprint = workspace_fingerprint(ws)
            items = load_items(catalog, fingerprint)
        except (FileNotFoundError, LookupError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        search_log = load_search_log(ws)
        base_ranker = None
        if search_log is not None and ws.ranker_dir.exists():
            from ranking.reranker import Reranker

            base_ranker = Reranker.load(ws.ranker_dir)
        evaluation, runs, qrels = run_evaluation(catalog, items, at, max_users=max_users, seed=seed,
                                                 progress=progress, search_log=search_log, base_ranker=base_ranker)
    if not qrels:
        typer.echo(f"error: no engaged event after {at.isoformat()}: choose an earlier --split", err=True)
        raise typer.Exit(2)
    out = write_recs_evaluation(ws.eval_dir, evaluation, runs, qrels)
    typer.echo(json.dumps(evaluation.to_dict(), indent=2) if as_json else evaluation.to_markdown())
    typer.echo(f"report: {out}")


def export_onnx(
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    int8: Annotated[bool, typer.Option(
        "--int8/--no-int8", help="Also write int8 graphs (text: dynamic quantisation; image: static, calibrated "
        "on catalogue photos) and gate them on the known-item protocols.")] = True,
    max_queries: MaxQueriesOption = None,
    threads: ThreadsOption = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest (graphs and gates) as JSON.")] = False,
) -> None:
    """Export the encoders (whole towers) to ONNX into the model bundle (WORKSPACE/model/onnx), the service loads them.

    Writes fp32 graphs and, with --int8, int8 graphs with their quality gates: the known-item text and image
    protocols on the test products with queries encoded by each graph; int8 passes when its NDCG@10 is within
    0.5 point (text) / 1 point (image) of fp32. The service serves int8 only where the gate passed.
    """
    _set_threads(threads)
    from encoders.runtime import CALIBRATION_PHOTOS, GraphSet, export_graphs, graph_dir, record_gates
    from evaluation.protocol import ProtocolBuilder
    from evaluation.runtime_gate import run_gate

    ws = open_workspace(workspace)
    try:
        builder = ProtocolBuilder(ws, progress=False)
    except (FileNotFoundError, ValueError) as error:
        typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from error
    try:
        model = builder.model
        folder = graph_dir(ws.model_dir)
        photos = [path for listing in builder.listings(("train",)) for image_id in listing.image_ids
                  if (path := builder.catalog.image_path(image_id)) is not None and path.is_file()]
        step = max(len(photos) // CALIBRATION_PHOTOS, 1)
        manifest = export_graphs(model, folder, photos[::step][:CALIBRATION_PHOTOS], int8=int8)
        if int8:
            graphs = GraphSet.open(folder, model.fingerprint)
            gates = {}
            for modality in ("text", "image"):
                try:
                    gates[modality] = run_gate(builder, graphs, modality, max_queries=max_queries,
                                               threads=threads).to_dict()
                except (ValueError, LookupError) as error:  # e.g. no test products with a second photo
                    gates[modality] = {"passed": False, "reason": f"gate not measured: {error}"}
            record_gates(folder, gates)
            manifest = GraphSet.open(folder, model.fingerprint).manifest
    finally:
        builder.close()
    if as_json:
        typer.echo(json.dumps(manifest, indent=2))
        return
    typer.echo(f"graphs for model {model.fingerprint[:12]} in {folder}: {', '.join(sorted(manifest['graphs']))}")
    for modality, gate in manifest.get("gates", {}).items():
        typer.echo(f"int8 {modality}: {'passed' if gate['passed'] else 'FAILED'}: {gate['reason']}")
