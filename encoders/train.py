"""Joint training of both towers and the fusion head on the catalogue (torchvision reference layout).

Objective per batch of listings: category cross-entropy of the fusion head (with modality dropout),
auxiliary cross-entropy of each tower's own linear probe, and the symmetric contrastive loss between
the image and text embeddings of the same listing. The split is by listing (``catalog.split``), so no
product's photos are on both sides.

Default profile (CPU-friendly): both backbones frozen, their pooled features computed once and cached
on disk (``encoders.features``), only the projection heads, probes and fusion head are trained, for a
few seconds per epoch. ``finetune_blocks=N`` unfreezes the top N blocks of each backbone and runs the
backbones in the loop instead (slow on CPU; the same code runs on a GPU).

A run folder ``<workspace>/runs/<timestamp>/`` holds config.json, split.json, checkpoints/last.pt
(every epoch) and best.pt (best validation score), metrics.json, tensorboard/, the final report
(report.json, report.md, confusion_matrix.png) and model/ (the best bundle, also copied to
``workspace.model_dir``).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from catalog.labels import LabelEncoder
from catalog.split import assign_split
from catalog.store import Catalog
from core.files import copy_dir_atomic, write_atomic, write_json_atomic
from core.workspace import new_stamped_dir
from encoders.bundle import MultiModalModel
from encoders.features import cached_pooled_features, photo_key, text_key
from encoders.loss import ClipLoss, EmbeddingQueue, info_nce
from encoders.towers import Tower, build_towers, get_model_config
from fusion.classifier import FusionClassifier, fit_expert_weights
from fusion.evaluate import evaluate_fusion, save_confusion_matrix
from fusion.lexical import LexicalBranch

logger = logging.getLogger(__name__)

BACKBONE_PREFIXES = ("image_tower.layers.0.", "text_tower.layers.0.")
PHOTO_POSITIVES = ("one", "all", "mean")


@dataclass
class TrainConfig:
    # -- model
    model_config: str = "default"  # named architecture in encoders/configs (list_towers())
    image_backbone: str | None = None  # override the config's image backbone ("auto", a name)
    text_backbone: str | None = None  # override the config's text backbone ("auto", a name, a local folder)
    embed_dim: int | None = None  # override the shared embedding dimension
    fusion_hidden_dim: int = 256
    fusion_dropout: float = 0.2
    head_dropout: float | None = None  # override the projection heads' dropout of the model config
    modality_dropout: float = 0.3  # share of complete rows that the fusion head sees with one modality hidden
    late_fusion: bool = True  # fit the fusion head's expert weights (joint, text, image) on the validation split
    lexical_branch: bool = True  # a bag of words pooled with the fusion head (fusion.lexical), fitted after training
    # -- data
    seed: int = 0  # split seed and training seed
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    title_only_prob: float = 0.3  # text view = title only (query-like) instead of title + description
    # -- optimisation
    epochs: int = 40
    batch_size: int = 256
    lr: float = 2e-3  # heads
    backbone_lr: float = 2e-5  # unfrozen backbone blocks
    weight_decay: float = 1e-2
    warmup_epochs: int = 1
    contrastive_weight: float = 1.0
    label_smoothing: float = 0.0
    tower_ce_weight: float = 0.5  # weight of each tower's own probe cross-entropy
    patience: int = 8  # epochs without a better validation score before stopping
    finetune_blocks: int = 0  # unfreeze the top N blocks of each backbone (0 = frozen, cached features)
    text_finetune_layers: int = 0  # train the text backbone's top N layers on cached lower-layer states
    image_finetune_blocks: int = 0  # train the image backbone's top N blocks on cached lower feature maps
    # -- shared space (contrastive loss)
    photo_positives: str = "one"  # one random photo per listing | all (multi-positive) | mean (listing mean)
    category_batch_classes: int = 0  # each batch from this many categories (same-category negatives; 0 = random)
    queue_size: int = 0  # recent embeddings kept as extra contrastive negatives (0 = in-batch only)
    title_match_weight: float = 0.0  # InfoNCE of a listing's title-only text against its full text (known item)
    # -- system
    device: str = "auto"  # auto | cpu | cuda
    feature_batch_size: int = 32
    allow_download: bool = True  # let 'auto'/design-card backbones be downloaded (short timeout)
    progress: bool = True

    def __post_init__(self):
        if self.photo_positives not in PHOTO_POSITIVES:
            raise ValueError(f"photo_positives must be one of {PHOTO_POSITIVES}, got {self.photo_positives!r}")
        if (self.text_finetune_layers or self.image_finetune_blocks) and self.finetune_blocks:
            raise ValueError("text_finetune_layers / image_finetune_blocks and finetune_blocks exclude each other "
                             "(finetune_blocks runs the whole backbones in the loop)")
        if min(self.category_batch_classes, self.queue_size, self.text_finetune_layers,
               self.image_finetune_blocks, self.title_match_weight) < 0:
            raise ValueError("category_batch_classes, queue_size, text_finetune_layers, image_finetune_blocks and "
                             "title_match_weight must be >= 0")

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training options {unknown}; known: {sorted(known)}")
        return cls(**data)


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path
    report: dict
    history: list[dict] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ data


@dataclass
class TrainingData:
    """The catalogue flattened for training: listings, labels, split and photo rows."""

    ids: list[str]
    texts: list[str]  # title + description
    titles: list[str]
    y: np.ndarray  # int64 (n,)
    split: np.ndarray  # str (n,): train | val | test
    photo_ids: list[str]
    photo_paths: list[Path]
    photo_owner: np.ndarray  # int64 (m,), listing row of each photo
    photo_start: np.ndarray  # int64 (n,), first photo row of each listing
    photo_count: np.ndarray  # int64 (n,)

    @property
    def has_image(self) -> np.ndarray:
        return self.photo_count > 0

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


def load_training_data(catalog: Catalog, labels: LabelEncoder, seed: int, val_fraction: float,
                       test_fraction: float) -> TrainingData:
    listings = [listing for batch in catalog.iter_listings(batch_size=1000) for listing in batch]
    if not listings:
        raise ValueError(f"the catalogue {catalog.url} is empty; run `marketsearch ingest` first")
    split_of = assign_split([x.id for x in listings], seed=seed, val_fraction=val_fraction,
                            test_fraction=test_fraction)
    photo_ids, photo_paths, owner, start, count = [], [], [], [], []
    missing = 0
    for row, listing in enumerate(listings):
        start.append(len(photo_ids))
        kept = 0
        for image_id in listing.image_ids:
            path = catalog.image_path(image_id)
            if path is None or not path.is_file():
                missing += 1
                continue
            photo_ids.append(image_id)
            photo_paths.append(path)
            owner.append(row)
            kept += 1
        count.append(kept)
    if missing:
        logger.warning("%d photos listed in the catalogue have no file on disk; trained without them", missing)
    return TrainingData(
        ids=[x.id for x in listings], texts=[x.text for x in listings], titles=[x.title for x in listings],
        y=labels.encode_many([x.top_category for x in listings]),
        split=np.array([split_of[x.id] for x in listings]),
        photo_ids=photo_ids, photo_paths=photo_paths, photo_owner=np.asarray(owner, np.int64),
        photo_start=np.asarray(start, np.int64), photo_count=np.asarray(count, np.int64),
    )


def load_workspace_training_data(workspace, labels: LabelEncoder, config: TrainConfig) -> TrainingData:
    """``load_training_data`` over a workspace's catalogue, split by ``config``'s seed and fractions."""
    catalog = Catalog(workspace.db_url, root=workspace.root)
    try:
        return load_training_data(catalog, labels, config.seed, config.val_fraction, config.test_fraction)
    finally:
        catalog.close()


def load_photo(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


class CachedFeatures:
    """Pooled backbone features from the disk cache (frozen backbones)."""

    def __init__(self, data: TrainingData, image_tower: Tower, text_tower: Tower, cache_root: Path,
                 device: torch.device, batch_size: int, progress: bool, with_text: bool = True):
        photo_keys = [photo_key(image_id, path) for image_id, path in zip(data.photo_ids, data.photo_paths)]
        path_of = dict(zip(photo_keys, data.photo_paths))
        image = cached_pooled_features(image_tower, cache_root, photo_keys, lambda key: load_photo(path_of[key]),
                                       batch_size=batch_size, progress=progress)
        self.image = torch.as_tensor(image, device=device)
        if not with_text:
            return
        text_of = {text_key(t): t for t in data.texts + data.titles}
        text = cached_pooled_features(text_tower, cache_root, list(text_of), lambda key: text_of[key],
                                      batch_size=batch_size, progress=progress)
        row_of = {key: row for row, key in enumerate(text_of)}
        self.text_full = torch.as_tensor(text[[row_of[text_key(t)] for t in data.texts]], device=device)
        self.text_title = torch.as_tensor(text[[row_of[text_key(t)] for t in data.titles]], device=device)

    def image_pooled(self, photo_rows: np.ndarray, train: bool) -> torch.Tensor:
        return self.image[torch.as_tensor(photo_rows, device=self.image.device)]

    def text_pooled(self, rows: np.ndarray, title_only: np.ndarray, train: bool) -> torch.Tensor:
        index = torch.as_tensor(rows, device=self.text_full.device)
        mask = torch.as_tensor(title_only, device=self.text_full.device).unsqueeze(1)
        return torch.where(mask, self.text_title[index], self.text_full[index])


class TopLayerFeatures:
    """Pooled features where the top layers of a backbone are trained: the inputs of those layers are computed
    once per text (hidden states below the top ``text_layers`` transformer layers, float16, padding dropped) or
    per photo (feature maps below the top ``image_blocks`` blocks, float16, eval preprocessing) at the start of
    the run and held in memory; each step runs only the top layers. A modality with 0 top layers reads its
    frozen pooled features from the disk cache (``CachedFeatures``)."""

    def __init__(self, data: TrainingData, image_tower: Tower, text_tower: Tower, cache_root: Path,
                 device: torch.device, text_layers: int, image_blocks: int, batch_size: int, progress: bool):
        self.device, self.text_layers, self.image_blocks = device, text_layers, image_blocks
        self.cached = None
        if not (text_layers and image_blocks):
            self.cached = CachedFeatures(data, image_tower, text_tower, cache_root, device, batch_size, progress,
                                         with_text=not text_layers)
        if image_blocks:
            self.maps = lower_feature_maps(image_tower, data.photo_paths, image_blocks, batch_size, progress)
        if text_layers:
            distinct = list(dict.fromkeys(data.texts + data.titles))
            self.states = lower_hidden_states(text_tower, distinct, text_layers, batch_size * 2, progress)
            row_of = {text: row for row, text in enumerate(distinct)}
            self.full = np.array([row_of[t] for t in data.texts], np.int64)
            self.title = np.array([row_of[t] for t in data.titles], np.int64)
        self.bind(image_tower, text_tower)

    def bind(self, image_tower: Tower, text_tower: Tower) -> None:
        """Run the top layers of these towers (the same backbones as the ones the inputs were computed with)."""
        self.image_tower, self.text_tower = image_tower, text_tower
        self.text_blocks = text_tower.backbone.blocks[-self.text_layers:] if self.text_layers else []
        self.image_blocks_ = image_tower.backbone.blocks[-self.image_blocks:] if self.image_blocks else []

    def with_towers(self, image_tower: Tower, text_tower: Tower) -> TopLayerFeatures:
        """The same cached inputs, run through the top layers of other towers with the same backbones."""
        bound = copy.copy(self)
        bound.bind(image_tower, text_tower)
        return bound

    def image_pooled(self, photo_rows: np.ndarray, train: bool) -> torch.Tensor:
        if not self.image_blocks:
            return self.cached.image_pooled(photo_rows, train)
        x = self.maps[torch.as_tensor(photo_rows)].to(self.device, torch.float32)
        x = x.contiguous(memory_format=torch.channels_last)
        for block in self.image_blocks_:  # batch-norm statistics stay those of the pretrained weights
            x = block(x)
        return self.image_tower.pooling({"feature_map": x})["pooled"]

    def text_pooled(self, rows: np.ndarray, title_only: np.ndarray, train: bool) -> torch.Tensor:
        if not self.text_layers:
            return self.cached.text_pooled(rows, title_only, train)
        from transformers.masking_utils import create_bidirectional_mask

        which = np.where(title_only, self.title[rows], self.full[rows])
        states = [self.states[i] for i in which]
        hidden = torch.nn.utils.rnn.pad_sequence(states, batch_first=True).to(self.device, torch.float32)
        mask = torch.zeros(hidden.shape[:2], dtype=torch.int64, device=self.device)
        for i, state in enumerate(states):
            mask[i, : len(state)] = 1
        config = self.text_tower.backbone.model.config
        attention = create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=mask)
        for block in self.text_blocks:
            block.train(train)
            hidden = block(hidden, attention_mask=attention)
        return self.text_tower.pooling({"token_embeddings": hidden, "attention_mask": mask})["pooled"]


@torch.no_grad()
def lower_feature_maps(image_tower: Tower, paths: list[Path], top_blocks: int, batch_size: int,
                       progress: bool) -> torch.Tensor:
    """The feature maps entering the image backbone's top ``top_blocks`` blocks, float16 (photos, C, H, W)
    on the CPU, in the order of ``paths`` (eval preprocessing)."""
    backbone = image_tower.backbone
    backbone.eval()
    net, lower = backbone.net, backbone.blocks[:-top_blocks]
    out = []
    for start in tqdm(range(0, len(paths), batch_size), desc="photo maps", unit="batch", disable=not progress):
        pixels = image_tower.prepare([load_photo(p) for p in paths[start : start + batch_size]])["pixel_values"]
        x = pixels.contiguous(memory_format=torch.channels_last)
        if hasattr(net, "stem"):
            x = net.stem(x)
        for block in lower:
            x = block(x)
        out.append(x.to(torch.float16).cpu().contiguous())
    return torch.cat(out)


@torch.no_grad()
def lower_hidden_states(text_tower: Tower, texts: list[str], top_layers: int, batch_size: int,
                        progress: bool) -> list[torch.Tensor]:
    """The hidden states entering the text backbone's top ``top_layers`` layers, one float16 (tokens, hidden)
    tensor per text (padding dropped), in the order of ``texts``; batched by length."""
    backbone = text_tower.backbone
    backbone.eval()
    out: list[torch.Tensor | None] = [None] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in tqdm(range(0, len(order), batch_size), desc="text states", unit="batch", disable=not progress):
        part = order[start : start + batch_size]
        batch = {k: v.to(text_tower.device) for k, v in backbone.tokenize([texts[i] for i in part]).items()}
        hidden = backbone.model(**batch, output_hidden_states=True).hidden_states[-top_layers - 1]
        for row, i in enumerate(part):
            out[i] = hidden[row, : int(batch["attention_mask"][row].sum())].to(torch.float16).cpu()
    return out


class LiveFeatures:
    """Pooled features computed by the (partly trainable) backbones inside the loop."""

    def __init__(self, data: TrainingData, image_tower: Tower, text_tower: Tower):
        self.data, self.image_tower, self.text_tower = data, image_tower, text_tower

    def image_pooled(self, photo_rows: np.ndarray, train: bool) -> torch.Tensor:
        images = [load_photo(self.data.photo_paths[i]) for i in photo_rows]
        return self.image_tower.trunk(self.image_tower.prepare(images, train=train))

    def text_pooled(self, rows: np.ndarray, title_only: np.ndarray, train: bool) -> torch.Tensor:
        texts = [self.data.titles[r] if t else self.data.texts[r] for r, t in zip(rows, title_only)]
        return self.text_tower.trunk(self.text_tower.prepare(texts))


# ----------------------------------------------------------------------------------------------- model


class JointModel(nn.Module):
    """Everything that is trained together: towers, per-tower probes, fusion head, contrastive loss."""

    def __init__(self, image_tower: Tower, text_tower: Tower, num_classes: int, fusion_hidden_dim: int,
                 modality_dropout: float, classes: list[str], fusion_dropout: float = 0.2):
        super().__init__()
        dim = image_tower.embed_dim
        self.image_tower, self.text_tower = image_tower, text_tower
        self.image_probe = nn.Linear(dim, num_classes)
        self.text_probe = nn.Linear(dim, num_classes)
        self.fusion = FusionClassifier(dim, dim, num_classes, fusion_hidden_dim, dropout=fusion_dropout,
                                       modality_dropout=modality_dropout, classes=classes)
        self.clip_loss = ClipLoss()

    def trainable_state(self) -> dict:
        """Everything except the frozen backbone weights (which are rebuilt from their source on resume)."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        return {key: value.detach().cpu().clone() for key, value in self.state_dict().items()
                if key in trainable or not key.startswith(BACKBONE_PREFIXES)}


