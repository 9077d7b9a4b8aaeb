import json

import numpy as np
import pytest

from catalog.labels import LabelEncoder


def test_encode_decode_round_trip():
    enc = LabelEncoder(["Home & Garden", "Appliances"])
    assert enc.encode("Home & Garden") == 0
    assert enc.encode("Appliances") == 1
    assert enc.decode(1) == "Appliances"
    np.testing.assert_array_equal(enc.encode_many(["Appliances", "Home & Garden"]), [1, 0])
    assert enc.decode_many([0, 1]) == ["Home & Garden", "Appliances"]


def test_extend_keeps_existing_indices_and_appends_new_ones():
    enc = LabelEncoder(["Toys", "Bikes"])
    enc.extend(["Apples", "Bikes", "Zebras"])
    assert enc.classes == ["Toys", "Bikes", "Apples", "Zebras"]
    assert enc.encode("Toys") == 0 and enc.encode("Bikes") == 1


def test_json_round_trip_is_stable(tmp_path):
    enc = LabelEncoder(["B", "A", "Music, Films, Books & Games"])
    path = enc.to_json(tmp_path / "labels.json")
    loaded = LabelEncoder.from_json(path)
    assert loaded == enc
    assert json.loads(path.read_text())["classes"] == ["B", "A", "Music, Films, Books & Games"]
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file


def test_unknown_class_and_bad_index_raise_with_the_known_classes():
    enc = LabelEncoder(["A"])
    with pytest.raises(KeyError, match="known classes"):
        enc.encode("B")
    with pytest.raises(IndexError):
        enc.decode(1)
    with pytest.raises(ValueError):
        enc.extend([""])


def test_from_json_rejects_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="marketsearch ingest"):
        LabelEncoder.from_json(tmp_path / "missing.json")
    (tmp_path / "dup.json").write_text('{"classes": ["A", "A"]}')
    with pytest.raises(ValueError, match="duplicate"):
        LabelEncoder.from_json(tmp_path / "dup.json")
    (tmp_path / "bad.json").write_text('["A"]')
    with pytest.raises(ValueError, match="classes"):
        LabelEncoder.from_json(tmp_path / "bad.json")
