"""The recommenders on disk: a self-describing, versioned folder (``<workspace>/recs/``), written atomically.

```
recs/
  manifest.json   format, version, the model fingerprint of the vectors, the catalogue it was fitted on
                  (listing count and a digest of the ids), reference time, features, parameters, counts
  items.npz       per listing (by id): ALS factors, popularity, engagement, impressions, first shown, sold
  covisit.npz     listing-to-listing co-visitation (scipy sparse, rows and columns in items.npz order)
  users.npz       per user: distinct listings engaged with (weight, grade), purchases, event count, ALS
                  factors (interests and affinities are computed from these on first use)
  blend/          the learned blend (ranking.reranker.Reranker: model.txt + meta.json), when trained
```

Loading aligns everything with the catalogue as it is now: listings added since are items without
interactions (recommendable from their vectors), listings deleted since are gone. A folder fitted with another
model's vectors, or on another catalogue (fewer than half of its listings still there), is refused with the fix.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from core.files import make_temporary_dir, replace_dir, write_json_atomic
from recommend.data import Items, as_utc
from recommend.model import FEATURES, Recommender
from recommend.profiles import Histories, Profiles

FORMAT = "marketsearch-recs"
VERSION = 2  # 2: users.npz holds histories only (profiles are built from them on use)
MIN_OVERLAP = 0.5
TRAIN_HINT = "run `marketsearch train-recs`"


class RecsFolderError(ValueError):
    """A recommenders folder that cannot be served with this catalogue and model (the message says why and
    what to run)."""


def ids_digest(ids) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def save(model: Recommender, folder: str | Path, fingerprint: str) -> Path:
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = make_temporary_dir(folder)
    try:
        _write(model, staging, fingerprint)
        replace_dir(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _write(model: Recommender, out: Path, fingerprint: str) -> None:
    items = model.items
    arrays = {
        "item_ids": np.array(items.ids, dtype=str), "pop": model.pop, "engaged": model.engaged,
        "clicks": model.clicks, "impressions": model.impressions, "first_shown": model.first_shown,
        "sold": model.sold,
    }
    if model.item_factors is not None:
        arrays["item_factors"] = model.item_factors
    np.savez(out / "items.npz", **arrays)
    sp.save_npz(out / "covisit.npz", model.covisit.tocsr())
    np.savez(out / "users.npz", **_pack_users(model.profiles.packed()))
    if model.ranker is not None:
        model.ranker.save(out / "blend")
    write_json_atomic(out / "manifest.json", {
        "format": FORMAT,
        "version": VERSION,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "reference": as_utc(model.reference).isoformat(),
        "model_fingerprint": fingerprint,
        "catalogue": {"listings": len(items), "ids_sha256": ids_digest(items.ids)},
        "features": list(FEATURES),
        "als": model.als_params,
        "users": len(model.profiles),
        "info": model.info,
    })


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no recommenders at {folder} (manifest.json missing); {TRAIN_HINT}")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise RecsFolderError(f"{folder} holds {manifest.get('format')!r} version {manifest.get('version')!r}; "
                              f"this code reads {FORMAT} version {VERSION}: {TRAIN_HINT} again")
    return manifest


def load(folder: str | Path, items: Items, fingerprint: str) -> Recommender:
    """The saved recommenders aligned with ``items`` (the catalogue's listings now, with the vectors of the
    model ``fingerprint``)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest["model_fingerprint"] != fingerprint:
        raise RecsFolderError(
            f"{folder} was fitted with the vectors of model {manifest['model_fingerprint'][:12]}, the workspace's "
            f"model is {fingerprint[:12]} (retrained or replaced since): {TRAIN_HINT} again")
    if manifest["features"] != list(FEATURES):
        raise RecsFolderError(f"{folder} was trained for other features: {TRAIN_HINT} again")
    with np.load(folder / "items.npz", allow_pickle=False) as saved:
        stored = saved["item_ids"].tolist()
        target = items.rows(stored)
        present = target >= 0
        if stored and present.mean() < MIN_OVERLAP:
            raise RecsFolderError(
                f"{folder} was fitted on another catalogue: only {int(present.sum())} of its {len(stored)} listings "
                f"are in this one: {TRAIN_HINT} again")
        n = len(items)

        def aligned(name: str, fill, dtype) -> np.ndarray:
            out = np.full(n, fill, dtype)
            out[target[present]] = saved[name][present]
            return out

        item_factors = None
        if "item_factors" in saved:
            factors = saved["item_factors"]
            item_factors = np.zeros((n, factors.shape[1]), np.float32)
            item_factors[target[present]] = factors[present]
        arrays = {"pop": aligned("pop", 0.0, np.float32), "engaged": aligned("engaged", 0, np.int32),
                  "clicks": aligned("clicks", 0, np.int32), "impressions": aligned("impressions", 0, np.int32),
                  "first_shown": aligned("first_shown", np.nan, np.float64), "sold": aligned("sold", False, bool)}
    covisit = sp.load_npz(folder / "covisit.npz").tocoo()
    keep = present[covisit.row] & present[covisit.col]
    covisit = sp.csr_matrix((covisit.data[keep], (target[covisit.row[keep]], target[covisit.col[keep]])),
                            shape=(n, n))
    with np.load(folder / "users.npz", allow_pickle=False) as packed:
        profiles = Profiles(items, _unpack_users(packed, target))
    ranker = None
    if (folder / "blend").is_dir():
        from ranking.reranker import Reranker

        ranker = Reranker.load(folder / "blend", expected_features=FEATURES)
    reference = dt.datetime.fromisoformat(manifest["reference"]).timestamp()
    model = Recommender(items=items, reference=reference, item_factors=item_factors, covisit=covisit,
                        profiles=profiles, als_params=manifest["als"], ranker=ranker, info=manifest["info"],
                        **arrays)
    return model


