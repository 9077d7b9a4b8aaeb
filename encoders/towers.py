"""Image and text towers: backbone -> pooling -> projection -> L2 normalise, built from named configs.

A tower is an ordered list of saveable modules (see ``encoders.modules``). ``save(dir)`` writes
``tower.json`` (the module list) and one sub-folder per module; ``Tower.load(dir)`` replays it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from torch import nn

from core.files import write_json_atomic
from encoders.backbones import BackboneChoice, resolve_image_backbone, resolve_text_backbone
from encoders.features import backbone_key
from encoders.modules import ImageBackbone, Normalize, Pooling, Projection, TextBackbone, module_type

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
MODALITIES = ("image", "text")


@dataclass
class TowerConfig:
    backbone: str = "auto"  # name, "auto", or (text) a local Hugging Face folder
    pretrained: bool = True
    embed_dim: int = 256
    hidden_dim: int = 512  # projection MLP width; 0 = single linear layer
    dropout: float = 0.1
    max_length: int = 128  # text only: tokenizer truncation
    image_size: int | None = None  # image only: override the backbone's input size (resize = crop = this)
    # image only: a MobileNetV2 joins its block 16 to the final map (encoders.backbones.MOBILENET_V2_MID_BLOCK)
    mid_features: bool = True


@dataclass
class ModelConfig:
    """A named architecture: both towers (and the shared dimension)."""

    name: str = "default"
    embed_dim: int = 256
    image: TowerConfig = field(default_factory=TowerConfig)
    text: TowerConfig = field(default_factory=TowerConfig)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        data = copy.deepcopy(data)
        embed_dim = int(data.get("embed_dim", 256))
        towers = {}
        for modality in MODALITIES:
            tower = dict(data.get(modality, {}))
            tower.setdefault("embed_dim", embed_dim)
            towers[modality] = TowerConfig(**tower)
        return cls(name=data.get("name", "custom"), embed_dim=embed_dim, **towers)


def list_towers() -> list[str]:
    """Names of the architecture configs in ``encoders/configs``."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.json"))


def get_model_config(name: str) -> ModelConfig:
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"unknown model config {name!r}; available: {list_towers()}")
    data = json.loads(path.read_text())
    data["name"] = name
    return ModelConfig.from_dict(data)


