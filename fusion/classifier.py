"""FusionClassifier: a shallow MLP over the image and text embeddings that predicts the category.

Either modality may be missing (a text-only listing, an image-only query): the missing embedding is
replaced by zeros and a presence flag per modality is appended to the input. During training, modality
dropout hides one of the two modalities of a complete row at random, so the head learns to classify
from either one alone as well as from both.

Late fusion (product of experts): for a row with both modalities, the prediction can combine three
experts that are all this same head, given both inputs, the text alone and the image alone:
``log p = w_joint * log p(both) + w_text * log p(text) + w_image * log p(image)`` (``expert_weights``).
The weights are fitted after training on held-out listings (``fit_expert_weights``), so the fused
prediction can lean on the text when the image embeddings of the training listings were over-fitted.
The default (1, 0, 0) is the plain joint head. Rows with one modality use that modality's expert.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from core.files import write_json_atomic
from core.weights import load_strict


class FusionClassifier(nn.Module):
    config_keys = ("image_dim", "text_dim", "num_classes", "hidden_dim", "dropout", "modality_dropout", "classes",
                   "expert_weights")

    def __init__(self, image_dim: int, text_dim: int, num_classes: int, hidden_dim: int = 256,
                 dropout: float = 0.2, modality_dropout: float = 0.3, classes: list[str] | None = None,
                 expert_weights: tuple[float, float, float] | list[float] = (1.0, 0.0, 0.0)):
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
        self.expert_weights = expert_weights
        self.net = nn.Sequential(
            nn.Linear(self.image_dim + self.text_dim + 2, self.hidden_dim), nn.GELU(), nn.Dropout(self.dropout),
            nn.Linear(self.hidden_dim, self.num_classes),
        )

    @property
    def expert_weights(self) -> tuple[float, float, float]:
        """Late-fusion weights (joint, text alone, image alone) for rows with both modalities."""
        return self._expert_weights

    @expert_weights.setter
    def expert_weights(self, weights) -> None:
        self._expert_weights = check_expert_weights(weights)

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
        return self._joint_logits(image_emb, text_emb, image_present, text_present)

    def _joint_logits(self, image_emb, text_emb, image_present, text_present) -> torch.Tensor:
        image_flag = image_present.to(image_emb.dtype).unsqueeze(1)
        text_flag = text_present.to(text_emb.dtype).unsqueeze(1)
        inputs = torch.cat([image_emb * image_flag, text_emb * text_flag, image_flag, text_flag], dim=1)
        return self.net(inputs)

    def expert_log_probs(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (3, n, C) of the joint, text-only and image-only experts for complete rows."""
        n, device = image_emb.shape[0], image_emb.device
        on, off = torch.ones(n, dtype=torch.bool, device=device), torch.zeros(n, dtype=torch.bool, device=device)
        return torch.stack([
            F.log_softmax(self._joint_logits(image_emb, text_emb, on, on).float(), dim=-1),
            F.log_softmax(self._joint_logits(image_emb, text_emb, off, on).float(), dim=-1),
            F.log_softmax(self._joint_logits(image_emb, text_emb, on, off).float(), dim=-1),
        ])

    def predict_logits(self, image_emb: torch.Tensor | None, text_emb: torch.Tensor | None,
                       image_present: torch.Tensor | None = None) -> torch.Tensor:
        """Eval-time scores (n, C): the joint head, or the weighted experts for rows with both modalities."""
        logits = self.forward(image_emb, text_emb, image_present=image_present)
        if self.expert_weights == (1.0, 0.0, 0.0) or image_emb is None or text_emb is None:
            return logits
        both = torch.ones(len(logits), dtype=torch.bool, device=logits.device)
        if image_present is not None:
            both = image_present.bool()
        if not both.any():
            return logits
        weights = torch.tensor(self.expert_weights, device=logits.device).view(3, 1, 1)
        combined = (weights * self.expert_log_probs(image_emb[both], text_emb[both])).sum(0)
        out = F.log_softmax(logits.float(), dim=-1)
        out[both] = combined
        return out

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
            logits = self.predict_logits(image, text, image_present=present)
            return F.softmax(logits.float(), dim=-1).cpu().numpy()
        finally:
            self.train(was_training)

    def get_config_dict(self) -> dict:
        config = {key: getattr(self, key) for key in self.config_keys}
        config["expert_weights"] = list(self.expert_weights)
        return config

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
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder / 'config.json'} not found: not a saved FusionClassifier")
        model = cls(**json.loads((folder / "config.json").read_text()))
        load_strict(model, load_file(str(folder / "model.safetensors")), folder)
        model.eval()
        return model


def check_expert_weights(weights) -> tuple[float, float, float]:
    values = tuple(float(w) for w in weights)
    if len(values) != 3 or any(not np.isfinite(w) or w < 0 for w in values) or values[0] + values[1] == 0:
        raise ValueError(
            f"expert_weights are three non-negative weights (joint, text, image) with joint or text above 0, "
            f"got {weights!r}; use (1, 0, 0) for the plain joint head"
        )
    return values


@torch.inference_mode(False)
def fit_expert_weights(classifier: FusionClassifier, image_emb: np.ndarray, text_emb: np.ndarray,
                       y_true: np.ndarray, max_iter: int = 200) -> tuple[tuple[float, float, float], float]:
    """Expert weights (joint, text, image) fitted on held-out complete rows (never the training rows).

    Log-linear pooling: the three positive weights minimise the cross-entropy of
    ``sum_k w_k log p_k`` on these rows (L-BFGS, float64), which also recalibrates the fused
    probabilities. A smooth fit of three numbers was steadier than picking weights by held-out accuracy
    on a grid (5-fold cross-validation inside the dev validation split). image_emb, text_emb: float32
    (n, d) of listings that have both; y_true: int (n,). Returns (weights, accuracy on these rows).
    """
    if len(y_true) == 0:
        return (1.0, 0.0, 0.0), float("nan")
    was_training = classifier.training
    classifier.eval()
    try:
        device = next(classifier.parameters()).device
        with torch.no_grad():
            experts = classifier.expert_log_probs(
                torch.as_tensor(np.asarray(image_emb, np.float32), device=device),
                torch.as_tensor(np.asarray(text_emb, np.float32), device=device)).double()
    finally:
        classifier.train(was_training)
    y = torch.as_tensor(np.asarray(y_true, np.int64), device=experts.device)
    start = torch.tensor([1.0, 0.05, 0.05], dtype=torch.float64, device=experts.device)
    raw = torch.log(torch.expm1(start)).requires_grad_(True)  # softplus(raw) = start: weights stay positive
    optimizer = torch.optim.LBFGS([raw], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        weights = F.softplus(raw).view(3, 1, 1)
        loss = F.cross_entropy((weights * experts).sum(0), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    weights = tuple(float(w) for w in F.softplus(raw.detach()))
    scores = (torch.tensor(weights, dtype=torch.float64, device=experts.device).view(3, 1, 1) * experts).sum(0)
    return weights, float((scores.argmax(1) == y).double().mean())
