"""A lleaves-compiled forest called without lleaves' per-call Python wrapper.

`lleaves.Model.predict` converts and checks its input, casts two ctypes pointers and allocates
the output on every call: several microseconds against a forest that scores 100 rows in tens.
`CompiledForest` calls the same compiled entry function on the same float64 matrix, so the
scores are the same bits; anything the direct path does not cover goes through `predict`.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import numpy.typing as npt

# the entry point lleaves compiles: (rows, scores, first row, end row), rows and scores as fp64
_ENTRY = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32)
_MAX_ROWS = 2**31 - 1  # lleaves refuses as many: its row indices are int32


class CompiledForest:
    """`lleaves.Model.predict(rows, n_jobs=1)` as float64, for a compiled model."""

    def __init__(self, model: Any) -> None:
        self._model = model  # owns the compiled code the entry address points into
        self._features = int(model.num_feature())
        self._entry = None
        # single-output fp64 models only, and a lleaves that keeps its entry point where 1.3 does;
        # anything else keeps lleaves' own path
        entry = getattr(model, "_c_entry_func", None)
        if entry is not None and model.is_compiled and model.use_fp64 and model.num_model_per_iteration() == 1:
            address = ctypes.cast(entry, ctypes.c_void_p).value
            self._entry = None if address is None else _ENTRY(address)

    def __call__(self, rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if (
            self._entry is None
            or rows.dtype != np.float64
            or rows.ndim != 2
            or rows.shape[1] != self._features
            or not rows.flags.c_contiguous
            or rows.shape[0] >= _MAX_ROWS
        ):
            return np.asarray(self._model.predict(rows, n_jobs=1), dtype=np.float64)
        n = rows.shape[0]
        scores = np.zeros(n, dtype=np.float64)  # as lleaves: the forest writes into zeroed scores
        self._entry(rows.ctypes.data, scores.ctypes.data, 0, n)
        return scores