def _scatter_mean_normalised(vectors: torch.Tensor, owner: np.ndarray, n: int) -> torch.Tensor:
    out = torch.zeros(n, vectors.shape[1], device=vectors.device)
    out.index_add_(0, torch.as_tensor(owner, device=vectors.device), vectors)
    return F.normalize(out, dim=1) * (out.norm(dim=1, keepdim=True) > 0)


@torch.no_grad()
def embed_rows(model: JointModel, features, data: TrainingData, rows: np.ndarray, batch_size: int = 512):
    """Eval-mode embeddings of listing ``rows``: text (full), title-only text, image (mean of photos)."""
    model.eval()
    n = len(rows)
    all_rows = np.asarray(rows, np.int64)
    text, title = [], []
    for start in range(0, n, batch_size):
        part = all_rows[start : start + batch_size]
        text.append(model.text_tower.head(features.text_pooled(part, np.zeros(len(part), bool), False)))
        title.append(model.text_tower.head(features.text_pooled(part, np.ones(len(part), bool), False)))
    local = {row: i for i, row in enumerate(all_rows)}
    photo_rows = np.concatenate([np.arange(data.photo_start[r], data.photo_start[r] + data.photo_count[r])
                                 for r in all_rows] or [np.zeros(0, np.int64)]).astype(np.int64)
    dim = model.image_tower.embed_dim
    photo_vectors = [model.image_tower.head(features.image_pooled(photo_rows[s : s + batch_size], False))
                     for s in range(0, len(photo_rows), batch_size)]
    photo_vectors = torch.cat(photo_vectors) if photo_vectors else torch.zeros(0, dim)
    owner = np.array([local[data.photo_owner[p]] for p in photo_rows], np.int64)
    image = _scatter_mean_normalised(photo_vectors.float(), owner, n) if len(photo_rows) else torch.zeros(n, dim)
    return torch.cat(text).float(), torch.cat(title).float(), image.float()


