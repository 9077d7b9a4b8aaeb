"""Offline evaluation of the recommenders on a global time split (`marketsearch evaluate-recs`).

Everything is fitted on the events before T (the learned blend on its own split inside that period,
`recommend.train`), and judged on what each user engaged with at or after T: graded by the strongest event
(`recommend.data.GRADES`). Every system ranks the whole catalogue (no sampled negatives); listings bought
before T (by anyone: a second-hand item is sold once) and what the user bought are never ranked. Listing
statuses in the catalogue are today's, not T's, so they are not used here: the purchases before T say what
was sold at T. Baselines in the same run: popularity, co-visitation alone, ALS alone, content alone; each
falls back to popularity where it has no score (a user it knows nothing of), so each ranks every listing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ranx import Qrels, Run, evaluate
from tqdm.auto import tqdm

from core.files import write_text_atomic
from core.workspace import new_stamped_dir
from evaluation.evaluate import write_runs
from evaluation.judgments import write_qrels
from recommend.data import GRADES, as_utc, epoch_seconds, load_event_log, load_impressions, log_end
from recommend.model import Recommender
from recommend.train import train_recommender

logger = logging.getLogger(__name__)

METRICS = ("recall@10", "ndcg@10", "mrr@10")
# hybrid: as served (candidates from the approximate search); hybrid_exact: the same blend over candidates from a
# scan of the whole catalogue (what the approximate candidate stage costs)
SYSTEMS = ("popularity", "covisit", "als", "content", "hybrid", "hybrid_exact")
RUN_DEPTH = 100
COLD_EVENTS = 2  # users with at most this many engaged events before T are the cold slice
TIE_BREAK = 1e-6  # popularity only orders what a baseline scores equally


@dataclass
class RecsEvaluation:
    split: str
    test_until: str
    users: int
    scores: dict[str, dict[str, dict[str, dict[str, float]]]]  # slice -> system -> metric -> mean/low/high
    slice_users: dict[str, int]
    new_listings: dict[str, float]
    # slice -> mean share of a user's relevant listings among the blend's candidates (approximate, exact)
    candidate_recall: dict[str, dict[str, float]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    # personalised search against today's on the test period's logged searches (None: no logged search)
    search: dict | None = None

    def to_dict(self) -> dict:
        return self.__dict__

    def to_markdown(self) -> str:
        lines = [f"Split T = {self.split}; test events up to {self.test_until}; {self.users} test users. "
                 "Mean with bootstrap 95 % interval over users (1,000 resamples).", ""]
        for name, systems in self.scores.items():
            lines += [f"### {name} ({self.slice_users[name]} users)", "",
                      "| system | " + " | ".join(METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
            for system, metrics in systems.items():
                cells = [f"{m['mean']:.4f} [{m['low']:.4f}, {m['high']:.4f}]" for m in metrics.values()]
                lines.append(f"| {system} | " + " | ".join(cells) + " |")
            lines.append("")
        n = self.new_listings
        lines.append(f"New listings (first shown at or after T: {n['listings']}): {n['catalogue_share']:.1%} of the "
                     "rankable catalogue, "
                     f"{n['recommended_share']:.1%} of the hybrid's top-10 slots, {n['hit_share']:.1%} of its hits "
                     f"({int(n['hits'])} hits on new listings of {int(n['all_hits'])}).")
        if self.candidate_recall:
            lines += ["", "Candidate stage recall (mean share of a user's relevant listings, those the model may "
                      "recommend them, among the blend's candidates):", "",
                      "| slice | users | approximate search (served) | whole-catalogue scan |", "|---|---:|---:|---:|"]
            for name, r in self.candidate_recall.items():
                lines.append(f"| {name} | {int(r['users'])} | {r['approximate']:.4f} | {r['exact']:.4f} |")
        if self.search:
            lines += ["", f"## Personalised search ({self.search['searches']} logged searches after T; relevance: "
                      "the user's later engaged events on the candidates)", ""]
            for name, systems in self.search["scores"].items():
                lines += [f"### {name} ({self.search['slice_searches'][name]} searches)", "",
                          "| ranking | " + " | ".join(METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
                for system, metrics in systems.items():
                    cells = [f"{m['mean']:.4f} [{m['low']:.4f}, {m['high']:.4f}]" for m in metrics.values()]
                    lines.append(f"| {system} | " + " | ".join(cells) + " |")
                lines.append("")
        return "\n".join(lines)


def system_runs(model: Recommender, user_ids: list[str], depth: int = RUN_DEPTH, progress: bool = False
                ) -> dict[str, dict[str, dict[str, float]]]:
    """Each system's top ``depth`` listings per user (scores), ranking the whole catalogue."""
    runs: dict[str, dict[str, dict[str, float]]] = {s: {} for s in SYSTEMS}
    ids = model.items.ids
    tie = TIE_BREAK * model.pop / max(float(model.pop.max(initial=0.0)), 1e-12)
    for user in tqdm(user_ids, desc="rank the catalogue", unit="user", disable=not progress):
        profile = model.profile(user)
        keep = model.eligible(profile, None)
        scores = model.source_scores(profile)
        single = {"popularity": model.pop.astype(np.float64), "covisit": scores.get("covisit"),
                  "als": scores.get("als"), "content": scores.get("content_max")}
        for system, score in single.items():
            base = tie if score is None else score.astype(np.float64) + tie
            ranked = _top(np.where(keep, base, -np.inf), depth)
            runs[system][user] = {ids[r]: float(base[r]) for r in ranked}
        for system, exact in (("hybrid", False), ("hybrid_exact", True)):
            hits = model.recommend(user, depth, exact=exact)
            runs[system][user] = {h.listing_id: float(len(hits) - rank) for rank, h in enumerate(hits)}
    return runs


