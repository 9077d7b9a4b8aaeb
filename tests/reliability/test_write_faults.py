"""kill -9 of a real `marketsearch serve` under concurrent sellers' writes: nothing acknowledged is lost,
nothing is written twice, nothing is half-written, and the follower's search reflects every committed change.

``WRITERS`` threads write over HTTP with a ``listings:write`` key, each on listings of its own (so a listing's
acknowledgement order is its writer's order): creates with and without a photo, most with an
``Idempotency-Key`` (retried with the same key after a connection error, and some sent first with a client read
timeout of a millisecond, so the client gives up while the server commits: a lost acknowledgement without a
kill), price and title edits, sells and deletes, each retried until answered. Meanwhile the server (forked from a
warm forkserver, `serve_runner`) is SIGKILLed at seeded random moments, ``KILL_CYCLES`` times, and started again.
Every writer keeps a ledger: what it sent, and what was acknowledged (2xx received). After a final start and
the follower caught up (/health ``live.lag`` 0):

- every acknowledged create exists exactly once (one listing per unique title word, the id of the 201), an
  unacknowledged one at most once (a create's idempotency key never lists two, even when its 201 was lost and
  the request sent again);
- every field (price, title, status) holds the last acknowledged value of that listing, or the value of a
  request sent after it whose answer was lost (it may have committed); untouched fields the created value;
- every acknowledged delete is gone (GET 404, no row, no image row); a sold listing is never returned by a
  search, neither right after its acknowledgement (checked by its writer during the run) nor at the end;
- every existing active listing is found by a text search of its unique title word, and by its latest
  title's own word when its title was edited (the follower applied it);
- nothing is half-written: every listing row's photos are image rows of that listing whose files exist and
  decode, every image row belongs to a listing, every listing has a change-log row. A photo file with no row
  is allowed, as an orphan only: a create or added photo writes its file before the transaction and removes
  it when that fails, and a delete removes files after its commit; a kill between the two leaves the file
  (the test prints how many).

Planted bugs it catches (local experiments with 8 kill cycles, not committed): no change-log row for creates
and edits (``record_changes`` removed from ``ListingWriter._insert``, ``update`` and ``add_photo``) fails the
half-written check ("written with no change-log row"); a commit 0.5 s after the answer (``_transaction``
committing in a ``threading.Timer``, so a kill loses acknowledged writes) fails on every check: acknowledged
creates missing (and 404s to their edits), acknowledged title edits lost, an acknowledged delete still there
and returned by a search, a listing row whose photo file its lost delete had removed.
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.http_load import free_port
from catalog.api_keys import create_key
from catalog.store import Catalog
from core.workspace import Workspace
from tests.reliability.serve_runner import KillableServer

pytestmark = pytest.mark.reliability

SEED = 14  # issue #14
WRITERS = 4
KILL_CYCLES = 22
UP_SECONDS = (0.4, 2.5)  # how long the server serves between a healthy start and its kill (seeded uniform)
DOWN_SECONDS = (0.0, 0.3)  # how long it stays dead before the next start
LAG_TIMEOUT_S = 240
# Enough for every write of the test: a 429 would be an answer, not a fault. The text tower runs in torch: the
# ONNX export at every start would cost seconds per cycle and is not what this test is about.
SERVER_ENV = {
    "MARKETSEARCH_WRITE_RATE_PER_MINUTE": "1000000",
    "MARKETSEARCH_WRITE_BURST": "1000000",
    "MARKETSEARCH_PHOTO_RATE_PER_MINUTE": "1000000",
    "MARKETSEARCH_PHOTO_BURST": "1000000",
    "MARKETSEARCH_TEXT_RUNTIME": "torch",
    # compactions (embed + publish a new index set) happen during the writes, and some are killed
    "MARKETSEARCH_LIVE_COMPACT_AFTER": "40",
}
# Unique title words: consonants only (no s, y, l), so no stemming rule of the BM25 analyser changes them.
LETTERS = "bcdfghjkmnpqrtvwz"
NOUNS = ("Lamp", "Chair", "Bike", "Kettle", "Guitar", "Desk", "Mirror", "Rug")
CATEGORY = "Home & Garden / Furniture / Tables"
RETRY_PAUSE_S = 0.05
REFUSED_PAUSE_S = 0.2
SEARCH_K = 10


def unique_word(writer: int, number: int) -> str:
    digits = []
    for _ in range(4):
        number, digit = divmod(number, len(LETTERS))
        digits.append(LETTERS[digit])
    return "zq" + LETTERS[writer] + "".join(reversed(digits))


@dataclass
class Change:
    """One logical write of one field: its value and whether a 2xx came back for it."""

    value: object
    acked: bool = False


@dataclass
class Tracked:
    """A listing a writer created (or tried to): its ledger."""

    word: str  # in the title for the listing's whole life: identifies it in the database and in search
    idempotency_key: str | None
    photo: bool
    initial: dict
    listing_id: str | None = None
    created: bool = False  # a 201 came back
    changes: dict[str, list[Change]] = field(default_factory=dict)  # field -> in the order sent
    delete_sent: bool = False
    deleted: bool = False  # a 204 came back (or a 404 for a delete resent after a lost answer)

    def title(self, version_word: str | None = None) -> str:
        """The unique word, and after an edit the edit's own unique word last."""
        return " ".join(part for part in (self.initial["noun"], self.word, version_word) if part)

    def allowed(self, name: str) -> list:
        """The values ``name`` may hold now: the last acknowledged one (the created one when none was) and those
        sent after it whose answers were lost."""
        history = self.changes.get(name, [])
        last = max((i for i, change in enumerate(history) if change.acked), default=-1)
        base = history[last].value if last >= 0 else self.initial[name]
        return [base, *(change.value for change in history[last + 1 :])]


