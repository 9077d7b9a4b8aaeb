"""The small saveable modules a tower is made of (sentence-transformers style).

Each module reads named entries of a shared ``features`` dict and writes others:

    ImageBackbone: pixel_values -> feature_map          TextBackbone: input_ids, attention_mask -> token_embeddings
    Pooling:       feature_map | token_embeddings -> pooled
    Projection:    pooled -> embedding
    Normalize:     embedding -> embedding (L2)

Each module declares ``config_keys``; ``save(dir)`` writes ``config.json`` (+ ``model.safetensors`` when it
has weights) and ``load(dir)`` rebuilds it. Module types are resolved from the closed ``MODULE_TYPES``
registry, never from a dotted path stored on disk.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.transforms import InterpolationMode, v2

from core.files import write_json_atomic
from core.weights import load_strict
from encoders.backbones import (
    ImagePreprocessing,
    build_image_net,
    load_hf_folder,
    onnx_text_session,
    quiet_transformers_progress,
    text_blocks,
)

logger = logging.getLogger(__name__)

POOLING_MODES = ("global_avg", "masked_mean")


class SaveableModule(nn.Module):
    config_keys: tuple[str, ...] = ()
    has_weights = True

    def get_config_dict(self) -> dict:
        return {key: getattr(self, key) for key in self.config_keys}

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "config.json", self.get_config_dict())
        if self.has_weights:
            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            tmp = folder / "model.safetensors.tmp"
            save_file(state, str(tmp))
            tmp.replace(folder / "model.safetensors")

    @classmethod
    def load(cls, folder: Path) -> SaveableModule:
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        module = cls(**config)
        if cls.has_weights:
            load_strict(module, load_file(str(folder / "model.safetensors")), folder)
        return module


class SessionBackbone(SaveableModule):
    """A backbone whose inference forwards (eval mode, autograd off, CPU) may run in an ONNX Runtime session of
    its exported graph (``encoders.runtime``) instead of torch. Training forwards stay in torch, and switching
    to train mode drops the session (the weights may change); copies and pickles carry the torch weights only."""

    def _init_session(self) -> None:
        self._onnx_session = None
        self._onnx_precision: str | None = None

    @property
    def runtime(self) -> str:
        """Where inference forwards run: "onnxruntime" or "torch"."""
        return "torch" if self._onnx_session is None else "onnxruntime"

    @property
    def precision(self) -> str:
        """"fp32" or "int8" (the ONNX graph's), "fp32" in torch."""
        return self._onnx_precision or "fp32"

    def attach_session(self, session, precision: str = "fp32") -> None:
        self._onnx_session, self._onnx_precision = session, precision

    def detach_session(self) -> None:
        self._onnx_session, self._onnx_precision = None, None

    def _session_usable(self, tensor: torch.Tensor) -> bool:
        return (self._onnx_session is not None and not self.training and not torch.is_grad_enabled()
                and tensor.device.type == "cpu")

    def train(self, mode: bool = True):
        if mode and self._onnx_session is not None:
            logger.info("%s back to torch for training (the ONNX Runtime copy would go stale)", type(self).__name__)
            self.detach_session()
        return super().train(mode)

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_onnx_session": None, "_onnx_precision": None}


class ImageBackbone(SessionBackbone):
    """A torchvision-style conv trunk plus the preprocessing that belongs to its weights."""

    config_keys = ("name", "preprocessing", "provenance", "mid_block")

    def __init__(self, name: str, preprocessing: dict | None = None, provenance: dict | None = None,
                 net: nn.Module | None = None, mid_block: int | None = None):
        super().__init__()
        self.name = name
        self.preprocessing = dict(preprocessing or asdict(ImagePreprocessing()))
        self.provenance = dict(provenance or {})
        self.net = net if net is not None else build_image_net(name, mid_block)
        # the block whose output joins the final map (``encoders.backbones.MobileNetV2Trunk``), None without
        self.mid_block = getattr(self.net, "mid_block", None)
        # channels-last convolutions are several times faster on CPU (oneDNN) and no slower on GPU
        self.net.to(memory_format=torch.channels_last)
        self.output_dim = int(self.net.out_channels)
        self._init_session()

    def get_config_dict(self) -> dict:
        config = super().get_config_dict()
        config["preprocessing"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.preprocessing.items()}
        if config["mid_block"] is None:  # bundles from before mid-level features keep their config and fingerprint
            del config["mid_block"]
        return config

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.net.blocks)

    def transforms(self, train: bool = False):
        """torchvision v2 transform turning a PIL image into a normalised float tensor."""

        p = ImagePreprocessing(**self.preprocessing)
        interpolation = InterpolationMode(p.interpolation)
        if train:
            steps = [v2.RandomResizedCrop(p.crop, scale=tuple(p.random_resized_crop_scale),
                                          interpolation=interpolation, antialias=True)]
            if p.horizontal_flip > 0:
                steps.append(v2.RandomHorizontalFlip(p.horizontal_flip))
            if p.color_jitter > 0:
                steps.append(v2.ColorJitter(p.color_jitter, p.color_jitter, p.color_jitter))
        else:
            # resized and cropped as PIL images (torchvision resizes those with PIL itself), so that the served
            # model's preprocessing without torch (``encoders.pixels``) gives the same pixels
            return v2.Compose([v2.Resize(p.resize, interpolation=interpolation, antialias=True),
                               v2.CenterCrop(p.crop), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                               v2.Normalize(list(p.mean), list(p.std))])
        return v2.Compose([v2.ToImage(), *steps, v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(list(p.mean), list(p.std))])

    def forward(self, features: dict) -> dict:
        if self._session_usable(features["pixel_values"]):
            feed = {"pixel_values": features["pixel_values"].float().contiguous().numpy()}
            features["feature_map"] = torch.from_numpy(self._onnx_session.run(None, feed)[0])
            return features
        pixels = features["pixel_values"].contiguous(memory_format=torch.channels_last)
        features["feature_map"] = self.net(pixels)
        return features


