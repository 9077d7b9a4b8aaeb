"""FusionClassifier: a shallow MLP over the image and text embeddings that predicts the category.

Either modality may be missing (a text-only listing, an image-only query): the missing embedding is
replaced by zeros and a presence flag per modality is appended to the input. During training, modality
dropout hides one of the two modalities of a complete row at random, so the head learns to classify
from either one alone as well as from both.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from encoders.io import write_json_atomic


class FusionClassifier(nn.Module):
    config_keys = ("image_dim", "text_dim", "num_classes", "hidden_dim", "dropout", "modality_dropout", "classes")

    def __init__(self, image_dim: int, text_dim: int, num_classes: int, hidden_dim: int = 256,
                 dropout: float = 0.2, modality_dropout: float = 0.3, classes: list[str] | None = None):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not 0.0 <= modality_dropout <= 1.0:
            raise ValueError(f"modality_dropout is a probability in [0, 1], got {modality_dropout}")
        if classes is not None and len(classes) != num_classes:
            raise ValueError(f"{len(classes)} class names given for num_classes={num_classes}")
        self.image_dim, self.text_dim, self.num_classes = int(image_dim), int(text_dim), int(num_classes)
        self.hidden_dim, self.dropout, self.modality_dropout = int(hidden_dim), float(dropout), float(modality_dropout)
        self.classes = list(classes) if classes is not None else None
        self.net = nn.Sequential(
            nn.Linear(self.image_dim + self.text_dim + 2, self.hidden_dim), nn.GELU(), nn.Dropout(self.dropout),
            nn.Linear(self.hidden_dim, self.num_classes),
        )

    def presence_after_dropout(self, image_present: torch.Tensor, text_present: torch.Tensor):
        """Hide one modality of a complete row with probability ``modality_dropout`` (half each way)."""
        both = image_present & text_present
        draw = torch.rand(both.shape, device=both.device)
        drop_image = both & (draw < self.modality_dropout / 2)
        drop_text = both & (draw >= self.modality_dropout / 2) & (draw < self.modality_dropout)
        return image_present & ~drop_image, text_present & ~drop_text

    def forward(self, image_emb: torch.Tensor | None, text_emb: torch.Tensor | None,
                image_present: torch.Tensor | None = None, text_present: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (n, num_classes). Missing modality: pass None, or zeros with its presence flag False."""
        reference = image_emb if image_emb is not None else text_emb
        if reference is None:
            raise ValueError("FusionClassifier needs at least one of image_emb and text_emb")
        n, device = reference.shape[0], reference.device
        if image_emb is None:
            image_emb = torch.zeros(n, self.image_dim, device=device)
            image_present = torch.zeros(n, dtype=torch.bool, device=device)
        if text_emb is None:
            text_emb = torch.zeros(n, self.text_dim, device=device)
            text_present = torch.zeros(n, dtype=torch.bool, device=device)
        if image_present is None:
            image_present = torch.ones(n, dtype=torch.bool, device=device)
        if text_present is None:
            text_present = torch.ones(n, dtype=torch.bool, device=device)
        if image_emb.shape[1] != self.image_dim or text_emb.shape[1] != self.text_dim:
            raise ValueError(
                f"expected image_emb (n, {self.image_dim}) and text_emb (n, {self.text_dim}), got "
                f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
            )
        image_present, text_present = image_present.bool(), text_present.bool()
        if self.training and self.modality_dropout > 0:
            image_present, text_present = self.presence_after_dropout(image_present, text_present)
        image_flag = image_present.to(image_emb.dtype).unsqueeze(1)
        text_flag = text_present.to(text_emb.dtype).unsqueeze(1)
        inputs = torch.cat([image_emb * image_flag, text_emb * text_flag, image_flag, text_flag], dim=1)
        return self.net(inputs)

    @torch.inference_mode()
    def predict_proba(self, image_emb: np.ndarray | None, text_emb: np.ndarray | None,
                      image_present: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities float32 (n, C) from numpy embeddings (either may be None)."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        try:
            image = torch.as_tensor(np.asarray(image_emb, np.float32), device=device) if image_emb is not None else None
            text = torch.as_tensor(np.asarray(text_emb, np.float32), device=device) if text_emb is not None else None
            present = None if image_present is None else torch.as_tensor(np.asarray(image_present, bool), device=device)
            if image is not None and text is not None and image.shape[0] != text.shape[0]:
                raise ValueError(f"image_emb has {image.shape[0]} rows but text_emb has {text.shape[0]}")
            logits = self.forward(image, text, image_present=present)
            return F.softmax(logits.float(), dim=-1).cpu().numpy()
        finally:
            self.train(was_training)

    def get_config_dict(self) -> dict:
        return {key: getattr(self, key) for key in self.config_keys}

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "config.json", self.get_config_dict())
        if self.classes is not None:
            write_json_atomic(folder / "labels.json", {str(i): name for i, name in enumerate(self.classes)})
        tmp = folder / "model.safetensors.tmp"
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(tmp))
        tmp.replace(folder / "model.safetensors")

    @classmethod
    def load(cls, folder: Path) -> FusionClassifier:
        from encoders.modules import load_strict

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder / 'config.json'} not found: not a saved FusionClassifier")
        model = cls(**json.loads((folder / "config.json").read_text()))
        load_strict(model, load_file(str(folder / "model.safetensors")), folder)
        model.eval()
        return model