def _pack_users(histories: Histories) -> dict[str, np.ndarray]:
    h = histories
    return {
        "user_ids": h.user_ids.astype(str), "history_ptr": h.ptr, "history_items": h.items,
        "history_weights": h.weights, "history_grades": h.grades, "bought_ptr": h.bought_ptr,
        "bought_items": h.bought, "n_events": h.n_events,
        "factors": h.factors if h.factors is not None else np.zeros((len(h), 0), np.float32),
    }


def _unpack_users(packed, target: np.ndarray) -> Histories:
    """The saved histories with listing rows mapped through ``target`` (-1: the listing is gone, dropped)."""

    def remap(ptr: np.ndarray, rows: np.ndarray, *columns: np.ndarray):
        owner = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
        mapped = target[rows] if len(rows) else rows
        keep = mapped >= 0
        new_ptr = np.concatenate([[0], np.cumsum(np.bincount(owner[keep], minlength=len(ptr) - 1))]).astype(np.int64)
        return (new_ptr, mapped[keep].astype(np.int64), *(c[keep] for c in columns))

    ptr, items, weights, grades = remap(packed["history_ptr"], packed["history_items"], packed["history_weights"],
                                        packed["history_grades"])
    bought_ptr, bought = remap(packed["bought_ptr"], packed["bought_items"])
    factors = packed["factors"]
    return Histories(packed["user_ids"], ptr, items, weights, grades, bought_ptr, bought, packed["n_events"],
                     factors if factors.shape[1] else None)


def workspace_fingerprint(workspace) -> str:
    from index.update import read_model_fingerprint

    return read_model_fingerprint(workspace.model_dir)


def load_for_workspace(workspace, catalog, fingerprint: str | None = None) -> Recommender:
    """The workspace's recommenders (``workspace.recs_dir``) aligned with its catalogue and model."""
    from recommend.data import load_items

    if not (Path(workspace.recs_dir) / "manifest.json").is_file():
        raise FileNotFoundError(f"no recommenders in {workspace.recs_dir}; {TRAIN_HINT} --workspace {workspace.root}")
    fingerprint = fingerprint or workspace_fingerprint(workspace)
    return load(workspace.recs_dir, load_items(catalog, fingerprint), fingerprint)


def forget_saved_user(folder: str | Path, user_id: str) -> int:
    """Remove the user from the saved folder's users.npz (atomically); 1 when they were in it, else 0."""
    from core.files import write_atomic

    path = Path(folder) / "users.npz"
    if not path.is_file():
        return 0
    with np.load(path, allow_pickle=False) as packed:
        if user_id not in set(packed["user_ids"].tolist()):
            return 0
        n_items = max(int(packed["history_items"].max(initial=-1)), int(packed["bought_items"].max(initial=-1))) + 1
        profiles = Profiles(None, _unpack_users(packed, np.arange(n_items)))
    del profiles[user_id]
    arrays = _pack_users(profiles.packed())
    write_atomic(path, lambda staged: _savez(staged, arrays))
    return 1


def _savez(path: Path, arrays: dict) -> None:
    with open(path, "wb") as out:
        np.savez(out, **arrays)
