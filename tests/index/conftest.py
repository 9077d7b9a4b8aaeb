"""Synthetic clustered vectors shared by the index tests (built once per session)."""

from __future__ import annotations

import faiss
import pytest

from index.synthetic import clustered_vectors, perturbed_queries
from index.vector_index import VectorIndex

DIMENSION = 32
N_VECTORS = 20_000


@pytest.fixture(scope="session", autouse=True)
def _faiss_threads():
    faiss.omp_set_num_threads(2)


@pytest.fixture(scope="session")
def clustered():
    """(vectors, listing_ids, queries): 20k 32-d unit vectors in 140 clusters and 300 perturbed queries."""
    vectors = clustered_vectors(N_VECTORS, DIMENSION, n_clusters=140, spread=0.8, seed=0)
    listing_ids = [f"listing-{i:05d}" for i in range(N_VECTORS)]
    queries = perturbed_queries(vectors, 300, noise=0.4, seed=1)
    return vectors, listing_ids, queries


@pytest.fixture(scope="session")
def built_index(clustered):
    vectors, listing_ids, queries = clustered
    return VectorIndex.build(vectors, listing_ids, "model-a", calibration_queries=queries)


@pytest.fixture
def ivf_index(built_index, tmp_path):
    """A private copy of the session index (tests mutate it)."""
    built_index.save(tmp_path / "session-copy")
    return VectorIndex.load(tmp_path / "session-copy")
