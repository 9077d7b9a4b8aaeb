"""Relevance labels for training and evaluating the re-ranker, from three sources.

1. A judgments file (qrels): TREC ``query_id 0 listing_id grade`` lines, or a CSV with the columns
   ``query_id, listing_id, relevance``.
2. Logged interactions: CSV or JSONL rows of ``query_id, listing_id, event`` with an event in
   ``EVENT_GRADES`` (view, click, save, purchase); a pair's grade is its strongest event.
3. The self-supervised known-item protocol on the catalogue itself, for when neither exists:
   text (the query is a listing's title, every listing is indexed by its description only) and
   image (the query is one photo of a listing with several, which is represented by its other
   photos), and self-photo (the query is one of the listing's own catalogue photos, as when a
   buyer searches with a saved picture of a listing; the listing keeps all its photos).
   Grade 2 for the listing itself, 1 for listings with the same full category path.

Qrels are plain ``dict[query_id, dict[listing_id, grade]]`` (the shape ``ranx.Qrels.from_dict`` takes).
Queries are ``dict[query_id, EvalQuery]``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from core.files import write_text_atomic

logger = logging.getLogger(__name__)

Qrels = dict[str, dict[str, int]]

EVENT_GRADES: dict[str, int] = {"view": 0, "click": 1, "save": 2, "purchase": 3}

KNOWN_ITEM_GRADES = {"target": 2, "same_category_path": 1}

KNOWN_ITEM_LABEL_DEFINITION = {
    "source": "known-item protocol",
    "grades": {"0": "other listing", "1": "same full category path as the wanted listing", "2": "the wanted listing"},
}
INTERACTION_LABEL_DEFINITION = {
    "source": "logged interactions",
    "grades": {str(grade): event for event, grade in EVENT_GRADES.items()},
}
QRELS_LABEL_DEFINITION = {"source": "judgments file", "grades": "as given in the file (0 = not relevant)"}


class ListingLike(Protocol):
    id: str
    title: str
    description: str
    category: str
    image_ids: tuple[str, ...]


@dataclass(frozen=True)
class EvalQuery:
    """One evaluation or training query: text, a photo, or both."""

    query_id: str
    text: str | None = None
    image_path: Path | None = None
    image_id: str | None = None  # the catalogue photo used as the query (known-item image protocol)
    target_id: str | None = None  # the wanted listing (known-item protocols)

    def __post_init__(self) -> None:
        if not (self.text and self.text.strip()) and self.image_path is None and self.image_id is None:
            raise ValueError(f"query {self.query_id!r} has neither text nor an image; give at least one")


# -- generic file reading -------------------------------------------------------------------------
def _read_table(path: Path, required: tuple[str, ...], aliases: Mapping[str, tuple[str, ...]]) -> list[dict[str, Any]]:
    """Rows of a CSV/TSV/JSONL file as dicts keyed by the canonical column names."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{line_number} is not valid JSON ({error})") from error
                if not isinstance(record, dict):
                    raise ValueError(f"{path}:{line_number} must be a JSON object, got {type(record).__name__}")
                rows.append(record)
        header = sorted({key for row in rows for key in row})
    elif suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            header = list(reader.fieldnames or [])
            rows = list(reader)
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv or .jsonl")

    mapping = {}
    for name in required:
        for candidate in (name, *aliases.get(name, ())):
            if candidate in header:
                mapping[name] = candidate
                break
    missing = [name for name in required if name not in mapping]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {missing}; found {header}, need {list(required)}")
    optional = {name: alias for name, names in aliases.items() if name not in mapping
                for alias in (name, *names) if alias in header}
    mapping.update(optional)
    return [{name: row.get(column) for name, column in mapping.items()} for row in rows]


def _grade(value: Any, where: str) -> int:
    try:
        grade = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: relevance {value!r} is not a number; use integer grades 0, 1, 2, ...") from None
    if grade < 0 or grade != int(grade):
        raise ValueError(f"{where}: relevance {value!r} must be a non-negative integer grade")
    return int(grade)


