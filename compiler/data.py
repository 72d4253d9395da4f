"""Load, check, split and standardise the training and test data a spec names.

Everything is local: scikit-learn generators and bundled sets, or CSV / NPZ / IDX files next
to the spec. Every problem is a ``DataError`` naming the file (and column) at fault, because
a certificate over silently corrupted data certifies nothing.

Splits are seeded. With one pool of rows (generators, bundled sets, a CSV or an NPZ with
``x, y``) the pool is shuffled with ``seed``; ``test`` defaults to a fifth of the pool (at
least 1 row, for generators a quarter of ``train``) and ``train`` to the rest. With separate
train and test files, ``train`` / ``test`` default to all rows and take a seeded subset.
Training rows are in shuffled order and the first ``trusted`` of them are trusted; test rows
keep their file order. Standardisation uses training statistics only (features per element;
regression targets per column, too); constant features get std 1. IDX images (and NPZ arrays)
keep their shape, e.g. [N, 1, 28, 28]; :meth:`Dataset.reshaped` fits them to a model input.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pcert.errors import DataError
from pcert.spec.model import DataSpec

Task = Literal["classification", "regression"]
_FIELDS = {"halfmoons": {"noise"}, "regression": {"noise", "features"}, "csv": {"path", "test_path", "label"},
           "npz": {"path", "test_path"}, "idx": {"images", "labels", "test_images", "test_labels"}}
_OPTIONAL_FIELDS = ("path", "test_path", "images", "labels", "test_images", "test_labels", "label", "noise", "features")
_NATURAL_TASK = {"halfmoons": "classification", "digits": "classification", "breast_cancer": "classification",
                 "regression": "regression", "diabetes": "regression"}


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray            # float32 [N, d] or [N, C, H, W]
    y_train: np.ndarray            # int64 [N] (classification) or float32 [N, k] (regression)
    x_test: np.ndarray
    y_test: np.ndarray
    trusted: np.ndarray | None     # bool [N_train]: rows the adversary cannot touch
    task: Task
    num_classes: int | None
    descriptor: dict[str, Any]     # JSON-able provenance: source, resolved params, file sha256s
    sha256: str                    # over the arrays' dtypes, shapes and bytes

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def reshaped(self, feature_shape: tuple[int, ...]) -> Dataset:
        """The same data with every sample reshaped to ``feature_shape`` (same element count)."""
        if math.prod(feature_shape) != math.prod(self.feature_shape):
            raise DataError(f"cannot reshape features {list(self.feature_shape)} to {list(feature_shape)}")
        x_train = self.x_train.reshape(len(self.x_train), *feature_shape)
        x_test = self.x_test.reshape(len(self.x_test), *feature_shape)
        return dataclasses.replace(self, x_train=x_train, x_test=x_test,
                                   sha256=_digest(x_train, self.y_train, x_test, self.y_test, self.trusted))


@dataclass
class _Part:
    """Features and labels read from one place, with names for error messages."""

    x: np.ndarray
    y: np.ndarray
    where: str                      # e.g. "'train.csv'"
    columns: list[str] | None = None


def _digest(*arrays: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none;")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# --- checks -------------------------------------------------------------------------------

def _check_finite(a: np.ndarray, what: str, columns: list[str] | None = None) -> None:
    bad = ~np.isfinite(a)
    if not bad.any():
        return
    if columns is not None:
        per_col = bad.reshape(len(a), -1).sum(axis=0)
        detail = ", ".join(f"column '{columns[i]}': {int(c)}" for i, c in enumerate(per_col) if c)
        raise DataError(f"{what} contain {int(bad.sum())} NaN/inf values ({detail})")
    raise DataError(f"{what} contain {int(bad.sum())} NaN/inf values")


def _check_part(part: _Part, task: Task, label_name: str) -> _Part:
    x = np.asarray(part.x)
    if x.dtype.kind not in "biuf":
        raise DataError(f"features in {part.where} have dtype {x.dtype}; expected numbers")
    y = np.asarray(part.y)
    if x.ndim == 0 or y.ndim == 0:
        raise DataError(f"{part.where}: features and labels must have one row per sample, got scalars")
    if y.dtype.kind not in "biuf":
        raise DataError(f"labels in {part.where} have dtype {y.dtype}; expected numbers")
    if len(x) != len(y):
        raise DataError(f"{part.where}: {len(x)} feature rows but {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{part.where} has no rows")
    x = x.astype(np.float64).reshape(len(x), -1) if x.ndim == 1 else x.astype(np.float64)
    feature_cols = None if part.columns is None else [c for c in part.columns if c != label_name]
    _check_finite(x, f"features in {part.where}", feature_cols)
    _check_finite(y.astype(np.float64), f"labels ({label_name}) in {part.where}")
    if task == "classification":
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise DataError(f"labels in {part.where} must be one class index per row, got shape {list(y.shape)}")
        non_int = int((y != np.round(y)).sum())
        if non_int:
            raise DataError(f"labels ({label_name}) in {part.where}: {non_int} are not integers; a classification task needs class indices 0..C-1")
        if len(y) and y.min() < 0:
            raise DataError(f"labels ({label_name}) in {part.where}: {int((y < 0).sum())} are negative; class indices must be 0..C-1")
        y = y.astype(np.int64)
    else:
        y = y.astype(np.float64).reshape(len(y), -1) if y.ndim <= 2 else None
        if y is None:
            raise DataError(f"regression targets in {part.where} must be [N] or [N, k]")
    return _Part(x, y, part.where, part.columns)


# --- readers ------------------------------------------------------------------------------

def _resolve(value: str | None, field: str, source: str, base_dir: Path, files: dict[str, str]) -> Path:
    if value is None:
        raise DataError(f"data source '{source}' needs '{field}'")
    path = Path(value) if Path(value).is_absolute() else base_dir / value
    if not path.is_file():
        raise DataError(f"data file not found: {path} (data.{field})")
    files[field] = hashlib.sha256(path.read_bytes()).hexdigest()
    return path


def _read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    text = path.read_text()
    first = text.split("\n", 1)[0]
    header = [c.strip() for c in next(csv.reader([first]), [])]
    if not any(header):
        raise DataError(f"'{path.name}' is empty; expected a header row and data rows")
    values = None
    for quote in (None, '"') if '"' in text else (None,):  # quote handling is slower: only when needed
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # numpy warns on empty input; we say it ourselves
                values = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, ndmin=2, dtype=np.float64, quotechar=quote, comments=None)
            break
        except ValueError:
            continue
    if values is not None and values.size == 0:
        raise DataError(f"'{path.name}' has a header but no data rows")
    if values is not None and values.shape[1] == len(header):
        return header, values
    rows = csv.reader(io.StringIO(text))
    next(rows)
    for line, row in enumerate(rows, start=2):  # slow path only to say exactly what is wrong
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DataError(f"'{path.name}' line {line}: {len(row)} fields, but the header has {len(header)} (ragged rows)")
        for name, cell in zip(header, row):
            try:
                float(cell)
            except ValueError:
                raise DataError(f"'{path.name}' line {line}, column '{name}': cannot read {cell.strip()!r} as a number") from None
    raise DataError(f"'{path.name}' cannot be read as a numeric CSV table")


def _csv_part(path: Path, label: str | None) -> tuple[_Part, str, list[str]]:
    header, values = _read_csv(path)
    name = label if label is not None else header[-1]
    if name not in header:
        raise DataError(f"'{path.name}' has no label column '{name}'; columns: {', '.join(header)}")
    j = header.index(name)
    x = np.delete(values, j, axis=1)
    return _Part(x, values[:, j], f"'{path.name}'", header), name, header


def _npz_parts(path: Path, test_path: Path | None) -> tuple[_Part, _Part | None]:
    def load(p: Path) -> dict[str, np.ndarray]:
        try:
            with np.load(p, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except Exception as exc:
            raise DataError(f"'{p.name}' is not a readable .npz file: {exc}") from None

    arrays = load(path)
    if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys() and test_path is None:
        return (_Part(arrays["x_train"], arrays["y_train"], f"'{path.name}' (x_train, y_train)"),
                _Part(arrays["x_test"], arrays["y_test"], f"'{path.name}' (x_test, y_test)"))
    if {"x", "y"} <= arrays.keys():
        train = _Part(arrays["x"], arrays["y"], f"'{path.name}' (x, y)")
        if test_path is None:
            return train, None
        test = load(test_path)
        if not {"x", "y"} <= test.keys():
            raise DataError(f"'{test_path.name}' needs arrays 'x' and 'y'; found {', '.join(sorted(test)) or 'none'}")
        return train, _Part(test["x"], test["y"], f"'{test_path.name}' (x, y)")
    raise DataError(f"'{path.name}' needs arrays x_train, y_train, x_test, y_test or x, y; found {', '.join(sorted(arrays)) or 'none'}")


_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an MNIST-style IDX file (optionally gzipped)."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except Exception as exc:
            raise DataError(f"'{path.name}' is not a valid gzip file: {exc}") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise DataError(f"'{path.name}' is not an IDX file (bad magic number)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"'{path.name}' is truncated (incomplete header)")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    need = math.prod(dims) * dtype.itemsize
    body = raw[4 + 4 * ndim:]
    if len(body) != need:
        raise DataError(f"'{path.name}' has {len(body)} data bytes, but its header {list(dims)} needs {need}")
    return np.frombuffer(body, dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_part(images: Path, labels: Path) -> _Part:
    x, y = read_idx(images), read_idx(labels)
    if x.ndim == 3:
        x = x[:, None]  # [N, H, W] -> [N, 1, H, W]
    if x.dtype == np.uint8:
        x = x.astype(np.float64) / 255.0  # pixels to [0, 1]
    return _Part(x, y, f"'{images.name}' / '{labels.name}'")


# --- sources ------------------------------------------------------------------------------

def _generated(data: DataSpec, params: dict[str, Any]) -> _Part:
    from sklearn import datasets

    if data.train is None:
        raise DataError(f"data source '{data.source}' needs 'train' (the number of training samples)")
    test = data.test if data.test is not None else max(1, round(data.train / 4))
    if data.train < 1 or test < 1:
        raise DataError(f"data: 'train' and 'test' must be at least 1, got {data.train} and {test}")
    n = data.train + test
    if data.source == "halfmoons":
        params["noise"] = 0.1 if data.noise is None else data.noise
        x, y = datasets.make_moons(n_samples=n, noise=params["noise"], random_state=data.seed)
    else:
        params["features"] = 10 if data.features is None else data.features
        params["noise"] = 0.0 if data.noise is None else data.noise
        if params["features"] < 1:
            raise DataError("data: 'features' must be at least 1")
        x, y = datasets.make_regression(n_samples=n, n_features=params["features"], noise=params["noise"], random_state=data.seed)
    params["test"] = test
    return _Part(x, y, f"generated {data.source}")


def _bundled(data: DataSpec) -> _Part:
    from sklearn import datasets

    loader = {"digits": datasets.load_digits, "breast_cancer": datasets.load_breast_cancer, "diabetes": datasets.load_diabetes}
    x, y = loader[data.source](return_X_y=True)
    return _Part(x, y, f"bundled {data.source}")


def _read(data: DataSpec, base_dir: Path, files: dict[str, str], params: dict[str, Any]) -> tuple[_Part, _Part | None, str]:
    """(pool or train part, separate test part or None, label name)."""
    src = data.source
    if src in ("halfmoons", "regression"):
        return _generated(data, params), None, "y"
    if src in ("digits", "breast_cancer", "diabetes"):
        return _bundled(data), None, "y"
    if src == "csv":
        train, label, header = _csv_part(_resolve(data.path, "path", src, base_dir, files), data.label)
        params["label"] = label
        if data.test_path is None:
            return train, None, label
        test, _, test_header = _csv_part(_resolve(data.test_path, "test_path", src, base_dir, files), label)
        if test_header != header:
            raise DataError(f"{test.where} has columns {test_header}, but {train.where} has {header}")
        return train, test, label
    if src == "npz":
        path = _resolve(data.path, "path", src, base_dir, files)
        test_path = _resolve(data.test_path, "test_path", src, base_dir, files) if data.test_path else None
        train, test = _npz_parts(path, test_path)
        return train, test, "y"
    # idx
    train = _idx_part(_resolve(data.images, "images", src, base_dir, files),
                      _resolve(data.labels, "labels", src, base_dir, files))
    if (data.test_images is None) != (data.test_labels is None):
        raise DataError("data source 'idx' needs both 'test_images' and 'test_labels', or neither")
    if data.test_images is None:
        return train, None, "labels"
    test = _idx_part(_resolve(data.test_images, "test_images", src, base_dir, files),
                     _resolve(data.test_labels, "test_labels", src, base_dir, files))
    return train, test, "labels"


# --- splitting, scaling, trust ------------------------------------------------------------

def _count(value: int | None, default: int, available: int, what: str, where: str) -> int:
    n = default if value is None else value
    if n < 0:
        raise DataError(f"data: '{what}' must not be negative, got {n}")
    if n > available:
        raise DataError(f"data: '{what}' asks for {n} rows, but {where} has only {available}")
    if n == 0:
        raise DataError(f"data: the {what} split is empty")
    return n


def _split(train: _Part, test: _Part | None, data: DataSpec, params: dict[str, Any]) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(data.seed)
    if test is None:
        n = len(train.x)
        if "test" in params:  # generated: exactly train + test rows exist
            n_test = params["test"]
        else:
            default = max(1, round(n / 5))
            if data.train is not None:
                default = min(default, max(n - data.train, 0))
            n_test = _count(data.test, default, n, "test", train.where)
        n_train = _count(data.train, n - n_test, n - n_test, "train", f"{train.where} (after {n_test} test rows)")
        perm = rng.permutation(n)
        tr, te = perm[:n_train], np.sort(perm[n_train:n_train + n_test])
        x_test, y_test = train.x[te], train.y[te]
    else:
        n_train = _count(data.train, len(train.x), len(train.x), "train", train.where)
        n_test = _count(data.test, len(test.x), len(test.x), "test", test.where)
        tr = rng.permutation(len(train.x))[:n_train]
        te = np.sort(rng.permutation(len(test.x))[:n_test])
        x_test, y_test = test.x[te], test.y[te]
        if test.x.shape[1:] != train.x.shape[1:]:
            raise DataError(f"{test.where} has features of shape {list(test.x.shape[1:])}, {train.where} {list(train.x.shape[1:])}")
    params.update(train=n_train, test=n_test)
    return train.x[tr], train.y[tr], x_test, y_test


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, list]]:
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 1e-12 * np.maximum(np.abs(mean), 1.0), std, 1.0)  # constant up to rounding
    return (train - mean) / std, (test - mean) / std, {"mean": mean.tolist(), "std": std.tolist()}


def _trusted(value: float | None, n_train: int) -> np.ndarray | None:
    if value is None:
        return None
    if value <= 0:
        raise DataError(f"data: 'trusted' must be a fraction in (0, 1) or a count >= 1, got {value}")
    if value < 1:
        k = math.floor(value * n_train)
        if k == 0:
            raise DataError(f"data: trusted fraction {value} of {n_train} training rows is 0 rows")
    else:
        if value != int(value):
            raise DataError(f"data: a trusted count must be a whole number, got {value}")
        k = int(value)
        if k > n_train:
            raise DataError(f"data: trusted count {k} exceeds the {n_train} training rows")
    mask = np.zeros(n_train, dtype=bool)
    mask[:k] = True
    return mask


def load_data(data: DataSpec, base_dir: Path, task: str) -> Dataset:
    """Load the data described by ``data`` (paths relative to ``base_dir``) for ``task``."""
    if task not in ("classification", "regression"):
        raise DataError(f"task must be 'classification' or 'regression', got {task!r}")
    natural = _NATURAL_TASK.get(data.source)
    if natural is not None and natural != task:
        raise DataError(f"data source '{data.source}' is a {natural} data set, but the training loss makes this a {task} task")
    stray = [f for f in _OPTIONAL_FIELDS if getattr(data, f) is not None and f not in _FIELDS.get(data.source, ())]
    if stray:
        raise DataError(f"data: {', '.join(repr(f) for f in stray)} does not apply to source '{data.source}'")
    files: dict[str, str] = {}
    params: dict[str, Any] = {}
    raw_train, raw_test, label = _read(data, Path(base_dir), files, params)
    train = _check_part(raw_train, task, label)  # type: ignore[arg-type]
    test = _check_part(raw_test, task, label) if raw_test is not None else None  # type: ignore[arg-type]
    num_classes = None
    if task == "classification":
        num_classes = int(max(train.y.max(), test.y.max() if test is not None else 0)) + 1
        if num_classes < 2:
            raise DataError(f"labels in {train.where} contain a single class; classification needs at least 2")
    x_train, y_train, x_test, y_test = _split(train, test, data, params)
    scaling: dict[str, Any] | None = None
    if data.standardize:
        x_train, x_test, stats = _standardize(x_train, x_test)
        scaling = {"x_mean": stats["mean"], "x_std": stats["std"]}
        if task == "regression":
            y_train, y_test, y_stats = _standardize(y_train, y_test)
            scaling.update(y_mean=y_stats["mean"], y_std=y_stats["std"])
    x_train, x_test = x_train.astype(np.float32), x_test.astype(np.float32)
    if task == "regression":
        y_train, y_test = y_train.astype(np.float32), y_test.astype(np.float32)
    trusted = _trusted(data.trusted, len(x_train))
    params.update(seed=data.seed, standardize=data.standardize)
    if trusted is not None:
        params["trusted"] = int(trusted.sum())
    descriptor = {
        "source": data.source,
        "task": task,
        "params": dict(sorted(params.items())),
        "files": files,
        "feature_shape": list(x_train.shape[1:]),
        "num_classes": num_classes,
        "standardization": scaling,
    }
    return Dataset(x_train, y_train, x_test, y_test, trusted, task, num_classes, descriptor,  # type: ignore[arg-type]
                   _digest(x_train, y_train, x_test, y_test, trusted))
