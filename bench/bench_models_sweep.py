"""Quick sweep of head-training options on cached frozen features, compared on the validation split.

    .venv/bin/python -m bench.bench_models_sweep --workspace workspace/dev --threads 2 \
        --settings '{"base": {}, "drop05": {"head_dropout": 0.5}}'

Each setting is a dict of TrainConfig overrides. The backbone features must be cached already (run
`marketsearch train` once). Nothing is saved; one line per setting is printed. Test figures are printed
only with --report-test, for the one setting already chosen on validation: picking among settings by
their test score would leak the test split into the model choice.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--settings", required=True, help="JSON object: name -> TrainConfig overrides")
    parser.add_argument("--report-test", action="store_true",
                        help="also print test figures (only for a setting already chosen on validation)")
    args = parser.parse_args()

    import torch

    from catalog.labels import LabelEncoder
    from core.workspace import Workspace
    from encoders.loss import EmbeddingQueue
    from encoders.train import (
        CachedFeatures,
        TopLayerFeatures,
        TrainConfig,
        _build,
        _optimizer,
        evaluate_rows,
        load_workspace_training_data,
        selection_score,
        train_one_epoch,
    )

    torch.set_num_threads(args.threads)
    workspace = Workspace.at(args.workspace)
    labels = LabelEncoder.from_json(workspace.labels_path)
    base = TrainConfig(allow_download=False, progress=False)
    data = load_workspace_training_data(workspace, labels, base)
    cpu = torch.device("cpu")
    reference = _build(base, labels, cpu)
    base_features = CachedFeatures(data, reference.image_tower, reference.text_tower,
                                   workspace.feature_cache_dir, cpu, 32, False)
    rebuild = {"head_dropout", "fusion_hidden_dim", "fusion_dropout", "embed_dim", "modality_dropout",
               "text_finetune_layers", "image_finetune_blocks"}
    top_layer_features = {}  # (text layers, image blocks) -> TopLayerFeatures (its lower inputs computed once)
    for name, overrides in json.loads(args.settings).items():
        config = dataclasses.replace(base, **overrides)
        torch.manual_seed(config.seed)
        model = _build(config, labels, cpu) if rebuild & set(overrides) else copy.deepcopy(reference)
        features = base_features
        top = (config.text_finetune_layers, config.image_finetune_blocks)
        if any(top):
            if top not in top_layer_features:
                top_layer_features[top] = TopLayerFeatures(data, model.image_tower, model.text_tower,
                                                           workspace.feature_cache_dir, cpu, *top, 32, False)
            features = top_layer_features[top].with_towers(model.image_tower, model.text_tower)
        optimizer, rng = _optimizer(model, config), np.random.default_rng(config.seed)
        queue = EmbeddingQueue(config.queue_size) if config.queue_size > 0 else None
        best_score, best_epoch, best_state, best_val = -1.0, -1, None, None
        started = time.perf_counter()
        for epoch in range(config.epochs):
            train_one_epoch(model, features, data, optimizer, config, epoch, rng, queue=queue)
            val = evaluate_rows(model, features, data, data.rows("val"))
            if selection_score(val) > best_score:  # the checkpoint rule of `marketsearch train`
                best_score, best_epoch, best_val = selection_score(val), epoch, val
                best_state = model.trainable_state()  # heads, and the backbone layers being fine-tuned
            elif epoch - best_epoch > config.patience:
                break
        model.load_state_dict(best_state, strict=False)
        line = (f"{name}: best epoch {best_epoch} | val fused {best_val['fused']['accuracy']:.3f} "
                f"text {best_val['text_only']['accuracy']:.3f} image {best_val['image_only']['accuracy']:.3f} "
                f"title->photo R@10 (val gallery) {best_val['title_to_photo_recall@10']:.3f} score {best_score:.3f}")
        if args.report_test:
            # the gallery of `marketsearch train`'s report: every listing with a photo
            test = evaluate_rows(model, features, data, data.rows("test"), gallery_rows=np.arange(len(data.ids)))
            line += (f" | test fused {test['fused']['accuracy']:.3f} text {test['text_only']['accuracy']:.3f} "
                     f"image {test['image_only']['accuracy']:.3f} title->photo R@10 (full gallery, "
                     f"{test['gallery_size']}) {test['title_to_photo_recall@10']:.4f}")
        print(f"{line} [{time.perf_counter() - started:.0f} s]", flush=True)

if __name__ == "__main__":
    main()