# -- qrels ----------------------------------------------------------------------------------------
def read_qrels(path: str | os.PathLike) -> Qrels:
    """Read graded judgments: TREC qrels (``qid 0 docid grade``, any extension but .csv/.jsonl) or CSV/JSONL.

    CSV and JSONL need the columns ``query_id``, ``listing_id`` (or ``doc_id``) and ``relevance``
    (or ``grade``). Grade-0 judgments are kept (they are explicit non-relevance).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"judgments file {path} does not exist")
    qrels: Qrels = defaultdict(dict)
    if path.suffix.lower() in (".csv", ".tsv", ".jsonl"):
        rows = _read_table(
            path,
            ("query_id", "listing_id", "relevance"),
            {"query_id": ("qid", "query"), "listing_id": ("doc_id", "docid", "id"), "relevance": ("grade", "rel")},
        )
        for number, row in enumerate(rows, start=2):
            query_id, listing_id = str(row["query_id"] or "").strip(), str(row["listing_id"] or "").strip()
            if not query_id or not listing_id:
                raise ValueError(f"{path} row {number}: empty query_id or listing_id")
            qrels[query_id][listing_id] = _grade(row["relevance"], f"{path} row {number}")
    else:
        with path.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 4:
                    raise ValueError(
                        f"{path}:{line_number}: expected 4 fields 'query_id 0 listing_id grade' (TREC qrels), "
                        f"got {len(parts)}: {line.strip()!r}"
                    )
                qrels[parts[0]][parts[2]] = _grade(parts[3], f"{path}:{line_number}")
    if not qrels:
        raise ValueError(f"{path} holds no judgments")
    return dict(qrels)


def write_qrels(qrels: Mapping[str, Mapping[str, int]], path: str | os.PathLike) -> Path:
    """Write TREC qrels atomically."""
    path = Path(path)
    lines = [f"{qid} 0 {doc} {int(grade)}\n" for qid in sorted(qrels) for doc, grade in sorted(qrels[qid].items())]
    write_text_atomic(path, "".join(lines))
    return path


# -- queries --------------------------------------------------------------------------------------
def read_queries(path: str | os.PathLike) -> dict[str, EvalQuery]:
    """Read evaluation queries.

    Formats: TREC/MS MARCO style ``query_id<TAB>text`` lines (.txt, .tsv without a header, .trec),
    or CSV/JSONL with ``query_id`` and ``text`` and/or ``image`` (a path, relative to the file's folder).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"queries file {path} does not exist")
    queries: dict[str, EvalQuery] = {}
    suffix = path.suffix.lower()
    if suffix in (".csv", ".jsonl"):
        rows = _read_table(path, ("query_id",), {"query_id": ("qid",), "text": ("query",), "image": ("image_path",)})
        for number, row in enumerate(rows, start=2):
            query_id = str(row.get("query_id") or "").strip()
            if not query_id:
                raise ValueError(f"{path} row {number}: empty query_id")
            text = (row.get("text") or "").strip() or None
            image = (row.get("image") or "").strip() or None
            image_path = (path.parent / image) if image else None
            if image_path is not None and not image_path.is_file():
                raise FileNotFoundError(f"{path} row {number}: image {image_path} does not exist")
            queries[query_id] = EvalQuery(query_id, text=text, image_path=image_path)
    else:
        with path.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                query_id, sep, text = line.rstrip("\n").partition("\t")
                if not sep or not text.strip():
                    raise ValueError(
                        f"{path}:{line_number}: expected 'query_id<TAB>query text', got {line.strip()!r}"
                    )
                queries[query_id.strip()] = EvalQuery(query_id.strip(), text=text.strip())
    if not queries:
        raise ValueError(f"{path} holds no queries")
    return queries


def write_queries(queries: Mapping[str, EvalQuery], path: str | os.PathLike) -> Path:
    """Write text queries as ``query_id<TAB>text`` lines (image queries are written with their image id)."""
    lines = []
    for query_id, query in queries.items():
        text = query.text or f"[image {query.image_id or query.image_path}]"
        lines.append(f"{query_id}\t{' '.join(text.split())}\n")
    path = Path(path)
    write_text_atomic(path, "".join(lines))
    return path


# -- interactions ---------------------------------------------------------------------------------
def read_interactions(
    path: str | os.PathLike, event_grades: Mapping[str, int] = EVENT_GRADES
) -> Qrels:
    """Graded relevance from logged interactions (CSV or JSONL of ``query_id, listing_id, event``).

    A (query, listing) pair gets the grade of its strongest event; shown-but-ignored candidates are
    not in this file and get grade 0 when joined with the feature log.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"interactions file {path} does not exist")
    rows = _read_table(
        path, ("query_id", "listing_id", "event"), {"listing_id": ("doc_id",), "event": ("action", "type")}
    )
    qrels: Qrels = defaultdict(dict)
    for number, row in enumerate(rows, start=2):
        event = str(row["event"] or "").strip().lower()
        if event not in event_grades:
            raise ValueError(
                f"{path} row {number}: unknown event {row['event']!r}; allowed events are {sorted(event_grades)}"
            )
        query_id, listing_id = str(row["query_id"] or "").strip(), str(row["listing_id"] or "").strip()
        if not query_id or not listing_id:
            raise ValueError(f"{path} row {number}: empty query_id or listing_id")
        grade = event_grades[event]
        qrels[query_id][listing_id] = max(grade, qrels[query_id].get(listing_id, 0))
    if not qrels:
        raise ValueError(f"{path} holds no interactions")
    return dict(qrels)


# -- the known-item protocol ----------------------------------------------------------------------
def _same_path_groups(listings: Iterable[ListingLike]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for listing in listings:
        if listing.category:
            groups[listing.category].append(listing.id)
    return groups


def _known_item_qrels(target: ListingLike, groups: Mapping[str, list[str]]) -> dict[str, int]:
    grades = {other: KNOWN_ITEM_GRADES["same_category_path"] for other in groups.get(target.category, [])}
    grades[target.id] = KNOWN_ITEM_GRADES["target"]
    return grades


def wanted_listing_qrels(queries: Mapping[str, EvalQuery]) -> Qrels:
    """Known-item qrels: each query's wanted listing (``EvalQuery.target_id``) is its only relevant listing.

    Queries that name no wanted listing are left out."""
    return {query_id: {query.target_id: 1} for query_id, query in queries.items() if query.target_id is not None}


def known_item_text(
    listings: list[ListingLike], corpus: list[ListingLike] | None = None
) -> tuple[dict[str, EvalQuery], Qrels]:
    """Known-item text protocol: one query per listing with a title, the title itself.

    ``corpus`` (default: ``listings``) is what is searched; it must contain ``listings`` and index
    each listing by its description only (``evaluation.protocol``), otherwise the title would find itself.
    """
    groups = _same_path_groups(corpus if corpus is not None else listings)
    queries: dict[str, EvalQuery] = {}
    qrels: Qrels = {}
    for listing in listings:
        if not listing.title or not listing.title.strip():
            continue
        query_id = f"text-{listing.id}"
        queries[query_id] = EvalQuery(query_id, text=listing.title.strip(), target_id=listing.id)
        qrels[query_id] = _known_item_qrels(listing, groups)
    logger.info("known-item text protocol: %d queries over %d listings", len(queries), len(listings))
    return queries, qrels


def known_item_image(
    listings: list[ListingLike], corpus: list[ListingLike] | None = None
) -> tuple[dict[str, EvalQuery], Qrels]:
    """Known-item image protocol: for each listing with at least two photos, its first photo is the query.

    ``corpus`` (default: ``listings``) must represent that listing by its other photos only
    (``evaluation.protocol``).
    """
    groups = _same_path_groups(corpus if corpus is not None else listings)
    queries: dict[str, EvalQuery] = {}
    qrels: Qrels = {}
    for listing in listings:
        if len(listing.image_ids) < 2:
            continue
        query_id = f"image-{listing.id}"
        queries[query_id] = EvalQuery(query_id, image_id=listing.image_ids[0], target_id=listing.id)
        qrels[query_id] = _known_item_qrels(listing, groups)
    logger.info("known-item image protocol: %d queries over %d listings", len(queries), len(listings))
    return queries, qrels


def represented_photos(listings: Iterable[ListingLike], queries: Mapping[str, EvalQuery]) -> dict[str, list[str]]:
    """The photos that represent each listing in the known-item image corpus: all of a listing's photos, less the
    query photo where one of ``queries`` (``known_item_image``) wants that listing. Listing ids, photo order kept."""
    query_photo = {query.target_id: query.image_id for query in queries.values()}
    return {listing.id: [p for p in listing.image_ids if p != query_photo.get(listing.id)] for listing in listings}


def known_item_self_photo(
    listings: list[ListingLike], corpus: list[ListingLike] | None = None
) -> tuple[dict[str, EvalQuery], Qrels]:
    """Self-photo protocol: for each listing with a photo, its first photo is the query.

    Unlike ``known_item_image``, the corpus represents the listing by all its photos, the query photo
    included: the query is (a near-duplicate of) a photo the catalogue holds. ``evaluation.protocol``
    serves the photo as it is for evaluation and lightly transformed for training.
    """
    groups = _same_path_groups(corpus if corpus is not None else listings)
    queries: dict[str, EvalQuery] = {}
    qrels: Qrels = {}
    for listing in listings:
        if not listing.image_ids:
            continue
        query_id = f"self-photo-{listing.id}"
        queries[query_id] = EvalQuery(query_id, image_id=listing.image_ids[0], target_id=listing.id)
        qrels[query_id] = _known_item_qrels(listing, groups)
    logger.info("self-photo protocol: %d queries over %d listings", len(queries), len(listings))
    return queries, qrels

