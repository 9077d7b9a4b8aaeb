"""Lever experiment (known-item text): all-MiniLM-L6-v2 fine-tuned as a title -> description retriever.

    .venv/bin/python -m bench.bench_text_finetune --workspace workspace/dev --seeds 0,1,2,3

The shared space's text tower reads MiniLM frozen and trains its head for the category and the photos; this
fine-tunes every MiniLM layer on the model's train products alone, each title against its own description with the
batch's other descriptions as negatives (symmetric InfoNCE, temperature 0.05, AdamW with a linear warm-up over the
first tenth of the steps and a linear decay), and asks two questions on the test products:

1. As a retriever: the test titles against the test descriptions (exact search), beside the frozen model, BM25 and
   their reciprocal rank fusion (the issue's anchor): MRR@10 and Recall@100 of the wanted listing, NDCG@10.
2. As re-ranking columns (``bench.text_columns``): the fine-tuned cosine of each candidate's description, its gap
   to the best candidate's, its rank and its lead over the runner-up, added to ``train-ranker``'s text queries;
   one text-only re-ranker per LightGBM seed with and without them (``--proximity`` adds the proximity columns of
   ``bench.bench_text_proximity`` to the same arm).

Neither the val nor the test products are read by the fine-tuning. Prints the loss and time of each epoch.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

FINETUNED_COLUMNS = ["finetuned_sim", "finetuned_sim_gap", "finetuned_sim_rank", "finetuned_sim_lead"]
MAX_LENGTH = 128  # tokens of each title and description, in fine-tuning and encoding


def finetune(model, pairs: list[tuple[str, str]], *, epochs: int, lr: float, batch_size: int, seed: int = 0,
             temperature: float = 0.05) -> None:
    """Train ``model`` (a SentenceTransformer) in place on (query, document) pairs, in-batch negatives."""
    import torch

    tokenizer = model.tokenizer
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr)
    steps = epochs * (len(pairs) // batch_size)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: min(1.0, (step + 1) / warmup) * max(0.0, 1 - step / steps))

    def embed(texts: list[str]):
        batch = tokenizer(texts, padding=True, truncation=True, max_length=model.max_seq_length, return_tensors="pt")
        pooled = model({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
        return torch.nn.functional.normalize(pooled["sentence_embedding"], dim=-1)

    rng = random.Random(seed)
    for epoch in range(epochs):
        model.train()
        order = list(range(len(pairs)))
        rng.shuffle(order)
        started, total, batches = time.perf_counter(), 0.0, 0
        for start in range(0, len(order) - batch_size + 1, batch_size):
            chunk = [pairs[i] for i in order[start:start + batch_size]]
            logits = embed([q for q, _ in chunk]) @ embed([d for _, d in chunk]).T / temperature
            labels = torch.arange(len(chunk))
            loss = (torch.nn.functional.cross_entropy(logits, labels)
                    + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total, batches = total + loss.item(), batches + 1
        print(f"epoch {epoch + 1}/{epochs}: loss {total / max(1, batches):.3f}, "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    model.eval()


def description_similarity(model, listings: list, data) -> tuple[dict, Callable[[str, str], float]]:
    """The listings' description vectors under ``model`` (id -> unit vector), and (query text, listing id) -> the
    cosine of the query and the listing's description, for the queries of ``data`` (``bench.text_columns``)."""
    vectors = dict(zip([x.id for x in listings], model.encode([x.description or "" for x in listings],
                                                               batch_size=64, normalize_embeddings=True)))
    items = [item for view_items, _ in data.train_views.values() for item in view_items] + data.test_items
    texts = sorted({item.query.text for item in items})
    query_vector = dict(zip(texts, model.encode(texts, batch_size=64, normalize_embeddings=True)))
    return vectors, lambda text, listing_id: float(vectors[listing_id] @ query_vector[text])


def write_runs(workspace, folder: Path, runs: dict) -> None:
    """A copy of the latest ``evaluate`` folder with ``runs`` added as ``text.run.<name>.trec``."""
    from ranx import Run

    latest = max(path for path in Path(workspace.eval_dir).iterdir() if (path / "text.queries.tsv").is_file())
    shutil.copytree(latest, folder, dirs_exist_ok=True)
    for name, run in runs.items():
        Run(run, name=name).save(str(folder / f"text.run.{name}.trec"), kind="trec")
    print(f"runs written to {folder} (a copy of {latest})", flush=True)