class Unexpected(Exception):
    pass


class Writer(threading.Thread):
    """One seller's client: writes its own listings until ``stop``; records every answer in its ledger."""

    def __init__(self, number: int, url: str, key: str, photos: list[bytes], stop: threading.Event):
        super().__init__(name=f"writer-{number}", daemon=True)
        self.number, self.photos, self.stop = number, photos, stop
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        self.rng = np.random.default_rng([SEED, number])
        self.listings: list[Tracked] = []
        self.words = 0
        self.counts = {"requests": 0, "refused": 0, "lost_answers": 0, "replays": 0, "timeouts_sent": 0}
        self.problems: list[str] = []  # unexpected answers and search violations
        self.answer_lost = False  # the last request was sent and no answer came

    # --- the work ---------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.step()
        except Exception as error:  # noqa: BLE001 -- reported by the test, not lost in a thread
            self.problems.append(f"{self.name} crashed: {type(error).__name__}: {error}")
        finally:
            self.client.close()

    def step(self) -> None:
        live = [t for t in self.listings if t.created and not t.delete_sent]
        draw = self.rng.random()
        if len(live) < 3 or draw < 0.3:
            return self.create()
        listing = live[int(self.rng.integers(len(live)))]
        if draw < 0.55:
            self.patch(listing, "price", round(float(self.rng.uniform(1, 900)), 2))
        elif draw < 0.75:
            self.patch(listing, "title", listing.title(self.next_word()))
        elif draw < 0.87:
            self.patch(listing, "status", "sold")
        else:
            self.delete(listing)

    def next_word(self) -> str:
        self.words += 1
        return unique_word(self.number, self.words)

    def create(self) -> None:
        word = self.next_word()
        keyed, photo = self.rng.random() < 0.8, self.rng.random() < 0.5
        noun = NOUNS[int(self.rng.integers(len(NOUNS)))]
        price = round(float(self.rng.uniform(1, 900)), 2)
        tracked = Tracked(word, uuid.uuid4().hex if keyed else None, photo,
                          {"noun": noun, "price": price, "status": "active"})
        tracked.initial["title"] = tracked.title()
        self.listings.append(tracked)
        data = {"title": tracked.initial["title"], "price": str(price), "category": CATEGORY,
                "description": f"Used {noun.lower()}, written by the fault test", "location": "Leeds, West Yorkshire"}
        files = [("photos", ("p.jpg", self.photos[int(self.rng.integers(len(self.photos)))], "image/jpeg"))]
        headers = {"Idempotency-Key": tracked.idempotency_key} if keyed else {}
        # a first try whose answer the client stops waiting for, while the server goes on and commits
        give_up_early = keyed and self.rng.random() < 0.15
        first = True
        while True:
            timeout = httpx.Timeout(60, read=0.001) if first and give_up_early else None
            self.counts["timeouts_sent"] += first and give_up_early
            response = self.send("POST", "/listings", data=data, files=files if photo else None, headers=headers,
                                 **({"timeout": timeout} if timeout else {}))
            first = False
            if response is None:
                if not keyed or self.stop.is_set():  # without a key a resend could list it twice: not resent
                    return
                continue
            if response.status_code != 201:
                return self.unexpected("create", response)
            tracked.created, tracked.listing_id = True, response.json()["id"]
            self.counts["replays"] += response.headers.get("Idempotent-Replay") == "true"
            return

    def patch(self, tracked: Tracked, name: str, value) -> None:
        change = Change(value)
        tracked.changes.setdefault(name, []).append(change)
        while not self.stop.is_set():
            response = self.send("PATCH", f"/listings/{tracked.listing_id}", json={name: value})
            if response is None:
                continue
            if response.status_code != 200:
                return self.unexpected(f"PATCH {name}", response)
            change.acked = True
            if name == "status":
                self.check_not_found(tracked, "sold")
            return

    def delete(self, tracked: Tracked) -> None:
        tracked.delete_sent = True
        lost = False  # a try was sent and its answer lost: it may have committed
        while not self.stop.is_set():
            response = self.send("DELETE", f"/listings/{tracked.listing_id}")
            if response is None:
                lost = lost or self.answer_lost
                continue
            if response.status_code == 204 or (response.status_code == 404 and lost):
                tracked.deleted = True  # a 404 after a lost answer: the first try committed
                self.check_not_found(tracked, "deleted")
                return
            return self.unexpected("delete", response)

    def check_not_found(self, tracked: Tracked, what: str) -> None:
        """Right after the acknowledgement no search returns the listing, whatever the follower has applied."""
        response = self.send("POST", "/search/text", json={"query": tracked.word, "k": SEARCH_K})
        if response is not None and response.status_code == 200:
            ids = {hit["listing"]["id"] for hit in response.json()["hits"]}
            if tracked.listing_id in ids:
                self.problems.append(f"{what} listing {tracked.listing_id} ({tracked.word}) returned by a search")

    # --- HTTP -------------------------------------------------------------------------------------------
    def send(self, method: str, path: str, **kwargs) -> httpx.Response | None:
        """One request; None when no answer came (connection refused or reset, timeout): the caller decides
        whether to send it again."""
        self.counts["requests"] += 1
        self.answer_lost = False
        try:
            return self.client.request(method, path, **kwargs)
        except httpx.ConnectError:  # nothing was sent: the server is down
            self.counts["refused"] += 1
            time.sleep(REFUSED_PAUSE_S)
            return None
        except httpx.TransportError:  # sent, and the answer lost: a kill, or the client stopped waiting
            self.counts["lost_answers"] += 1
            self.answer_lost = True
            time.sleep(RETRY_PAUSE_S)
            return None

    def unexpected(self, what: str, response: httpx.Response) -> None:
        self.problems.append(f"{what}: {response.status_code} {response.text[:300]}")


