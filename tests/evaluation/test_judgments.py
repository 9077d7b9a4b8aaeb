from dataclasses import dataclass

import pytest

from evaluation.judgments import (
    EVENT_GRADES,
    EvalQuery,
    known_item_image,
    known_item_text,
    read_interactions,
    read_qrels,
    read_queries,
    represented_photos,
    write_qrels,
)


@dataclass(frozen=True)
class FakeListing:
    id: str
    title: str
    description: str
    category: str
    image_ids: tuple[str, ...]


LISTINGS = [
    FakeListing("a", "Red road bike", "fast bike", "Sports / Bikes", ("a1", "a2")),
    FakeListing("b", "Blue bike", "kids bike", "Sports / Bikes", ("b1",)),
    FakeListing("c", "Desk lamp", "bright", "Home / Lighting", ("c1", "c2", "c3")),
    FakeListing("d", "  ", "no title", "Home / Lighting", ()),
]


def test_known_item_text_grades_the_listing_2_and_its_category_path_1():
    queries, qrels = known_item_text(LISTINGS)
    assert sorted(queries) == ["text-a", "text-b", "text-c"]  # d has no usable title
    assert queries["text-a"].text == "Red road bike" and queries["text-a"].target_id == "a"
    assert qrels["text-a"] == {"a": 2, "b": 1}
    assert qrels["text-c"] == {"c": 2, "d": 1}


def test_known_item_image_uses_listings_with_several_photos():
    queries, qrels = known_item_image(LISTINGS)
    assert sorted(queries) == ["image-a", "image-c"]
    assert queries["image-c"].image_id == "c1" and queries["image-c"].text is None
    assert qrels["image-c"] == {"c": 2, "d": 1}


def test_represented_photos_leave_out_only_the_query_photo():
    queries, _ = known_item_image(LISTINGS)
    assert represented_photos(LISTINGS, queries) == {"a": ["a2"], "b": ["b1"], "c": ["c2", "c3"], "d": []}
    assert represented_photos(LISTINGS, {}) == {x.id: list(x.image_ids) for x in LISTINGS}


def test_trec_qrels_round_trip(tmp_path):
    qrels = {"q1": {"a": 2, "b": 0}, "q2": {"c": 1}}
    assert read_qrels(write_qrels(qrels, tmp_path / "qrels.txt")) == qrels


def test_csv_qrels_and_bad_rows(tmp_path):
    path = tmp_path / "qrels.csv"
    path.write_text("query_id,doc_id,grade\nq1,a,2\nq1,b,1\n")
    assert read_qrels(path) == {"q1": {"a": 2, "b": 1}}
    path.write_text("query_id,doc_id,grade\nq1,a,high\n")
    with pytest.raises(ValueError, match="row 2: relevance 'high' is not a number"):
        read_qrels(path)
    path.write_text("query,text\nq1,a\n")
    with pytest.raises(ValueError, match="lacks the column"):
        read_qrels(path)
    trec = tmp_path / "bad.txt"
    trec.write_text("q1 0 a 1\nq1 a 1\n")
    with pytest.raises(ValueError, match="bad.txt:2: expected 4 fields"):
        read_qrels(trec)


def test_interactions_take_the_strongest_event(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(
        '{"query_id": "q1", "listing_id": "a", "event": "view"}\n'
        '{"query_id": "q1", "listing_id": "a", "event": "purchase"}\n'
        '{"query_id": "q1", "listing_id": "b", "event": "click"}\n'
        '{"query_id": "q1", "listing_id": "b", "event": "view"}\n'
    )
    assert read_interactions(path) == {"q1": {"a": EVENT_GRADES["purchase"], "b": EVENT_GRADES["click"]}}
    csv_path = tmp_path / "events.csv"
    csv_path.write_text("query_id,listing_id,event\nq1,a,like\n")
    with pytest.raises(ValueError, match="unknown event 'like'; allowed events are"):
        read_interactions(csv_path)


def test_queries_from_tsv_and_csv(tmp_path):
    tsv = tmp_path / "queries.tsv"
    tsv.write_text("q1\tred bike\nq2\tdesk lamp\n")
    assert {q: e.text for q, e in read_queries(tsv).items()} == {"q1": "red bike", "q2": "desk lamp"}
    (tmp_path / "photo.jpg").write_bytes(b"x")
    csv_path = tmp_path / "queries.csv"
    csv_path.write_text("query_id,text,image\nq1,red bike,\nq2,,photo.jpg\n")
    queries = read_queries(csv_path)
    assert queries["q2"].image_path == tmp_path / "photo.jpg" and queries["q2"].text is None
    csv_path.write_text("query_id,text,image\nq1,,\n")
    with pytest.raises(ValueError, match="neither text nor an image"):
        read_queries(csv_path)


def test_eval_query_needs_text_or_image():
    with pytest.raises(ValueError, match="neither text nor an image"):
        EvalQuery("q", text="   ")