class TextBackbone(SessionBackbone):
    """A Hugging Face encoder plus its tokenizer; saved as a plain HF checkpoint folder."""

    config_keys = ("name", "max_length", "provenance")

    def __init__(self, name: str, max_length: int = 128, provenance: dict | None = None,
                 model=None, tokenizer=None):
        super().__init__()
        if model is None or tokenizer is None:
            raise ValueError("TextBackbone needs a model and a tokenizer; use TextBackbone.load(folder)")
        self.name = name
        self.max_length = int(max_length)
        self.provenance = dict(provenance or {})
        self.model = model
        self.tokenizer = tokenizer
        self.output_dim = int(getattr(model.config, "hidden_size", None) or model.config.dim)
        self._init_session()

    def use_onnxruntime(self, threads: int = 1) -> None:
        """Run inference forwards (eval mode, autograd off, CPU) through ONNX Runtime: an in-memory export
        of the loaded weights, checked against torch on a padded probe batch (fp32, equal to ~1e-6).
        Training forwards stay in torch, and switching to train mode drops the session (the weights may
        change). Raises ``encoders.backbones.TextRuntimeError`` when it cannot be used."""

        self.detach_session()
        probe = self.tokenize(["a short query", "a longer query, so that the probe batch has padding in it"])
        self.attach_session(onnx_text_session(self.model, probe, threads=threads), "fp32")

    @property
    def blocks(self) -> list[nn.Module]:

        return text_blocks(self.model)

    def tokenize(self, texts: list[str]) -> dict:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def forward(self, features: dict) -> dict:
        input_ids, attention_mask = features["input_ids"], features["attention_mask"]
        if self._session_usable(input_ids):
            feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
            features["token_embeddings"] = torch.from_numpy(self._onnx_session.run(None, feed)[0])
            return features
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        features["token_embeddings"] = out.last_hidden_state
        return features

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "backbone_config.json", self.get_config_dict())
        with quiet_transformers_progress():
            self.model.save_pretrained(str(folder), safe_serialization=True)
        self.tokenizer.save_pretrained(str(folder))

    @classmethod
    def load(cls, folder: Path) -> TextBackbone:

        folder = Path(folder)
        config = json.loads((folder / "backbone_config.json").read_text())
        model, tokenizer = load_hf_folder(folder)
        return cls(**config, model=model, tokenizer=tokenizer)


class Pooling(SaveableModule):
    """Global average pooling of a feature map, or attention-masked mean of token embeddings."""

    config_keys = ("mode", "dim")
    has_weights = False

    def __init__(self, mode: str, dim: int):
        super().__init__()
        if mode not in POOLING_MODES:
            raise ValueError(f"unknown pooling mode {mode!r}; allowed: {POOLING_MODES}")
        self.mode = mode
        self.dim = int(dim)

    def forward(self, features: dict) -> dict:
        if self.mode == "global_avg":
            features["pooled"] = features["feature_map"].float().mean(dim=(2, 3))
        else:
            tokens = features["token_embeddings"].float()
            mask = features["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            features["pooled"] = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return features


class Projection(SaveableModule):
    """Projection head to the shared space: [LayerNorm] then Linear, or Linear-GELU-Dropout-Linear when
    hidden_dim > 0. The LayerNorm puts backbone features of any scale (pretrained or random) on one footing."""

    config_keys = ("in_dim", "out_dim", "hidden_dim", "dropout", "input_norm")

    def __init__(self, in_dim: int, out_dim: int = 256, hidden_dim: int = 0, dropout: float = 0.1,
                 input_norm: bool = True):
        super().__init__()
        self.in_dim, self.out_dim, self.hidden_dim = int(in_dim), int(out_dim), int(hidden_dim)
        self.dropout = float(dropout)
        self.input_norm = bool(input_norm)
        norm = [nn.LayerNorm(self.in_dim)] if self.input_norm else []
        if self.hidden_dim > 0:
            self.net = nn.Sequential(
                *norm, nn.Dropout(self.dropout), nn.Linear(self.in_dim, self.hidden_dim), nn.GELU(),
                nn.Dropout(self.dropout), nn.Linear(self.hidden_dim, self.out_dim),
            )
        else:
            self.net = nn.Sequential(*norm, nn.Dropout(self.dropout), nn.Linear(self.in_dim, self.out_dim))

    def forward(self, features: dict) -> dict:
        features["embedding"] = self.net(features["pooled"])
        return features


class Normalize(SaveableModule):
    """L2 normalisation of the embedding."""

    has_weights = False

    def forward(self, features: dict) -> dict:
        features["embedding"] = F.normalize(features["embedding"], p=2, dim=-1)
        return features


MODULE_TYPES: dict[str, type[SaveableModule]] = {
    cls.__name__: cls for cls in (ImageBackbone, TextBackbone, Pooling, Projection, Normalize)
}


def module_type(name: str) -> type[SaveableModule]:
    if name not in MODULE_TYPES:
        raise ValueError(f"unknown module type {name!r} in tower.json; known types: {sorted(MODULE_TYPES)}")
    return MODULE_TYPES[name]
