"""`marketsearch train-recs`: fit the recommenders on the workspace's interaction events."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from typing import Annotated

import typer

from core.options import DEFAULT_WORKSPACE, WorkspaceOption

logger = logging.getLogger(__name__)

# Workers are imported inside the command: `marketsearch --help` imports every cli module.


def parse_time(value: str | None, option: str) -> dt.datetime | None:
    """An ISO 8601 date or time (UTC when it has no offset), or exit 2 naming the option."""
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        typer.echo(f"error: {option} {value!r} is not an ISO 8601 date or time (2024-03-01 or 2024-03-01T12:00Z)",
                   err=True)
        raise typer.Exit(2) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def train_recs(
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    until: Annotated[str | None, typer.Option(
        "--until", help="Fit on the events before this time (ISO 8601, UTC). Default: every event.")] = None,
    label_days: Annotated[float, typer.Option(
        "--label-days", min=0.5, help="The last days of the fitting period whose events label the learned "
        "blend's training data (the signals for it are fitted on the days before).")] = 7.0,
    max_label_users: Annotated[int, typer.Option(
        "--max-label-users", min=10, help="Users sampled for the blend's training data.")] = 1000,
    factors: Annotated[int, typer.Option("--factors", min=2, help="ALS latent factors.")] = 64,
    iterations: Annotated[int, typer.Option("--iterations", min=1, help="ALS iterations.")] = 15,
    fold_in: Annotated[bool, typer.Option(
        "--fold-in", help="Do not retrain: give the users with events newer than the saved recommenders new "
        "factors and profiles against the fitted listings (fast; retrain now and then for new co-visitation, "
        "popularity and listing factors).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (ALS initialisation, blend user sample).")] = 0,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Train the recommenders on the workspace's events and save them to WORKSPACE/recs/, and the personal
    search ranker to WORKSPACE/ranker-personal/ when served searches were logged (WORKSPACE/logs/features/).

    ALS (implicit feedback, events weighted by type and recency), item-to-item co-visitation, content
    profiles in the shared text-image space (several interest vectors per user), category / price-band /
    location affinities and popularity, blended by a LightGBM lambdarank model trained on a time split of
    the events. Needs a trained model with catalogue embeddings (`marketsearch build`) and events
    (`POST /events`, `marketsearch events import` or `marketsearch simulate`).
    """
    from catalog.store import Catalog
    from core.workspace import Workspace
    from recommend import folder
    from recommend.data import epoch_seconds, load_items, log_end

    ws = Workspace.at(workspace)
    if not ws.has_catalogue():
        typer.echo(f"error: no catalogue at {ws.db_path}; run `marketsearch build` first", err=True)
        raise typer.Exit(2)
    started = time.perf_counter()
    with Catalog(ws.db_url, root=ws.root) as catalog:
        try:
            fingerprint = folder.workspace_fingerprint(ws)
        except FileNotFoundError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        logger.info("train-recs: model fingerprint read in %.1fs", time.perf_counter() - started)
        if fold_in:
            summary = _fold_in(ws, catalog, fingerprint, progress)
        else:
            end = parse_time(until, "--until") or log_end(catalog)
            if end is None:
                typer.echo("error: the workspace has no events to learn from; post some (`POST /events`), import "
                           "them (`marketsearch events import`) or simulate them (`marketsearch simulate`)", err=True)
                raise typer.Exit(2)
            if until is None:
                end = end + dt.timedelta(microseconds=1)  # the newest event included
            from recommend.personal_search import load_search_log
            from recommend.train import train_recommender

            began = time.perf_counter()
            try:
                items = load_items(catalog, fingerprint)
            except LookupError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(2) from None
            logger.info("train-recs: listings read in %.1fs (%d)", time.perf_counter() - began, len(items))
            model = train_recommender(catalog, items, epoch_seconds(end), label_days=label_days,
                                      max_label_users=max_label_users, seed=seed, progress=progress,
                                      als_params={"factors": factors, "iterations": iterations, "seed": seed},
                                      search_log=load_search_log(ws))
            began = time.perf_counter()
            folder.save(model, ws.recs_dir, fingerprint)
            logger.info("train-recs: folder written in %.1fs", time.perf_counter() - began)
            summary = {"folder": str(ws.recs_dir), "until": end.isoformat(), "listings": len(items),
                       **model.info}
            if model.search_ranker is not None:
                summary["search_ranker"] = str(model.search_ranker.save(ws.personal_ranker_dir))
    summary["seconds"] = round(time.perf_counter() - started, 1)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo("\n".join(f"{key}: {value}" for key, value in summary.items()))


def _fold_in(ws, catalog, fingerprint: str, progress: bool) -> dict:
    from tqdm.auto import tqdm

    from recommend import folder
    from recommend.data import ENGAGED_TYPES, as_utc, load_event_log

    try:
        model = folder.load_for_workspace(ws, catalog, fingerprint)
    except (FileNotFoundError, folder.RecsFolderError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    newer = load_event_log(catalog, since=as_utc(model.reference), impressions=False)
    users = sorted(set(newer.users.astype(str)))
    for user in tqdm(users, desc="fold in users", unit="user", disable=not progress):
        history = load_event_log(catalog, users=[user], impressions=False)
        model.fold_in(user, history.listings, [ENGAGED_TYPES[t] for t in history.types], history.times)
    folder.save(model, ws.recs_dir, fingerprint)
    return {"folder": str(ws.recs_dir), "folded_in_users": len(users), "new_events": len(newer)}
