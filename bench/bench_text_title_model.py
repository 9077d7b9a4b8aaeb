"""Lever experiment (known-item text): a learned title model of each description, scored as a query likelihood.

    .venv/bin/python -m bench.bench_text_title_model --workspace workspace/dev --seeds 0,1,2,3

A seller's title repeats a few words of the description: the brand, the object, a model number, rarely "collection"
or "condition". A LightGBM classifier (``--classifier logistic``: a logistic regression), fitted on the model's train
products alone, gives every distinct word t of a description d the probability p(t, d) that the seller also put t in
the title, from where and how often t occurs in d, how rare it is in the catalogue, and how often t reached the title
of the train products whose description held it (left out for the product's own row). A title query q then scores d
by the log-likelihood of the query's words under that model, a binary independence model of the title:

    sum over t in q and d of log p(t, d) + sum over t in d, not in q, of log(1 - p(t, d))
                                        + sum over t in q, not in d, of log b(t)

where b(t) is the share of train titles that hold t although their description does not. Unlike BM25 it counts
the words a description makes likely and the title lacks.

Asks two questions on the test products:
1. As a retriever: the test titles against the test descriptions (exhaustive), beside BM25 and the issue's anchor
   (reciprocal rank fusion of BM25 and the frozen MiniLM): MRR@10 and Recall@100 of the wanted listing, NDCG@10.
2. As re-ranking columns (``bench.text_columns``): the likelihood, its gap to the best candidate's, its rank and
   its lead over the runner-up, and its two parts (matched words, words left out), added to ``train-ranker``'s text
   queries; one text-only re-ranker per LightGBM seed with and without them (``--finetuned <folder>`` adds the
   columns of a MiniLM that ``bench.bench_text_finetune --save`` fine-tuned, lever 11, to the same arm).

The train products' own probabilities use the left-out prior, so no title is read to score its own description.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np

TITLE_MODEL_COLUMNS = ["title_ll", "title_ll_gap", "title_ll_rank", "title_ll_lead", "title_ll_matched",
                       "title_ll_left_out"]
TERM_FEATURES = ["log_first_position", "first_position_share", "log_tf", "idf", "title_prior", "log_doc_freq",
                 "term_length", "is_number", "lead_tf", "log_length"]
LEAD_WORDS = 15
PRIOR_WEIGHT = 2.0  # pseudo-documents of the smoothing towards the overall title rate
P_FLOOR = 1e-4


def term_classifier(name: str, seed: int = 0):
    """``lightgbm`` (300 trees) or ``logistic`` (standardised inputs; one dot product a word, cheap enough to apply to
    every word of a large catalogue)."""
    if name == "lightgbm":
        import lightgbm as lgb

        return lgb.LGBMClassifier(n_estimators=300, learning_rate=0.05, num_leaves=31, min_child_samples=50, n_jobs=2,
                                  random_state=seed, verbose=-1)
    if name == "logistic":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    raise ValueError(f"unknown classifier {name!r}; choose lightgbm or logistic")


class TitleModel:
    """p(t in title | description) for every distinct word of a description, and the title likelihood of a query."""

    def __init__(self, descriptions: dict[str, list[str]], titles: dict[str, set[str]], train_ids: Sequence[str],
                 classifier: str = "lightgbm", seed: int = 0):
        n = len(descriptions)
        doc_freq = Counter(t for tokens in descriptions.values() for t in set(tokens))
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in doc_freq.items()}
        self.in_description, self.in_both, self.title_only = Counter(), Counter(), Counter()
        for i in train_ids:
            words = set(descriptions[i])
            self.in_description.update(words)
            self.in_both.update(words & titles[i])
            self.title_only.update(titles[i] - words)
        self.train_count = len(train_ids)
        self.base_rate = sum(self.in_both.values()) / max(1, sum(self.in_description.values()))
        X, y = [], []
        for i in train_ids:
            words, features = self.term_features(descriptions[i], own_title=titles[i])
            X.append(features)
            y.append(np.array([t in titles[i] for t in words], np.int8))
        self.classifier = term_classifier(classifier, seed)
        self.classifier.fit(np.concatenate(X), np.concatenate(y))

    def term_features(self, tokens: list[str], own_title: set[str] | None = None) -> tuple[list[str], np.ndarray]:
        """The distinct words of a description and their features (``TERM_FEATURES``). For a train product, its
        ``own_title`` takes the product's own description and title out of the prior, as if it were new."""
        first: dict[str, int] = {}
        for j, t in enumerate(tokens):
            first.setdefault(t, j)
        counts, lead = Counter(tokens), Counter(tokens[:LEAD_WORDS])
        words = list(first)
        rows = np.zeros((len(words), len(TERM_FEATURES)), np.float32)
        for k, t in enumerate(words):
            both, seen = self.in_both[t], self.in_description[t]
            if own_title is not None:
                both, seen = both - (t in own_title), seen - 1
            prior = (both + PRIOR_WEIGHT * self.base_rate) / (seen + PRIOR_WEIGHT)
            rows[k] = (math.log1p(first[t]), first[t] / len(tokens), math.log1p(counts[t]), self.idf.get(t, 0.0),
                       prior, math.log1p(seen), len(t), t.isdigit(), lead[t], math.log1p(len(tokens)))
        return words, rows

    def probabilities(self, tokens: list[str], own_title: set[str] | None = None) -> dict[str, float]:
        """p(t, d) for every distinct word t of the description ``tokens``, clipped to [P_FLOOR, 1 - P_FLOOR]."""
        words, features = self.term_features(tokens, own_title)
        if not words:
            return {}
        p = np.clip(self.classifier.predict_proba(features)[:, 1], P_FLOOR, 1 - P_FLOOR)
        return dict(zip(words, p.tolist()))

    def title_only_rate(self, t: str) -> float:
        """b(t): the share of train titles that hold ``t`` although their description does not, smoothed (one
        such title in 100 more products) and capped at one half, so an unseen word is unlikely but possible."""
        return min(0.5, (self.title_only[t] + 1) / (self.train_count + 100))

    def likelihood(self, query: set[str], p: dict[str, float]) -> tuple[float, float, float]:
        """(log-likelihood, its matched-word part, its left-out part) of the query's words as d's title."""
        matched = sum(math.log(v) for t, v in p.items() if t in query)
        left_out = sum(math.log1p(-v) for t, v in p.items() if t not in query)
        absent = sum(math.log(self.title_only_rate(t)) for t in query if t not in p)
        return matched + left_out + absent, matched, left_out


