"""Certified regions over a 2-D input plane (AGT paper Fig. 1): where poisoning cannot move the decision."""
from __future__ import annotations

from typing import Any

import numpy as np

from pcert.compiler.graph import LayerGraph


def plane_record(graph: LayerGraph, result: Any, x_train: np.ndarray, method: str, resolution: int = 64):
    """Certify every point of a grid around the training data, using the run's own parameter bounds.

    Each grid point is labelled with the nominal model's prediction there, so a certified grid
    point is one whose prediction no reachable (poisoned) model can change.
    """
    from pcert.runtime.agt import Objective, certify
    from pcert.runtime.report import PlaneRecord

    low, high = x_train.min(axis=0) - 0.5, x_train.max(axis=0) + 0.5
    xs = np.linspace(low[0], high[0], resolution, dtype=np.float32)
    ys = np.linspace(low[1], high[1], resolution, dtype=np.float32)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    nominal = certify(graph, result, grid, np.zeros(len(grid), dtype=np.int64), Objective(kind="targeted"), method=method)
    prediction = nominal.prediction.cpu().numpy()
    certs = certify(graph, result, grid, prediction, Objective(kind="targeted"), method=method)
    return PlaneRecord(x=xs, y=ys, prediction=prediction.reshape(resolution, resolution),
                       certified=certs.certified.cpu().numpy().reshape(-1, resolution, resolution))
