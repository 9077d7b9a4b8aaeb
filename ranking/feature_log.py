"""Feature logging for served searches, and turning logs plus interactions into training data.

Every served search can append one JSON line per candidate to ``<logs_dir>/features/features-<date>.jsonl``:
``{"query_id", "listing_id", "position", "logged_at", "query_text", "query_has_image",
"feature_set_version", "features": {name: value or null}}``. Later, interactions keyed by the same
``query_id`` (see ``evaluation.judgments.read_interactions``) label those rows, and the re-ranker is
trained on exactly the features the service computed.

A row is about 1.7 kB, so a busy service writes gigabytes a day: with ``keep_days``, the logger deletes the
daily files older than that many days whenever it starts a new day's file (the service keeps 30 by default).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ranking.features import FEATURE_NAMES, FEATURE_SET_VERSION
from ranking.types import Candidates, QueryContext

logger = logging.getLogger(__name__)


class FeatureLogger:
    """Appends candidate feature rows to daily JSONL files; safe to share between request threads.

    keep_days: delete daily files older than this many days (today's file counts as one) each time a new
    day's file is started; None keeps every file.
    """

    def __init__(self, directory: str | os.PathLike, *, keep_days: int | None = None) -> None:
        if keep_days is not None and keep_days < 1:
            raise ValueError(f"keep_days must be at least 1 (today's file), got {keep_days}")
        self.directory = Path(directory)
        self.keep_days = keep_days
        self._lock = threading.Lock()
        self._day: dt.date | None = None  # the day of the file written last

    @classmethod
    def for_workspace(cls, workspace, *, keep_days: int | None = None) -> FeatureLogger:
        return cls(Path(workspace.logs_dir) / "features", keep_days=keep_days)

    def path_for(self, day: dt.date) -> Path:
        return self.directory / f"features-{day.isoformat()}.jsonl"

    def prune(self, today: dt.date) -> list[Path]:
        """Delete the daily files older than ``keep_days`` before ``today``; return the files deleted."""
        if self.keep_days is None:
            return []
        oldest_kept = today - dt.timedelta(days=self.keep_days - 1)
        deleted = []
        for path in log_files(self.directory):
            day = _file_day(path)
            if day is not None and day < oldest_kept:
                size = path.stat().st_size
                path.unlink(missing_ok=True)
                deleted.append(path)
                logger.info("feature log: deleted %s (%.1f MB, older than %d days)", path.name, size / 1e6,
                            self.keep_days)
        return deleted

    def log(
        self,
        query_id: str,
        query: QueryContext,
        candidates: Candidates,
        X: np.ndarray,
        feature_names: Sequence[str],
    ) -> Path:
        """Append one record per candidate (in first-stage order) and return the file written."""
        X = np.asarray(X)
        if X.shape != (len(candidates), len(feature_names)):
            raise ValueError(
                f"features have shape {X.shape} but there are {len(candidates)} candidates and "
                f"{len(feature_names)} feature names; log the matrix build_features returned"
            )
        now = dt.datetime.now(dt.timezone.utc)
        logged_at = now.isoformat(timespec="milliseconds")
        names = list(feature_names)
        lines = []
        for position, (listing_id, row) in enumerate(zip(candidates.listing_ids, X.tolist())):
            record = {
                "query_id": query_id,
                "listing_id": listing_id,
                "position": position,
                "logged_at": logged_at,
                "query_text": query.text,
                "query_has_image": bool(query.has_image),
                "feature_set_version": FEATURE_SET_VERSION,
                "features": {name: (None if math.isnan(value) else value) for name, value in zip(names, row)},
            }
            lines.append(json.dumps(record, separators=(",", ":")))
        path = self.path_for(now.date())
        payload = ("\n".join(lines) + "\n") if lines else ""
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            if self._day != now.date():
                self._day = now.date()
                self.prune(now.date())
            # one write call per query keeps a query's rows together in the file
            with path.open("a", encoding="utf-8") as handle:
                handle.write(payload)
        return path


@dataclass
class LoggedCandidates:
    """Feature rows read back from logs, grouped by query (each query's rows contiguous)."""

    query_ids: list[str]  # one per row
    listing_ids: list[str]
    X: np.ndarray  # float32 (n, len(feature_names)), NaN where missing
    feature_names: list[str]

    def groups(self) -> tuple[list[str], np.ndarray]:
        """Distinct query ids in row order and each one's row count."""
        order: list[str] = []
        counts: list[int] = []
        for query_id in self.query_ids:
            if order and order[-1] == query_id:
                counts[-1] += 1
            else:
                order.append(query_id)
                counts.append(1)
        return order, np.asarray(counts, dtype=np.int64)


def log_files(directory: str | os.PathLike) -> list[Path]:
    directory = Path(directory)
    return sorted(directory.glob("features-*.jsonl")) if directory.is_dir() else []


def _file_day(path: Path) -> dt.date | None:
    """The day in a ``features-<date>.jsonl`` name (None for a name that holds no date)."""
    try:
        return dt.date.fromisoformat(path.stem.removeprefix("features-"))
    except ValueError:
        return None


def read_feature_logs(
    paths: Iterable[str | os.PathLike], feature_names: Sequence[str] = FEATURE_NAMES
) -> LoggedCandidates:
    """Read logged rows, grouping them by query id (first-seen order) and keeping the last row per pair.

    Features logged under other names are dropped and features absent from a record become NaN
    (with a warning), so old logs stay usable after the feature set grows.
    """
    names = list(feature_names)
    by_query: dict[str, dict[str, list[float]]] = {}
    unknown: set[str] = set()
    missing: set[str] = set()
    for path in paths:
        path = Path(path)
        with path.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    query_id, listing_id = str(record["query_id"]), str(record["listing_id"])
                    features = record["features"]
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise ValueError(
                        f"{path}:{line_number} is not a feature-log record "
                        f"(needs query_id, listing_id and features): {error}"
                    ) from error
                unknown.update(set(features) - set(names))
                missing.update(set(names) - set(features))
                row = [features.get(name) for name in names]
                by_query.setdefault(query_id, {})[listing_id] = [np.nan if v is None else float(v) for v in row]
    if unknown:
        logger.warning("feature logs hold features this code does not compute (dropped): %s", sorted(unknown))
    if missing:
        logger.warning("feature logs lack features (filled with NaN): %s", sorted(missing))
    query_ids, listing_ids, rows = [], [], []
    for query_id, candidates in by_query.items():
        for listing_id, row in candidates.items():
            query_ids.append(query_id)
            listing_ids.append(listing_id)
            rows.append(row)
    X = np.asarray(rows, dtype=np.float32).reshape(len(rows), len(names))
    return LoggedCandidates(query_ids, listing_ids, X, names)


def training_data_from_logs(
    logged: LoggedCandidates, labels: Mapping[str, Mapping[str, int]], *, require_positive: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Label logged rows with graded relevance (0 when a shown candidate got no interaction).

    Returns ``X, y, group, query_ids`` with each query's rows contiguous. Queries without any
    positive grade carry no ranking signal and are dropped when ``require_positive``.
    """
    query_order, counts = logged.groups()
    keep_rows = []
    kept_queries, kept_counts = [], []
    y_all = np.fromiter(
        (labels.get(q, {}).get(d, 0) for q, d in zip(logged.query_ids, logged.listing_ids)),
        dtype=np.int32,
        count=len(logged.query_ids),
    )
    start = 0
    for query_id, count in zip(query_order, counts):
        rows = np.arange(start, start + count)
        start += count
        if require_positive and not (y_all[rows] > 0).any():
            continue
        keep_rows.append(rows)
        kept_queries.append(query_id)
        kept_counts.append(int(count))
    if not keep_rows:
        raise ValueError(
            "no logged query has a positive interaction: join the feature logs with interactions that use "
            "the same query ids (SearchResult.query_id)"
        )
    index = np.concatenate(keep_rows)
    logger.info("training data from logs: %d queries, %d rows", len(kept_queries), len(index))
    return logged.X[index], y_all[index], np.asarray(kept_counts, dtype=np.int64), kept_queries
