"""Re-ranking features for (query, candidate) pairs: one pure function shared by training, serving and logging.

Every feature is a float32 column. A value that does not exist for a pair (a listing BM25 did not
retrieve, a listing without a price, a query without text) is NaN, never zero: LightGBM learns a
separate direction for missing values, and zero would be a real, misleading score.
"""

from __future__ import annotations

import datetime as dt
import re

import numpy as np

from ranking.types import Candidates, ListingTable, QueryContext

FEATURE_SET_VERSION = "6"
# What this version changed, for the message that refuses a re-ranker of an older one
FEATURE_SET_CHANGE = ("an image query's candidates add the listings whose photo vectors are nearest the query photo "
                      "(the photo retriever), and rrf_score and rrf_rank fuse that ranking too")

# Cosine of photo vectors (raw backbone + colour signature, encoders.appearance) at or above which the query photo
# counts as a near-duplicate of the listing's photos. A listing's photo vector is the mean over its photos, so the
# query's own photo scores sqrt((1 + c) / 2) against a two-photo listing whose photos have cosine c. On the dev
# export (300 seeded listings, `bench.bench_near_duplicate_photo`), a near-duplicate of the listing's own first photo
# (crop, resize, brightness, JPEG) scores a median 0.903 and the closest other listing a median 0.747; 0.94 is the
# lowest threshold no closest other listing reached (the former raw-backbone vectors: 0.95, with 1 in 150 above
# 0.94), and it flags 15.7 % of the own listings (0.95: 9.3 %). One signal among the relative ones (lead over the
# runner-up, rank), not a rule.
NEAR_DUPLICATE_PHOTO_SIM = 0.94

FEATURE_NAMES: tuple[str, ...] = (
    # first-stage scores and ranks
    "vector_score",
    "vector_rank",
    "vector_score_gap",  # best vector score among the candidates minus this one
    "bm25_score",
    "bm25_rank",
    "bm25_score_ratio",  # this BM25 score / the best BM25 score among the candidates
    "rrf_score",
    "rrf_rank",
    # tower similarities
    "text_sim",
    "text_sim_gap",
    "image_sim",
    "image_sim_gap",
    # photo similarity of the appearance vectors (raw backbone before the image tower's projection head + colour
    # signature, since set 5): near-duplicate photos and photos of the same item
    "photo_sim",
    "photo_sim_gap",
    "photo_sim_rank",  # 1 = the candidate whose photo is closest to the query photo
    # near-duplicate photo (new in 4): the query photo is (almost) one of the listing's own photos
    "photo_sim_lead",  # photo_sim minus the best photo_sim of the other candidates (> 0 only for the closest)
    "photo_near_duplicate",  # 1 when photo_sim >= NEAR_DUPLICATE_PHOTO_SIM, 0 below, NaN without photo_sim
    "image_sim_lead",  # the same lead for the image tower's shared-space similarity
    "best_photo_sim",  # query-level: the closest photo's photo_sim (does the catalogue hold a near-duplicate?)
    # lexical match on the title
    "title_overlap",  # share of the distinct query terms found in the title
    # lexical match on the indexed text, with the BM25 tokenizer (stopwords removed, stemmed)
    "term_coverage",  # share of the query's distinct terms found in the candidate's indexed text
    "term_coverage_gap",  # best term_coverage among the candidates minus this one
    "idf_coverage",  # the same share, each term weighted by its IDF
    "term_bm25_score",  # full BM25 score, also for candidates below BM25's top k (0 = no term matches)
    "term_bm25_ratio",  # term_bm25_score / the best term_bm25_score among the candidates
    # category agreement
    "category_prob",  # fusion classifier's P(candidate's top-level category | query)
    "category_prob_ratio",  # category_prob / the most probable category's probability
    "category_path_share_top10",  # share of the RRF top 10 candidates with this full category path
    "category_path_share_vector_top10",  # same, among the vector retriever's top 10
    "category_path_share_bm25_top10",  # same, among BM25's top 10
    "top_category_share_top10",  # share of the RRF top 10 candidates with this top-level category
    "category_path_share_photo_top10",  # share of the 10 candidates with the closest photos with this path
    "category_path_share_top3",  # share of the RRF top 3 with this full category path
    # 1 when the candidate has the full category path of each retriever's best candidate (the likeliest
    # wanted listing), 0 when not, NaN without that retriever's list
    "same_path_as_rrf_top1",
    "same_path_as_vector_top1",
    "same_path_as_bm25_top1",
    "same_path_as_photo_top1",
    # how sure each retriever is of its best candidate (query-level)
    "vector_top_margin",  # best minus second-best vector score
    "bm25_top_margin_ratio",  # second-best / best BM25 score
    "photo_top_margin",  # best minus second-best photo_sim
    # listing metadata
    "log_price",
    "price_to_category_median",
    "photo_count",
    "description_length",
    "listing_age_days",
    # query description
    "query_has_text",
    "query_has_image",
    "query_term_count",
)

