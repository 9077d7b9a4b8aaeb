"""Synthetic benchmark catalogue: a large workspace replicated from a built base workspace.

    .venv/bin/python -m bench.synthetic_catalog --base workspace/demo --workspace workspace/bench-service-100k
    .venv/bin/python -m bench.synthetic_catalog --listings 100000 --rebuild

As a library: ``build_bench_workspace(BuildConfig(base=..., target=..., listings=...))`` returns the
workspace's manifest (also written to ``<target>/bench-manifest.json``).

The base workspace (model + catalogue + embeddings; default `workspace/demo`, made by `make demo`) is
built first when it is missing. Listing i is base listing ``i % n_base`` (copy 0 is the base listing
itself); copies get a perturbed title/description (extra words drawn from the base vocabulary plus a model
code, so BM25 sees a realistic long tail), a log-normal price jitter, a random base location and date
jitter, and reuse the base photos' files under new image ids. Their text/image vectors are the base
listing's vectors plus isotropic Gaussian noise (``noise``, relative to the unit norm) re-normalised --
consistent with the trained model without encoding 100k listings. The vector index (nprobe calibrated on
real encoded title queries) and BM25 are built with the project's own `VectorIndex.build` /
`BM25Index.build` (through `index.update.update_indexes`); a trained re-ranker in the base is copied. The
stored vectors carry the content hashes `marketsearch embed` computes and the build ends with an `embed` pass
that finds every listing up to date and records the embeddings' checkpoint: the index set reflects the whole
change log, so a serving process's live follower starts with nothing to replay and a compaction encodes
nothing. The built workspace is reused while base model, size, seed and noise are unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import delete

from catalog.models import Image, Listing
from catalog.store import Catalog, image_row
from core.workspace import Workspace
from encoders.appearance import PHOTO_VECTOR_RECIPE
from encoders.bundle import MultiModalModel
from encoders.embed import (
    combine_embeddings,
    content_hash,
    embed_catalog,
    ensure_table,
    listing_embeddings,
    listing_photo_vectors,
    load_embeddings,
    normalize_rows,
)
from index.update import update_indexes

logger = logging.getLogger("bench.synthetic_catalog")

BENCH_MANIFEST = "bench-manifest.json"
BENCH_FORMAT = 3  # 2: replicas carry photo vectors (feature set 3); 3: real content hashes and a checkpoint


# ---------------------------------------------------------------------------------------------- build


@dataclass(frozen=True)
class BuildConfig:
    base: Path
    target: Path
    listings: int = 100_000
    seed: int = 0
    noise: float = 0.35
    batch_size: int = 5000
    build_base: bool = True


def _perturbed_vectors(base: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    jitter = rng.standard_normal(base.shape).astype(np.float32) * (noise / np.sqrt(base.shape[1]))
    return normalize_rows(base + jitter)


def build_bench_workspace(config: BuildConfig):
    """Replicate the base catalogue to ``config.listings`` listings with embeddings and indexes."""
    base_ws, target_ws = Workspace.at(config.base), Workspace.at(config.target)
    if not base_ws.model_dir.exists() or not base_ws.db_path.exists():
        if not config.build_base:
            raise SystemExit(
                f"base workspace {base_ws.root} has no model or catalogue; build it with `make demo` "
                f"(or `marketsearch demo --workspace {base_ws.root} --no-serve`), or pass --base"
            )
        command = [
            str(Path(sys.executable).parent / "marketsearch"),
            "demo",
            "--workspace",
            str(base_ws.root),
            "--no-serve",
            "--no-evaluate",
        ]
        logger.info("base workspace %s is not built; running %s", base_ws.root, " ".join(command))
        subprocess.run(command, check=True)
    model = MultiModalModel.load(base_ws.model_dir)
    wanted = {
        "format": BENCH_FORMAT,
        "base": str(base_ws.root.resolve()),
        "model_fingerprint": model.fingerprint,
        "photo_vectors": PHOTO_VECTOR_RECIPE,  # the replicas copy the base's photo vectors
        "listings": config.listings,
        "seed": config.seed,
        "noise": config.noise,
    }
    manifest_path = target_ws.root / BENCH_MANIFEST
    if manifest_path.exists() and json.loads(manifest_path.read_text()).get("wanted") == wanted:
        logger.info("reusing the benchmark workspace %s", target_ws.root)
        manifest = json.loads(manifest_path.read_text())
        manifest["ranker"] = _sync_ranker(base_ws, target_ws)
        manifest_path.write_text(json.dumps(manifest, indent=2, default=str))
        return manifest

    started = time.perf_counter()
    if target_ws.root.exists():
        shutil.rmtree(target_ws.root)
    target_ws.root.mkdir(parents=True)
    shutil.copytree(base_ws.model_dir, target_ws.model_dir)
    if base_ws.labels_path.exists():
        shutil.copy(base_ws.labels_path, target_ws.labels_path)
    # Photos: the replicas point at the base files through relative paths, so link the folder.
    (target_ws.root / "images").symlink_to(base_ws.images_dir.resolve(), target_is_directory=True)

    base_catalog = Catalog(base_ws.db_url)
    table = load_embeddings(base_catalog, model.fingerprint)
    row_of = {listing_id: row for row, listing_id in enumerate(table.ids)}
    base_listings = [listing for listing in base_catalog.get_listings(table.ids)]
    base_images = {}
    for listing in base_listings:
        for image_id in listing.image_ids:
            image = base_catalog.get_image(image_id)
            if image is not None:
                base_images[image_id] = image
    base_catalog.close()
    n_base = len(base_listings)
    logger.info(
        "base: %d embedded listings, %d photos; building %d listings", n_base, len(base_images), config.listings
    )

    rng = random.Random(config.seed)
    np_rng = np.random.default_rng(config.seed)
    vocabulary = sorted({word for x in base_listings for word in x.text.lower().split() if word.isalpha()})
    places = sorted({(x.town, x.county, x.location) for x in base_listings}, key=lambda p: p[2])

    catalog = Catalog(target_ws.db_url)
    ensure_table(catalog)
    written = 0
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    for start in range(0, config.listings, config.batch_size):
        positions = range(start, min(start + config.batch_size, config.listings))
        listings, images, base_rows = [], [], []
        for i in positions:
            copy, base = divmod(i, n_base)
            source = base_listings[base]
            base_rows.append(row_of[source.id])
            if copy == 0:
                listings.append(source)
                images.extend(base_images[j] for j in source.image_ids if j in base_images)
                continue
            extra = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(2, 6)))
            letters = "ABCDEFGHJKLMNPRSTVWXZ"
            code = f"{rng.choice(letters)}{rng.choice(letters)}-{rng.randint(100, 9999)}"
            town, county, location = rng.choice(places)
            price = source.price
            if price:
                price = round(price * float(np.exp(np_rng.normal(0.0, 0.3))), 2)
            created = source.created_at
            if created is not None:
                created = created - dt.timedelta(days=rng.randint(0, 365))
            image_ids = tuple(f"{j}-r{copy}" for j in source.image_ids if j in base_images)
            for j in source.image_ids:
                if j in base_images:
                    image = base_images[j]
                    images.append(
                        Image(
                            f"{j}-r{copy}",
                            f"{source.id}-r{copy}",
                            image.path,
                            image.width,
                            image.height,
                            image.created_at,
                        )
                    )
            listings.append(
                Listing(
                    id=f"{source.id}-r{copy}",
                    title=f"{source.title} {code}",
                    description=f"{source.description} {extra}".strip(),
                    price=price,
                    category=source.category,
                    category_levels=source.category_levels,
                    top_category=source.top_category,
                    town=town,
                    county=county,
                    location=location,
                    created_at=created,
                    image_ids=image_ids,
                )
            )
        rows = np.asarray(base_rows)
        copies = np.asarray([i // n_base for i in positions])
        text = table.text[rows]
        image = table.image[rows]
        has_image = table.has_image[rows]
        perturb = copies > 0
        text[perturb] = _perturbed_vectors(text[perturb], np_rng, config.noise)
        with_photo = perturb & has_image
        image[with_photo] = _perturbed_vectors(image[with_photo], np_rng, config.noise)
        vectors = combine_embeddings(text, image, has_image)

        catalog.write_batch(listings, [image_row(x) for x in images])
        # the digests `embed` computes: a compaction (or `marketsearch embed`) finds the replicas up to date
        digests = [content_hash(x, catalog) for x in listings]
        with catalog.engine.begin() as conn:
            ids = [x.id for x in listings]
            conn.execute(delete(listing_embeddings).where(listing_embeddings.c.listing_id.in_(ids)))
            conn.execute(
                listing_embeddings.insert(),
                [
                    {
                        "listing_id": x.id,
                        "model_fingerprint": model.fingerprint,
                        "content_hash": digests[k],
                        "dim": int(text.shape[1]),
                        "has_image": bool(has_image[k]),
                        "n_images": len(x.image_ids),
                        "text": text[k].tobytes(),
                        "image": image[k].tobytes(),
                        "listing": vectors[k].tobytes(),
                        "updated_at": now,
                    }
                    for k, x in enumerate(listings)
                ],
            )
            if table.photo is not None:
                # A replica shows the base listing's photo files, so its raw-backbone photo vector is the base's.
                conn.execute(delete(listing_photo_vectors).where(listing_photo_vectors.c.listing_id.in_(ids)))
                conn.execute(
                    listing_photo_vectors.insert(),
                    [
                        {
                            "listing_id": x.id,
                            "model_fingerprint": model.fingerprint,
                            "content_hash": digests[k],
                            "dim": int(table.photo.shape[1]),
                            "n_photos": len(x.image_ids) if table.has_photo[rows[k]] else 0,
                            "vector": table.photo[rows[k]].tobytes() if table.has_photo[rows[k]] else b"",
                            "updated_at": now,
                        }
                        for k, x in enumerate(listings)
                    ],
                )
        written += len(listings)
        logger.info("wrote %d / %d listings", written, config.listings)
    # As `marketsearch embed` ends: every listing found up to date, and the change-log seq the stored vectors
    # reflect recorded. Without that checkpoint the index set's is 0, and each serving process's live follower
    # replays (and encodes) the whole catalogue's log, then compacts.
    stats = embed_catalog(model, catalog, progress=False)
    catalog.close()
    if stats.encoded:
        raise RuntimeError(f"the replicas' stored vectors are out of date for `embed` ({stats.encoded} encoded)")

    # Indexes and re-ranker exactly as `marketsearch build` makes them.
    index_report = update_indexes(target_ws)
    _sync_ranker(base_ws, target_ws)

    manifest = {
        "wanted": wanted,
        "base_listings": n_base,
        "base_photos": len(base_images),
        "index_report": _plain(index_report),
        "ranker": base_ws.ranker_dir.exists(),
        "build_s": round(time.perf_counter() - started, 1),
    }
    manifest_path.write_text(json.dumps(manifest, indent=2, default=str))
    logger.info("benchmark workspace built in %.0fs", manifest["build_s"])
    return manifest


def _sync_ranker(base_ws, target_ws) -> bool:
    """The base's trained re-ranker (query/candidate features only, so it serves the copy as well)."""
    if not base_ws.ranker_dir.exists():
        if target_ws.ranker_dir.exists():
            shutil.rmtree(target_ws.ranker_dir)
        return False
    base_meta = (base_ws.ranker_dir / "meta.json").read_bytes()
    target_meta = target_ws.ranker_dir / "meta.json"
    if not target_meta.exists() or target_meta.read_bytes() != base_meta:
        if target_ws.ranker_dir.exists():
            shutil.rmtree(target_ws.ranker_dir)
        shutil.copytree(base_ws.ranker_dir, target_ws.ranker_dir)
    return True


def _plain(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return value


# ------------------------------------------------------------------------------------------------ CLI


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say which synthetic workspace to build (shared with `bench.bench_service`)."""
    parser.add_argument("--base", type=Path, default=Path("workspace/demo"), help="built workspace to replicate")
    parser.add_argument(
        "--workspace",
        type=Path,
        default=Path("workspace/bench-service-100k"),
        help="where the benchmark workspace is built (and reused)",
    )
    parser.add_argument("--listings", type=int, default=100_000)
    parser.add_argument("--noise", type=float, default=0.35, help="embedding jitter of the replicas")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rebuild", action="store_true", help="rebuild the workspace even if it matches")


def build_from_args(args: argparse.Namespace) -> dict:
    """Build (or reuse) the workspace the options of `add_build_arguments` name; returns its manifest."""
    if args.rebuild and (args.workspace / BENCH_MANIFEST).exists():
        (args.workspace / BENCH_MANIFEST).unlink()
    return build_bench_workspace(
        BuildConfig(base=args.base, target=args.workspace, listings=args.listings, seed=args.seed, noise=args.noise)
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_build_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    manifest = build_from_args(args)
    print(json.dumps(manifest, indent=2, default=str))
    return manifest


if __name__ == "__main__":
    main()
