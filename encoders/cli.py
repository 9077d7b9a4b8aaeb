"""`marketsearch train` and `marketsearch embed`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from core.options import DEFAULT_WORKSPACE, WorkspaceOption, open_workspace

# Commands import their workers inside the function body, not at the top: `marketsearch --help` imports
# every cli module, and the workers pull in torch, FAISS, pandas or SQLAlchemy (seconds of start-up).

ThreadsOption = Annotated[
    int, typer.Option("--threads", min=1, help="CPU threads for torch (torch.set_num_threads).")
]


def train(
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    config: Annotated[str, typer.Option(
        "--config", help="Named architecture in encoders/configs: default (auto backbones), design-card "
        "(resnet50 + distilbert-base-uncased), offline (mobilenet_v2 + all-MiniLM-L6-v2), tiny (random, tests).",
    )] = "default",
    image_backbone: Annotated[str | None, typer.Option(
        "--image-backbone", help="Override the image backbone: auto, resnet50, mobilenet_v2 or tiny_cnn. "
        "auto = resnet50 ImageNet weights when cached/downloadable, else the offline mobilenet_v2 (with a warning).",
    )] = None,
    text_backbone: Annotated[str | None, typer.Option(
        "--text-backbone", help="Override the text backbone: auto, distilbert-base-uncased, all-MiniLM-L6-v2, "
        "tiny_distilbert, or a local Hugging Face checkpoint folder.",
    )] = None,
    embed_dim: Annotated[int | None, typer.Option("--embed-dim", min=8, help="Shared embedding dimension.")] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Maximum number of epochs.")] = 40,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, help="Listings per training step.")] = 256,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate of the heads (AdamW, warmup + cosine).")] = 2e-3,
    patience: Annotated[int, typer.Option(
        "--patience", min=1, help="Stop after this many epochs without a better validation score.")] = 8,
    finetune_blocks: Annotated[int, typer.Option(
        "--finetune-blocks", min=0, help="Unfreeze the top N blocks of each backbone (0 = frozen backbones with "
        "cached features: the fast CPU profile).")] = 0,
    text_finetune_layers: Annotated[int, typer.Option(
        "--text-finetune-layers", min=0, help="Train the text backbone's top N layers on hidden states of the "
        "layers below, computed once per text at the start (0 = frozen text backbone).")] = 0,
    image_finetune_blocks: Annotated[int, typer.Option(
        "--image-finetune-blocks", min=0, help="Train the image backbone's top N blocks on feature maps of the "
        "blocks below, computed once per photo at the start (0 = frozen image backbone).")] = 0,
    backbone_lr: Annotated[float, typer.Option(
        "--backbone-lr", help="Learning rate of the backbone layers being fine-tuned.")] = 2e-5,
    photo_positives: Annotated[str, typer.Option(
        "--photo-positives", help="Photos in the contrastive loss: one (a random photo per listing), all (every "
        "photo a positive of its listing's text) or mean (the listing's mean photo embedding).")] = "one",
    category_batch_classes: Annotated[int, typer.Option(
        "--category-batch-classes", min=0, help="Draw each batch from this many categories, so in-batch "
        "negatives share the category (0 = random batches).")] = 0,
    queue_size: Annotated[int, typer.Option(
        "--queue-size", min=0, help="Embeddings of recent batches kept as extra contrastive negatives "
        "(0 = in-batch negatives only).")] = 0,
    title_match_weight: Annotated[float, typer.Option(
        "--title-match-weight", min=0.0, help="Weight of a known-item loss in the shared space: each listing's "
        "title alone must find the listing's full text among the batch's (0 = off).")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the product-level split and of training.")] = 0,
    late_fusion: Annotated[bool, typer.Option(
        "--late-fusion/--no-late-fusion", help="Fit the fusion head's expert weights (joint, text alone, image "
        "alone) on the validation split after training (default), or keep the plain joint head.")] = True,
    lexical_branch: Annotated[bool, typer.Option(
        "--lexical-branch/--no-lexical-branch", help="Fit a bag of words pooled with the fusion head for the "
        "category of typed words (default), or classify with the head alone.")] = True,
    device: Annotated[str, typer.Option("--device", help="auto (cuda when available), cpu or cuda.")] = "auto",
    threads: ThreadsOption = 2,
    offline: Annotated[bool, typer.Option(
        "--offline", help="Never try to download backbone weights (local caches and bundled weights only).")] = False,
    resume: Annotated[str | None, typer.Option(
        "--resume", help="Continue an interrupted run: its folder, or 'latest' for the newest run in the "
        "workspace (its saved options are used).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the final report as JSON.")] = False,
) -> None:
    """Train both towers and the fusion classifier on the catalogue; the best model goes to WORKSPACE/model.

    Writes a run folder WORKSPACE/runs/TIMESTAMP/ (checkpoints, metrics.json, TensorBoard logs,
    report.md with per-tower and fused accuracy/macro-F1 on the test products, confusion_matrix.png).
    """
    import torch

    from encoders.backbones import MissingWeightsError
    from encoders.train import TrainConfig
    from encoders.train import train as run_training

    torch.set_num_threads(threads)
    ws = open_workspace(workspace)
    try:
        options = TrainConfig(
            model_config=config, image_backbone=image_backbone, text_backbone=text_backbone, embed_dim=embed_dim,
            epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, finetune_blocks=finetune_blocks,
            seed=seed, device=device, allow_download=not offline, late_fusion=late_fusion,
            lexical_branch=lexical_branch, text_finetune_layers=text_finetune_layers,
            image_finetune_blocks=image_finetune_blocks, backbone_lr=backbone_lr,
            photo_positives=photo_positives, category_batch_classes=category_batch_classes, queue_size=queue_size,
            title_match_weight=title_match_weight,
        )
        result = run_training(ws, options, resume=resume)
    except (MissingWeightsError, FileNotFoundError, ValueError) as error:
        typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from error
    report = result.report
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    test = report["test"]
    typer.echo(f"run:      {result.run_dir}")
    typer.echo(f"model:    {result.model_dir} (fingerprint {report['fingerprint'][:12]})")
    typer.echo(f"backbones: image {report['backbones']['image']['name']} ({report['backbones']['image']['source']}), "
               f"text {report['backbones']['text']['name']} ({report['backbones']['text']['source']})")
    for name in ("image_only", "text_only", "fused"):
        m = test[name]
        typer.echo(f"test {name:<10} accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  (n={m['n']})")
    typer.echo(f"test title->photo recall@10: {test['title_to_photo_recall@10']:.4f} "
               f"(gallery {test['gallery_size']} listings)")
    typer.echo(f"best epoch {report['best_epoch']} of {report['epochs_run']}, {report['seconds']:.0f} s on "
               f"{report['device']}; report: {result.run_dir / 'report.md'}")


def embed(
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, help="Listings per encoding step and per database transaction.")] = 64,
    image_batch_size: Annotated[int, typer.Option(
        "--image-batch-size", min=1, help="Photos per forward pass of the image tower.")] = 32,
    threads: ThreadsOption = 2,
    workers: Annotated[int, typer.Option(
        "--workers", min=0, help="Processes that decode the photos, per stream (the photos to encode; those from "
        "the feature cache, decoded for their colour signature). Two or more on the graph path also run the image "
        "tower (one ONNX Runtime thread each); with one, or 0 (inline), this process forwards them in batches.")] = 2,
    runtime: Annotated[str, typer.Option(
        "--runtime", help="Where the towers run: auto (the bundle's whole-tower fp32 ONNX graphs, without torch, "
        "when `marketsearch export-onnx` wrote them and they verify; else torch), onnxruntime (the graphs or an "
        "error) or torch.")] = "auto",
    model_dir: Annotated[Path | None, typer.Option(
        "--model", help="Model bundle folder (default: WORKSPACE/model).")] = None,
    ray_address: Annotated[str | None, typer.Option(
        "--ray", metavar="ADDRESS|auto",
        help="Encode on a Ray cluster with Ray Data: actors holding the towers, batches of listings, back-pressure; "
        "this process only writes the vectors (the same vectors as without --ray). `auto` joins the cluster "
        "this machine runs, else starts a local one. The workers must reach the workspace folder and the "
        "catalogue database (docs/scaling.md).")] = None,
    actors: Annotated[int | None, typer.Option(
        "--actors", min=1, help="Encoder actors for --ray (default: one per CPU of the cluster).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] = False,
) -> None:
    """Encode new and changed listings with the current model and store their vectors in the catalogue.

    Incremental and resumable: listings already embedded with the same model and content are skipped.
    Photos whose frozen-backbone features training already cached (WORKSPACE/cache/features) only go
    through the trained head.
    """
    from catalog.store import Catalog
    from encoders.catalogue_encoder import RUNTIMES, load_catalogue_encoder
    from encoders.embed import embed_catalog
    from encoders.graphs import GraphError

    ws = open_workspace(workspace)
    if runtime not in RUNTIMES:
        typer.secho(f"error: --runtime must be auto, onnxruntime or torch, got {runtime!r}", err=True,
                    fg=typer.colors.RED)
        raise typer.Exit(2)
    try:  # the serving processes' live follower loads the same encoder
        model = load_catalogue_encoder(model_dir or ws.model_dir, runtime=runtime, threads=threads)
    except (FileNotFoundError, ValueError, GraphError) as error:
        typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from error
    if model.image_tower.backbone.runtime == "torch":  # the graphs' sessions have their threads already
        import torch

        torch.set_num_threads(threads)
    encode_chunks = None
    if ray_address is not None:  # the actors run torch: the vectors of `--runtime torch`
        from core.cluster import connect_ray, ray_cpus
        from encoders.ray_embed import ray_encoder

        connect_ray(ray_address)
        actors = actors or ray_cpus()
        encode_chunks = ray_encoder(model_dir or ws.model_dir, ws.db_url, ws.root, actors=actors,
                                    feature_cache=ws.feature_cache_dir, image_batch_size=image_batch_size)
        typer.echo(f"encoding on Ray with {actors} actor(s)")
    catalog = Catalog(ws.db_url, root=ws.root)
    try:
        stats = embed_catalog(model, catalog, batch_size=batch_size, image_batch_size=image_batch_size,
                              feature_cache=ws.feature_cache_dir, workers=workers, encode_chunks=encode_chunks)
    except GraphError as error:  # the bundle's graphs replaced while this run read them
        typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from error
    finally:
        catalog.close()
    if as_json:
        typer.echo(json.dumps(stats.to_dict(), indent=2))
        return
    typer.echo(f"model {model.fingerprint[:12]}: {stats.listings} listings, {stats.encoded} encoded, "
               f"{stats.up_to_date} up to date, {stats.removed} removed")
    typer.echo(f"{stats.images_encoded} photos encoded ({stats.images_from_cache} from the training feature "
               f"cache), {stats.image_errors} unreadable, "
               f"{stats.text_only} text-only listings")
    typer.echo(f"{stats.seconds:.1f} s, {stats.listings_per_s:.1f} listings/s (batch {batch_size}, "
               f"image batch {image_batch_size}, {threads} threads, {workers} photo workers, backbones in "
               f"{model.image_tower.backbone.runtime})")