class Tower(nn.Module):
    """One modality's encoder: [backbone, pooling, projection, normalize] over a features dict."""

    def __init__(self, modality: str, modules: list[nn.Module]):
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; allowed: {MODALITIES}")
        expected = (ImageBackbone if modality == "image" else TextBackbone, Pooling, Projection, Normalize)
        if len(modules) != 4 or not all(isinstance(m, t) for m, t in zip(modules, expected)):
            raise ValueError(
                f"a {modality} tower is [{', '.join(t.__name__ for t in expected)}], "
                f"got [{', '.join(type(m).__name__ for m in modules)}]"
            )
        self.modality = modality
        self.layers = nn.ModuleList(modules)

    # -- parts
    @property
    def backbone(self):
        return self.layers[0]

    @property
    def pooling(self) -> Pooling:
        return self.layers[1]

    @property
    def projection(self) -> Projection:
        return self.layers[2]

    @property
    def embed_dim(self) -> int:
        return self.projection.out_dim

    @property
    def pooled_dim(self) -> int:
        return self.projection.in_dim

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, features: dict) -> dict:
        for layer in self.layers:
            features = layer(features)
        return features

    def trunk(self, features: dict) -> torch.Tensor:
        """Backbone + pooling: the part that is frozen (and cached) in the default training profile."""
        return self.pooling(self.backbone(features))["pooled"]

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Projection + normalisation of pooled backbone features."""
        features = {"pooled": pooled}
        for layer in self.layers[2:]:
            features = layer(features)
        return features["embedding"]

    # -- inputs
    def prepare(self, items: list, train: bool = False) -> dict:
        """Raw inputs (PIL images or strings) -> model inputs on this tower's device."""
        if self.modality == "image":
            transform = self.backbone.transforms(train=train)
            pixels = torch.stack([transform(_rgb(image)) for image in items])
            return {"pixel_values": pixels.to(self.device)}
        batch = self.backbone.tokenize([str(text) for text in items])
        return {key: value.to(self.device) for key, value in batch.items()}

    def _batched(self, items: list, batch_size: int, run, dim: int) -> np.ndarray:
        """``run`` over batches in eval mode, float32 (n, dim) in input order; texts are batched by length
        (less padding)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = (np.argsort([-len(str(t)) for t in items], kind="stable") if self.modality == "text"
                 else np.arange(len(items)))
        out = np.empty((len(items), dim), np.float32)
        with self._inference():
            for s in range(0, len(items), batch_size):
                rows = order[s : s + batch_size]
                out[rows] = run(self.prepare([items[i] for i in rows])).float().cpu().numpy()
        return out

    @contextlib.contextmanager
    def _inference(self):
        """Eval mode without autograd, restoring the previous mode afterwards. An eval-mode tower (the served
        case) is left alone: ``train()``/``eval()`` walk every submodule (~130 for MiniLM), which cost more
        than an int8 backbone forward of a short query."""
        was_training = self.training
        if was_training:
            self.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            if was_training:
                self.train(True)

    def encode_pooled(self, items: list, batch_size: int = 32) -> np.ndarray:
        """Pooled backbone features (float32 (n, pooled_dim)) in eval mode."""
        return self._batched(items, batch_size, self.trunk, self.pooled_dim)

    def embed_pooled(self, pooled: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Embeddings (as ``encode``) of pooled backbone features already computed, e.g. read from the
        frozen-feature cache: float32 (n, pooled_dim) -> float32 (n, embed_dim)."""
        pooled = np.asarray(pooled, np.float32)
        out = np.empty((len(pooled), self.embed_dim), np.float32)
        with self._inference():
            for s in range(0, len(pooled), batch_size):
                batch = torch.as_tensor(pooled[s : s + batch_size], device=self.device)
                out[s : s + batch_size] = self.head(batch).float().cpu().numpy()
        return out

    def encode(self, items: list, batch_size: int = 32) -> np.ndarray:
        """L2-normalised embeddings, float32 (n, embed_dim)."""
        return self._batched(items, batch_size, lambda features: self.forward(features)["embedding"], self.embed_dim)

    def encode_with_pooled(self, items: list, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings (as ``encode``) and the pooled backbone features they came from, in one forward pass:
        float32 (n, embed_dim) and (n, pooled_dim)."""
        both = self._batched(items, batch_size, self._embedding_and_pooled, self.embed_dim + self.pooled_dim)
        return both[:, : self.embed_dim], both[:, self.embed_dim :]

    def eval_transform(self) -> TorchEvalPixels:
        """The image eval transform as a picklable ``PIL image -> float32 (3, H, W)`` numpy callable, for the
        catalogue's photo decoding workers (``encoders.photo_stream``)."""
        if self.modality != "image":
            raise ValueError("eval_transform is for the image tower")
        return TorchEvalPixels(self.backbone.transforms(train=False))

    @property
    def feature_cache_key(self) -> str:
        """The folder of this tower's frozen-feature cache (``encoders.features.backbone_key``)."""
        return backbone_key(self)

    def encode_pixels_with_pooled(self, pixels, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """``encode_with_pooled`` of images already preprocessed (``prepare``'s pixel values, float (n, 3, H, W),
        a tensor or numpy), in batches of ``batch_size`` in order, as ``encode_with_pooled`` batches the images."""
        if self.modality != "image":
            raise ValueError("encode_pixels_with_pooled is for the image tower")
        pixels = torch.as_tensor(pixels)
        out = np.empty((len(pixels), self.embed_dim + self.pooled_dim), np.float32)
        with self._inference():
            for s in range(0, len(pixels), batch_size):
                features = {"pixel_values": pixels[s : s + batch_size].to(self.device)}
                out[s : s + batch_size] = self._embedding_and_pooled(features).float().cpu().numpy()
        return out[:, : self.embed_dim], out[:, self.embed_dim :]

    def _embedding_and_pooled(self, features: dict) -> torch.Tensor:
        pooled = self.trunk(features)
        return torch.cat([self.head(pooled), pooled], dim=1)

    # -- persistence
    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        entries = []
        for idx, layer in enumerate(self.layers):
            path = f"{idx}_{type(layer).__name__}"
            layer.save(folder / path)
            entries.append({"idx": idx, "name": path, "path": path, "type": type(layer).__name__})
        write_json_atomic(folder / "tower.json", {"modality": self.modality, "modules": entries,
                                                  "versions": library_versions()})

    @classmethod
    def load(cls, folder: Path) -> Tower:
        folder = Path(folder)
        manifest_path = folder / "tower.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path} not found: {folder} is not a saved tower (Tower.save)")
        manifest = json.loads(manifest_path.read_text())
        modules = [module_type(entry["type"]).load(folder / entry["path"])
                   for entry in sorted(manifest["modules"], key=lambda e: e["idx"])]
        tower = cls(manifest["modality"], modules)
        tower.eval()
        return tower

    def use_onnxruntime(self, threads: int = 1) -> None:
        """Text tower: run inference forwards of the backbone in ONNX Runtime, several times faster than
        eager torch for one short query on CPU (see ``TextBackbone.use_onnxruntime``); raises
        ``encoders.backbones.TextRuntimeError`` when it cannot, leaving the tower on torch."""
        if self.modality != "text":
            raise ValueError(f"only the text tower has an ONNX Runtime path, this is the {self.modality} tower")
        self.backbone.use_onnxruntime(threads)

    def freeze_backbone(self, trainable_top_blocks: int = 0) -> None:
        """Freeze the backbone except its top ``trainable_top_blocks`` blocks (0 = fully frozen)."""
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(False)
        if trainable_top_blocks > 0:
            for block in self.backbone.blocks[-trainable_top_blocks:]:
                for parameter in block.parameters():
                    parameter.requires_grad_(True)


class TorchEvalPixels:
    """A torchvision eval transform with numpy out (``Tower.eval_transform``)."""

    def __init__(self, transform):
        self.transform = transform

    def worker_init(self) -> None:
        """In a decoding worker (``encoders.photo_stream``), before the first photo: one intra-op thread, as torch's
        DataLoader workers do; a forked child that used the parent's OpenMP pool hangs."""
        torch.set_num_threads(1)

    def __call__(self, image: Image.Image) -> np.ndarray:
        return self.transform(image).numpy()


def _rgb(image) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a PIL.Image.Image, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


def library_versions() -> dict:

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def build_image_tower(name: str = "auto", pretrained: bool = True, embed_dim: int = 256, hidden_dim: int = 512,
                      dropout: float = 0.1, allow_download: bool = True,
                      image_size: int | None = None, mid_features: bool = True) -> tuple[Tower, BackboneChoice]:
    net, choice = resolve_image_backbone(name, pretrained=pretrained, allow_download=allow_download,
                                         mid_features=mid_features)
    if image_size is not None:
        if image_size < 32:
            raise ValueError(f"image_size must be >= 32 pixels, got {image_size}")
        choice.preprocessing.update(resize=int(image_size), crop=int(image_size))
    backbone = ImageBackbone(choice.name, preprocessing=choice.preprocessing, provenance=choice.provenance(), net=net)
    tower = Tower("image", [backbone, Pooling("global_avg", backbone.output_dim),
                            Projection(backbone.output_dim, embed_dim, hidden_dim, dropout), Normalize()])
    return tower, choice


def build_text_tower(name: str = "auto", pretrained: bool = True, embed_dim: int = 256, hidden_dim: int = 512,
                     dropout: float = 0.1, max_length: int = 128,
                     allow_download: bool = True) -> tuple[Tower, BackboneChoice]:
    model, tokenizer, choice = resolve_text_backbone(name, pretrained=pretrained, allow_download=allow_download)
    backbone = TextBackbone(choice.name, max_length=max_length, provenance=choice.provenance(),
                            model=model, tokenizer=tokenizer)
    tower = Tower("text", [backbone, Pooling("masked_mean", backbone.output_dim),
                           Projection(backbone.output_dim, embed_dim, hidden_dim, dropout), Normalize()])
    return tower, choice


def build_towers(config: ModelConfig, allow_download: bool = True) -> tuple[Tower, Tower]:
    image_tower, image_choice = build_image_tower(
        config.image.backbone, config.image.pretrained, config.embed_dim, config.image.hidden_dim,
        config.image.dropout, allow_download=allow_download, image_size=config.image.image_size,
        mid_features=config.image.mid_features)
    text_tower, text_choice = build_text_tower(
        config.text.backbone, config.text.pretrained, config.embed_dim, config.text.hidden_dim,
        config.text.dropout, config.text.max_length, allow_download=allow_download)
    for choice in (image_choice, text_choice):
        logger.info("%s backbone: %s (%s)", choice.modality, choice.name, choice.source)
    return image_tower, text_tower
