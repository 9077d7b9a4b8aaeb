"""The served model (graphs + numpy, no torch) gives what the torch model gives: the same token ids, pixels,
category probabilities, embeddings and rankings; a graph it cannot use is refused with the reason."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from encoders.graphs import GraphError
from encoders.pixels import EvalPixels
from encoders.runtime import save_tokenizer
from encoders.served import ServedModel
from fusion.served import ServedFusionHead, ServedLexical

ODD_TEXTS = [
    "Café crème brûlée – déjà vu naïve façade",
    "ÉCOLE ÀÉÎÕÜ ß straße İstanbul",
    "vintage bike 🚲🔥 with emoji 👍🏽 and ZWJ 👨‍👩‍👧",
    "日本語のテキスト 中文 한국어",
    "   \t\n  ",  # nothing left after cleaning
    "\u200b\u200b\u00ad",  # zero-width and soft hyphen only
    "tabs\tand\nnew\r\nlines  and   spaces",
    "x" * 3000,  # one very long word
    " ".join(["very long description"] * 400),  # far beyond max_length
    "iPhone 12 Pro Max 256GB (unlocked) - $499.99 / £420, 10% off!!!",
    "",
]


def test_tokenizers_file_gives_the_transformers_token_ids(trained_model, tmp_path):
    from tokenizers import Tokenizer

    backbone = trained_model.text_tower.backbone
    save_tokenizer(backbone, tmp_path / "tokenizer.json")
    tokenizer = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for batch in (ODD_TEXTS, ODD_TEXTS[:1], ODD_TEXTS[-3:]):
        want = backbone.tokenize(batch)
        got = tokenizer.encode_batch(batch)
        assert np.array_equal(np.array([e.ids for e in got]), want["input_ids"].numpy())
        assert np.array_equal(np.array([e.attention_mask for e in got]), want["attention_mask"].numpy())
    assert max(len(e.ids) for e in tokenizer.encode_batch(ODD_TEXTS)) == backbone.max_length


def _odd_photos(photo_path: Path) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 256, (333, 1001, 3), np.uint8)).resize((1001, 333), Image.BILINEAR)
    with Image.open(photo_path) as real:
        real = real.copy()
    return [
        real,
        real.convert("L"),
        real.convert("RGBA"),
        real.convert("P"),
        real.convert("CMYK"),
        real.rotate(90, expand=True),
        smooth,  # wide
        smooth.transpose(Image.Transpose.ROTATE_90),  # tall
        Image.fromarray(rng.integers(0, 256, (7, 10, 3), np.uint8)),  # tiny: upsampled
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), np.uint8)),  # already the crop size
        Image.fromarray(rng.integers(0, 256, (225, 224, 3), np.uint8)),
        Image.fromarray(rng.integers(0, 256, (1, 300, 3), np.uint8)),  # one pixel high
    ]


def test_numpy_pixels_equal_the_eval_transform(trained_model, trained_workspace):
    photo = next((trained_workspace.root / "images").rglob("*.jpg"))
    backbone = trained_model.image_tower.backbone
    transform = backbone.transforms(train=False)
    for preprocessing in (backbone.preprocessing, {**backbone.preprocessing, "resize": 256, "crop": 224},
                          {**backbone.preprocessing, "resize": 200, "crop": 224}):  # crop larger: zero padding
        backbone_copy = copy.copy(backbone)
        backbone_copy.preprocessing = preprocessing
        transform = backbone_copy.transforms(train=False)
        images = _odd_photos(photo)
        want = np.stack([transform(image.convert("RGB")).numpy() for image in images])
        got = EvalPixels(preprocessing).stack(images)
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-6


def test_numpy_fusion_head_equals_torch(trained_model, tmp_path):
    head = copy.deepcopy(trained_model.fusion)
    rng = np.random.default_rng(1)
    image = rng.normal(size=(9, head.image_dim)).astype(np.float32)
    text = rng.normal(size=(9, head.text_dim)).astype(np.float32)
    present = np.array([1, 1, 0, 1, 0, 1, 1, 1, 0], bool)
    for weights in ((1.0, 0.0, 0.0), (0.7, 0.4, 0.2)):
        head.expert_weights = weights
        head.save(tmp_path / "fusion")
        served = ServedFusionHead.load(tmp_path / "fusion")
        for args in ((image, text, present), (image, text, None), (image, None, None), (None, text, None)):
            want = head.predict_proba(*args)
            got = served.predict_proba(*args)
            assert got.shape == want.shape
            assert np.abs(got - want).max() <= 1e-5, (weights, [a is None for a in args])


def _listing_texts(workspace) -> list[str]:
    from catalog.store import Catalog

    with Catalog(workspace.db_url, root=workspace.root) as catalog:
        return [f"{listing.title} {listing.description or ''}"
                for listing in catalog.get_listings(catalog.listing_ids()[:80])]


def test_numpy_lexical_branch_equals_scikit_learn(trained_model, trained_workspace):
    lexical = trained_model.lexical
    assert lexical is not None, "the fixture bundle is trained with the lexical branch"
    served = ServedLexical.load(trained_workspace.model_dir / "lexical")
    texts = _listing_texts(trained_workspace) + ODD_TEXTS + ["THE the The tHe", "a b c d e f"]
    assert np.abs(np.exp(served.log_proba(texts)) - np.exp(lexical.log_proba(texts))).max() <= 1e-5
    head = np.random.default_rng(2).dirichlet(np.ones(lexical.num_classes), size=len(texts)).astype(np.float32)
    for mode in ("text", "fused"):
        assert np.abs(served.pool(head, texts, mode) - lexical.pool(head, texts, mode)).max() <= 1e-5


def test_numpy_lexical_branch_equals_scikit_learn_for_two_classes(trained_workspace, tmp_path):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from fusion.lexical import LexicalBranch

    texts = _listing_texts(trained_workspace)
    y = np.array([i % 2 for i in range(len(texts))]) * 2  # classes 0 and 2 of 3: a binary regression
    vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2)).fit(texts)
    classifier = LogisticRegression(C=3.0, max_iter=1000).fit(vectorizer.transform(texts), y)
    branch = LexicalBranch(vectorizer, classifier, 3, {"text": (1.0, 0.5), "fused": (1.0, 0.3)})
    branch.save(tmp_path / "lexical")
    served = ServedLexical.load(tmp_path / "lexical")
    probe = texts[:20] + ODD_TEXTS
    assert np.abs(np.exp(served.log_proba(probe)) - np.exp(branch.log_proba(probe))).max() <= 1e-5


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_served_model_encodes_and_ranks_like_the_torch_model(served_workspace, searcher):
    from search.pipeline import Searcher

    served, notes = ServedModel.load(served_workspace.model_dir)
    assert "no int8 graph" in notes["text"] and "no int8 graph" in notes["image"]
    torch_model = searcher.model
    assert served.fingerprint == torch_model.fingerprint
    texts = _listing_texts(served_workspace)[:30] + ODD_TEXTS
    assert _cosines(served.encode_texts(texts), torch_model.encode_texts(texts)).min() >= 0.9999
    photos = sorted((served_workspace.root / "images").rglob("*.jpg"))[:12]
    images = [Image.open(p).convert("RGB") for p in photos]
    got_emb, got_pooled = served.image_tower.encode_with_pooled(images)
    want_emb, want_pooled = torch_model.image_tower.encode_with_pooled(images)
    assert _cosines(got_emb, want_emb).min() >= 0.9999 and _cosines(got_pooled, want_pooled).min() >= 0.9999
    assert isinstance(torch_model.fusion, torch.nn.Module)  # the reference is the torch model
    probs = served.classify(served.encode_texts(texts[:3]), got_emb[:3], texts[:3])
    want = torch_model.classify(torch_model.encode_texts(texts[:3]), want_emb[:3], texts[:3])
    assert np.abs(probs - want).max() <= 1e-4

    served_searcher = Searcher.from_workspace(served_workspace, load_ranker=False, model=served)
    for query in ["good condition", "red bike", "oak dining table with four chairs", "iphone", texts[0][:60]]:
        want = searcher.search(text=query, k=10)
        got = served_searcher.search(text=query, k=10)
        assert [h.listing_id for h in got.hits] == [h.listing_id for h in want.hits], query
        assert got.predicted_category == want.predicted_category
    for image in images[:6]:
        want = searcher.search(image=image, k=10)
        got = served_searcher.search(image=image, k=10)
        assert [h.listing_id for h in got.hits] == [h.listing_id for h in want.hits]


def _copy_graphs(served_workspace, tmp_path) -> Path:
    model_dir = tmp_path / "model"
    shutil.copytree(served_workspace.model_dir, model_dir)
    return model_dir


@pytest.mark.parametrize("damage, reason", [
    (lambda d: (d / "onnx" / "text.fp32.onnx").write_bytes(b"not a graph"), "does not match its manifest"),
    (lambda d: (d / "onnx" / "image.fp32.onnx").unlink(), "missing"),
    (lambda d: (d / "onnx" / "tokenizer.json").write_text("{}"), "tokenizer.json does not match"),
    (lambda d: shutil.rmtree(d / "onnx"), "no exported ONNX graphs"),
    (lambda d: (d / "bundle.json").write_text(json.dumps({**json.loads((d / "bundle.json").read_text()),
                                                          "fingerprint": "f" * 64})), "not from the bundle's"),
    (lambda d: (d / "lexical" / "lexical.npz").unlink(), "no numpy arrays"),
])
def test_a_graph_the_served_model_cannot_use_is_refused_with_the_reason(served_workspace, tmp_path, damage, reason):
    model_dir = _copy_graphs(served_workspace, tmp_path)
    damage(model_dir)
    with pytest.raises(GraphError, match=reason):
        ServedModel.load(model_dir)
