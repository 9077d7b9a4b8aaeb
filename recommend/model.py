"""`Recommender`: the fitted signals of every user and listing, candidate generation, features, the learned
blend, and "more like this".

For a user, candidates come from every source over the whole catalogue (ALS, content neighbours of the user's
interests, co-visitation of their recent listings, popular near their home town, popular everywhere, new
listings); the learned blend (a LightGBM lambdarank model, `recommend.train`) orders them. A user the model
does not know (no engaged event) is a cold start: popular and new listings near them (location from their
events, or the request's), ordered by the same blend with no user signal. Sold listings (status, or bought by
anyone before the model's reference time), listings not in the catalogue and what the user bought never come
back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from recommend.collaborative import fold_in
from recommend.data import DAY, GRADES, Items, decay
from recommend.profiles import Profiles, UserProfile, build_profile
from recommend.retrieval import ListingIndex

FEATURES = (
    "als", "content_max", "content_mix", "covisit", "seen", "seen_grade", "pop", "ctr", "engaged", "age_days",
    "is_new", "listed_rank", "aff_top", "aff_cat", "aff_band", "aff_town", "same_town", "user_events", "n_interests",
    "has_image", "log_price",
)
POP_HALF_LIFE_DAYS = 7.0  # popularity is what is engaged with now
NEW_DAYS = 7.0  # a listing first shown less than this before the reference time (or never) is new
SOURCE_SIZES = {"als": 100, "content": 100, "covisit": 50, "local": 50, "popular": 50, "new": 30}
RECENT_ITEMS = 20  # the listings of a user's history that drive co-visitation
# Cold-start exposure for listings: the blend learns from logged engagement, and a listing nobody was shown
# cannot have any, so it would never rank one. When the first NEW_SLOT_EVERY hold no new listing (NEW_DAYS),
# the one nearest the user's interests is placed at NEW_SLOT_RANK.
NEW_SLOT_EVERY = 10
NEW_SLOT_RANK = 5
GRADE_VERBS = {grade: verb for verb, grade in (("viewed", GRADES["view"]), ("saved", GRADES["save"]),
                                               ("contacted the seller of", GRADES["contact_seller"]),
                                               ("bought", GRADES["purchase"]))}


@dataclass
class Filters:
    """What the caller restricts recommendations to (case-insensitive; None: no restriction)."""

    category: str | None = None  # a top category or a category path prefix
    location: str | None = None  # a town or a county
    max_price: float | None = None

    def mask(self, items: Items) -> np.ndarray:
        keep = np.ones(len(items), bool)
        if self.category:
            wanted = self.category.strip().lower()
            keep &= np.array([c.lower() == wanted or c.lower().startswith(wanted + " / ")
                              for c in items.category]) | np.array([t.lower() == wanted for t in items.top_category])
        if self.location:
            place = self.location.strip().lower()
            keep &= np.array([t.lower() == place for t in items.town]) | np.array(
                [c.lower() == place for c in items.county])
        if self.max_price is not None:
            keep &= np.isfinite(items.price) & (items.price <= self.max_price)
        return keep


@dataclass
class Reason:
    """Why a listing is recommended: ``kind`` is ``history`` (because you viewed ``listing_id``), ``category``
    (you like ``category``), ``popular_near`` / ``new_near`` (``town``), ``new`` or ``popular``."""

    kind: str
    listing_id: str | None = None
    verb: str | None = None  # viewed, saved, contacted the seller of, bought
    town: str | None = None
    category: str | None = None


@dataclass
class Hit:
    listing_id: str
    score: float
    reason: Reason


@dataclass
class Recommender:
    """Fitted state; built by `recommend.train.fit_signals`, saved and loaded by `recommend.folder`."""

    items: Items
    reference: float  # seconds since 1970: the model knows events before this time
    item_factors: np.ndarray | None  # float32 (n, f) ALS item factors (None: too few events for ALS)
    covisit: sp.csr_matrix  # (n, n)
    pop: np.ndarray  # float32 (n,): log1p of recency-weighted engagement
    engaged: np.ndarray  # int32 (n,): engaged events
    clicks: np.ndarray  # int32 (n,)
    impressions: np.ndarray  # int32 (n,)
    first_shown: np.ndarray  # float64 (n,): seconds since 1970, NaN never shown
    sold: np.ndarray  # bool (n,): bought by someone before the reference time
    profiles: Profiles  # user id -> UserProfile, built on first use
    als_params: dict = field(default_factory=dict)
    ranker: object | None = None  # ranking.reranker.Reranker over FEATURES
    # the personal search ranker trained with it (recommend.personal_search; saved to <root>/ranker-personal/)
    search_ranker: object | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.refresh_item_signals()

    def refresh_item_signals(self) -> None:
        """Recompute what is derived from the item arrays (after fitting or loading)."""
        items = self.items
        self.popular_order = np.argsort(-self.pop, kind="stable")
        towns, self.town_code = np.unique(items.town.astype(str), return_inverse=True)
        # each town's listings, most popular first: one stable sort by town of the popularity order
        by_town = self.popular_order[np.argsort(self.town_code[self.popular_order], kind="stable")]
        bounds = np.searchsorted(self.town_code[by_town], np.arange(len(towns) + 1))
        self.by_town: dict[str, np.ndarray] = {
            town: by_town[bounds[code]:bounds[code + 1]] for code, town in enumerate(towns.tolist()) if town}
        self.town_names = {t.lower(): t for t in self.by_town}
        self.county_names = {c.lower(): c for c in np.unique(items.county) if c}
        age = (self.reference - self.first_shown) / DAY
        self.age_days = np.where(np.isfinite(age), np.maximum(age, 0.0), 0.0).astype(np.float32)
        self.is_new = ~np.isfinite(self.first_shown) | (self.age_days < NEW_DAYS)
        self.listed_rank = listed_rank(items.created)
        self.town_codes = {town: code for code, town in enumerate(towns.tolist()) if town}
        self.ctr = ((self.clicks + 1.0) / (self.impressions + 20.0)).astype(np.float32)
        self.fresh_by_ctr = np.flatnonzero(self.is_new)[np.argsort(-self.ctr[self.is_new], kind="stable")]
        self.log_price = np.log1p(np.where(np.isfinite(items.price), items.price, np.nan)).astype(np.float32)
        self.available = items.active & ~self.sold
        self._als = None
        self._vector_index: ListingIndex | None = None
        self._factor_index: ListingIndex | None = None

    # -- users ----------------------------------------------------------------------------------------
    def profile(self, user_id: str) -> UserProfile | None:
        return self.profiles.get(user_id)

    def forget(self, user_id: str) -> int:
        """Drop everything held of the user (profile and factors); returns 1 when there was something."""
        return int(self.profiles.pop(user_id, None) is not None)

    def als_model(self):
        """The implicit ALS model around the item factors, for folding users in."""
        if self._als is None and self.item_factors is not None:
            from recommend.collaborative import new_als

            model = new_als(**self.als_params)
            model.item_factors = self.item_factors
            model.user_factors = np.zeros((1, self.item_factors.shape[1]), np.float32)
            self._als = model
        return self._als

    def fold_in(self, user_id: str, listing_ids, types, times) -> UserProfile | None:
        """Replace the user's profile and factors with ones computed from this complete engaged history
        (listing ids, type names, seconds since 1970), against the fitted listings: no retraining."""
        from recommend.data import EVENT_WEIGHTS

        rows = self.items.rows(listing_ids)
        known = rows >= 0
        rows, types = rows[known], [t for t, k in zip(types, known) if k]
        times = np.asarray(times, np.float64)[known]
        if not len(rows):
            self.profiles.pop(user_id, None)
            return None
        weights = np.array([EVENT_WEIGHTS[t] for t in types]) * decay((self.reference - times) / DAY)
        grades = np.array([GRADES[t] for t in types], np.int8)
        bought = rows[np.array([t == "purchase" for t in types])]
        profile = build_profile(user_id, self.items, rows, weights, grades, bought, len(rows))
        model = self.als_model()
        if model is not None:
            history = sp.csr_matrix((profile.weights, (np.zeros(len(profile.items), int), profile.items)),
                                    shape=(1, len(self.items)))
            profile.factors = fold_in(model, history)
        self.profiles[user_id] = profile
        return profile

    # -- scoring --------------------------------------------------------------------------------------
    def eligible(self, profile: UserProfile | None, filters: Filters | None) -> np.ndarray:
        keep = self.available.copy()
        if profile is not None and len(profile.bought):
            keep[profile.bought] = False
        if filters is not None:
            keep &= filters.mask(self.items)
        return keep

    def build_indexes(self) -> None:
        """Build the candidate search indexes now rather than on the first request (a few seconds at 100k)."""
        _ = self.vector_index, self.factor_index

    def use_indexes(self, vector_index: ListingIndex, factor_index: ListingIndex | None) -> Recommender:
        """Search these candidate indexes (built elsewhere: ``recommend.live`` extends the ones it has with the
        listings appended since, searched exactly or in a rebuilt index, ``ListingIndex.extended``) instead of
        building them; returns this recommender."""
        if vector_index.rows != len(self.items):
            raise ValueError(f"the vector index searches {vector_index.rows} rows for {len(self.items)} items")
        if (factor_index is None) != (self.item_factors is None):
            raise ValueError("a factor index goes with ALS item factors, and only with them")
        self._vector_index, self._factor_index = vector_index, factor_index
        return self

    @property
    def vector_index(self) -> ListingIndex:
        """Approximate inner-product search over the listing vectors (built on first use)."""
        if self._vector_index is None:
            self._vector_index = ListingIndex(self.items.vectors)
        return self._vector_index

    @property
    def factor_index(self) -> ListingIndex | None:
        """Approximate inner-product search over the ALS item factors (None without ALS)."""
        if self._factor_index is None and self.item_factors is not None:
            self._factor_index = ListingIndex(self.item_factors)
        return self._factor_index

    def user_covisit(self, profile: UserProfile) -> sp.csr_matrix:
        """Co-visitation of the listings with the user's recent listings (weighted by their history weights):
        (1, n) sparse, one pass over those rows' entries."""
        recent = profile.items[:RECENT_ITEMS]
        weights = profile.weights[:RECENT_ITEMS]
        weights = sp.csr_matrix((weights / weights.sum())[None, :]) if len(recent) else sp.csr_matrix((1, 0))
        covisit = (weights @ self.covisit[recent]).tocsr()
        covisit.sort_indices()  # ties in the candidate pool go to the lower row, as everywhere else
        return covisit

    def source_scores(self, profile: UserProfile | None, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Scores of the listings ``rows`` (None: every listing) from each personal source the user has,
        each aligned with ``rows``."""
        scores: dict[str, np.ndarray] = {}
        if profile is None:
            return scores
        vectors = self.items.vectors if rows is None else self.items.vectors[rows]
        if profile.factors is not None and self.item_factors is not None:
            factors = self.item_factors if rows is None else self.item_factors[rows]
            scores["als"] = factors @ profile.factors
        if len(profile.interests):
            sims = vectors @ profile.interests.T
            scores["content_max"] = sims.max(axis=1)
            scores["content_mix"] = sims @ profile.interest_weights
        if len(profile.items):
            covisit = self.user_covisit(profile)
            scores["covisit"] = (covisit.toarray() if rows is None else covisit[:, rows].toarray()).ravel()
        return scores

    def home_of(self, profile: UserProfile | None, filters: Filters | None) -> str:
        if profile is not None and profile.home:
            return profile.home
        if filters is not None and filters.location:
            return self.town_names.get(filters.location.strip().lower(), "")
        return ""

    def candidates(self, profile: UserProfile | None, keep: np.ndarray, home: str, exact: bool = False
                   ) -> np.ndarray:
        """Union of every source's best eligible listings (``keep``): the nearest listings to the user's ALS
        factors and to their interest vectors (approximate search; ``exact``: a scan of the whole catalogue, what
        the evaluation compares it with), co-visitation of their recent listings, popular near their home town,
        popular everywhere, and new listings nearest their interests (or near them, without interests)."""
        pools = []
        has_factors = profile is not None and profile.factors is not None and self.item_factors is not None
        has_interests = profile is not None and len(profile.interests) > 0
        fresh = keep & self.is_new
        if exact:
            scores = self.source_scores(profile)
            for name, size in (("als", SOURCE_SIZES["als"]), ("content_max", SOURCE_SIZES["content"])):
                if name in scores:
                    pools.append(_top(np.where(keep, scores[name], -np.inf), size))
            if has_interests and fresh.any():
                pools.append(_top(np.where(fresh, scores["content_max"], -np.inf), SOURCE_SIZES["new"]))
        else:
            if has_factors:
                pools.append(self.factor_index.search(profile.factors, SOURCE_SIZES["als"], keep))
            if has_interests:
                pools.append(self.vector_index.search(profile.interests, SOURCE_SIZES["content"], keep))
                if fresh.any() and fresh.sum() < keep.sum():  # (all fresh: the search above found them)
                    pools.append(self.vector_index.search(profile.interests, SOURCE_SIZES["new"], fresh))
        if profile is not None and len(profile.items):
            covisit = self.user_covisit(profile)
            linked = covisit.data > 0
            linked[linked] = keep[covisit.indices[linked]]
            best = np.argsort(-covisit.data[linked], kind="stable")[: SOURCE_SIZES["covisit"]]
            pools.append(covisit.indices[linked][best])
        if home in self.by_town:
            local = self.by_town[home]
            pools.append(local[keep[local]][: SOURCE_SIZES["local"]])
        pools.append(self.popular_order[keep[self.popular_order]][: SOURCE_SIZES["popular"]])
        if not has_interests:  # new listings near them first, by click-through rate
            fresh_rows = self.fresh_by_ctr[keep[self.fresh_by_ctr]]
            near = self.town_code[fresh_rows] == self.town_codes.get(home, -1)
            pools.append(np.concatenate([fresh_rows[near], fresh_rows[~near]])[: SOURCE_SIZES["new"]])
        return np.unique(np.concatenate(pools)).astype(np.int64) if pools else np.zeros(0, np.int64)

    def features(self, profile: UserProfile | None, rows: np.ndarray, scores: dict[str, np.ndarray],
                 home: str) -> np.ndarray:
        """FEATURES of the listings ``rows`` for this user (``scores``: `source_scores` of those rows): float32
        (len(rows), len(FEATURES)), NaN = unknown."""
        n = len(rows)
        items = self.items
        nan = np.full(n, np.nan, np.float32)
        seen = np.zeros(n, np.float32)
        seen_grade = np.zeros(n, np.float32)
        affinity = profile.affinity if profile is not None else {}
        if profile is not None and len(profile.items):
            where = {int(r): i for i, r in enumerate(profile.items)}
            for j, row in enumerate(rows):
                i = where.get(int(row))
                if i is not None:
                    seen[j], seen_grade[j] = profile.weights[i], profile.grades[i]

        def aff(prefix: str, keys) -> np.ndarray:
            if profile is None:
                return nan
            return np.array([affinity.get(prefix + str(k), 0.0) for k in keys], np.float32)

        columns = {
            "als": scores.get("als", nan),
            "content_max": scores.get("content_max", nan),
            "content_mix": scores.get("content_mix", nan),
            "covisit": scores.get("covisit", nan),
            "seen": seen,
            "seen_grade": seen_grade,
            "pop": self.pop[rows],
            "ctr": self.ctr[rows],
            "engaged": np.log1p(self.engaged[rows]),
            "age_days": self.age_days[rows],
            "is_new": self.is_new[rows],
            "listed_rank": self.listed_rank[rows],
            "aff_top": aff("t:", items.top_category[rows]),
            "aff_cat": aff("c:", items.category[rows]),
            "aff_band": aff("b:", items.band[rows]),
            "aff_town": aff("w:", items.town[rows]),
            "same_town": (items.town[rows] == home).astype(np.float32) if home else nan,
            "user_events": np.full(n, np.log1p(profile.n_events) if profile else 0.0, np.float32),
            "n_interests": np.full(n, len(profile.interests) if profile else 0, np.float32),
            "has_image": items.has_image[rows],
            "log_price": self.log_price[rows],
        }
        return np.column_stack([np.asarray(columns[name], np.float32) for name in FEATURES])

    def score_user(self, profile: UserProfile | None, filters: Filters | None = None, exact: bool = False
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], str]:
        """Candidates of the user, their blended scores, their source scores and the home town."""
        keep = self.eligible(profile, filters)
        home = self.home_of(profile, filters)
        rows = self.candidates(profile, keep, home, exact=exact)
        scores = self.source_scores(profile, rows)
        if not len(rows):
            return rows, np.zeros(0, np.float32), scores, home
        X = self.features(profile, rows, scores, home)
        if self.ranker is not None:
            blended = np.asarray(self.ranker.predict(X), np.float32)
        else:  # before the blend is trained (its own training data): popularity
            blended = self.pop[rows]
        return rows, blended, scores, home

    def recommend(self, user_id: str | None, k: int = 10, filters: Filters | None = None, exact: bool = False
                  ) -> list[Hit]:
        """The ``k`` best listings for the user (an unknown or absent user is a cold start), each with a
        reason. ``exact``: candidates from a scan of the whole catalogue instead of the approximate search."""
        profile = self.profile(user_id) if user_id else None
        rows, blended, scores, home = self.score_user(profile, filters, exact=exact)
        order = list(np.lexsort((rows, -blended))[:k])
        top = order[:NEW_SLOT_EVERY]
        if "content_max" in scores and len(order) >= NEW_SLOT_RANK and not self.is_new[rows[top]].any():
            fresh = [i for i in np.argsort(-scores["content_max"], kind="stable") if self.is_new[rows[i]]]
            if fresh:
                order = [i for i in order if i != fresh[0]]
                order.insert(NEW_SLOT_RANK - 1, fresh[0])
                order = order[:k]
        chosen = rows[order]
        reasons = self.reasons(profile, chosen, home)
        return [Hit(self.items.ids[row], float(blended[i]), reason) for i, row, reason in zip(order, chosen, reasons)]

    def reasons(self, profile: UserProfile | None, rows: np.ndarray, home: str) -> list[Reason]:
        """A reason for each of the listings ``rows`` (the co-visitation and similarity of all of them with the
        user's recent listings in one product each)."""
        if profile is None or not len(profile.items) or not len(rows):
            return [self.reason(profile, int(row), home) for row in rows]
        recent = profile.items[:RECENT_ITEMS]
        covisits = self.covisit[recent][:, rows].toarray() * profile.weights[:RECENT_ITEMS, None]
        sims = self.items.vectors[recent] @ self.items.vectors[rows].T
        return [self.reason(profile, int(row), home, covisits[:, j], sims[:, j]) for j, row in enumerate(rows)]

    def reason(self, profile: UserProfile | None, row: int, home: str, covisits: np.ndarray | None = None,
               sims: np.ndarray | None = None) -> Reason:
        """Why ``row`` is recommended; ``covisits`` and ``sims`` (with a profile that has history): its weighted
        co-visitation and its similarity with the user's recent listings."""
        items = self.items
        if profile is not None and len(profile.items):
            recent = profile.items[:RECENT_ITEMS]
            pick = int(np.argmax(covisits)) if covisits.max() > 0 else int(np.argmax(sims))
            if covisits.max() > 0 or sims[pick] >= 0.5:
                return Reason("history", listing_id=items.ids[recent[pick]],
                              verb=GRADE_VERBS.get(int(profile.grades[pick]), "viewed"))
            if profile.affinity.get("t:" + items.top_category[row], 0.0) >= 0.2:
                return Reason("category", category=items.top_category[row])
        town = items.town[row]
        if self.is_new[row]:
            return Reason("new_near", town=town) if home and town == home else Reason("new")
        if home and town == home:
            return Reason("popular_near", town=town)
        return Reason("popular")

    def similar(self, listing_id: str, k: int = 10, rrf_k: int = 60) -> list[tuple[str, float]]:
        """Listings like ``listing_id``: its neighbours in the shared text-image space and its co-visited
        listings, fused by reciprocal rank (no weight to tune). KeyError for a listing that is not an item."""
        row = self.items.row_of[listing_id]
        keep = self.available.copy()
        keep[row] = False
        near = self.vector_index.search(self.items.vectors[row], max(50, 3 * k), keep)
        sims = self.items.vectors[near] @ self.items.vectors[row]
        fused: dict[int, float] = {}
        for rank, other in enumerate(near[np.argsort(-sims, kind="stable")], start=1):
            fused[int(other)] = fused.get(int(other), 0.0) + 1.0 / (rrf_k + rank)
        start, end = self.covisit.indptr[row], self.covisit.indptr[row + 1]
        neighbours = self.covisit.indices[start:end][np.argsort(-self.covisit.data[start:end], kind="stable")]
        for rank, other in enumerate((o for o in neighbours if keep[o]), start=1):
            fused[int(other)] = fused.get(int(other), 0.0) + 1.0 / (rrf_k + rank)
        best = sorted(fused.items(), key=lambda item: (-item[1], self.items.ids[item[0]]))[:k]
        return [(self.items.ids[other], score) for other, score in best]


def listed_rank(created: np.ndarray) -> np.ndarray:
    """Each listing's place among the catalogue's by creation time: the share of dated listings created before
    it (the newest near 1), NaN undated. A rank rather than an age, so a blend learned at one reference time
    reads the same at the next: a listing nobody has engaged with yet is either just listed or unwanted, and
    only this tells them apart."""
    out = np.full(len(created), np.nan, np.float32)
    dated = np.flatnonzero(np.isfinite(created))
    if len(dated):
        out[dated] = np.searchsorted(np.sort(created[dated]), created[dated], side="left") / len(dated)
    return out


def _top(scores: np.ndarray, size: int) -> np.ndarray:
    """Indices of the ``size`` largest finite scores, best first."""
    finite = np.isfinite(scores)
    if finite.sum() <= size:
        rows = np.flatnonzero(finite)
    else:
        rows = np.argpartition(-np.where(finite, scores, -np.inf), size)[:size]
    return rows[np.argsort(-scores[rows], kind="stable")]