def photo_uploads(workspace: Workspace, n: int = 6) -> list[bytes]:
    uploads = []
    for path in sorted(workspace.images_dir.glob("*.jpg"))[:n]:
        with Image.open(path) as image:
            buffer = io.BytesIO()
            image.convert("RGB").resize((320, 240)).save(buffer, format="JPEG", quality=85)
            uploads.append(buffer.getvalue())
    return uploads


def kill_cycles(server: KillableServer, writers: list[Writer], rng: np.random.Generator) -> dict:
    """Start the server, let the writers write for a seeded random while, kill -9 it; ``KILL_CYCLES`` times."""
    starts = []
    for cycle in range(KILL_CYCLES):
        starts.append(server.start())
        if cycle == 0:
            for writer in writers:
                writer.start()
        time.sleep(rng.uniform(*UP_SECONDS))
        server.kill()
        time.sleep(rng.uniform(*DOWN_SECONDS))
    return {"kills": KILL_CYCLES, "start_s_median": round(float(np.median(starts)), 1),
            "start_s_max": round(max(starts), 1)}


def wait_until_caught_up(server: KillableServer) -> dict:
    deadline = time.monotonic() + LAG_TIMEOUT_S
    while True:
        live = server.health()["live"]
        if live["lag"] == 0 and live["error"] is None:
            return live
        assert time.monotonic() < deadline, f"the follower did not catch up in {LAG_TIMEOUT_S} s: {live}"
        time.sleep(0.5)


