"""Lever experiment (known-item text): do phrase, proximity and lead-position matches of the title's words in a
candidate's description help the re-ranker find the wanted listing?

    .venv/bin/python -m bench.bench_text_proximity --workspace workspace/dev --seeds 0,1,2,3,4,5,6,7

Builds the known-item text candidates and features of ``train-ranker`` (queries: titles of the val products, corpus:
train + val descriptions) and of ``evaluate`` (test products) once, adds ``PROXIMITY_COLUMNS`` computed from each
candidate's description (word bigrams of the title found adjacent or one word apart, the whole title as a phrase,
the smallest window holding every matched title word, the first match's position, the title's words among the
first 15 of the description, and gaps to the best candidate), then fits one text-only re-ranker per LightGBM seed
with and without the columns (same early-stopping split per seed) and prints test NDCG@10 and wanted-listing
MRR@10 / hit rate@1 of each, and the paired differences. Words are lower-cased ``\\w+`` tokens with a trailing
plural "s" removed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

PROXIMITY_COLUMNS = ["bigram_coverage", "skip_bigram_coverage", "phrase_match", "span_ratio", "first_match_pos",
                     "lead_coverage", "stem_coverage", "bigram_coverage_gap", "lead_coverage_gap",
                     "stem_coverage_gap"]
LEAD_WORDS = 15
METRICS = ["ndcg@10", "mrr@10", "hit_rate@1"]


def words(text: str) -> list[str]:
    from ranking.features import tokenize

    return [t[:-1] if len(t) > 3 and t.endswith("s") and not t.endswith("ss") else t for t in tokenize(text)]


def smallest_window(tokens: list[str], positions: list[int], need: int) -> int:
    """Length of the shortest run of ``tokens`` holding ``need`` distinct matched words (matches at ``positions``)."""
    count: dict[str, int] = {}
    have, best, left = 0, len(tokens), 0
    for right in positions:
        count[tokens[right]] = count.get(tokens[right], 0) + 1
        have += count[tokens[right]] == 1
        while have == need:
            start = positions[left]
            best = min(best, right - start + 1)
            count[tokens[start]] -= 1
            have -= count[tokens[start]] == 0
            left += 1
    return best


def proximity_features(query_text: str, descriptions: list[str]) -> np.ndarray:
    """float32 (len(descriptions), len(PROXIMITY_COLUMNS)), NaN where a column is undefined."""
    query = words(query_text)
    distinct = set(query)
    bigrams = {(a, b) for a, b in zip(query, query[1:]) if a != b}
    out = np.full((len(descriptions), len(PROXIMITY_COLUMNS)), np.nan, np.float32)
    for i, description in enumerate(descriptions):
        tokens = words(description)
        if not tokens or not distinct:
            continue
        adjacent = set(zip(tokens, tokens[1:]))
        if bigrams:
            out[i, 0] = len(bigrams & adjacent) / len(bigrams)
            out[i, 1] = len(bigrams & (adjacent | set(zip(tokens, tokens[2:])))) / len(bigrams)
        if len(query) > 1:
            out[i, 2] = float(any(tokens[j:j + len(query)] == query for j in range(len(tokens) - len(query) + 1)))
        positions = [j for j, t in enumerate(tokens) if t in distinct]
        matched = {tokens[j] for j in positions}
        if len(matched) >= 2:
            out[i, 3] = len(matched) / smallest_window(tokens, positions, len(matched))
        if positions:
            out[i, 4] = np.log1p(positions[0])
        out[i, 5] = len(distinct & set(tokens[:LEAD_WORDS])) / len(distinct)
        out[i, 6] = len(distinct & set(tokens)) / len(distinct)
    for source, gap in ((0, 7), (5, 8), (6, 9)):
        if np.isfinite(out[:, source]).any():
            out[:, gap] = np.nanmax(out[:, source]) - out[:, source]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", required=True, help="Workspace with a model bundle and stored embeddings.")
    parser.add_argument("--seeds", default="0,1,2", help="Comma-separated LightGBM seeds (and early-stopping splits).")
    parser.add_argument("--depth", type=int, default=100, help="Candidates per retriever, as evaluate.")
    args = parser.parse_args()

    from core.workspace import Workspace
    from evaluation.evaluate import compare_runs, iter_query_candidates, stage_scores
    from evaluation.judgments import wanted_listing_qrels
    from evaluation.protocol import ProtocolBuilder
    from evaluation.train import KNOWN_ITEM_RERANKER, TrainingData, TrainRankerConfig, split_queries
    from ranking.reranker import Reranker

    started = time.perf_counter()
    builder = ProtocolBuilder(Workspace.at(args.workspace), progress=False)
    try:
        description = {x.id: x.description or "" for x in builder.listings({"train", "val", "test"})}
        train_protocol = builder.text_protocol(("val",), corpus_splits=TrainRankerConfig().corpora[0])
        test_protocol = builder.text_protocol(("test",), frozen_baseline=True)
        parts = {}
        for name, protocol in (("train", train_protocol), ("test", test_protocol)):
            items = list(iter_query_candidates(protocol.searcher, protocol.queries, depth=args.depth,
                                               description=f"{name} text queries"))
            extra = [proximity_features(item.query.text, [description[i] for i in item.candidates.listing_ids])
                     for item in items]
            parts[name] = (protocol, items, extra)
    finally:
        builder.close()
    print(f"prepared in {time.perf_counter() - started:.0f} s", flush=True)

    protocol, items, extra = parts["train"]

    def training(with_columns: bool) -> TrainingData:
        X, y, group, ids = [], [], [], []
        for item, columns in zip(items, extra):
            judged = protocol.qrels.get(item.query_id, {})
            grades = np.array([judged.get(i, 0) for i in item.candidates.listing_ids], np.int32)
            if not (grades > 0).any():
                continue
            X.append(np.hstack([item.features, columns]) if with_columns else item.features)
            y.append(grades), group.append(len(grades)), ids.append(item.query_id)
        names = list(items[0].feature_names) + (PROXIMITY_COLUMNS if with_columns else [])
        return TrainingData(np.concatenate(X), np.concatenate(y), np.array(group), ids, names, ["text"] * len(ids))

    test_protocol, test_items, test_extra = parts["test"]
    scores: dict[tuple[bool, int], dict[str, float]] = {}
    for with_columns in (False, True):
        data = training(with_columns)
        for seed in (int(s) for s in args.seeds.split(",")):
            fit_ids, valid_ids = split_queries(data.query_ids, 0.2, seed)
            fit, valid = data.select(fit_ids), data.select(valid_ids)
            ranker = Reranker(**{**KNOWN_ITEM_RERANKER, "n_jobs": 1, "log_every": 0}, random_state=seed).fit(
                fit.X, fit.y, fit.group, valid.X, valid.y, valid.group, feature_names=data.feature_names)
            runs: dict = {}
            for item, columns in zip(test_items, test_extra):
                X = np.hstack([item.features, columns]) if with_columns else item.features
                for stage, run in stage_scores(item.candidates, ranker.predict(X)).items():
                    runs.setdefault(stage, {})[item.query_id] = run
            runs = {"reranked": runs["reranked"], **test_protocol.baseline_runs}
            report = compare_runs(test_protocol.qrels, runs, wanted=wanted_listing_qrels(test_protocol.queries),
                                  metrics=METRICS)
            scores[with_columns, seed] = report.scores["reranked"]
            anchors = {stage: round(report.scores[stage]["mrr@10"], 4) for stage in test_protocol.baseline_runs}
            print(f"proximity columns {'on ' if with_columns else 'off'} seed {seed}: {ranker.best_iteration_} trees, "
                  + ", ".join(f"{m} {scores[with_columns, seed][m]:.4f}" for m in METRICS)
                  + f" (anchors' MRR@10 {anchors})", flush=True)
    seeds = sorted({seed for _, seed in scores})
    for metric in METRICS:
        off = [scores[False, s][metric] for s in seeds]
        on = [scores[True, s][metric] for s in seeds]
        diff = [b - a for a, b in zip(off, on)]
        spread = f", sd {statistics.stdev(diff):.4f}" if len(diff) > 1 else ""
        print(f"{metric}: off {statistics.mean(off):.4f} [{min(off):.4f}-{max(off):.4f}], on {statistics.mean(on):.4f} "
              f"[{min(on):.4f}-{max(on):.4f}], paired difference {statistics.mean(diff):+.4f}{spread}, "
              f"higher with the columns for {sum(d > 0 for d in diff)} of {len(diff)} seeds")


if __name__ == "__main__":
    main()
