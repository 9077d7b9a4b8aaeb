"""Lever experiment (known-item text): do phrase, proximity and lead-position matches of the title's words in a
candidate's description help the re-ranker find the wanted listing?

    .venv/bin/python -m bench.bench_text_proximity --workspace workspace/dev --seeds 0,1,2,3,4,5,6,7

Builds the known-item text candidates and features of ``train-ranker`` (queries: titles of the val products, each
searching the corpora of ``TrainRankerConfig.corpora``) and of ``evaluate`` (test products) once
(``bench.text_columns``), adds ``PROXIMITY_COLUMNS`` computed from each candidate's description (word bigrams of
the title found adjacent or one word apart, the whole title as a phrase, the smallest window holding every matched
title word, the first match's position, the title's words among the first 15 of the description, and gaps to the
best candidate), then fits one text-only re-ranker per LightGBM seed with and without the columns (same
early-stopping split per seed) and prints test NDCG@10 and wanted-listing MRR@10 / hit rate@1 of each, and the
paired differences. Words are lower-cased ``\\w+`` tokens with a trailing
plural "s" removed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

PROXIMITY_COLUMNS = ["bigram_coverage", "skip_bigram_coverage", "phrase_match", "span_ratio", "first_match_pos",
                     "lead_coverage", "stem_coverage", "bigram_coverage_gap", "lead_coverage_gap",
                     "stem_coverage_gap"]
LEAD_WORDS = 15


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
    from bench.text_columns import add_arguments, compare_columns, text_candidates

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, seeds="0,1,2")
    args = parser.parse_args()

    from core.workspace import Workspace
    from evaluation.protocol import ProtocolBuilder

    started = time.perf_counter()
    builder = ProtocolBuilder(Workspace.at(args.workspace), progress=False)
    try:
        description = {x.id: x.description or "" for x in builder.listings({"train", "val", "test"})}
        data = text_candidates(builder, depth=args.depth)
    finally:
        builder.close()
    print(f"prepared in {time.perf_counter() - started:.0f} s", flush=True)
    compare_columns(data, lambda text, ids: proximity_features(text, [description[i] for i in ids]),
                    PROXIMITY_COLUMNS, args.seeds, label="proximity columns")


if __name__ == "__main__":
    main()
