"""Scoring with a saved LightGBM model through LightGBM's C library, without importing its Python package.

Serving needs one call, predict, but ``import lightgbm`` imports scipy, and scikit-learn and pandas too when they
are installed (``lightgbm/compat.py``): seconds of every service start (docs/benchmarks.md, "Re-ranker start and
cost"). ``NativeBooster`` loads the same ``model.txt`` into the same library through its C API (``c_api.h``, the
interface LightGBM's Python, R and Java packages are written against) and predicts with the same call
``lightgbm.Booster.predict`` makes, so its scores are bit-identical to it: no second artefact to export, convert or
keep in agreement, and every saved re-ranker folder is read as before.

The alternatives (docs/evaluation.md, "Serving without the lightgbm package"): an ONNX graph converted with
onnxmltools (measured, ``bench/rerank_onnx_variant.py``) compares float32 features with float32 thresholds and
sums the trees in float32, so its scores differ from LightGBM's by up to ~1e-6 and a feature at a rounded
threshold can take the other branch; a numpy evaluator of ``dump_model()`` (not built) would re-implement
LightGBM's split rules by hand.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import sys
import weakref
from pathlib import Path

import numpy as np

_DTYPE_FLOAT32 = 0  # C_API_DTYPE_FLOAT32
_PREDICT_NORMAL = 0  # C_API_PREDICT_NORMAL: the model's output (a ranker's raw score)
_ROW_MAJOR = 1
# one thread: for a hundred rows, waking OpenMP workers costs more than it saves
_PREDICT_PARAMETERS = b"num_threads=1"


class LightGBMLibraryError(RuntimeError):
    """LightGBM's C library is missing or refused a call (its own message is in the error)."""


@functools.cache
def _library() -> ctypes.CDLL:
    """LightGBM's shared library, found where the ``lightgbm`` package keeps it (the places ``lightgbm.libpath``
    searches) without running the package's ``__init__``."""
    spec = importlib.util.find_spec("lightgbm")
    if spec is None or not spec.submodule_search_locations:
        raise LightGBMLibraryError("the lightgbm package is not installed; install it (pip install lightgbm)")
    package = Path(next(iter(spec.submodule_search_locations)))
    name = {"win32": "lib_lightgbm.dll", "darwin": "lib_lightgbm.dylib"}.get(sys.platform, "lib_lightgbm.so")
    candidates = [package.parent / name, package / "bin" / name, package / "lib" / name]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        raise LightGBMLibraryError(
            f"LightGBM's C library is not in {[str(p) for p in candidates]}; reinstall lightgbm"
        )
    lib = ctypes.CDLL(str(found))  # the same handle lightgbm.basic gets when the package is imported too
    lib.LGBM_GetLastError.restype = ctypes.c_char_p
    return lib


def _check(return_code: int) -> None:
    if return_code != 0:
        raise LightGBMLibraryError(_library().LGBM_GetLastError().decode("utf-8", "replace"))


class NativeBooster:
    """A LightGBM model loaded into LightGBM's C library: ``predict`` scores float32 rows like
    ``lightgbm.Booster.predict(X, num_threads=1)``. Safe to share between threads (the library locks the model
    for reading), and the call releases the GIL."""

    def __init__(self, handle: ctypes.c_void_p) -> None:
        self._handle = handle
        self._finalizer = weakref.finalize(self, _library().LGBM_BoosterFree, handle)
        n_features, n_classes = ctypes.c_int(), ctypes.c_int()
        _check(_library().LGBM_BoosterGetNumFeature(handle, ctypes.byref(n_features)))
        _check(_library().LGBM_BoosterGetNumClasses(handle, ctypes.byref(n_classes)))
        if n_classes.value != 1:
            raise LightGBMLibraryError(f"the model has {n_classes.value} outputs per row; a ranker has one")
        self.num_feature = n_features.value

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> NativeBooster:
        """Load a model written by ``lightgbm.Booster.save_model`` (``model.txt``)."""
        handle, iterations = ctypes.c_void_p(), ctypes.c_int()
        _check(_library().LGBM_BoosterCreateFromModelfile(os.fsencode(path), ctypes.byref(iterations),
                                                          ctypes.byref(handle)))
        return cls(handle)

    @classmethod
    def from_string(cls, model_text: str) -> NativeBooster:
        """Load a model from its text (``lightgbm.Booster.model_to_string``)."""
        handle, iterations = ctypes.c_void_p(), ctypes.c_int()
        _check(_library().LGBM_BoosterLoadModelFromString(model_text.encode("utf-8"), ctypes.byref(iterations),
                                                          ctypes.byref(handle)))
        return cls(handle)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Scores float64 (n_rows,) of float32 rows (n_rows, num_feature); NaN is a missing value."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.num_feature:
            raise ValueError(f"X must have shape (n_rows, {self.num_feature}), got {X.shape}")
        scores = np.empty(len(X), dtype=np.float64)
        if not len(X):
            return scores
        written = ctypes.c_int64()
        _check(_library().LGBM_BoosterPredictForMat(
            self._handle, X.ctypes.data_as(ctypes.c_void_p), ctypes.c_int(_DTYPE_FLOAT32),
            ctypes.c_int32(X.shape[0]), ctypes.c_int32(X.shape[1]), ctypes.c_int(_ROW_MAJOR),
            ctypes.c_int(_PREDICT_NORMAL), ctypes.c_int(0), ctypes.c_int(-1), _PREDICT_PARAMETERS,
            ctypes.byref(written), scores.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
        ))
        if written.value != len(X):
            raise LightGBMLibraryError(f"LightGBM wrote {written.value} scores for {len(X)} rows")
        return scores
