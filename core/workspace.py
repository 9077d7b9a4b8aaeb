"""Where every artefact of one deployment lives on disk."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT_ENV = "MARKETSEARCH_HOME"
# A server catalogue (PostgreSQL): the URL comes from this variable, else from the workspace's `database.url`
# (written by `marketsearch ingest --db URL`), else the workspace's own SQLite file.
DATABASE_URL_ENV = "MARKETSEARCH_DATABASE_URL"
DEFAULT_ROOT = Path("workspace")
DEMO_ROOT = DEFAULT_ROOT / "demo"  # what `make demo` / `marketsearch demo` build


def default_root() -> Path:
    return Path(os.environ.get(DEFAULT_ROOT_ENV, str(DEFAULT_ROOT)))


def built_workspace(root: str | os.PathLike) -> tuple[Path, str | None]:
    """The workspace to serve for ``root``, and a one-line note when it is not ``root`` itself.

    ``root`` when it holds a catalogue. When ``root`` is the default ``./workspace`` (not named by
    ``$MARKETSEARCH_HOME``) and has none but ``./workspace/demo`` has one, the demo workspace, with a note
    saying so. Otherwise FileNotFoundError naming the exact command to run.
    """
    root = Path(root)
    if Workspace(root).has_catalogue():
        return root, None
    demo_built = Workspace(DEMO_ROOT).has_catalogue()
    if root == DEFAULT_ROOT and DEFAULT_ROOT_ENV not in os.environ and demo_built:
        return DEMO_ROOT, (f"no catalogue in {root}/: serving the demo workspace {DEMO_ROOT}/ "
                           f"(built by `make demo`); --workspace DIR serves another")
    if demo_built:
        fix = f"to serve the demo: `marketsearch serve --workspace {DEMO_ROOT}`"
    else:
        fix = (f"build one first: `make demo` (then `marketsearch serve --workspace {DEMO_ROOT}`), or "
               f"`marketsearch build --products P --images I --image-dir D --workspace {root}`")
    raise FileNotFoundError(f"no catalogue in {root}/ ({Workspace(root).db_path} is missing); {fix}")


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
    def database_url_path(self) -> Path:
        return self.root / "database.url"

    @property
    def db_url(self) -> str:
        """The catalogue database: ``$MARKETSEARCH_DATABASE_URL``, else the URL in ``database.url``, else the
        workspace's SQLite file."""
        configured = os.environ.get(DATABASE_URL_ENV, "").strip()
        if not configured and self.database_url_path.is_file():
            configured = self.database_url_path.read_text(encoding="utf-8").strip()
        return configured or f"sqlite:///{self.db_path}"

    @property
    def uses_own_sqlite(self) -> bool:
        return self.db_url == f"sqlite:///{self.db_path}"

    def has_catalogue(self) -> bool:
        """Whether a catalogue is configured: the SQLite file exists, or a server database is named (whether it
        can be opened is for the catalogue to say)."""
        return not self.uses_own_sqlite or self.db_path.is_file()

    def use_database(self, url: str) -> None:
        """Record ``url`` as this workspace's catalogue for every later command. A password is refused: it
        belongs in ``PGPASSWORD`` or ``~/.pgpass`` (or ``$MARKETSEARCH_DATABASE_URL``), not in a file that
        travels with the workspace."""
        from sqlalchemy.engine import make_url

        from core.files import write_text_atomic

        if make_url(url).password is not None:
            raise ValueError("the database URL holds a password; give it through PGPASSWORD or ~/.pgpass (or "
                             f"${DATABASE_URL_ENV}) instead of recording it in {self.database_url_path}")
        self.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.database_url_path, url + "\n")

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
    def photo_config_path(self) -> Path:
        """How the catalogue photos were cleaned (``catalog.images``): query photos are prepared the same way."""
        return self.root / "photo-config.json"

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
    def personal_ranker_dir(self) -> Path:
        """The personal search ranker (`marketsearch train-recs`, recommend/personal_search.py)."""
        return self.root / "ranker-personal"

    @property
    def recs_dir(self) -> Path:
        """The recommenders (`marketsearch train-recs`, recommend/folder.py)."""
        return self.root / "recs"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def temporary_folders(self) -> list[Path]:
        """The folders where writers stage their work (beside what they replace), for the stale-temporary
        clean-up on start (`core.files.remove_stale_temporaries`): the root (model, ranker, labels), the
        index sets, the photos, the reports and the feature and evaluation caches. Not recursive."""
        folders = [self.root, self.index_dir, self.images_dir, self.quarantine_dir]
        for caches in (self.feature_cache_dir, self.eval_dir / "cache"):
            if caches.is_dir():
                folders.extend(path for path in caches.iterdir() if path.is_dir())
        return folders

    def ensure(self) -> Workspace:
        self.root.mkdir(parents=True, exist_ok=True)
        return self
