"""What the search pipeline asks of a model, shared by the torch bundle (``encoders.bundle.MultiModalModel``) and
the served model (``encoders.served.ServedModel``): both hold a text tower, an image tower, the fusion head and the
optional lexical branch, and answer through them the same way. No torch here, so the served model stays without it."""

from __future__ import annotations

import numpy as np

from fusion.served import classify


class QueryModel:
    """Encoding and classification over ``text_tower``, ``image_tower``, ``fusion``, ``lexical`` and ``embed_dim``,
    which the subclass provides."""

    def encode_texts(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """float32 (n, embed_dim), L2-normalised."""
        if isinstance(texts, str):
            raise ValueError("encode_texts takes a list of strings; wrap a single query as [query]")
        return self.text_tower.encode(list(texts), batch_size=batch_size)

    def encode_images(self, images: list, batch_size: int = 32) -> np.ndarray:
        """float32 (n, embed_dim), L2-normalised, from PIL images (any mode; converted to RGB)."""
        return self.image_tower.encode(list(images), batch_size=batch_size)

    def classify(self, text_emb: np.ndarray | None, image_emb: np.ndarray | None,
                 texts: list[str] | None = None) -> np.ndarray:
        """Category probabilities float32 (n, C) (columns follow ``labels.classes``).

        Either embedding may be None; an all-zero row counts as "this modality is missing" (the convention
        of EmbeddingTable.image for listings without a photo). ``texts`` (n, the words the text embeddings
        were encoded from) feed the lexical branch when the model has one; without them the head alone
        answers.
        """
        return classify(self.fusion, self.lexical, self.embed_dim, text_emb, image_emb, texts)
