"""Collaborative signals: implicit-feedback ALS (the `implicit` library) and item-to-item co-visitation."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

SESSION_GAP_S = 3600.0  # a pause longer than this starts a new session (co-visitation counts within sessions)
COVISIT_TOP = 50  # neighbours kept per listing


def new_als(factors: int = 64, regularization: float = 0.05, iterations: int = 15, alpha: float = 2.0,
            threads: int = 2, seed: int = 0):
    from implicit.cpu.als import AlternatingLeastSquares

    with threadpool_limits(1, "blas"):  # it warns when BLAS may start threads of its own
        return AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha,
                                       iterations=iterations, num_threads=threads, random_state=seed,
                                       calculate_training_loss=False)


def user_item_matrix(user_rows: np.ndarray, item_rows: np.ndarray, weights: np.ndarray, n_users: int,
                     n_items: int) -> sp.csr_matrix:
    """Summed confidence per (user, listing): a CSR matrix (duplicates added up)."""
    matrix = sp.csr_matrix((weights.astype(np.float32), (user_rows, item_rows)), shape=(n_users, n_items))
    matrix.sum_duplicates()
    return matrix


def fit_als(user_items: sp.csr_matrix, *, progress: bool = False, **params):
    """An ALS model fitted on ``user_items`` (users x listings confidences)."""
    model = new_als(**params)
    with threadpool_limits(1, "blas"):  # implicit's own threads do the work; nested BLAS threads only slow it
        model.fit(user_items, show_progress=progress)
    return model


def fold_in(model, history: sp.csr_matrix) -> np.ndarray:
    """Factors of a user with this history row (1 x listings) against the fitted item factors, without
    refitting anything else (implicit's ``recalculate_user``)."""
    with threadpool_limits(1, "blas"):
        return np.asarray(model.recalculate_user(0, history), np.float32).reshape(-1)


def sessions(users: np.ndarray, times: np.ndarray, gap_s: float = SESSION_GAP_S) -> np.ndarray:
    """A session number for each event: a user's events split where they pause longer than ``gap_s``."""
    order = np.lexsort((times, users))
    new = np.ones(len(order), bool)
    if len(order) > 1:
        new[1:] = (users[order][1:] != users[order][:-1]) | (np.diff(times[order]) > gap_s)
    session = np.empty(len(order), np.int64)
    session[order] = np.cumsum(new) - 1
    return session


def covisitation(session_rows: np.ndarray, item_rows: np.ndarray, n_items: int, top: int = COVISIT_TOP
                 ) -> sp.csr_matrix:
    """Listing-to-listing co-visitation: how often two listings are engaged with in the same session,
    cosine-normalised (a listing everyone views is not everyone's neighbour), the ``top`` strongest per row."""
    if not len(session_rows):
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    _, session_rows = np.unique(session_rows, return_inverse=True)
    visits = sp.csr_matrix((np.ones(len(item_rows), np.float32), (session_rows, item_rows)),
                           shape=(int(session_rows.max()) + 1, n_items))
    visits.data[:] = 1.0  # a session counts once per listing
    visits.sum_duplicates()
    visits.data[:] = 1.0
    counts = (visits.T @ visits).tocsr()
    norms = np.sqrt(np.maximum(counts.diagonal(), 1.0))
    counts.setdiag(0)
    counts.eliminate_zeros()
    counts = sp.diags(1.0 / norms) @ counts @ sp.diags(1.0 / norms)
    return keep_top_per_row(counts.tocsr().astype(np.float32), top)


def keep_top_per_row(matrix: sp.csr_matrix, top: int) -> sp.csr_matrix:
    """The ``top`` largest entries of each row (ties: the lower column first), in whole-array operations."""
    matrix = matrix.tocsr()
    matrix.sort_indices()
    owner = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    order = np.lexsort((-matrix.data, owner))  # row by row, largest first; stable, so columns stay ascending
    rank = np.arange(len(order)) - matrix.indptr[owner[order]]
    kept = order[rank < top]
    counts = np.bincount(owner[kept], minlength=matrix.shape[0])
    return sp.csr_matrix((matrix.data[kept], matrix.indices[kept], np.concatenate([[0], np.cumsum(counts)])),
                         shape=matrix.shape)