def candidate_recall(model: Recommender, qrels: dict[str, dict[str, int]]) -> dict[str, dict[str, float]]:
    """Per user, the share of their relevant listings (those the model may recommend them) that the candidate
    stage passes to the blend: ``approximate`` as served, ``exact`` from a scan of the whole catalogue."""
    out: dict[str, dict[str, float]] = {"approximate": {}, "exact": {}}
    for user, relevant in qrels.items():
        profile = model.profile(user)
        keep = model.eligible(profile, None)
        rows = model.items.rows(list(relevant))
        rows = rows[rows >= 0]
        rows = rows[keep[rows]]
        if not len(rows):
            continue
        home = model.home_of(profile, None)
        for name, exact in (("approximate", False), ("exact", True)):
            found = model.candidates(profile, keep, home, exact=exact)
            out[name][user] = float(np.isin(rows, found).mean())
    return out


def bootstrap(values: np.ndarray, resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    if not len(values):
        return {"mean": 0.0, "low": 0.0, "high": 0.0}
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return {"mean": float(values.mean()), "low": float(low), "high": float(high)}


def score_slice(qrels: dict[str, dict[str, int]], runs: dict[str, dict[str, dict[str, float]]]
                ) -> dict[str, dict[str, dict[str, float]]]:
    users = sorted(qrels)
    out = {}
    for system, run in runs.items():
        per_user = evaluate(Qrels(qrels), Run({u: run.get(u) or {"-": 0.0} for u in users}), list(METRICS),
                            return_mean=False, make_comparable=True)
        out[system] = {m: bootstrap(np.asarray(per_user[m], np.float64)) for m in METRICS}
    return out


def evaluate_personal_search(catalog, model: Recommender, search_log, base_ranker, split: dt.datetime,
                             until: dt.datetime) -> dict | None:
    """Today's ranking (``base_ranker`` on the logged search features, RRF without one) against the personal
    search ranker (today's for a user without a profile) on the searches logged in [split, until); relevance:
    the user's engaged events on the candidates after the search (`recommend.personal_search.search_labels`)."""
    from recommend.personal_search import logged_searches, personal_rows, search_labels

    searches = logged_searches(catalog, search_log, split, until)
    labels = search_labels(catalog, searches, until)
    rrf = list(search_log.feature_names).index("rrf_score")
    qrels: dict[str, dict[str, int]] = {}
    runs: dict[str, dict[str, dict[str, float]]] = {"today": {}, "personalised": {}}
    known: set[str] = set()
    for search, mine in zip(searches, labels):
        if not mine:
            continue
        key = f"{search.query_id}:{search.user_id}"
        qrels[key] = mine
        today = base_ranker.predict(search.X) if base_ranker is not None else search.X[:, rrf]
        rows = personal_rows(model, search) if model.search_ranker is not None else None
        personal = model.search_ranker.predict(rows) if rows is not None else today
        if model.profile(search.user_id) is not None:
            known.add(key)
        for name, scores in (("today", today), ("personalised", personal)):
            runs[name][key] = {i: float(x) for i, x in zip(search.listing_ids, np.nan_to_num(scores, nan=-1e9))}
    if not qrels:
        return None
    slices = {"users with history": {k: q for k, q in qrels.items() if k in known},
              "users without history": {k: q for k, q in qrels.items() if k not in known}}
    return {"searches": len(qrels), "searches_logged": len(searches),
            "personal_ranker": model.search_ranker is not None,
            "slice_searches": {name: len(q) for name, q in slices.items()},
            "scores": {name: score_slice(q, runs) for name, q in slices.items() if q}}


def evaluate_recs(catalog, items, split: dt.datetime, *, test_until: dt.datetime | None = None,
                  max_users: int | None = None, seed: int = 0, progress: bool = False, search_log=None,
                  base_ranker=None, **train_params):
    """Fit before ``split``, judge on the events from ``split`` (to ``test_until``). Returns the evaluation,
    the runs and the qrels of every user. With ``search_log`` (the feature log of served searches) the personal
    search ranker is trained too and judged against today's ranking (``base_ranker``) on the test period's
    searches."""
    items.active[:] = True  # today's statuses would leak the future into T; purchases before T say what sold
    model = train_recommender(catalog, items, epoch_seconds(split), seed=seed, progress=progress,
                              search_log=search_log, **train_params)
    test = load_event_log(catalog, since=split, until=test_until, impressions=False)
    rows = items.rows(test.listings)
    qrels: dict[str, dict[str, int]] = {}
    for user, row, grade in zip(test.users, rows, test.grades()):
        if row >= 0:
            mine = qrels.setdefault(str(user), {})
            mine[items.ids[row]] = max(mine.get(items.ids[row], 0), int(grade))
    users = sorted(qrels)
    if max_users is not None and len(users) > max_users:
        users = sorted(np.random.default_rng(seed).choice(users, max_users, replace=False).tolist())
        qrels = {u: qrels[u] for u in users}
    runs = system_runs(model, users, progress=progress)

    history = {u: (model.profile(u).n_events if model.profile(u) else 0) for u in users}
    # new after T: listings first shown to anyone at or after T (what appeared during the test period)
    _, first_shown = load_impressions(catalog, test_until)
    new_ids = {i for i, t in first_shown.items() if t >= epoch_seconds(split) and i in items.row_of}
    new = np.zeros(len(items), bool)
    new[items.rows(sorted(new_ids))] = True
    slices = {
        "all users": qrels,
        "users with history": {u: q for u, q in qrels.items() if history[u] > COLD_EVENTS},
        f"users with <= {COLD_EVENTS} events": {u: q for u, q in qrels.items() if history[u] <= COLD_EVENTS},
        "listings new after T": {u: n for u, q in qrels.items() if (n := {i: g for i, g in q.items() if i in new_ids})},
    }
    scores = {name: score_slice(q, runs) for name, q in slices.items() if q}
    recall = candidate_recall(model, qrels)
    candidate_stage = {name: {stage: float(np.mean([by_user[u] for u in q if u in by_user] or [0.0]))
                              for stage, by_user in recall.items()} | {"users": sum(u in recall["exact"] for u in q)}
                       for name, q in slices.items() if name != "listings new after T"}
    top10 = [i for u in users for i in list(runs["hybrid"][u])[:10]]
    hits = [i for u in users for i in list(runs["hybrid"][u])[:10] if i in qrels[u]]
    rankable = model.available
    evaluation = RecsEvaluation(
        split=split.isoformat(),
        test_until=(test_until or as_utc(float(test.times.max()) if len(test) else epoch_seconds(split))).isoformat(),
        users=len(users),
        scores=scores,
        slice_users={name: len(q) for name, q in slices.items()},
        new_listings={
            "listings": int(new.sum()),
            "catalogue_share": float((new & rankable).sum() / max(rankable.sum(), 1)),
            "recommended_share": float(sum(i in new_ids for i in top10) / max(len(top10), 1)),
            "hit_share": float(sum(i in new_ids for i in hits) / max(len(hits), 1)),
            "hits": float(sum(i in new_ids for i in hits)),
            "all_hits": float(len(hits)),
        },
        candidate_recall=candidate_stage,
        info={"train_events": model.info.get("events"), "train_users": model.info.get("users"),
              "test_events": len(test), "blend": model.info.get("blend_training"), "grades": GRADES,
              "search_ranker": model.info.get("search_ranker_training")},
    )
    if search_log is not None:
        end = test_until or log_end(catalog) + dt.timedelta(microseconds=1)
        evaluation.search = evaluate_personal_search(catalog, model, search_log, base_ranker, split, end)
    return evaluation, runs, qrels


def write_recs_evaluation(eval_root: str | Path, evaluation: RecsEvaluation, runs, qrels) -> Path:
    """``<eval_root>/recs/<stamp>/``: report.md, report.json, qrels.txt and one TREC run per system."""
    out = new_stamped_dir(Path(eval_root) / "recs", dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    write_runs(runs, out)
    write_qrels(qrels, out / "qrels.txt")
    write_text_atomic(out / "report.json", json.dumps(evaluation.to_dict(), indent=2))
    write_text_atomic(out / "report.md", f"# Recommendations\n\n{evaluation.to_markdown()}\n")
    return out


def _top(scores: np.ndarray, size: int) -> np.ndarray:
    finite = np.isfinite(scores)
    rows = np.flatnonzero(finite) if finite.sum() <= size else np.argpartition(-scores, size)[:size]
    return rows[np.argsort(-scores[rows], kind="stable")]
