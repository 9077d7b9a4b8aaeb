"""Recommender benchmark on synthetic data: training time on N engaged events, recommendation latency at
100k listings and 100k users, and what personalising a search adds.

    .venv/bin/python -m bench.bench_recs                       # 100k listings, 100k users, 1M events
    .venv/bin/python -m bench.bench_recs --listings 20000 --users 20000 --events 200000   # quicker

Listings are points in a d-dimensional unit space around ``--clusters`` topics (each topic a category, price
bands and towns drawn at random); each user has one to three topics, a home town and a price band, and
engages (view / click / save / contact / purchase, in the simulator's proportions) with listings of their topics
chosen with a popularity skew, in sessions over 30 days. This is not a quality test (the simulator and
`marketsearch evaluate-recs` are): it gives the models the sizes and the sparsity of a real log.

With ``--end-to-end WORKSPACE`` the same catalogue, listing vectors and events are written into a workspace
through the project's stores (`catalog.store.Catalog`, `encoders.embed`'s embedding table, `personal.store.EventStore`,
10,000 rows per transaction) and `marketsearch train-recs -w WORKSPACE` is timed as a subprocess: what a user
runs, database reads and the folder write included; its own stage timings come from its log.

    .venv/bin/python -m bench.bench_recs --end-to-end /tmp/recs-bench-ws

Training runs `recommend.train` on the in-memory log: the stage signals and the learned blend on the first 23
days, then the signals on all 30 (`train_recommender` minus the database reads; the dev workspace's read is
timed apart with ``--read-workspace``). Latency is `Recommender.recommend` (k=10) in process, for known and for
new users, one request at a time. "Personalise" is what `/search/text` adds for a known user: the user's columns
for 200 candidates and the personal ranker's prediction (a LightGBM model of the trained size on
the re-ranker's features plus `recommend.personal_search.USER_FEATURES`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

DAY = 86400.0
TYPE_SHARES = {"view": 0.47, "click": 0.44, "save": 0.045, "contact_seller": 0.03, "purchase": 0.015}


def synthetic_items(n: int, clusters: int, dim: int, rng: np.random.Generator):
    from recommend.data import Items, price_bands

    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    topic = rng.integers(0, clusters, n)
    vectors = centres[topic] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    tops = np.array([f"Top {t % 20}" for t in range(clusters)], dtype=object)
    towns = np.array([f"Town {t}" for t in range(300)], dtype=object)
    price = np.round(rng.lognormal(3.0, 1.0, n), 2)
    top = tops[topic]
    items = Items(
        ids=[f"L{i:07d}" for i in range(n)],
        vectors=np.ascontiguousarray(vectors),
        top_category=top,
        category=np.array([f"{t} / Sub {c % 7}" for t, c in zip(top, topic)], dtype=object),
        town=towns[rng.integers(0, len(towns), n)],
        county=np.array([f"County {i % 40}" for i in range(n)], dtype=object),
        price=price,
        band=price_bands(top, price),
        created=np.full(n, np.nan),
        has_image=np.ones(n, bool),
        active=np.ones(n, bool),
    )
    return items, topic


def synthetic_log(items, topic: np.ndarray, users: int, events: int, start: float, rng: np.random.Generator):
    from recommend.data import ENGAGED_TYPES, EventLog

    n, clusters = len(items), int(topic.max()) + 1
    by_topic = [np.flatnonzero(topic == t) for t in range(clusters)]
    appeal = rng.lognormal(0.0, 1.0, n)  # popularity skew within a topic
    picks = [rows[np.argsort(-appeal[rows])] for rows in by_topic]
    per_user = np.maximum(1, rng.zipf(1.6, users).clip(1, 400))
    per_user = np.floor(per_user * events / per_user.sum()).astype(np.int64)
    per_user[: events - per_user.sum()] += 1
    user_col = np.repeat(np.arange(users), per_user)
    user_topics = rng.choice([t for t in range(clusters) if len(by_topic[t])], (users, 3))
    which = rng.integers(0, 3, len(user_col))
    chosen_topic = user_topics[user_col, which]
    # a geometric rank within the topic's listings, most appealing first
    rank = rng.geometric(0.02, len(user_col)) - 1
    sizes = np.array([len(p) for p in picks])
    rank = np.minimum(rank, sizes[chosen_topic] - 1)
    listing_rows = np.fromiter((picks[t][r] for t, r in zip(chosen_topic, rank)), np.int64, len(user_col))
    kinds = rng.choice(len(TYPE_SHARES), len(user_col), p=list(TYPE_SHARES.values()))
    type_codes = np.array([ENGAGED_TYPES.index(t) for t in TYPE_SHARES], np.int8)[kinds]
    # sessions: about four events each, within half an hour, at random times of the 30 days
    sessions_of_user = np.maximum(1, per_user // 4)
    session_key = user_col * 1000 + rng.integers(0, sessions_of_user[user_col])
    keys, session = np.unique(session_key, return_inverse=True)
    times = start + rng.uniform(0, 30 * DAY, len(keys))[session] + rng.uniform(0, 1800, len(user_col))
    order = np.argsort(times, kind="stable")
    ids = np.array(items.ids, dtype=object)
    return EventLog(
        users=np.array([f"U{u:07d}" for u in user_col[order]], dtype=object),
        listings=ids[listing_rows[order]],
        types=type_codes[order],
        times=times[order],
    )


def percentiles(samples: list[float]) -> dict[str, float]:
    values = np.asarray(samples) * 1000.0
    return {"p50_ms": round(float(np.percentile(values, 50)), 3), "p99_ms": round(float(np.percentile(values, 99)), 3),
            "requests": len(values)}


def train(log, items, until: float, label_days: float = 7.0):
    """`recommend.train.train_recommender` on an in-memory log (no database read)."""
    from recommend.train import fit_signals, train_blend

    split = until - label_days * DAY
    timings = {}
    start = time.perf_counter()
    stage = fit_signals(log.select(log.times < split), items, split)
    timings["stage_signals_s"] = time.perf_counter() - start
    start = time.perf_counter()
    ranker = train_blend(stage, log.select(log.times >= split))
    timings["blend_s"] = time.perf_counter() - start
    start = time.perf_counter()
    model = fit_signals(log, items, until)
    model.ranker = ranker
    timings["signals_s"] = time.perf_counter() - start
    return model, {k: round(v, 1) for k, v in timings.items()}


def personal_ranker(names: tuple[str, ...], rng: np.random.Generator):
    from ranking.reranker import Reranker

    groups = 300
    X = rng.normal(size=(groups * 100, len(names))).astype(np.float32)
    y = (X[:, 0] + X[:, -1] + rng.normal(size=len(X)) > 1.5).astype(np.int32)
    return Reranker(n_estimators=150, num_leaves=15, log_every=0).fit(X, y, np.full(groups, 100),
                                                                       feature_names=names)


def read_workspace(root: str) -> dict:
    """The database part of train-recs on a real workspace: its engaged events and impression counts."""
    from catalog.store import Catalog
    from core.workspace import Workspace
    from recommend.data import load_event_log

    ws = Workspace.at(root)
    with Catalog(ws.db_url, root=ws.root) as catalog:
        start = time.perf_counter()
        log = load_event_log(catalog)
        seconds = time.perf_counter() - start
        with catalog.engine.connect() as conn:
            total = conn.exec_driver_sql("SELECT count(*) FROM events").scalar_one()
    return {"workspace": root, "events_in_database": int(total), "engaged_events": len(log),
            "read_s": round(seconds, 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listings", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1_000_000, help="engaged events")
    parser.add_argument("--clusters", type=int, default=400)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--requests", type=int, default=1000, help="per latency measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--personalise-only", action="store_true",
                        help="fit the signals once (no blend) and time only the personalisation")
    parser.add_argument("--read-workspace", help="also time reading this workspace's events (train-recs' read)")
    parser.add_argument("--end-to-end", metavar="WORKSPACE",
                        help="instead of training in memory, write the data into this workspace (a new folder; one "
                             "that holds a catalogue already is reused as it is) and time `marketsearch train-recs`")
    parser.add_argument("--follow", type=int, default=0, metavar="NEW",
                        help="also time bringing NEW listings created live (and NEW/2 sold) into the served model "
                             "(recommend.live.follow_catalogue), and recommending after it")
    parser.add_argument("--out", help="write the results here (JSON)")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    results: dict = {"config": vars(args), "cpus": os.cpu_count(), "load_average": os.getloadavg()}
    start = time.perf_counter()
    items, topic = synthetic_items(args.listings, args.clusters, args.dim, rng)
    log = synthetic_log(items, topic, args.users, args.events, 1.6e9, rng)
    results["generate_s"] = round(time.perf_counter() - start, 1)
    if args.end_to_end:
        return end_to_end(results, args, items, log)

    start = time.perf_counter()
    if args.personalise_only:
        from recommend.train import fit_signals

        model = fit_signals(log, items, 1.6e9 + 30 * DAY)
        results["signals_s"] = round(time.perf_counter() - start, 1)
    else:
        model, parts = train(log, items, 1.6e9 + 30 * DAY)
        results["train"] = {"wall_s": round(time.perf_counter() - start, 1), **parts, "users": len(model.profiles),
                            "events": len(log), "blend": model.ranker is not None}
    start = time.perf_counter()
    model.build_indexes()
    results["candidate_indexes_s"] = round(time.perf_counter() - start, 1)
    known = list(model.profiles)
    picks = rng.choice(len(known), args.requests)
    if not args.personalise_only:
        latency(results, model, known, picks, args.requests)
    personalise(results, model, items, known, picks, rng)
    if args.follow:
        follow(results, model, args.follow, known, picks, rng)
    if args.read_workspace:
        results["read"] = read_workspace(args.read_workspace)
    return report(results, args.out)


def report(results: dict, out: str | None) -> dict:
    print(json.dumps(results, indent=2))
    if out:
        with open(out, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return results


def latency(results: dict, model, known: list[str], picks: np.ndarray, requests: int) -> None:
    for _ in range(20):  # warm up (first calls allocate)
        model.recommend(known[int(picks[0])], 10)
    # a user's first request after loading builds their profile from the packed history; later ones reuse it
    for name in ("recommend_known_users_first_request", "recommend_known_users"):
        timings = []
        for p in picks:
            began = time.perf_counter()
            model.recommend(known[int(p)], 10)
            timings.append(time.perf_counter() - began)
        results[name] = percentiles(timings)
    timings = []
    for i in range(requests):
        began = time.perf_counter()
        model.recommend(f"new-visitor-{i}", 10)
        timings.append(time.perf_counter() - began)
    results["recommend_new_users"] = percentiles(timings)


def follow(results: dict, model, new: int, known: list[str], picks: np.ndarray, rng: np.random.Generator) -> None:
    """`follow_catalogue` against a snapshot holding every item but ``new // 2`` sold ones, plus ``new`` listings
    created live (the search side's view: listing table, live rows, listing vectors)."""
    from ranking.types import ListingTable
    from recommend.live import follow_catalogue

    items = model.items
    n = len(items)
    source = rng.choice(n, new)  # the new listings copy existing ones' fields, their vectors perturbed
    vectors = items.vectors[source] + 0.1 * rng.normal(size=(new, items.vectors.shape[1])).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    everything = np.concatenate([np.arange(n), source])
    table = ListingTable(
        ids=items.ids + [f"live-{i}" for i in range(new)], titles=[""] * (n + new),
        categories=items.category[everything].tolist(), top_category_index=np.zeros(n + new, np.int64),
        price=items.price[everything].astype(np.float32), category_median_price=np.zeros(n + new, np.float32),
        towns=items.town[everything].tolist(), counties=items.county[everything].tolist(),
        photo_count=np.ones(n + new, np.int32), description_length=np.zeros(n + new, np.int32),
        created_days=np.full(n + new, 20_000, np.float32))
    live = np.ones(n + new, bool)
    live[rng.choice(n, new // 2, replace=False)] = False
    columns = {"listing": np.concatenate([items.vectors, vectors]), "has_image": items.has_image[everything]}

    class Snapshot:  # what follow_catalogue reads of a search.snapshot.SearchSnapshot
        listings, embedding_row, applied_seq = table, np.arange(n + new), 1

        def gather(self, column, rows):
            return columns[column][rows]

    Snapshot.live = live
    timings = []
    for _ in range(3):
        began = time.perf_counter()
        followed = follow_catalogue(model, Snapshot())
        timings.append(time.perf_counter() - began)
    results["follow"] = {"new": new, "sold": new // 2, "items_after": len(followed.items),
                         "seconds": [round(t, 3) for t in timings]}
    for name, user_ids in (("recommend_known_users_after_follow", [known[int(p)] for p in picks]),
                           ("recommend_new_users_after_follow", [f"new-visitor-{i}" for i in range(len(picks))])):
        samples = []
        for user_id in user_ids:
            began = time.perf_counter()
            followed.recommend(user_id, 10)
            samples.append(time.perf_counter() - began)
        results[name] = percentiles(samples)


def personalise(results: dict, model, items, known: list[str], picks: np.ndarray, rng: np.random.Generator) -> None:
    from ranking.features import FEATURE_NAMES
    from recommend.personal_search import USER_FEATURES, user_columns

    ranker = personal_ranker(FEATURE_NAMES + USER_FEATURES, rng)
    search_features = rng.normal(size=(200, len(FEATURE_NAMES))).astype(np.float32)
    timings = []
    for p in picks:
        profile = model.profile(known[int(p)])
        candidates = [items.ids[r] for r in rng.integers(0, len(items), 200)]
        began = time.perf_counter()
        ranker.predict(np.hstack([search_features, user_columns(model, profile, candidates)]))
        timings.append(time.perf_counter() - began)
    results["personalise_200_candidates"] = percentiles(timings)


# --- end to end: `marketsearch train-recs` on a workspace holding the same synthetic data ----------------

WRITE_BATCH = 10_000  # rows per transaction when filling the workspace


def bench_model():
    """A small randomly initialised bundle: train-recs reads only its fingerprint (the listing vectors are
    the synthetic ones, stored under it)."""
    import torch

    from catalog.labels import LabelEncoder
    from encoders.bundle import MultiModalModel
    from encoders.towers import build_towers, get_model_config
    from fusion.classifier import FusionClassifier

    torch.manual_seed(0)
    config = get_model_config("tiny")
    image_tower, text_tower = build_towers(config, allow_download=False)
    labels = LabelEncoder(["Top 0", "Top 1"])
    fusion = FusionClassifier(image_tower.embed_dim, text_tower.embed_dim, len(labels), 32, classes=labels.classes)
    return MultiModalModel(image_tower, text_tower, fusion, labels)


def fill_workspace(root: str, items, log, dim: int) -> dict:
    """Write the synthetic catalogue, its listing vectors and the engaged events into a new workspace through
    the project's stores: `Catalog.upsert_listings`, `encoders.embed`'s embedding table, `EventStore.record`
    (``WRITE_BATCH`` rows per transaction), and a model bundle whose fingerprint the vectors are stored under."""
    import datetime as dt

    from catalog.models import Listing
    from catalog.store import Catalog
    from core.workspace import Workspace
    from encoders.embed import ensure_table, listing_embeddings
    from personal.events import Event
    from personal.store import EventStore
    from recommend.data import ENGAGED_TYPES

    ws = Workspace.at(root).ensure()
    timings = {}
    start = time.perf_counter()
    model = bench_model()
    model.save(ws.model_dir)
    fingerprint = model.fingerprint
    timings["model_s"] = time.perf_counter() - start
    n = len(items)
    with Catalog(ws.db_url, root=ws.root) as catalog:
        start = time.perf_counter()
        for begin in range(0, n, WRITE_BATCH):
            catalog.upsert_listings(Listing(
                id=items.ids[i], title=f"Listing {i}", description="", price=float(items.price[i]),
                category=items.category[i], category_levels=tuple(items.category[i].split(" / ")),
                top_category=items.top_category[i], town=items.town[i], county=items.county[i],
                location=f"{items.town[i]}, {items.county[i]}", created_at=None,
            ) for i in range(begin, min(begin + WRITE_BATCH, n)))
        timings["listings_s"] = time.perf_counter() - start

        start = time.perf_counter()
        ensure_table(catalog)
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        zeros = np.zeros(dim, np.float32).tobytes()
        for begin in range(0, n, WRITE_BATCH):
            with catalog.engine.begin() as conn:
                conn.execute(listing_embeddings.insert(), [{
                    "listing_id": items.ids[i], "model_fingerprint": fingerprint, "content_hash": "synthetic",
                    "dim": dim, "has_image": False, "n_images": 0, "text": items.vectors[i].tobytes(),
                    "image": zeros, "listing": items.vectors[i].tobytes(), "updated_at": now,
                } for i in range(begin, min(begin + WRITE_BATCH, n))])
        timings["embeddings_s"] = time.perf_counter() - start

        start = time.perf_counter()
        with EventStore(catalog) as store:
            for begin in range(0, len(log), WRITE_BATCH):
                batch = [Event(event_id=f"E{i:08d}", user_id=str(log.users[i]), listing_id=str(log.listings[i]),
                               type=ENGAGED_TYPES[log.types[i]],
                               occurred_at=dt.datetime.fromtimestamp(float(log.times[i]), dt.timezone.utc))
                         for i in range(begin, min(begin + WRITE_BATCH, len(log)))]
                report = store.record(batch)
                if report.rejected:
                    raise RuntimeError(f"synthetic events rejected: {report.rejected[:3]}")
        timings["events_s"] = time.perf_counter() - start
    return {"workspace": str(ws.root), "listings": n, "events": len(log),
            **{k: round(v, 1) for k, v in timings.items()}}


def run_train_recs(root: str, target_s: float = 120.0) -> dict:
    """`marketsearch train-recs -w ROOT` as a user runs it: wall time, its summary and its stage log lines."""
    import shutil
    import subprocess

    command = [shutil.which("marketsearch", path=os.path.dirname(sys.executable)) or "marketsearch",
               "train-recs", "-w", root, "--no-progress", "--json"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} exited {done.returncode}:\n{done.stderr[-4000:]}")
    summary = json.loads(done.stdout)
    return {"command": " ".join(command), "wall_s": round(wall, 1), "target_s": target_s,
            "within_target": wall <= target_s, "summary": summary,
            "stages": [line for line in done.stderr.splitlines() if "train-recs:" in line]}


def end_to_end(results: dict, args, items, log) -> dict:
    from core.workspace import Workspace

    if Workspace.at(args.end_to_end).has_catalogue():
        results["fill"] = {"workspace": args.end_to_end, "reused": True}
    else:
        results["fill"] = fill_workspace(args.end_to_end, items, log, args.dim)
    results["train_recs"] = run_train_recs(args.end_to_end)
    results["load_average_after"] = os.getloadavg()
    wall = results["train_recs"]["wall_s"]
    print(f"train-recs on {len(log):,} events: {wall:.1f} s (target 120 s: "
          f"{'met' if wall <= 120 else 'missed'})", file=sys.stderr)
    return report(results, args.out)


if __name__ == "__main__":
    main()
