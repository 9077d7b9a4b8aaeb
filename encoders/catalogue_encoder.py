"""The model that encodes catalogue listings, for `marketsearch embed` and the serving processes' live follower.

Both load it here, so a listing written through the API and the same listing embedded in batch get the same
vectors. With the bundle's verified whole-tower fp32 graphs (`marketsearch export-onnx`) it is the served model
(``encoders.served.ServedModel``, fp32 towers): ONNX Runtime, ``tokenizers``, PIL and numpy, no torch, so a
serving process can encode a new listing a second after it starts. Without them (or with ``runtime="torch"``) it
is the torch bundle (``encoders.bundle.MultiModalModel``). Both give the same vectors within ~1e-6 (the graphs are
checked against the torch towers at export), under the same fingerprint: stored embeddings stay valid. fp32 only:
int8 is for queries, behind its quality gate.

What ``encoders.embed`` asks of either: ``fingerprint``, ``encode_texts``, and of ``image_tower``:
``eval_transform()`` (for the photo decoding workers), ``photo_encoder()`` where it has one (the served model: the
workers run the graph too), ``encode_pixels_with_pooled``, ``embed_pooled`` (the head
on pooled features from the training feature cache), ``feature_cache_key``, ``pooled_dim``, ``backbone.runtime``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from encoders.graphs import GraphError

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "onnxruntime", "torch")


def load_catalogue_encoder(model_dir: str | Path, *, runtime: str = "auto", threads: int = 1):
    """``runtime``: ``auto`` uses the fp32 graphs when they verify, else torch (the reason logged); ``onnxruntime``
    raises GraphError when they cannot be used; ``torch`` uses none (and imports torch)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be auto, onnxruntime or torch, got {runtime!r}")
    if runtime != "torch":
        from encoders.served import ServedModel

        try:
            model, _ = ServedModel.load(model_dir, int8=(), threads=threads)
            return model
        except GraphError as error:
            if runtime == "onnxruntime":
                raise
            logger.warning("catalogue listings are encoded in torch: %s", error)
    from encoders.bundle import MultiModalModel

    return MultiModalModel.load(model_dir)
