"""What the service loads once at start-up, and why a part of it may be missing."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

from api.config import Settings
from catalog.errors import CatalogError
from catalog.store import Catalog
from core.files import remove_stale_temporaries
from core.workspace import Workspace
from encoders.graphs import GraphError
from encoders.served import ServedModel
from ranking.feature_log import FeatureLogger
from ranking.reranker import Reranker
from recommend.live import RecsFollower
from recommend.serving import ServedRecommender
from search.live import LiveFollower
from search.pipeline import Searcher

logger = logging.getLogger(__name__)


@dataclass
class ServiceState:
    """Loaded artefacts; ``catalog``/``searcher`` are None when the workspace lacks them."""

    settings: Settings
    workspace: Workspace
    catalog: Catalog | None = None
    searcher: Searcher | None = None
    catalog_error: str | None = None
    searcher_error: str | None = None
    ranker_error: str | None = None  # search still works, without re-ranking
    text_runtime_error: str | None = None  # ONNX Runtime asked for but not usable: queries encoded in torch
    follower: LiveFollower | None = None  # keeps the searcher within a poll of the change log
    # the recommenders (None without a recs folder; .model None when it could not be loaded: erasure still
    # reaches the saved folder)
    recommender: ServedRecommender | None = None
    recs_error: str | None = None
    recs_follower: RecsFollower | None = None  # brings the follower's changes into the recommenders
    image_runtime_error: str | None = None  # the same for query photos
    # per tower, why its fp32 graph is served rather than int8; "served_model": why the torch model is served
    runtime_notes: dict[str, str] | None = None

    def close(self) -> None:
        if self.recs_follower is not None:
            self.recs_follower.stop()
        if self.follower is not None:
            self.follower.stop()
        if self.catalog is not None:
            self.catalog.close()


# An absolute POSIX path inside a message (not the path part of a URL, not an API path like "/categories":
# its first component must exist on this machine).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])/[^\s'\"`:;,()<>\[\]{}]+")


def public_text(text: str, root: Path) -> str:
    """``text`` without this machine's absolute paths, for answers anyone can read (/health, 503 details, the
    page's banner): paths in the workspace become workspace-relative (``catalog.db``, ``model/config.json``),
    the workspace itself its folder name, any other absolute path its file name. The log keeps the full text."""
    for prefix in sorted({str(root), str(root.resolve())}, key=len, reverse=True):
        text = text.replace(prefix + "/", "").replace(prefix, root.name)

    def redact(match: re.Match[str]) -> str:
        path = PurePosixPath(match.group())
        if len(path.parts) < 2 or not Path("/", path.parts[1]).exists():
            return match.group()
        return path.name

    return _ABSOLUTE_PATH.sub(redact, text)


def build_hint(workspace: Workspace) -> str:
    return f"run `marketsearch build --workspace {workspace.root}`"


def unusable_catalogue(error: CatalogError, workspace: Workspace) -> str:
    """What the service says about a catalogue database it cannot use: the file, the problem, the fix."""
    return f"{error}; move it aside (or restore a backup) and {build_hint(workspace)}"


def load_state(settings: Settings) -> ServiceState:
    """Open the catalogue and load the search pipeline; failures are recorded, not raised, so the
    service still starts and can say what is missing."""
    started = time.perf_counter()
    workspace = Workspace.at(settings.workspace)
    remove_stale_temporaries(workspace.temporary_folders())  # what a killed writer left (never one in use)
    state = _load(settings, workspace)
    logger.info("artefacts loaded in %.2f s (after the imports)", time.perf_counter() - started)
    # what was logged names full paths; what the API tells its callers does not
    for name in ("catalog_error", "searcher_error", "ranker_error", "text_runtime_error", "image_runtime_error",
                 "recs_error"):
        message = getattr(state, name)
        if message:
            setattr(state, name, public_text(message, workspace.root))
    return state


def _load(settings: Settings, workspace: Workspace) -> ServiceState:
    state = ServiceState(settings=settings, workspace=workspace)
    if not workspace.has_catalogue():
        state.catalog_error = f"no catalogue database at {workspace.db_path}; {build_hint(workspace)}"
        state.searcher_error = state.catalog_error
        logger.warning(state.catalog_error)
        return state
    served, served_notes, served_error = _served_model(settings, workspace)
    if served is None:
        _torch_threads(settings.torch_threads)  # the torch model serves queries
    try:
        state.catalog = Catalog(workspace.db_url, root=workspace.root)
        # The re-ranker is loaded separately: a stale or broken one should cost re-ranking, not search.
        state.searcher = Searcher.from_workspace(
            workspace, load_ranker=False, feature_logger=_feature_logger(settings, workspace),
            model=served,  # None: the torch model of the bundle
        )
    except CatalogError as exc:  # not SQLite, damaged, another schema: nothing can be served from it
        state.close()
        state.catalog = None
        state.catalog_error = state.searcher_error = unusable_catalogue(exc, workspace)
        logger.error(state.catalog_error)
        return state
    except FileNotFoundError as exc:
        state.searcher_error = f"search artefacts are missing: {exc}"
    except Exception as exc:  # noqa: BLE001 -- any broken artefact: keep serving listings, report it
        logger.exception("could not load the search pipeline from %s", workspace.root)
        state.searcher_error = f"could not load the search pipeline ({type(exc).__name__}: {exc})"
    if state.searcher_error:
        if "`marketsearch " not in state.searcher_error:
            state.searcher_error += f"; {build_hint(workspace)}"
        logger.warning(state.searcher_error)
        return state
    load_encoder = None
    if "onnxruntime" in (settings.text_runtime, settings.image_runtime):
        # listings written live are encoded like `marketsearch embed` does (the fp32 graphs, so live and batch
        # vectors are equal), whatever serves queries: the follower loads that copy in its own thread (right
        # after start, or on the first listing it encodes: `live_preload_encoder`), so no start or search waits
        # for it
        load_encoder = partial(_catalogue_encoder, workspace.model_dir, settings.torch_threads)
        if served is not None:
            state.runtime_notes = served_notes
            logger.info("queries encoded by the served model (text %s, image %s, no torch)",
                        served.text_tower.backbone.precision, served.image_tower.backbone.precision)
        else:
            _use_onnxruntime(state, settings, workspace)
            state.runtime_notes["served_model"] = f"the torch model is served: {served_error}"
    if workspace.ranker_dir.exists():

        try:
            state.searcher.ranker = Reranker.load(workspace.ranker_dir)
        except Exception as exc:  # noqa: BLE001 -- serve first-stage (RRF) ranking instead
            state.ranker_error = f"re-ranker not loaded, serving without it ({type(exc).__name__}: {exc})"
            logger.warning(state.ranker_error)
    logger.info("search pipeline loaded from %s (re-ranker: %s)", workspace.root, state.searcher.ranker is not None)
    _load_recommender(state, workspace)
    if settings.live_follow:
        # every process (each `serve --workers N` worker) follows the log on its own; the first poll replays
        # the changes past the index set's checkpoint. Started last: its thread loads the catalogue encoder (and
        # imports torch where the graphs cannot be used), which would compete with the rest of the start
        state.follower = LiveFollower(state.searcher, workspace, poll_interval=settings.live_poll_interval,
                                      compact_after=settings.live_compact_after,
                                      compact_age_s=settings.live_compact_age_s,
                                      load_encoder=load_encoder,
                                      preload_encoder=settings.live_preload_encoder).start()
        if state.recommender is not None and state.recommender.model is not None:
            state.recs_follower = RecsFollower(state.recommender, state.searcher,
                                               interval=settings.live_recs_interval).start()
    return state


def _load_recommender(state: ServiceState, workspace: Workspace) -> None:
    from recommend.folder import load_for_workspace

    if not workspace.recs_dir.exists():
        state.recs_error = f"no recommenders trained; run `marketsearch train-recs --workspace {workspace.root}`"
        return
    state.recommender = ServedRecommender(None, workspace.recs_dir)
    try:
        state.recommender.model = load_for_workspace(workspace, state.catalog, state.searcher.model.fingerprint)
    except Exception as exc:  # noqa: BLE001 -- search still works; the recommendation routes say why not
        state.recs_error = f"recommenders not loaded ({type(exc).__name__}: {exc})"
        logger.warning(state.recs_error)
        return
    _load_personal_ranker(state, workspace)


def _load_personal_ranker(state: ServiceState, workspace: Workspace) -> None:
    """The personal search ranker beside the recommenders (searches with a known user_id); without it, or when
    it does not load, every search is ranked as without a user."""
    from ranking.features import FEATURE_NAMES
    from recommend.personal_search import USER_FEATURES

    if state.searcher.ranker is None or not workspace.personal_ranker_dir.exists():
        return
    try:
        state.searcher.personal_ranker = Reranker.load(workspace.personal_ranker_dir,
                                                       expected_features=FEATURE_NAMES + USER_FEATURES)
    except Exception as exc:  # noqa: BLE001 -- unpersonalised search instead
        state.ranker_error = f"personal search ranker not loaded, searching without it ({type(exc).__name__}: {exc})"
        logger.warning(state.ranker_error)


def _torch_threads(threads: int) -> None:
    """torch with ``threads`` intra-op threads: one query is a small batch, a thread pool per call costs more than it
    saves on a few shared cores, and concurrent requests already use the other cores. Imported here, so a service
    serving the served model never loads torch (unless its catalogue encoder falls back to it)."""
    import torch

    torch.set_num_threads(threads)


def _catalogue_encoder(model_dir: Path, threads: int):
    """The live follower's catalogue encoder, loaded as `marketsearch embed` loads it
    (``encoders.catalogue_encoder``: the whole-tower fp32 graphs without torch, else the torch bundle)."""
    from encoders.catalogue_encoder import load_catalogue_encoder

    encoder = load_catalogue_encoder(model_dir, threads=threads)
    if encoder.image_tower.backbone.runtime == "torch":
        _torch_threads(threads)
    return encoder


def _served_model(settings: Settings, workspace: Workspace) -> tuple[ServedModel | None, dict[str, str], str | None]:
    """The served model (``encoders.served``: graphs and numpy, no torch) when both towers are to run in ONNX Runtime
    and the bundle's graphs verify; else None and why not (the torch model is served)."""
    if (settings.text_runtime, settings.image_runtime) != ("onnxruntime", "onnxruntime"):
        return None, {}, "a tower is set to run in torch (MARKETSEARCH_TEXT_RUNTIME / MARKETSEARCH_IMAGE_RUNTIME)"
    if not (workspace.model_dir / "bundle.json").is_file():
        return None, {}, "no model bundle"
    try:
        model, notes = ServedModel.load(workspace.model_dir, int8=tuple(settings.onnx_int8),
                                        threads=settings.torch_threads)
    except (GraphError, OSError, ValueError) as exc:
        logger.info("the served model cannot be used, the torch model serves: %s", exc)  # /health says why
        return None, {}, str(exc)
    return model, notes, None