def recall_at_k(queries: np.ndarray, gallery: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Share of queries whose true gallery row (``truth[i]``) is among the k highest inner products."""
    if len(queries) == 0:
        return float("nan")
    scores = queries @ gallery.T
    true_scores = scores[np.arange(len(queries)), truth]
    rank = (scores > true_scores[:, None]).sum(axis=1)
    return float((rank < k).mean())


def evaluate_rows(model: JointModel, features, data: TrainingData, rows: np.ndarray,
                  gallery_rows: np.ndarray | None = None) -> dict:
    """Classification (fusion image-only / text-only / fused, per-tower probes) and cross-modal recall@10."""
    text, title, image = embed_rows(model, features, data, rows)
    has_image = data.has_image[rows]
    y = data.y[rows]
    fusion = evaluate_fusion(model.fusion, image.cpu().numpy(), text.cpu().numpy(), has_image, y)
    with torch.no_grad():
        image_probe = model.image_probe(image[torch.as_tensor(has_image, device=image.device)]).argmax(1).cpu().numpy()
        text_probe = model.text_probe(text).argmax(1).cpu().numpy()
    result = {
        "image_only": fusion["image_only"], "text_only": fusion["text_only"], "fused": fusion["fused"],
        "probe_image_accuracy": float((image_probe == y[has_image]).mean()) if has_image.any() else float("nan"),
        "probe_text_accuracy": float((text_probe == y).mean()),
        "predictions": fusion["predictions"],
    }
    # title query -> listings represented by their photos only
    if gallery_rows is None:
        gallery_rows, gallery_image = rows[has_image], image[torch.as_tensor(has_image, device=image.device)]
    else:
        gallery_rows = gallery_rows[data.has_image[gallery_rows]]
        _, _, gallery_image = embed_rows(model, features, data, gallery_rows)
    position = {row: i for i, row in enumerate(gallery_rows)}
    query_mask = has_image
    truth = np.array([position[r] for r in rows[query_mask]], np.int64)
    queries = title[torch.as_tensor(query_mask, device=title.device)].cpu().numpy()
    result["title_to_photo_recall@10"] = recall_at_k(queries, gallery_image.cpu().numpy(), truth, 10)
    result["gallery_size"] = int(len(gallery_rows))
    return result


# ----------------------------------------------------------------------------------------------- loop


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda[:N]")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


def lr_factor(epoch_progress: float, warmup: float, total: float) -> float:
    """Linear warmup then cosine decay, as a multiplier of the base learning rate."""
    if warmup > 0 and epoch_progress < warmup:
        return (epoch_progress + 1e-3) / warmup
    progress = (epoch_progress - warmup) / max(total - warmup, 1e-9)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def effective_batch_size(batch_size: int, n_train: int, min_steps: int = 8) -> int:
    """Small catalogues get smaller batches, so an epoch is still several optimiser steps."""
    return int(max(16, min(batch_size, n_train // min_steps)))


def category_batches(rows: np.ndarray, y: np.ndarray, batch_size: int, classes_per_batch: int,
                     rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of shuffled ``rows`` that each hold about ``classes_per_batch`` categories (labels ``y[rows]``),
    so that most in-batch negatives share the positive's category. Every row is in exactly one batch."""
    chunk = max(1, batch_size // classes_per_batch)
    chunks = []
    for label in np.unique(y[rows]):
        members = rng.permutation(rows[y[rows] == label])
        chunks += [members[i : i + chunk] for i in range(0, len(members), chunk)]
    chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    return [np.concatenate(chunks[i : i + classes_per_batch]) for i in range(0, len(chunks), classes_per_batch)]


def train_batches(data: TrainingData, config: TrainConfig, rng: np.random.Generator) -> list[np.ndarray]:
    rows = rng.permutation(data.rows("train"))
    batch_size = effective_batch_size(config.batch_size, len(rows))
    if config.category_batch_classes > 0:
        return category_batches(rows, data.y, batch_size, config.category_batch_classes, rng)
    return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]


def train_one_epoch(model: JointModel, features, data: TrainingData, optimizer, config: TrainConfig,
                    epoch: int, rng: np.random.Generator, writer=None, queue: EmbeddingQueue | None = None) -> dict:
    model.train()
    # frozen backbones stay in eval mode (batch-norm statistics and dropout of pretrained weights untouched)
    model.image_tower.backbone.eval()
    model.text_tower.backbone.eval()
    batches = train_batches(data, config, rng)
    steps = len(batches)
    totals = {"loss": 0.0, "fusion_ce": 0.0, "probe_ce": 0.0, "contrastive": 0.0, "title_match": 0.0}
    for step, batch in enumerate(batches):
        if len(batch) < 2:
            continue
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(epoch + step / steps, config.warmup_epochs, config.epochs)
        has = data.photo_count[batch] > 0
        pick = (rng.random(has.sum()) * data.photo_count[batch[has]]).astype(np.int64)
        title_only = rng.random(len(batch)) < config.title_only_prob
        device = model.fusion.net[0].weight.device
        y = torch.as_tensor(data.y[batch], device=device)
        has_t = torch.as_tensor(has, device=device)
        text_emb = model.text_tower.head(features.text_pooled(batch, title_only, True))
        image_emb = torch.zeros_like(text_emb)
        photo_emb = owner = None
        if has.any() and config.photo_positives == "one":  # one random photo per listing per step
            photo_rows = data.photo_start[batch[has]] + pick
            image_emb[has_t] = model.image_tower.head(features.image_pooled(photo_rows, True)).to(text_emb.dtype)
        elif has.any():  # every photo of the batch's listings
            counts = data.photo_count[batch[has]]
            photo_rows = np.concatenate([np.arange(s, s + c) for s, c in zip(data.photo_start[batch[has]], counts)])
            owner_np = np.repeat(np.arange(len(counts)), counts)
            photo_emb = model.image_tower.head(features.image_pooled(photo_rows, True)).to(text_emb.dtype)
            owner = torch.as_tensor(owner_np, device=device)
            if config.photo_positives == "mean":  # the listing as the gallery represents it: mean of its photos
                image_emb[has_t] = _scatter_mean_normalised(photo_emb, owner_np, len(counts))
                photo_emb = owner = None
            else:  # the fusion head and probe see one random photo, as with "one"
                first = np.concatenate([[0], np.cumsum(counts)[:-1]])
                image_emb[has_t] = photo_emb[torch.as_tensor(first + pick, device=device)]
        smoothing = config.label_smoothing
        fusion_ce = F.cross_entropy(model.fusion(image_emb, text_emb, image_present=has_t), y,
                                    label_smoothing=smoothing)
        probe_ce = F.cross_entropy(model.text_probe(text_emb), y, label_smoothing=smoothing)
        contrastive = torch.zeros((), device=device)
        if has.sum() >= 2:
            probe_ce = probe_ce + F.cross_entropy(model.image_probe(image_emb[has_t]), y[has_t],
                                                  label_smoothing=smoothing)
            ids = torch.as_tensor(batch[has], device=device)
            images, texts = (image_emb[has_t], text_emb[has_t]) if photo_emb is None else (photo_emb, text_emb[has_t])
            image_ids = ids if owner is None else ids[owner]
            contrastive = model.clip_loss(images, texts, owner=owner, ids=ids,
                                          queue=queue.negatives() if queue is not None else None)
            if queue is not None:
                queue.push(images, image_ids, texts, ids)
        title_match = torch.zeros((), device=device)
        if config.title_match_weight > 0:  # a title must find its own listing's text among the batch's
            titles_only = np.ones(len(batch), bool)
            titles = model.text_tower.head(features.text_pooled(batch, titles_only, True))
            texts = model.text_tower.head(features.text_pooled(batch, ~titles_only, True))
            title_match = info_nce(titles, texts)
        loss = (fusion_ce + config.tower_ce_weight * probe_ce + config.contrastive_weight * contrastive
                + config.title_match_weight * title_match)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 5.0)
        optimizer.step()
        for name, value in (("loss", loss), ("fusion_ce", fusion_ce), ("probe_ce", probe_ce),
                            ("contrastive", contrastive), ("title_match", title_match)):
            totals[name] += float(value.detach()) / steps
    totals["temperature"] = float(1.0 / model.clip_loss.scale.detach())
    if writer is not None:
        for name, value in totals.items():
            writer.add_scalar(f"train/{name}", value, epoch)
    return totals


