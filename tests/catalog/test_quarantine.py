import pytest

from catalog.quarantine import (
    QuarantineRecord,
    count_by_reason,
    read_quarantine_report,
    write_quarantine_report,
)


def test_report_round_trip_and_latest_copy(tmp_path):
    records = [
        QuarantineRecord("products", 3, "p1", "bad_price", "unparseable price 'POA'", {"price": "POA", "x": "a\rb"}),
        QuarantineRecord("products", 7, "p2", "wrong_field_count", "4 fields", ["1", "p2", "t, with comma", "c"]),
        QuarantineRecord("image_file", None, "stray", "image_file_unreferenced", "stray.jpg", None),
        QuarantineRecord("images", 9, "i1", "image_corrupt", "verify failed"),
    ]
    path = write_quarantine_report(records, tmp_path / "q", timestamp="t1")
    assert path == tmp_path / "q" / "quarantine-t1.csv"
    assert read_quarantine_report(path) == records
    assert (tmp_path / "q" / "latest.csv").read_bytes() == path.read_bytes()
    assert count_by_reason(records) == {
        "bad_price": 1, "image_corrupt": 1, "image_file_unreferenced": 1, "wrong_field_count": 1,
    }  # fmt: skip


def test_empty_report_still_refreshes_latest(tmp_path):
    write_quarantine_report([QuarantineRecord("images", 2, "i", "unknown_product", "")], tmp_path, timestamp="a")
    write_quarantine_report([], tmp_path, timestamp="b")
    assert read_quarantine_report(tmp_path / "latest.csv") == []


def test_unknown_reason_is_refused():
    with pytest.raises(ValueError, match="unknown quarantine reason"):
        QuarantineRecord("products", 1, "x", "because", "")