def main() -> None:
    from bench.text_columns import add_arguments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--epochs", type=int, default=2, help="Fine-tuning epochs over the train products.")
    parser.add_argument("--lr", type=float, default=2e-5, help="Peak learning rate of the fine-tuning.")
    parser.add_argument("--batch-size", type=int, default=32, help="Pairs per step (in-batch negatives).")
    parser.add_argument("--max-length", type=int, default=MAX_LENGTH, help="Tokens kept of each title and description.")
    parser.add_argument("--threads", type=int, default=2, help="torch threads.")
    parser.add_argument("--proximity", action="store_true",
                        help="Add the proximity columns of bench.bench_text_proximity beside the fine-tuned ones.")
    parser.add_argument("--save", help="Write the fine-tuned model to this folder.")
    parser.add_argument("--load", help="Read a model --save wrote instead of fine-tuning.")
    parser.add_argument("--trec-dir", help="Copy the latest evaluate folder here and add the fine-tuned runs to it "
                                           "(text.run.finetuned_minilm.trec, ...), for bench.bench_text_vocabulary.")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    from bench.bench_text_proximity import PROXIMITY_COLUMNS, proximity_features
    from bench.text_columns import (
        bm25_test_run,
        compare_columns,
        relative_columns,
        report_retrievers,
        text_candidates,
    )
    from core.workspace import Workspace
    from encoders.backbones import minilm_path
    from evaluation.evaluate import rrf_run, scores_from_ranking
    from evaluation.protocol import ProtocolBuilder

    torch.set_num_threads(args.threads)
    workspace = Workspace.at(args.workspace)
    builder = ProtocolBuilder(workspace, progress=False)
    try:
        listings = builder.listings({"train", "val", "test"})
        train = [x for x in builder.listings({"train"}) if x.title and x.title.strip() and x.description]
        test_ids = [x.id for x in builder.listings({"test"})]
        data = text_candidates(builder, depth=args.depth)
    finally:
        builder.close()
    description = {x.id: x.description or "" for x in listings}

    model = SentenceTransformer(args.load or str(minilm_path()), device="cpu")
    model.max_seq_length = args.max_length
    if not args.load:
        print(f"fine-tuning on {len(train)} train products' (title, description) pairs", flush=True)
        started = time.perf_counter()
        finetune(model, [(x.title.strip(), x.description) for x in train], epochs=args.epochs, lr=args.lr,
                 batch_size=args.batch_size)
        print(f"fine-tuned in {time.perf_counter() - started:.0f} s", flush=True)
    if args.save:
        model.save(args.save)

    vectors, similarity = description_similarity(model, listings, data)

    # 1. the fine-tuned model as a retriever over the test products
    protocol = data.test_protocol
    corpus = np.stack([vectors[i] for i in test_ids])
    query_ids = list(protocol.queries)
    queries = model.encode([protocol.queries[q].text for q in query_ids], batch_size=64, normalize_embeddings=True)
    top = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :args.depth]
    finetuned_run = {q: scores_from_ranking([test_ids[j] for j in top[n]]) for n, q in enumerate(query_ids)}
    bm25_run = bm25_test_run(data)
    runs = {"finetuned_minilm": finetuned_run, "rrf_bm25_finetuned_minilm": rrf_run([bm25_run, finetuned_run])}
    if args.trec_dir:
        write_runs(workspace, Path(args.trec_dir), runs)
    report_retrievers(data, bm25_run, runs)

    # 2. the fine-tuned similarity as re-ranking columns, derived as build_features derives its own
    def columns(text: str, candidate_ids) -> np.ndarray:
        out = relative_columns([similarity(text, i) for i in candidate_ids])
        if args.proximity:
            out = np.hstack([out, proximity_features(text, [description[i] for i in candidate_ids])])
        return out

    names = FINETUNED_COLUMNS + (PROXIMITY_COLUMNS if args.proximity else [])
    compare_columns(data, columns, names, args.seeds,
                    label="fine-tuned" + (" and proximity" if args.proximity else "") + " columns")


if __name__ == "__main__":
    main()