def _use_onnxruntime(state: ServiceState, settings: Settings, workspace: Workspace) -> None:
    """Encode queries with the bundle's ONNX graphs (`marketsearch export-onnx`), verified against the bundle's
    fingerprint and their checksums, int8 where its quality gate passed: the backbone forwards are the largest
    stage of a search, and ONNX Runtime runs them faster than torch (docs/benchmarks.md, "Runtimes"). A tower
    whose graph cannot be used stays in torch, with the reason in /health. A bundle without graphs (exported
    before this step existed) gets the text graph exported in memory, as before: slower to start."""

    from encoders.backbones import TextRuntimeError
    from encoders.runtime import GraphSet, graph_dir, use_graphs

    model = state.searcher.model
    state.runtime_notes = {}
    try:
        graphs = GraphSet.open(graph_dir(workspace.model_dir), model.fingerprint)
    except GraphError as exc:
        graphs, missing = None, exc
    for modality in ("text", "image"):
        if getattr(settings, f"{modality}_runtime") != "onnxruntime":
            continue
        error = None
        if graphs is None:
            if modality == "text" and not (graph_dir(workspace.model_dir) / "manifest.json").exists():
                try:
                    model.text_tower.use_onnxruntime(threads=settings.torch_threads)
                    state.runtime_notes["text"] = f"graph exported in memory at start: {missing}"
                except TextRuntimeError as exc:
                    error = str(exc)
            else:
                error = str(missing)
        else:
            precision, note = graphs.choose_precision(modality, allow_int8=modality in settings.onnx_int8)
            try:
                use_graphs(model, graphs, modality, precision, threads=settings.torch_threads)
                if note:
                    state.runtime_notes[modality] = f"fp32 graph served: {note}"
            except GraphError as exc:
                error = str(exc)
        if error:
            message = f"{'queries' if modality == 'text' else 'query photos'} are encoded in torch: {error}"
            setattr(state, f"{modality}_runtime_error", message)
            logger.warning(message)
        else:
            backbone = (model.text_tower if modality == "text" else model.image_tower).backbone
            logger.info("%s queries encoded in %s (%s)", modality, backbone.runtime, backbone.precision)


def _feature_logger(settings: Settings, workspace: Workspace):
    if not settings.feature_logging:
        return None

    return FeatureLogger.for_workspace(workspace, keep_days=settings.feature_log_keep_days)