_TOKEN = re.compile(r"\w+", re.UNICODE)
_EPOCH = dt.date(1970, 1, 1)


def tokenize(text: str | None) -> list[str]:
    """Lower-cased word tokens (letters, digits, underscore), the unit of term overlap."""
    return _TOKEN.findall(text.lower()) if text else []


def today_days() -> float:
    """Days since 1970-01-01 of today's UTC date (the reference for listing age)."""
    return float((dt.datetime.now(dt.timezone.utc).date() - _EPOCH).days)


def _gap_to_best(values: np.ndarray) -> np.ndarray:
    """The best value minus each value, column by column of (n,) or (n, k) ``values``; NaN where a value is
    missing (not finite) or the column has none."""
    finite = np.where(np.isfinite(values), values, np.nan)
    if not len(finite):
        return finite.astype(np.float32)
    return (np.fmax.reduce(finite, axis=0) - finite).astype(np.float32)


def _ratio_to_best(values: np.ndarray) -> np.ndarray:
    """Each value over the best value, column by column; NaN where missing, or for a column whose best is <= 0."""
    finite = np.where(np.isfinite(values), values, np.nan)
    if not len(finite):
        return finite.astype(np.float32)
    best = np.fmax.reduce(finite, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(best > 0, finite / best, np.nan).astype(np.float32)


def _lead_over_others(values: np.ndarray) -> np.ndarray:
    """Each value minus the best value among the *other* entries (NaN where missing or alone).

    Positive only for a strict best, by its margin over the runner-up; the others get minus their gap to it.
    """
    lead = np.full(len(values), np.nan, dtype=np.float32)
    finite = np.flatnonzero(np.isfinite(values))
    if len(finite) < 2:
        return lead
    order = finite[np.argsort(-values[finite], kind="stable")]
    best, second = values[order[0]], values[order[1]]
    lead[finite] = values[finite] - best
    lead[order[0]] = best - second
    return lead


def _at_least(values: np.ndarray, threshold: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(values), (values >= threshold).astype(np.float32), np.nan).astype(np.float32)


def _rank_descending(values: np.ndarray) -> np.ndarray:
    """1-based rank of each value, highest first; NaN values get NaN and take no rank."""
    finite = np.flatnonzero(np.isfinite(values))
    ranks = np.full(len(values), np.nan, dtype=np.float32)
    order = finite[np.argsort(-values[finite], kind="stable")]
    ranks[order] = np.arange(1, len(order) + 1, dtype=np.float32)
    return ranks


def _title_overlap(query_terms: set[str], titles: list[str]) -> np.ndarray:
    """Share of the distinct query terms that are tokens of each title (NaN for a missing title).

    One regular-expression pass over all the titles finds the terms' whole-token occurrences (a term is made of
    word characters, so ``\\b`` on both sides matches exactly a ``tokenize`` token): no title is tokenised.
    """
    n = len(titles)
    if not query_terms or n == 0:
        return np.full(n, np.nan, dtype=np.float32)
    lowered = [title.lower() if title else "" for title in titles]
    lengths = np.fromiter(map(len, lowered), dtype=np.int64, count=n)
    starts = np.concatenate(([0], np.cumsum(lengths[:-1] + 1)))  # in the titles joined by newlines
    terms = sorted(query_terms)
    term_of = {term: i for i, term in enumerate(terms)}
    pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, terms)) + r")\b")
    found = [(match.start(), term_of[match.group()]) for match in pattern.finditer("\n".join(lowered))]
    overlap = np.zeros(n, dtype=np.float32)
    if found:
        position, term = np.array(found, dtype=np.int64).T
        title = np.searchsorted(starts, position, side="right") - 1
        pairs = np.unique(title * len(terms) + term)  # each (title, term) once, however often it occurs
        overlap = (np.bincount(pairs // len(terms), minlength=n) / len(terms)).astype(np.float32)
    overlap[lengths == 0] = np.nan  # no title known (e.g. the description-only evaluation corpus)
    return overlap


def _shares_among(codes: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """float32 (len(groups), n): row g gives each candidate the share of the candidates in ``groups[g]`` (row
    indices) whose code equals its own. ``codes`` int64 (n,) are small non-negative integers, -1 for a missing
    key; a missing key or an empty group gives NaN."""
    n = len(codes)
    shares = np.full((len(groups), n), np.nan, dtype=np.float32)
    if n == 0:
        return shares
    sizes = np.fromiter(map(len, groups), dtype=np.int64, count=len(groups))
    group_of = np.repeat(np.arange(len(groups)), sizes)
    member_codes = codes[np.concatenate(groups).astype(np.int64)]
    kept = member_codes >= 0
    n_codes = int(codes.max()) + 1
    # one count per (group, code), in one pass over all the groups' members
    counts = np.bincount(group_of[kept] * n_codes + member_codes[kept], minlength=len(groups) * n_codes)
    known = codes >= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        shares[:, known] = counts.reshape(len(groups), n_codes)[:, codes[known]] / sizes[:, None]
    shares[sizes == 0] = np.nan
    return shares


def _path_codes(paths: list[str]) -> np.ndarray:
    """Small integer codes of category paths (equal paths, equal codes), -1 for a missing (empty) path."""
    codes: dict[str, int] = {}
    return np.fromiter((codes.setdefault(path, len(codes)) if path else -1 for path in paths), dtype=np.int64,
                       count=len(paths))


def _top_by_rank(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    found = np.flatnonzero(np.isfinite(ranks))
    return found[np.argsort(ranks[found], kind="stable")[:k]]


def _top_margin(values: np.ndarray, ratio: bool = False) -> float:
    """Best minus second-best finite value (or second / best with ``ratio``); NaN with fewer than two."""
    finite = values[np.isfinite(values)]
    if len(finite) < 2:
        return np.nan
    second, best = np.partition(finite, len(finite) - 2)[-2:]
    if ratio:
        return float(second / best) if best > 0 else np.nan
    return float(best - second)


def _category_features(query: QueryContext, candidates: Candidates, listings: ListingTable,
                       photo_rank: np.ndarray) -> dict[str, np.ndarray]:
    rows = candidates.rows
    n = len(rows)
    probs = np.asarray(query.category_probs, dtype=np.float32).ravel()
    category_index = listings.top_category_index[rows]
    known = (category_index >= 0) & (category_index < len(probs))
    category_prob = np.full(n, np.nan, dtype=np.float32)
    category_prob_ratio = np.full(n, np.nan, dtype=np.float32)
    if len(probs) and known.any():
        category_prob[known] = probs[category_index[known]]
        best = float(probs.max())
        if best > 0:
            category_prob_ratio[known] = category_prob[known] / best

    # the candidates' own categories vote: a listing in the category most of the top results share is
    # likely related even when the classifier only knows top-level categories
    paths = _path_codes([listings.categories[row] for row in rows])
    tops = np.where(category_index >= 0, category_index, -1)
    rrf_top = np.argsort(-np.asarray(candidates.rrf_score, dtype=np.float64), kind="stable")[:10]
    vector_top = _top_by_rank(np.asarray(candidates.vector_rank, dtype=np.float64))
    bm25_top = _top_by_rank(np.asarray(candidates.bm25_rank, dtype=np.float64))
    photo_top = _top_by_rank(np.asarray(photo_rank, dtype=np.float64))
    path_groups = {
        "category_path_share_top10": rrf_top,
        "category_path_share_vector_top10": vector_top,
        "category_path_share_bm25_top10": bm25_top,
        "category_path_share_photo_top10": photo_top,
        "category_path_share_top3": rrf_top[:3],
        "same_path_as_rrf_top1": rrf_top[:1],
        "same_path_as_vector_top1": vector_top[:1],
        "same_path_as_bm25_top1": bm25_top[:1],
        "same_path_as_photo_top1": photo_top[:1],
    }
    path_shares = _shares_among(paths, list(path_groups.values()))
    return {
        "category_prob": category_prob,
        "category_prob_ratio": category_prob_ratio,
        "top_category_share_top10": _shares_among(tops, [rrf_top])[0],
        **dict(zip(path_groups, path_shares)),
    }


def build_features(
    query: QueryContext,
    candidates: Candidates,
    listings: ListingTable,
    *,
    now_days: float | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Feature matrix of one query's candidates.

    Parameters
    ----------
    query : QueryContext
        The query's text (or None), whether it has an image, and the fusion classifier's
        ``category_probs`` (float32 (C,), indexed like ``listings.top_category_index``).
    candidates : Candidates
        First-stage candidates; ``candidates.rows`` index into ``listings``.
    listings : ListingTable
        Metadata of every listing.
    now_days : float, optional
        Reference date for ``listing_age_days`` in days since 1970-01-01; today (UTC) by default.

    Returns
    -------
    X : np.ndarray float32 (n_candidates, len(FEATURE_NAMES))
        One row per candidate, in the candidates' order; NaN marks a missing value.
    feature_names : list[str]
        The column names, equal to ``FEATURE_NAMES``.
    """
    n = len(candidates)
    rows = np.asarray(candidates.rows, dtype=np.int64)
    if rows.shape != (n,):
        raise ValueError(
            f"candidates.rows has shape {rows.shape} but there are {n} listing ids; "
            "every Candidates array must have one entry per listing id"
        )
    if n and (rows.min() < 0 or rows.max() >= len(listings)):
        raise ValueError(
            f"candidate rows must lie in [0, {len(listings)}) of the listing table, "
            f"got min {rows.min()} and max {rows.max()}; build the candidates against this table"
        )
    if now_days is None:
        now_days = today_days()

    def column(values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float32).reshape(n)

    vector_score = column(candidates.vector_score)
    bm25_score = column(candidates.bm25_score)
    rrf_score = column(candidates.rrf_score)
    text_sim = column(candidates.text_sim)
    image_sim = column(candidates.image_sim)
    photo_sim = candidates.column("photo_sim")
    term_coverage = candidates.column("term_coverage")
    term_bm25 = candidates.column("term_bm25_score")

    query_terms = set(tokenize(query.text))
    titles = [listings.titles[row] for row in rows]
    photo_rank = _rank_descending(photo_sim)
    category = _category_features(query, candidates, listings, photo_rank)

    price = listings.price[rows].astype(np.float32)
    median = listings.category_median_price[rows].astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_price = np.where(price >= 0, np.log1p(price), np.nan).astype(np.float32)
        price_ratio = np.where((median > 0) & np.isfinite(price), price / median, np.nan).astype(np.float32)
    created = listings.created_days[rows].astype(np.float32)
    age = (np.float32(now_days) - created).astype(np.float32)  # NaN stays NaN

    has_text = 1.0 if query_terms else 0.0
    vector_gap, text_gap, image_gap, photo_gap, coverage_gap = _gap_to_best(
        np.column_stack([vector_score, text_sim, image_sim, photo_sim, term_coverage])).T
    bm25_ratio, term_bm25_ratio = _ratio_to_best(np.column_stack([bm25_score, term_bm25])).T
    columns = {
        "vector_score": vector_score,
        "vector_rank": column(candidates.vector_rank),
        "vector_score_gap": vector_gap,
        "bm25_score": bm25_score,
        "bm25_rank": column(candidates.bm25_rank),
        "bm25_score_ratio": bm25_ratio,
        "rrf_score": rrf_score,
        "rrf_rank": _rank_descending(rrf_score) if n else rrf_score,
        "text_sim": text_sim,
        "text_sim_gap": text_gap,
        "image_sim": image_sim,
        "image_sim_gap": image_gap,
        "photo_sim": photo_sim,
        "photo_sim_gap": photo_gap,
        "photo_sim_rank": photo_rank,
        "photo_sim_lead": _lead_over_others(photo_sim),
        "photo_near_duplicate": _at_least(photo_sim, NEAR_DUPLICATE_PHOTO_SIM),
        "image_sim_lead": _lead_over_others(image_sim),
        "best_photo_sim": np.full(n, np.nanmax(photo_sim) if np.isfinite(photo_sim).any() else np.nan,
                                  dtype=np.float32),
        "title_overlap": _title_overlap(query_terms, titles),
        "term_coverage": term_coverage,
        "term_coverage_gap": coverage_gap,
        "idf_coverage": candidates.column("idf_coverage"),
        "term_bm25_score": term_bm25,
        "term_bm25_ratio": term_bm25_ratio,
        **category,
        "log_price": log_price,
        "price_to_category_median": price_ratio,
        "photo_count": listings.photo_count[rows].astype(np.float32),
        "description_length": listings.description_length[rows].astype(np.float32),
        "listing_age_days": age,
        "query_has_text": np.full(n, has_text, dtype=np.float32),
        "query_has_image": np.full(n, 1.0 if query.has_image else 0.0, dtype=np.float32),
        "query_term_count": np.full(n, len(query_terms) if query_terms else np.nan, dtype=np.float32),
        "vector_top_margin": np.full(n, _top_margin(vector_score), dtype=np.float32),
        "bm25_top_margin_ratio": np.full(n, _top_margin(bm25_score, ratio=True), dtype=np.float32),
        "photo_top_margin": np.full(n, _top_margin(photo_sim), dtype=np.float32),
    }
    features = np.empty((n, len(FEATURE_NAMES)), dtype=np.float32)
    for j, name in enumerate(FEATURE_NAMES):
        features[:, j] = columns[name]
    return features, list(FEATURE_NAMES)
