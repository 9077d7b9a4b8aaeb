"""The evaluation slices: one-word titles and photos with a near-duplicate in the corpus."""

import io

import numpy as np
from PIL import Image, ImageFilter

from evaluation.judgments import EvalQuery
from evaluation.protocol import near_duplicate_queries, one_word_queries, photo_hashes


def _photo(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    return Image.fromarray(pixels).resize((256, 256), Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(4))


def _save(image: Image.Image, path, **options):
    image.save(path, **options)
    return path


def test_near_identical_photos_are_found_and_unrelated_ones_are_not(tmp_path):
    original = _photo(0)
    corpus = [_save(original, tmp_path / "same.jpg", quality=90), _save(_photo(1), tmp_path / "other.jpg")]
    buffer = io.BytesIO()
    original.save(buffer, format="JPEG", quality=40)  # re-encoded at a low quality and resized
    reencoded = Image.open(buffer).resize((200, 200))
    queries = {
        "identical": _save(original, tmp_path / "q-identical.jpg", quality=90),
        "reencoded": _save(reencoded, tmp_path / "q-reencoded.png"),
        "unrelated": _save(_photo(2), tmp_path / "q-unrelated.jpg"),
    }
    corpus_hashes = photo_hashes(corpus)
    query_hashes = dict(zip(queries, photo_hashes(list(queries.values()))))
    assert near_duplicate_queries(query_hashes, corpus_hashes) == {"identical", "reencoded"}
    assert near_duplicate_queries(query_hashes, corpus_hashes[1:]) == set()  # only the unrelated photo left
    distance = np.bitwise_count(query_hashes["unrelated"] ^ corpus_hashes[0])
    assert distance > 12  # unrelated photos are far from the threshold


def test_one_word_queries():
    queries = {"a": EvalQuery("a", text="Sofa"), "b": EvalQuery("b", text="Oak dining table"),
               "c": EvalQuery("c", image_id="img")}
    assert one_word_queries(queries) == {"a"}
