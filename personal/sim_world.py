"""The simulator's hidden world: the catalogue as arrays, listing appeal, and users with hidden tastes.

Nothing here is ever written to the database: models see only the events the simulator emits. The hidden
state can be dumped to a separate diagnostics file (``hidden_state``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from catalog.models import Listing

# Words a buyer would not type, or that do not say what a thing is.
STOPWORDS = frozenset(
    "a an and the of for in on with to from by at or as is are be it its this that these those my our your "
    "new used good great very excellent condition working fully only just like set pair x sale selling "
    "collection collect delivery price ono offers free item items brand boxed box unused".split()
)
_WORD = re.compile(r"[a-z][a-z'-]+")


def content_words(text: str) -> list[str]:
    """Lower-case words of a title that say what the thing is (no stop words, numbers or one-letter words)."""
    return [w.strip("'-") for w in _WORD.findall(text.lower()) if len(w) > 2 and w.strip("'-") not in STOPWORDS]


@dataclass
class SimCatalog:
    """Every listing as arrays (row order = ``ids``), plus the hidden appeal the simulator gives each."""

    ids: list[str]
    titles: list[str]
    words: list[frozenset[str]]  # content words of each title
    top: np.ndarray  # int (n,): index into top_names
    sub: np.ndarray  # int (n,): index into sub_names (the first two levels of the category path)
    price: np.ndarray  # float (n,), nan when not given
    town: np.ndarray  # int (n,): index into place_names, -1 when unknown
    county: np.ndarray  # int (n,)
    created: np.ndarray  # float (n,): days since 1970 of created_at, nan when unknown
    has_photo: np.ndarray  # bool (n,)
    top_names: list[str]
    sub_names: list[str]
    place_names: list[str]
    quality: np.ndarray = field(default_factory=lambda: np.zeros(0))  # hidden appeal (popularity skew)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_listings(cls, listings: Iterable[Listing]) -> SimCatalog:
        ids, titles, words, top, sub, price, town, county, created, photo = ([] for _ in range(10))
        codes: dict[str, dict[str, int]] = {"top": {}, "sub": {}, "place": {}}

        def code(kind: str, name: str | None) -> int:
            if not name:
                return -1
            table = codes[kind]
            return table.setdefault(name, len(table))

        for listing in listings:
            ids.append(listing.id)
            titles.append(listing.title)
            words.append(frozenset(content_words(listing.title)))
            top.append(code("top", listing.top_category))
            sub.append(code("sub", " / ".join(listing.category_levels[:2])))
            price.append(np.nan if listing.price is None else float(listing.price))
            town.append(code("place", listing.town and f"town:{listing.town.casefold()}"))
            county.append(code("place", listing.county and f"county:{listing.county.casefold()}"))
            created.append(np.nan if listing.created_at is None else float(listing.created_at.toordinal() - 719163))
            photo.append(bool(listing.image_ids))
        return cls(
            ids=ids,
            titles=titles,
            words=words,
            top=np.asarray(top, dtype=np.int64),
            sub=np.asarray(sub, dtype=np.int64),
            price=np.asarray(price, dtype=np.float64),
            town=np.asarray(town, dtype=np.int64),
            county=np.asarray(county, dtype=np.int64),
            created=np.asarray(created, dtype=np.float64),
            has_photo=np.asarray(photo, dtype=bool),
            top_names=list(codes["top"]),
            sub_names=list(codes["sub"]),
            place_names=list(codes["place"]),
        )

    def category_median_price(self) -> np.ndarray:
        """Per top category (index), the median known price (1.0 where none is known)."""
        medians = np.ones(len(self.top_names))
        for code in range(len(self.top_names)):
            known = self.price[(self.top == code) & ~np.isnan(self.price)]
            known = known[known > 0]
            if known.size:
                medians[code] = float(np.median(known))
        return medians


@dataclass
class Interest:
    """Something a user wants: a kind of thing (a sub-category) described by a few words a buyer would type."""

    top: int
    sub: int
    words: tuple[str, ...]
    weight: float


@dataclass
class Taste:
    """A simulated user's hidden preferences and habits."""

    user_id: str
    arrives_at: float  # day of the simulated period the user first shows up
    home_town: int  # index into SimCatalog.place_names, -1 when unknown
    home_county: int
    categories: dict[int, float]  # a few favourite top categories -> weight
    interests: list[Interest]
    budget: float  # multiplier of a category's median price: the centre of the user's price band
    price_tolerance: float  # width of the band, in natural-log units
    locality: float  # 0..1: how much a listing near home matters
    sessions_per_day: float
    search_share: float  # share of sessions that start with a search (the rest browse a category)
    patience: int  # result pages a user looks at, at most
    saved: list[int] = field(default_factory=list)  # rows of listings saved, for return visits


