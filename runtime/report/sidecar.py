"""The ``bounds.npz`` sidecar: every big tensor of a run, written byte-for-byte reproducibly.

``numpy.savez`` stamps each zip member with the current time, so two writes of the same
arrays differ and so would their sha256 in ``report.json``. This writer fixes the member
timestamps and order (sorted names, no compression), making the file a pure function of
the arrays. Reading never unpickles (``allow_pickle=False``).
"""
from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

_EPOCH = (1980, 1, 1, 0, 0, 0)


def array_sha256(array: np.ndarray) -> str:
    """Hash of an array's dtype, shape and C-order bytes (what a report pins per array)."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())


def read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def param_key(kind: str, index: int) -> str:
    """Sidecar name of parameter ``index`` (order W0, b0, W1, ...) for kind lower/upper/nominal."""
    return f"param_{kind}_{index:03d}"