def selection_score(metrics: dict) -> float:
    """Validation score for the best checkpoint: fused accuracy plus cross-modal recall@10 (both matter)."""
    recall = metrics["title_to_photo_recall@10"]
    return metrics["fused"]["accuracy"] + (0.0 if math.isnan(recall) else recall)


def _build(config: TrainConfig, labels: LabelEncoder, device: torch.device) -> JointModel:
    arch = get_model_config(config.model_config)
    if config.image_backbone:
        arch.image.backbone = config.image_backbone
    if config.text_backbone:
        arch.text.backbone = config.text_backbone
    if config.embed_dim:
        arch.embed_dim = arch.image.embed_dim = arch.text.embed_dim = config.embed_dim
    if config.head_dropout is not None:
        arch.image.dropout = arch.text.dropout = config.head_dropout
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        image_tower, text_tower = build_towers(arch, allow_download=config.allow_download)
        model = JointModel(image_tower, text_tower, len(labels), config.fusion_hidden_dim, config.modality_dropout,
                           labels.classes, config.fusion_dropout)
    if config.image_finetune_blocks and image_tower.backbone.mid_block is not None:
        # its cached lower maps feed the top blocks one by one, with no place for the mid block's output
        raise ValueError("image_finetune_blocks needs an image backbone without mid-level features: add an "
                         'architecture with "mid_features": false in its "image" part to encoders/configs/ and '
                         "choose it with --config, or use finetune_blocks")
    image_tower.freeze_backbone(config.finetune_blocks or config.image_finetune_blocks)
    text_tower.freeze_backbone(config.finetune_blocks or config.text_finetune_layers)
    return model.to(device)


