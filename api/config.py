"""Service settings, read from the environment (prefix ``MARKETSEARCH_``) or a ``.env`` file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.workspace import default_root

MEGABYTE = 1024 * 1024


class Settings(BaseSettings):
    """Everything the service can be told; every field is ``MARKETSEARCH_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="MARKETSEARCH_", env_file=".env", extra="ignore")

    workspace: Path = Field(
        default_factory=default_root,
        description="Workspace folder with catalog.db, images/, model/, index/ (default $MARKETSEARCH_HOME).",
    )
    max_upload_bytes: int = Field(10 * MEGABYTE, gt=0, description="Largest accepted photo upload.")
    max_image_pixels: int = Field(
        40_000_000, gt=0, description="Largest accepted width*height of an uploaded photo (decompression bombs)."
    )
    max_json_bytes: int = Field(64 * 1024, gt=0, description="Largest accepted JSON request body.")
    max_events_bytes: int = Field(
        1 * MEGABYTE, gt=0, description="Largest accepted body of POST /events (1,000 events of long ids fit)."
    )
    default_k: int = Field(20, ge=1, le=100, description="Results per page when a request does not say.")
    rerank_default: bool = Field(True, description="Use the re-ranker (when trained) unless a request says.")
    feature_logging: bool = Field(False, description="Log ranking features of served queries under logs/.")
    feature_log_keep_days: int = Field(
        30, ge=1, description="Days of feature logs kept (about 1.7 kB per candidate, 100 candidates a query): "
        "older daily files are deleted when a new day's file starts."
    )
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed to call the API.")
    torch_threads: int = Field(
        1,
        ge=1,
        description="Intra-op threads per model call. Concurrent requests already use the cores; more threads "
        "per call make OpenMP workers spin against each other (and against other processes) on a small machine.",
    )
    text_runtime: Literal["onnxruntime", "torch"] = Field(
        "onnxruntime",
        description="Where the text tower encodes queries: onnxruntime (the bundle's exported graph, written by "
        "`marketsearch export-onnx`, verified at start; without one, an in-memory export of the loaded weights) "
        "or torch. Falls back to torch, with the reason in /health, when ONNX Runtime cannot be used. With both "
        "towers on onnxruntime and the bundle's graphs verified, the service serves the whole towers from their "
        "graphs and starts without importing torch (encoders.served).",
    )
    image_runtime: Literal["onnxruntime", "torch"] = Field(
        "onnxruntime",
        description="Where the image tower encodes query photos: onnxruntime (the bundle's exported graph, "
        "verified at start) or torch. Falls back to torch, with the reason in /health, when the bundle has no "
        "usable graph.",
    )
    onnx_int8: list[Literal["text", "image"]] = Field(
        ["text", "image"],
        description="Towers that serve their int8 graph where its quality gate passed (`marketsearch export-onnx`); "
        "the others, and a tower whose gate failed, serve fp32. /health says which and why. Default: both, "
        "whose gates pass on the dev export (docs/benchmarks.md, \"Runtimes\").",
    )

    live_follow: bool = Field(
        True,
        description="Follow the catalogue's change log: listings created, changed, sold or deleted are searchable "
        "(or gone) within a poll, without a restart (docs/live.md).",
    )
    live_poll_interval: float = Field(0.2, gt=0, le=60, description="Seconds between two polls of the change log.")
    live_preload_encoder: bool = Field(
        True,
        description="Load the fp32 catalogue encoder for live writes in the background right after start (when "
        "queries are served by ONNX graphs), so the first write does not wait for it; false loads it on the first "
        "listing to encode, and a process that never encodes one never loads it.",
    )
    live_compact_after: int = Field(
        500, ge=1, description="Compact (embed + publish a new index set) when this many listings changed live."
    )
    live_compact_age_s: float = Field(
        600.0, gt=0, description="Compact when the oldest live change not yet in the index set is this old (s)."
    )
    live_recs_interval: float = Field(
        5.0, gt=0, le=3600,
        description="Seconds between two checks for live changes to bring into the served recommenders (with "
        "live_follow): listings created since `train-recs` are recommended, and sold or deleted ones dropped, within "
        "about this long (recommend/live.py).",
    )
    # Per-key rate limits of the write routes (api/rate_limits.py): each process of `serve --workers N` holds its
    # own buckets, so a key may get up to N times these rates in all.
    write_rate_per_minute: float = Field(
        120, gt=0, description="Listing writes (POST, PATCH, DELETE under /listings) per API key a minute."
    )
    write_burst: int = Field(30, ge=1, description="Listing writes an API key may make at once before it is limited.")
    photo_rate_per_minute: float = Field(120, gt=0, description="Photos uploaded per API key a minute.")
    photo_burst: int = Field(
        30, ge=10, description="Photos an API key may upload at once (at least 10, the most one listing takes)."
    )
    event_rate_per_minute: float = Field(1200, gt=0, description="POST /events requests per API key a minute.")
    event_burst: int = Field(200, ge=1, description="POST /events requests an API key may make at once.")

    @field_validator("workspace", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once (tests pass their own Settings to ``create_app``)."""
    return Settings()
