"""Known-item text queries by vocabulary overlap: how often does the wanted listing's description hold the title's
words, and how well does each stage find it in each case?

    .venv/bin/python -m bench.bench_text_vocabulary --workspace workspace/dev            # latest evaluation
    .venv/bin/python -m bench.bench_text_vocabulary --workspace workspace/dev --eval-dir workspace/dev/eval/RUN

Reads what ``marketsearch evaluate`` wrote (``text.queries.tsv``, ``text.qrels.wanted.txt`` and the TREC runs of
every stage) and the workspace's catalogue for the wanted listings' descriptions. Each query falls in a bucket by the
share of its terms (as BM25 analyses them: stopwords removed, stemmed) found in the wanted description: none, under
half, half or more but not all, all. Prints the queries and the wanted-listing MRR@10 (ranx) of each stage per
bucket, and a ceiling: the MRR@10 a stage would reach if every query with at least one shared term found its listing
first while the queries with none kept the stage's own score. ``--json`` writes the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

BUCKETS = ("none", "under half", "half or more", "all")


def bucket_of(share: float) -> str:
    if share == 0:
        return "none"
    if share < 0.5:
        return "under half"
    return "all" if share >= 1 else "half or more"


def term_share(analyse, title: str, description: str) -> float:
    """Share of the title's distinct analysed terms that occur in the description (NaN without any)."""
    terms = set(analyse(title))
    if not terms:
        return float("nan")
    return len(terms & set(analyse(description))) / len(terms)


def latest_eval_dir(workspace: Path) -> Path:
    runs = sorted(p for p in (workspace / "eval").glob("*Z") if (p / "text.qrels.wanted.txt").is_file())
    if not runs:
        raise SystemExit(f"no text evaluation under {workspace / 'eval'}; run `marketsearch evaluate -w {workspace}`")
    return runs[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", required=True, type=Path, help="Workspace of the evaluation (its catalogue).")
    parser.add_argument("--eval-dir", type=Path, default=None, help="An evaluate output folder (default: the latest).")
    parser.add_argument("--json", type=Path, default=None, help="Write the table here.")
    args = parser.parse_args()

    from ranx import Qrels, Run, evaluate

    from catalog.store import Catalog
    from core.workspace import Workspace
    from index.bm25 import BM25Index

    workspace = Workspace.at(args.workspace)
    eval_dir = args.eval_dir or latest_eval_dir(workspace.root)
    queries = dict(line.rstrip("\n").split("\t", 1) for line in open(eval_dir / "text.queries.tsv", encoding="utf-8"))
    qrels = Qrels.from_file(str(eval_dir / "text.qrels.wanted.txt"), kind="trec")
    wanted = {query_id: next(iter(judged)) for query_id, judged in qrels.to_dict().items()}
    catalog = Catalog(workspace.db_url, root=workspace.root)
    try:
        listings = catalog.get_listings(list(wanted.values()))
        descriptions = {listing.id: listing.description or "" for listing in listings}
    finally:
        catalog.close()
    analyse = BM25Index.build(["probe"], ["probe"]).analyse
    share = {q: term_share(analyse, queries[q], descriptions.get(listing, "")) for q, listing in wanted.items()}
    bucket = {q: bucket_of(s) for q, s in share.items() if not np.isnan(s)}

    stages = sorted(p.name[len("text.run."):-len(".trec")] for p in eval_dir.glob("text.run.*.trec"))
    per_query = {}
    for stage in stages:
        run = Run.from_file(str(eval_dir / f"text.run.{stage}.trec"), kind="trec")
        evaluate(qrels, run, "mrr@10", make_comparable=True)
        per_query[stage] = dict(run.scores["mrr@10"])

    table = {"eval_dir": str(eval_dir), "queries": len(wanted), "buckets": {}, "ceiling": {}, "overall": {}}
    print(f"{eval_dir}: {len(wanted)} queries; wanted-listing MRR@10 by the share of title terms in its description")
    print(f"{'bucket':14s} {'queries':>8s} {'share':>6s} " + " ".join(f"{s:>22s}" for s in stages))
    for name in BUCKETS:
        ids = [q for q, b in bucket.items() if b == name]
        scores = {s: float(np.mean([per_query[s].get(q, 0.0) for q in ids])) if ids else float("nan") for s in stages}
        table["buckets"][name] = {"queries": len(ids), "share": len(ids) / len(wanted), "mrr@10": scores}
        cells = " ".join(f"{scores[s]:22.4f}" for s in stages)
        print(f"{name:14s} {len(ids):8d} {len(ids) / len(wanted):6.1%} {cells}")
    for stage in stages:
        overall = float(np.mean([per_query[stage].get(q, 0.0) for q in wanted]))
        ceiling = float(np.mean([per_query[stage].get(q, 0.0) if bucket.get(q) in (None, "none") else 1.0
                                 for q in wanted]))
        table["overall"][stage], table["ceiling"][stage] = overall, ceiling
    print(f"{'overall':14s} {len(wanted):8d} {'':6s} " + " ".join(f"{table['overall'][s]:22.4f}" for s in stages))
    print(f"{'ceiling':14s} {'':8s} {'':6s} " + " ".join(f"{table['ceiling'][s]:22.4f}" for s in stages))
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