def _optimizer(model: JointModel, config: TrainConfig) -> torch.optim.Optimizer:
    backbone, heads = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (backbone if name.startswith(BACKBONE_PREFIXES) else heads).append(parameter)
    groups = [{"params": heads, "lr": config.lr, "base_lr": config.lr}]
    if backbone:
        groups.append({"params": backbone, "lr": config.backbone_lr, "base_lr": config.backbone_lr})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def _jsonable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "predictions"}


def latest_run(runs_dir: Path) -> Path:
    runs = sorted(p for p in Path(runs_dir).glob("*") if (p / "config.json").is_file())
    if not runs:
        raise FileNotFoundError(f"no training run to resume in {runs_dir}; start one with `marketsearch train`")
    return runs[-1]


def train(workspace, config: TrainConfig | None = None, *, resume: Path | str | None = None) -> TrainResult:
    """Train on the catalogue of ``workspace``; returns the run folder, the model folder and the report.

    resume: a run folder (or "latest") to continue from its last checkpoint; its saved config is used.
    """
    started = time.perf_counter()
    if resume is not None:
        run_dir = latest_run(workspace.runs_dir) if str(resume) == "latest" else Path(resume)
        if not (run_dir / "config.json").is_file():
            raise FileNotFoundError(f"{run_dir} is not a training run folder (no config.json)")
        config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
        logger.info("resuming run %s", run_dir)
    else:
        config = config or TrainConfig()
        run_dir = new_stamped_dir(workspace.runs_dir, datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    device = pick_device(config.device)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)

    labels = LabelEncoder.from_json(workspace.labels_path)
    data = load_workspace_training_data(workspace, labels, config)
    counts = {s: int((data.split == s).sum()) for s in ("train", "val", "test")}
    if counts["train"] < 2 or counts["val"] < 1:
        raise ValueError(f"too few listings to train: split sizes {counts}; ingest more data")
    model = _build(config, labels, device)
    # the resolved backbone names go into the saved config, so a resumed run rebuilds the same model
    config.image_backbone = model.image_tower.backbone.name
    config.text_backbone = model.text_tower.backbone.name
    if resume is None:
        write_json_atomic(run_dir / "config.json", dataclasses.asdict(config))
        write_json_atomic(run_dir / "split.json", {"seed": config.seed, "val_fraction": config.val_fraction,
                                                    "test_fraction": config.test_fraction, "counts": counts,
                                                    "split": dict(zip(data.ids, data.split.tolist()))})
    if config.finetune_blocks > 0:
        features = LiveFeatures(data, model.image_tower, model.text_tower)
    elif config.text_finetune_layers > 0 or config.image_finetune_blocks > 0:
        features = TopLayerFeatures(data, model.image_tower, model.text_tower, workspace.feature_cache_dir, device,
                                    config.text_finetune_layers, config.image_finetune_blocks,
                                    config.feature_batch_size, config.progress)
    else:
        features = CachedFeatures(data, model.image_tower, model.text_tower, workspace.feature_cache_dir,
                                  device, config.feature_batch_size, config.progress)
    optimizer = _optimizer(model, config)

    writer = SummaryWriter(str(run_dir / "tensorboard"))
    history, start_epoch, best_score, best_epoch = [], 0, -math.inf, -1
    last_path, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    rng = np.random.default_rng(config.seed)
    if resume is not None and last_path.is_file():
        checkpoint = torch.load(last_path, map_location=device, weights_only=False)
        model.load_state_dict(checkpoint["model"], strict=False)
        optimizer.load_state_dict(checkpoint["optimizer"])
        history, best_score, best_epoch = checkpoint["history"], checkpoint["best_score"], checkpoint["best_epoch"]
        start_epoch = checkpoint["epoch"] + 1
        rng = np.random.default_rng([config.seed, start_epoch])
        logger.info("resumed at epoch %d (best %.4f at epoch %d)", start_epoch, best_score, best_epoch)
    val_rows = data.rows("val")
    queue = EmbeddingQueue(config.queue_size) if config.queue_size > 0 else None  # not checkpointed: refills
    bar = tqdm(range(start_epoch, config.epochs), desc="train", unit="epoch", disable=not config.progress,
               initial=start_epoch, total=config.epochs)
    for epoch in bar:
        if epoch - best_epoch > config.patience and best_epoch >= 0:
            logger.info("early stopping: no better validation score for %d epochs", config.patience)
            break
        train_stats = train_one_epoch(model, features, data, optimizer, config, epoch, rng, writer, queue)
        val = evaluate_rows(model, features, data, val_rows)
        score = selection_score(val)
        entry = {"epoch": epoch, "train": train_stats, "val": _jsonable(val), "score": score}
        history.append(entry)
        for name in ("image_only", "text_only", "fused"):
            writer.add_scalar(f"val/{name}_accuracy", val[name]["accuracy"], epoch)
        writer.add_scalar("val/title_to_photo_recall@10", val["title_to_photo_recall@10"], epoch)
        improved = score > best_score
        state = {"model": model.trainable_state(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                 "history": history, "best_score": max(score, best_score),
                 "best_epoch": epoch if improved else best_epoch, "config": dataclasses.asdict(config)}
        if improved:
            best_score, best_epoch = score, epoch
            write_atomic(best_path, lambda tmp: torch.save(state, tmp))
        write_atomic(last_path, lambda tmp: torch.save(state, tmp))
        write_json_atomic(run_dir / "metrics.json", {"history": history, "best_epoch": best_epoch})
        bar.set_postfix(loss=f"{train_stats['loss']:.3f}", fused=f"{val['fused']['accuracy']:.3f}",
                        r10=f"{val['title_to_photo_recall@10']:.3f}")
        logger.info("epoch %d: loss %.4f, val fused acc %.4f (text %.4f, image %.4f), title->photo R@10 %.4f%s",
                    epoch, train_stats["loss"], val["fused"]["accuracy"], val["text_only"]["accuracy"],
                    val["image_only"]["accuracy"], val["title_to_photo_recall@10"], " *" if improved else "")
    writer.close()

    # final report on the test products, with the best checkpoint
    best = torch.load(best_path, map_location=device, weights_only=False)
    model.load_state_dict(best["model"], strict=False)
    late_fusion = fit_late_fusion(model, features, data, val_rows) if config.late_fusion else None
    all_rows = np.arange(len(data.ids))
    test = evaluate_rows(model, features, data, data.rows("test"), gallery_rows=all_rows)
    save_confusion_matrix(data.y[data.rows("test")], test["predictions"], labels.classes,
                          run_dir / "confusion_matrix.png")
    seconds = time.perf_counter() - started
    report = {
        "test": _jsonable(test), "best_epoch": best_epoch, "epochs_run": len(history), "split_counts": counts,
        "late_fusion": late_fusion, "seconds": seconds, "device": str(device), "threads": torch.get_num_threads(),
        "backbones": {"image": model.image_tower.backbone.provenance, "text": model.text_tower.backbone.provenance},
    }
    # embedded before the bundle moves the towers to the CPU (the cached features may be on the GPU)
    lexical_embeddings = [listing_embeddings(model, features, data, rows) for rows in (val_rows, data.rows("test"))] \
        if config.lexical_branch else []
    bundle = MultiModalModel(model.image_tower.cpu(), model.text_tower.cpu(), model.fusion.cpu(), labels, info={
        "run": run_dir.name, "trained_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "config": dataclasses.asdict(config), "test": report["test"], "best_epoch": best_epoch,
        "split": {"seed": config.seed, "val_fraction": config.val_fraction, "test_fraction": config.test_fraction},
    })
    if config.lexical_branch:
        try:
            bundle.lexical, report["lexical"] = fit_lexical_branch(bundle, data, val_rows, *lexical_embeddings)
        except ValueError as error:  # a catalogue too small for a bag of words: the head alone classifies
            logger.warning("lexical branch not fitted: %s", error)
            report["lexical"] = {"skipped": str(error)}
    bundle.save(run_dir / "model")
    report["fingerprint"] = bundle.fingerprint
    write_json_atomic(run_dir / "report.json", report)
    (run_dir / "report.md").write_text(report_markdown(report))
    write_json_atomic(run_dir / "metrics.json", {"history": history, "best_epoch": best_epoch, "test": report["test"]})
    copy_dir_atomic(run_dir / "model", workspace.model_dir)
    logger.info("model bundle copied to %s", workspace.model_dir)
    return TrainResult(run_dir=run_dir, model_dir=workspace.model_dir, report=report, history=history)


def fit_late_fusion(model: JointModel, features, data: TrainingData, val_rows: np.ndarray) -> dict:
    """Fit the fusion head's expert weights on the validation listings that have a photo (sets them)."""
    text, _, image = embed_rows(model, features, data, val_rows)
    complete = data.has_image[val_rows]
    mask = torch.as_tensor(complete, device=text.device)
    model.fusion.expert_weights = (1.0, 0.0, 0.0)
    weights, accuracy = fit_expert_weights(model.fusion, image[mask].cpu().numpy(), text[mask].cpu().numpy(),
                                           data.y[val_rows][complete])
    model.fusion.expert_weights = weights
    logger.info("late fusion: expert weights (joint, text, image) %s, validation accuracy on %d complete "
                "listings %.4f", weights, int(complete.sum()), accuracy)
    return {"expert_weights": list(weights), "val_complete_accuracy": accuracy, "val_complete_n": int(complete.sum())}


def listing_embeddings(model: JointModel, features, data: TrainingData, rows: np.ndarray):
    """Text and image embeddings of listing ``rows`` as numpy, a zero image row for a listing without a photo."""
    with torch.no_grad():
        text, _, image = embed_rows(model, features, data, rows)
    text, image = text.cpu().numpy(), image.cpu().numpy()
    image[~data.has_image[rows]] = 0
    return text, image


def fit_lexical_branch(bundle: MultiModalModel, data: TrainingData, val_rows: np.ndarray,
                       val_embeddings: tuple[np.ndarray, np.ndarray],
                       test_embeddings: tuple[np.ndarray, np.ndarray]) -> tuple[LexicalBranch, dict]:
    """The bag-of-words branch: fitted on the train listings, C and pooling weights on ``val_rows``; test
    accuracy of the words alone and pooled with the head, text only and fused (as ``classify`` serves them)."""
    started = time.perf_counter()

    def log_probs(text: np.ndarray, image: np.ndarray) -> dict[str, np.ndarray]:
        return {"text": np.log(np.clip(bundle.classify(text, None), 1e-12, None)),
                "fused": np.log(np.clip(bundle.classify(text, image), 1e-12, None))}

    train_rows, test_rows = data.rows("train"), data.rows("test")
    branch = LexicalBranch.fit([data.texts[r] for r in train_rows], data.y[train_rows],
                               [data.texts[r] for r in val_rows], data.y[val_rows],
                               log_probs(*val_embeddings), len(bundle.labels))
    texts, y = [data.texts[r] for r in test_rows], data.y[test_rows]
    text, image = test_embeddings
    with_words = MultiModalModel(bundle.image_tower, bundle.text_tower, bundle.fusion, bundle.labels, lexical=branch)

    def accuracy(probs: np.ndarray) -> float:
        return float((np.asarray(probs).argmax(1) == y).mean())

    result = {"words_only": accuracy(branch.log_proba(texts)),
              "text_only": accuracy(with_words.classify(text, None, texts=texts)),
              "fused": accuracy(with_words.classify(text, image, texts=texts)),
              "weights": {mode: list(pair) for mode, pair in branch.weights.items()},
              "terms": len(branch.vectorizer.vocabulary_), "seconds": time.perf_counter() - started, "n": len(y)}
    logger.info("lexical branch on the test products: words %.4f, text + words %.4f, fused + words %.4f (%.0f s)",
                result["words_only"], result["text_only"], result["fused"], result["seconds"])
    return branch, result


def report_markdown(report: dict) -> str:
    test = report["test"]
    lines = [
        "# Training report", "",
        f"Best epoch {report['best_epoch']} of {report['epochs_run']}; {report['seconds']:.0f} s on "
        f"{report['device']} ({report['threads']} threads). Split sizes: {report['split_counts']}.", "",
        "| input | accuracy | macro-F1 | n |", "|---|---|---|---|",
    ]
    for name in ("image_only", "text_only", "fused"):
        m = test[name]
        lines.append(f"| {name.replace('_', '-')} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | {m['n']} |")
    lines += [
        "", f"Per-tower linear probes: image {test['probe_image_accuracy']:.4f}, "
        f"text {test['probe_text_accuracy']:.4f}.",
        f"Cross-modal recall@10 (test title -> {test['gallery_size']} listings by photo only): "
        f"{test['title_to_photo_recall@10']:.4f}.", "",
        f"Late fusion (expert weights joint, text, image, fitted on validation): "
        f"{(report.get('late_fusion') or {}).get('expert_weights', [1.0, 0.0, 0.0])}.", "",
        *([f"Lexical branch (bag of words pooled with the head; test accuracy): words alone "
           f"{report['lexical']['words_only']:.4f}, text + words {report['lexical']['text_only']:.4f}, "
           f"fused + words {report['lexical']['fused']:.4f}.", ""] if "fused" in report.get("lexical", {}) else []),
        f"Backbones: image {report['backbones']['image']['name']} ({report['backbones']['image']['source']}), "
        f"text {report['backbones']['text']['name']} ({report['backbones']['text']['source']}).", "",
        "![confusion matrix](confusion_matrix.png)", "",
    ]
    return "\n".join(lines)