def main() -> None:
    from bench.text_columns import add_arguments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--classifier", choices=["lightgbm", "logistic"], default="lightgbm",
                        help="The word classifier of the title model.")
    parser.add_argument("--finetuned", help="Folder of a model bench.bench_text_finetune --save wrote: its four "
                                            "columns join the title-model ones.")
    args = parser.parse_args()

    from bench.bench_text_finetune import FINETUNED_COLUMNS
    from bench.text_columns import (
        bm25_test_run,
        compare_columns,
        relative_columns,
        report_retrievers,
        text_candidates,
    )
    from core.workspace import Workspace
    from evaluation.evaluate import rrf_run, scores_from_ranking
    from evaluation.protocol import FROZEN_TEXT_BASELINE, ProtocolBuilder
    from ranking.features import tokenize

    started = time.perf_counter()
    builder = ProtocolBuilder(Workspace.at(args.workspace), progress=False)
    try:
        listings = builder.listings({"train", "val", "test"})
        train_ids = [x.id for x in builder.listings({"train"})]
        test_ids = [x.id for x in builder.listings({"test"})]
        data = text_candidates(builder, depth=args.depth)
    finally:
        builder.close()
    print(f"prepared in {time.perf_counter() - started:.0f} s", flush=True)

    descriptions = {x.id: tokenize(x.description) for x in listings}
    titles = {x.id: set(tokenize(x.title)) for x in listings}
    started = time.perf_counter()
    model = TitleModel(descriptions, titles, train_ids, classifier=args.classifier)
    fitted = time.perf_counter()
    train = set(train_ids)
    p = {i: model.probabilities(descriptions[i], titles[i] if i in train else None) for i in descriptions}
    words = sum(map(len, p.values()))
    print(f"title model ({args.classifier}) fitted on {len(train_ids)} train products in {fitted - started:.1f} s and "
          f"applied to {len(p)} descriptions ({words} words) in {time.perf_counter() - fitted:.1f} s", flush=True)

    # 1. the title likelihood as a retriever over the test products
    protocol = data.test_protocol
    query_ids = list(protocol.queries)
    title_model_run = {}
    for q in query_ids:
        words = set(tokenize(protocol.queries[q].text))
        scores = np.array([model.likelihood(words, p[i])[0] for i in test_ids])
        top = np.argsort(-scores, kind="stable")[:args.depth]
        title_model_run[q] = scores_from_ranking([test_ids[j] for j in top])
    bm25_run = bm25_test_run(data)
    report_retrievers(data, bm25_run, {
        "title_model": title_model_run,
        "rrf_bm25_title_model": rrf_run([bm25_run, title_model_run]),
        "rrf_title_model_frozen_minilm": rrf_run([title_model_run, protocol.baseline_runs[FROZEN_TEXT_BASELINE]])})

    among = sum(protocol.queries[item.query_id].target_id in item.candidates.listing_ids for item in data.test_items)
    print(f"the wanted listing is among the re-ranker's candidates for {among} of {len(data.test_items)} test "
          "queries", flush=True)

    # 2. the likelihood as re-ranking columns, derived as ranking.features derives its own
    finetuned = finetuned_similarity(args.finetuned, listings, data) if args.finetuned else None

    def columns(text: str, candidate_ids) -> np.ndarray:
        words = set(tokenize(text))
        parts = np.array([model.likelihood(words, p[i]) for i in candidate_ids], np.float32).reshape(-1, 3)
        out = np.hstack([relative_columns(parts[:, 0]), parts[:, 1:]])
        if finetuned is not None:
            out = np.hstack([out, relative_columns([finetuned(text, i) for i in candidate_ids])])
        return out

    names = TITLE_MODEL_COLUMNS + (FINETUNED_COLUMNS if finetuned is not None else [])
    compare_columns(data, columns, names, args.seeds,
                    label="title-model" + (" and fine-tuned" if finetuned is not None else "") + " columns")


def finetuned_similarity(folder: str, listings: list, data):
    """(query text, listing id) -> cosine of the query and the listing's description under the model in ``folder``."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from bench.bench_text_finetune import MAX_LENGTH, description_similarity

    model = SentenceTransformer(folder, device="cpu")
    model.max_seq_length = MAX_LENGTH
    return description_similarity(model, listings, data)[1]


if __name__ == "__main__":
    main()
