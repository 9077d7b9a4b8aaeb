"""A lexical branch beside the fusion head: does a bag of words lift category accuracy, fused and text-only?

    .venv/bin/python -m bench.bench_fusion_lexical --workspace workspace/dev --run workspace/dev/runs/RUN

On a workspace with a finished training run trained before the branch existed: fits the branch exactly as
``marketsearch train`` now does (``encoders.train.fit_lexical_branch``: TF-IDF + logistic regression on the
training listings, C and the pooling weights on the validation listings) on the run's model, and reports
test accuracy of the head alone (text, fused), the words alone, and the head pooled with the words. Listings
without a photo count as text-only in "fused", as served.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench.bench_fusion_headroom import load_training_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True, help="ingested workspace with a training run")
    parser.add_argument("--run", type=Path, required=True, help="finished training run (its model/ and config.json)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--install", action="store_true",
                        help="save the bundle with the branch beside the run (model-lexical/) and install it as the "
                             "workspace's model (a copy of the workspace, not one in use)")
    args = parser.parse_args()

    import torch

    from core.files import copy_dir_atomic
    from encoders.train import fit_lexical_branch

    torch.set_num_threads(args.threads)
    started, load_before = time.perf_counter(), os.getloadavg()
    workspace, data, model, _, text, image = load_training_run(args.workspace, args.run, progress=False)
    model.lexical = None
    image[~data.has_image] = 0
    val, test = data.rows("val"), data.rows("test")
    head = {"text": float((model.classify(text[test], None).argmax(1) == data.y[test]).mean()),
            "fused": float((model.classify(text[test], image[test]).argmax(1) == data.y[test]).mean())}
    model.lexical, lexical = fit_lexical_branch(model, data, val, (text[val], image[val]), (text[test], image[test]))
    results = {"run": str(args.run), "test_listings": len(test), "head_only": head, "lexical": lexical,
               "seconds": time.perf_counter() - started, "loadavg_before": load_before,
               "loadavg_after": os.getloadavg()}
    if args.install:
        model.save(args.run / "model-lexical")
        copy_dir_atomic(args.run / "model-lexical", workspace.model_dir)
        results["installed"] = str(workspace.model_dir)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
