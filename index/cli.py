"""`marketsearch index`: build or update the vector (FAISS) and BM25 indexes of a workspace."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from core.options import DEFAULT_WORKSPACE, WorkspaceOption, open_workspace

# Commands import their workers inside the function body, not at the top: `marketsearch --help` imports
# every cli module, and the workers pull in torch, FAISS, pandas or SQLAlchemy (seconds of start-up).


class IndexCodec(str, Enum):
    flat = "flat"
    sq8 = "sq8"
    pq = "pq"


def index(
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    rebuild: Annotated[
        bool,
        typer.Option(
            "--rebuild",
            help="Re-train the IVF coarse quantiser on the whole catalogue (after it has grown or drifted, "
            "or to change --nlist/--codec). Listings keep their index ids.",
        ),
    ] = False,
    nlist: Annotated[
        int | None,
        typer.Option(
            "--nlist",
            min=0,
            help="Number of IVF lists for a new or rebuilt index; 0 = exact flat index. "
            "Default: chosen from the catalogue size (flat below 10k listings, else about 4*sqrt(N)).",
        ),
    ] = None,
    codec: Annotated[
        IndexCodec | None,
        typer.Option(
            "--codec",
            help="What a new or rebuilt index stores per listing: flat = float32 vectors; sq8 = 8-bit scalar "
            "codes (4x smaller) or pq = product-quantised codes (16x smaller), whose candidates are re-scored "
            "with the exact vectors memory-mapped from disk. Default: sq8 from 2M listings, else flat; a "
            "rebuild keeps the current codec (docs/scaling.md).",
        ),
    ] = None,
    model_dir: Annotated[
        Path | None, typer.Option("--model", help="Model bundle folder (default: WORKSPACE/model).")
    ] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="FAISS OpenMP threads.")] = 2,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS|auto",
            help="Fill a new or rebuilt IVF index in parallel shards on a Ray cluster (the quantiser is trained "
            "once here; the shards' inverted lists are merged with FAISS's merge_from: the same index as one "
            "process builds). `auto` joins the cluster this machine runs, else starts a local one; "
            "ray://HOST:10001 joins a remote head. Pays above ~1M listings (docs/scaling.md).",
        ),
    ] = None,
    shards: Annotated[
        int | None,
        typer.Option("--shards", min=1, help="Shards for --ray (default: the cluster's CPUs)."),
    ] = None,
    compact: Annotated[
        bool,
        typer.Option(
            "--compact",
            help="Embed new and changed listings first, then update (what a serving process's compaction does: "
            "docs/live.md).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Build or update the vector index (listing embeddings), the BM25 index (title + description) and the photo
    index (the listings' photo vectors: the photo retriever of image queries).

    Incremental by default: new listings are added, deleted ones removed and re-embedded ones replaced
    without re-training, and nprobe is re-calibrated for recall@10 >= 0.95 on a sample of the catalogue's
    text vectors (photo vectors for the photo index). Run `marketsearch embed` first. The indexes are published
    together, as one index set (one version, switched atomically), in WORKSPACE/index/; a run that changes
    nothing publishes nothing.
    """
    import faiss

    from index.compaction import compact as compact_workspace
    from index.compaction import compaction_lock
    from index.storage import IndexLoadError
    from index.update import update_indexes

    faiss.omp_set_num_threads(threads)
    ws = open_workspace(workspace)
    sharding = {}
    if ray_address is not None:
        from index.shards import ray_map, ray_shard_count

        sharding = {"map_shards": ray_map(ray_address), "n_shards": shards or ray_shard_count()}
        typer.echo(f"filling a new or rebuilt IVF index in {sharding['n_shards']} shards on Ray")
    try:
        if compact:
            from encoders.bundle import MultiModalModel

            report = compact_workspace(ws, MultiModalModel.load(model_dir or ws.model_dir), wait=True)
        else:
            # one writer of the index set at a time: a serving process's compaction waits for this run
            with compaction_lock(ws.index_dir, wait=True):
                report = update_indexes(ws, rebuild=rebuild, nlist=nlist, model_dir=model_dir, **sharding,
                                        codec=codec.value if codec else None)
    except (FileNotFoundError, LookupError, ValueError, IndexLoadError) as error:
        typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from error
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    typer.echo(
        f"vector index {report.mode} ({report.index_type}, nprobe {report.nprobe}, recall@10 "
        f"{report.recall_at_10}): {report.vector_count} listings, +{report.added} -{report.removed} "
        f"~{report.updated} ={report.unchanged}"
    )
    typer.echo(f"BM25 index: {report.bm25_count} listings; model {report.model_fingerprint[:12]}")
    if report.photo_count:
        typer.echo(f"photo index ({report.photo_index_type}): {report.photo_count} listings with a photo vector")
    else:
        typer.echo("no photo index: the catalogue stores no photo vectors of this model's recipe (run "
                   "`marketsearch embed`); image queries go without the photo retriever")
    if report.published:
        typer.echo(f"index set {report.index_set} published (change-log checkpoint {report.checkpoint})")
    else:
        typer.echo(f"nothing changed: index set {report.index_set} stays current")
    typer.echo("seconds: " + ", ".join(f"{key} {value}" for key, value in report.seconds.items()))
    if report.vector_count < report.listings:
        typer.echo(f"{report.listings - report.vector_count} listings have no embedding yet: run `marketsearch embed`")
    if report.needs_rebuild:
        typer.secho(
            "advice: " + "; ".join(report.drift_reasons) + " -> run `marketsearch index --rebuild`",
            fg=typer.colors.YELLOW,
        )
