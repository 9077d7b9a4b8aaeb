"""Where every artefact of one deployment lives on disk."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT_ENV = "MARKETSEARCH_HOME"


def default_root() -> Path:
    return Path(os.environ.get(DEFAULT_ROOT_ENV, "workspace"))


def new_stamped_dir(parent: str | os.PathLike, stamp: str) -> Path:
    """Create and return ``parent/stamp``, or ``parent/stamp-2``, ``-3``, ... when that name is taken."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    suffix = 1
    while True:
        path = parent / (stamp if suffix == 1 else f"{stamp}-{suffix}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            suffix += 1


@dataclass(frozen=True)
class Workspace:
    """One folder holding the catalogue database, cleaned images, models and indexes."""

    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike | None = None) -> Workspace:
        return cls(Path(root) if root is not None else default_root())

    @property
    def db_path(self) -> Path:
        return self.root / "catalog.db"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db_path}"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    @property
    def labels_path(self) -> Path:
        return self.root / "labels.json"

    @property
    def feature_cache_dir(self) -> Path:
        """Frozen-backbone features (``encoders.features``), shared by training, embedding and evaluation."""
        return self.root / "cache" / "features"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def ranker_dir(self) -> Path:
        return self.root / "ranker"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def ensure(self) -> Workspace:
        self.root.mkdir(parents=True, exist_ok=True)
        return self