def draw_tastes(catalog: SimCatalog, n_users: int, days: float, rng: np.random.Generator, *, id_prefix: str,
                initial_share: float = 0.5) -> list[Taste]:  # fmt: skip
    """``n_users`` users: ``initial_share`` of them there from day 0, the rest arriving uniformly over the
    period. Favourite categories follow the catalogue's category sizes; home towns follow where listings are."""
    n = len(catalog)
    top_sizes = np.bincount(catalog.top[catalog.top >= 0], minlength=len(catalog.top_names)).astype(float)
    located = np.flatnonzero(catalog.town >= 0)
    tastes = []
    for number in range(n_users):
        arrives = 0.0 if rng.random() < initial_share else float(rng.uniform(0, days))
        home_row = int(rng.choice(located)) if located.size else int(rng.integers(n))
        n_categories = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
        chosen = rng.choice(len(top_sizes), size=min(n_categories, int((top_sizes > 0).sum())), replace=False,
                            p=top_sizes / top_sizes.sum())  # fmt: skip
        weights = rng.dirichlet(np.ones(len(chosen)) * 2.0)
        categories = {int(c): float(w) for c, w in zip(chosen, weights, strict=True)}
        interests = []
        for _ in range(int(rng.integers(2, 6))):
            top = int(rng.choice(list(categories), p=np.asarray(list(categories.values()))))
            rows = np.flatnonzero(catalog.top == top)
            seed_row = int(rng.choice(rows))
            words = sorted(catalog.words[seed_row]) or content_words(catalog.sub_names[catalog.sub[seed_row]])
            size = min(len(words), int(rng.integers(1, 4)))
            picked = tuple(str(w) for w in rng.choice(words, size=size, replace=False)) if words else ()
            interests.append(Interest(top, int(catalog.sub[seed_row]), picked, float(rng.gamma(2.0))))
        tastes.append(
            Taste(
                user_id=f"{id_prefix}-u{number:06d}",
                arrives_at=arrives,
                home_town=int(catalog.town[home_row]),
                home_county=int(catalog.county[home_row]),
                categories=categories,
                interests=interests,
                budget=float(rng.lognormal(0.0, 0.5)),
                price_tolerance=float(rng.uniform(0.5, 1.0)),
                locality=float(rng.beta(2, 2)),
                sessions_per_day=float(rng.lognormal(np.log(0.35), 0.8)),
                search_share=float(rng.beta(4, 2)),
                patience=int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2])),
            )
        )
    return tastes


def attractiveness(catalog: SimCatalog, medians: np.ndarray, taste: Taste, interest: Interest,
                   rows: np.ndarray) -> np.ndarray:  # fmt: skip
    """Probability (0..1) that ``taste`` wants listing ``rows`` once it has looked at them, while after
    ``interest``: the right kind of thing, described by the user's words, in the price band, near home, and
    the listing's own appeal (photo, hidden quality)."""
    rows = np.asarray(rows, dtype=np.int64)
    same_sub = (catalog.sub[rows] == interest.sub).astype(float)
    same_top = (catalog.top[rows] == interest.top).astype(float)
    liked_top = np.array([taste.categories.get(int(c), 0.0) for c in catalog.top[rows]])
    if interest.words:
        wanted = set(interest.words)
        overlap = np.array([len(wanted & catalog.words[r]) / len(wanted) for r in rows])
    else:
        overlap = np.zeros(len(rows))
    price = catalog.price[rows]
    centre = medians[np.maximum(catalog.top[rows], 0)] * taste.budget
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = np.log(np.maximum(price, 1.0) / centre) / taste.price_tolerance
    price_term = np.where(np.isnan(price), -0.3, -0.5 * np.clip(distance, -4, 4) ** 2)
    price_term = np.where(price == 0, 0.3, price_term)  # free things appeal to everyone
    near = np.where(
        (catalog.town[rows] == taste.home_town) & (taste.home_town >= 0),
        1.0,
        np.where((catalog.county[rows] == taste.home_county) & (taste.home_county >= 0), 0.5, 0.0),
    )
    score = (
        1.4 * same_sub
        + 0.8 * same_top
        + 0.8 * liked_top
        + 1.6 * overlap
        + price_term
        + 1.5 * taste.locality * (near - 0.4)
        + 0.4 * catalog.has_photo[rows]
        + 0.6 * np.log(catalog.quality[rows])
        - 2.6
    )
    return 1.0 / (1.0 + np.exp(-score))


def buyer_query(catalog: SimCatalog, interest: Interest, rng: np.random.Generator) -> str:
    """Words a buyer would type for ``interest``: one to three of its words, sometimes with a word of its
    sub-category's name ('sofa', 'bikes'), in any order."""
    words = list(interest.words)
    rng.shuffle(words)
    words = words[: int(rng.integers(1, 3))] if words else []
    category_words = content_words(catalog.sub_names[interest.sub].split(" / ")[-1]) if interest.sub >= 0 else []
    if category_words and (not words or rng.random() < 0.3):
        words.append(str(rng.choice(category_words)))
    return " ".join(dict.fromkeys(words)) or catalog.top_names[interest.top].split()[0].lower()


def hidden_state(catalog: SimCatalog, tastes: list[Taste], release_day: np.ndarray, sold_day: np.ndarray) -> dict:
    """The world as the simulator knows it (for diagnostics only; never for training or evaluation)."""
    return {
        "users": [
            {
                **asdict(t),
                "home_town": catalog.place_names[t.home_town] if t.home_town >= 0 else None,
                "home_county": catalog.place_names[t.home_county] if t.home_county >= 0 else None,
                "categories": {catalog.top_names[c]: w for c, w in t.categories.items()},
                "interests": [
                    {"category": catalog.sub_names[i.sub], "words": list(i.words), "weight": i.weight}
                    for i in t.interests
                ],
                "saved": [catalog.ids[r] for r in t.saved],
            }
            for t in tastes
        ],
        "listings": {
            listing_id: {
                "quality": float(catalog.quality[row]),
                "released_day": float(release_day[row]),
                "sold_day": None if np.isinf(sold_day[row]) else float(sold_day[row]),
            }
            for row, listing_id in enumerate(catalog.ids)
        },
    }
