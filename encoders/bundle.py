"""MultiModalModel: both towers, the fusion head, the label map and provenance, as one saved folder.

Layout of a saved bundle::

    bundle.json        format version, embed_dim, backbones (name, source, weights), versions, training info,
                       fingerprint
    labels.json        the label encoder (class index <-> top-level category)
    image_tower/       Tower.save (tower.json + one folder per module)
    text_tower/        Tower.save (the text backbone folder is a plain Hugging Face checkpoint + tokenizer)
    fusion/            FusionClassifier.save
    lexical/           LexicalBranch.save (optional: the bag-of-words branch pooled with the fusion head)

``MultiModalModel.load(MultiModalModel.save(m))`` gives bit-identical embeddings and the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from functools import cached_property
from pathlib import Path

import torch

from catalog.labels import LabelEncoder
from core.files import make_temporary_dir, replace_dir, write_json_atomic
from encoders.query_model import QueryModel
from encoders.towers import Tower, library_versions
from fusion.classifier import FusionClassifier
from fusion.lexical import LexicalBranch

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class MultiModalModel(QueryModel):
    """Text and image encoders into one L2-normalised space, plus the category classifier."""

    def __init__(self, image_tower: Tower, text_tower: Tower, fusion: FusionClassifier, labels: LabelEncoder,
                 info: dict | None = None, lexical: LexicalBranch | None = None):
        if image_tower.embed_dim != text_tower.embed_dim:
            raise ValueError(
                f"towers must share one embedding dimension, got image {image_tower.embed_dim} and "
                f"text {text_tower.embed_dim}"
            )
        if fusion.num_classes != len(labels):
            raise ValueError(f"fusion head has {fusion.num_classes} classes but the label encoder {len(labels)}")
        self.image_tower = image_tower.eval()
        self.text_tower = text_tower.eval()
        self.fusion = fusion.eval()
        if lexical is not None and lexical.num_classes != len(labels):
            raise ValueError(f"lexical branch has {lexical.num_classes} classes but the label encoder {len(labels)}")
        self.labels: LabelEncoder = labels
        self.info = dict(info or {})
        self.lexical = lexical

    # -- properties
    @property
    def embed_dim(self) -> int:
        return self.text_tower.embed_dim

    @property
    def backbones(self) -> dict:
        return {"image": dict(self.image_tower.backbone.provenance), "text": dict(self.text_tower.backbone.provenance)}

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over the configs and weights of every part (and the label map)."""
        digest = hashlib.sha256()
        parts = {"image_tower": self.image_tower, "text_tower": self.text_tower, "fusion": self.fusion}
        for name, module in parts.items():
            digest.update(name.encode())
            if isinstance(module, Tower):
                for layer in module.layers:
                    digest.update(json.dumps(layer.get_config_dict(), sort_keys=True, default=str).encode())
            else:
                digest.update(json.dumps(module.get_config_dict(), sort_keys=True, default=str).encode())
            for key, tensor in sorted(module.state_dict().items()):
                value = tensor.detach().cpu().contiguous()
                digest.update(f"{key}:{value.dtype}:{tuple(value.shape)}".encode())
                digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
        # the lexical branch is left out: the fingerprint keys the stored embeddings and ONNX graphs, which the
        # branch does not change, so adding it to a bundle must not force re-encoding the catalogue
        digest.update(json.dumps(self.labels.classes).encode())
        return digest.hexdigest()

    def to(self, device: str | torch.device) -> MultiModalModel:
        for module in (self.image_tower, self.text_tower, self.fusion):
            module.to(device)
        return self

    # -- persistence
    def save(self, folder: str | Path) -> Path:
        """Write the bundle to ``folder`` atomically (staged beside it, then swapped in)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = make_temporary_dir(folder)
        try:
            self.image_tower.save(staging / "image_tower")
            self.text_tower.save(staging / "text_tower")
            self.fusion.save(staging / "fusion")
            if self.lexical is not None:
                self.lexical.save(staging / "lexical")
            self.labels.to_json(staging / "labels.json")
            write_json_atomic(staging / "bundle.json", {
                "format_version": FORMAT_VERSION,
                "embed_dim": self.embed_dim,
                "num_classes": len(self.labels),
                "backbones": self.backbones,
                "versions": library_versions(),
                "info": self.info,
                "fingerprint": self.fingerprint,
            })
            replace_dir(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info("saved model bundle %s (fingerprint %s)", folder, self.fingerprint[:12])
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> MultiModalModel:
        folder = Path(folder)
        manifest_path = folder / "bundle.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"no model bundle at {folder} (bundle.json missing); train one with `marketsearch train`"
            )
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"model bundle {folder} has format_version {manifest.get('format_version')!r}; this code reads "
                f"{FORMAT_VERSION}. Retrain with `marketsearch train`."
            )
        model = cls(
            Tower.load(folder / "image_tower"),
            Tower.load(folder / "text_tower"),
            FusionClassifier.load(folder / "fusion"),
            LabelEncoder.from_json(folder / "labels.json"),
            info=manifest.get("info", {}),
            lexical=LexicalBranch.load(folder / "lexical") if (folder / "lexical").is_dir() else None,
        ).to(device)
        if manifest.get("fingerprint") and manifest["fingerprint"] != model.fingerprint:
            logger.warning("model bundle %s: stored fingerprint differs from its content (files edited?)", folder)
        return model