# --- the checks on the final state --------------------------------------------------------------------------


def database_rows(workspace: Workspace) -> tuple[dict, dict, set]:
    """(listing id -> row, image id -> row, listing ids in the change log), read with sqlite3 directly."""
    with sqlite3.connect(f"file:{workspace.db_path}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        listings = {row["id"]: dict(row) for row in db.execute("SELECT * FROM listings")}
        images = {row["id"]: dict(row) for row in db.execute("SELECT * FROM images")}
        logged = {row[0] for row in db.execute("SELECT DISTINCT listing_id FROM listing_changes")}
    return listings, images, logged


def half_written(workspace: Workspace, listings: dict, images: dict, logged: set, before: set) -> list[str]:
    """Listings or photos not wholly written: the problems found (empty when none)."""
    problems = []
    for listing_id, row in listings.items():
        own = {image_id for image_id, image in images.items() if image["listing_id"] == listing_id}
        if set(json.loads(row["image_ids"])) != own:
            problems.append(f"listing {listing_id}: image_ids {row['image_ids']} but image rows {sorted(own)}")
        if listing_id not in before and listing_id not in logged:
            problems.append(f"listing {listing_id} written with no change-log row")
    for image_id, image in images.items():
        if image["listing_id"] not in listings:
            problems.append(f"image row {image_id} of no listing ({image['listing_id']})")
        path = workspace.root / image["path"]
        try:
            with Image.open(path) as photo:
                photo.load()
        except (OSError, SyntaxError) as error:
            problems.append(f"image {image_id} of listing {image['listing_id']}: file {path} unusable ({error})")
    return problems


def ids_found(client: httpx.Client, query: str) -> set[str]:
    response = client.post("/search/text", json={"query": query, "k": SEARCH_K})
    assert response.status_code == 200, response.text
    return {hit["listing"]["id"] for hit in response.json()["hits"]}


def ledger_violations(client: httpx.Client, writers: list[Writer], listings: dict) -> tuple[list[str], dict]:
    problems = []
    counts = {"acked_creates": 0, "unacked_creates_committed": 0, "unacked_creates_missing": 0, "deleted": 0,
              "sold": 0, "active_searched": 0}
    by_word: dict[str, list[str]] = {}
    for listing_id, row in listings.items():
        for word in row["title"].split():
            by_word.setdefault(word, []).append(listing_id)
    for tracked in (t for writer in writers for t in writer.listings):
        found = by_word.get(tracked.word, [])
        if len(found) > 1:
            problems.append(f"{tracked.word}: {len(found)} listings for one create (key {tracked.idempotency_key})")
            continue
        if tracked.deleted:
            counts["deleted"] += 1
            if found or client.get(f"/listings/{tracked.listing_id}").status_code != 404:
                problems.append(f"{tracked.word}: acknowledged delete of {tracked.listing_id} but it exists")
            continue
        if not found:
            if tracked.created and not tracked.delete_sent:
                problems.append(f"{tracked.word}: acknowledged create {tracked.listing_id} is missing")
            counts["unacked_creates_missing"] += not tracked.created
            continue
        (listing_id,) = found
        if tracked.created:
            counts["acked_creates"] += 1
            if listing_id != tracked.listing_id:
                problems.append(f"{tracked.word}: the 201 said {tracked.listing_id}, the catalogue holds {listing_id}")
        else:
            counts["unacked_creates_committed"] += 1
        public = client.get(f"/listings/{listing_id}").json()
        for name in ("price", "title", "status"):
            if public[name] not in tracked.allowed(name):
                problems.append(f"{tracked.word}: {name} is {public[name]!r}, expected one of {tracked.allowed(name)}")
        if (len(public["photos"]) == 1) != tracked.photo:
            problems.append(f"{tracked.word}: {len(public['photos'])} photos, sent {int(tracked.photo)}")
        words = {tracked.word, public["title"].split()[-1]}  # the unique word, and the latest title's own
        if public["status"] == "sold":
            counts["sold"] += 1
            if any(listing_id in ids_found(client, word) for word in words):
                problems.append(f"{tracked.word}: sold listing {listing_id} returned by a search")
        else:
            counts["active_searched"] += 1
            for word in words:
                if listing_id not in ids_found(client, word):
                    problems.append(f"{tracked.word}: active listing {listing_id} not found by searching {word!r}")
    return problems, counts


def test_acknowledged_writes_survive_server_crashes(indexed_workspace, tmp_path):
    workspace = Workspace.at(shutil.copytree(indexed_workspace.root, tmp_path / "ws"))
    with Catalog(workspace.db_url, root=workspace.root) as catalog:
        _, key = create_key(catalog, "listings:write", name="fault test")
        ids_before = set(catalog.listing_ids())
    photos_before = {p.name for p in workspace.images_dir.iterdir()}
    server = KillableServer(workspace.root, free_port(), SERVER_ENV, tmp_path / "server.log")
    stop = threading.Event()
    writers = [Writer(n, server.url, key, photo_uploads(workspace), stop) for n in range(WRITERS)]
    with server:
        summary = kill_cycles(server, writers, np.random.default_rng(SEED))
        stop.set()
        for writer in writers:
            writer.join(timeout=120)
            assert not writer.is_alive(), f"{writer.name} did not stop"
        summary["final_start_s"] = round(server.start(), 1)
        summary["live"] = wait_until_caught_up(server)
        listings, images, logged = database_rows(workspace)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            violations, counts = ledger_violations(client, writers, listings)
    summary |= counts
    for writer in writers:
        for name, value in writer.counts.items():
            summary[name] = summary.get(name, 0) + value
    referenced = {Path(image["path"]).name for image in images.values()}
    orphans = sorted({p.name for p in workspace.images_dir.iterdir()} - referenced - photos_before)
    summary["orphan_photo_files"] = len(orphans)
    problems = {
        "during the run": [p for writer in writers for p in writer.problems],
        "half-written": half_written(workspace, listings, images, logged, ids_before),
        "against the ledger": violations,
    }
    print(f"write faults: {summary}")  # the figures, with -s
    print(json.dumps(problems, indent=1)[:20_000])

    assert problems == {"during the run": [], "half-written": [], "against the ledger": []}
    assert all(len(name) == len(uuid.uuid4().hex) + len(".jpg") for name in orphans), orphans
    # the faults were met: answers lost to kills and timeouts, creates resent and answered from the key
    assert summary["lost_answers"] >= KILL_CYCLES and summary["replays"] >= 1, summary
    assert summary["acked_creates"] >= 20 and summary["deleted"] >= 3 and summary["sold"] >= 3, summary
