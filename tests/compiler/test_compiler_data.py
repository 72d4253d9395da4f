"""Data loading: every source on small generated files, every DataError path, splits, scaling, trust."""
from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcert.compiler.data import Dataset, load_data, read_idx
from pcert.errors import DataError
from pcert.spec.model import DataSpec


def load(tmp_path: Path, task: str = "classification", **kw) -> Dataset:
    return load_data(DataSpec(**kw), tmp_path, task)


def error(tmp_path: Path, task: str = "classification", **kw) -> str:
    with pytest.raises(DataError) as info:
        load(tmp_path, task, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def write_csv(path: Path, rows: int = 40, classes: int = 3, header: str = "id,a,b,label") -> Path:
    ids = np.arange(rows)
    lines = [header] + [f"{i},{i * 0.5:.3f},{(i % 7) - 3.0},{i % classes}" for i in ids]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_idx(path: Path, array: np.ndarray, code: int = 0x08, compress: bool = False) -> Path:
    dtype = {0x08: ">u1", 0x0D: ">f4"}[code]
    raw = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(dtype).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


# --- sources ----------------------------------------------------------------------------------

def test_csv_pool_split_is_seeded_disjoint_and_complete(tmp_path):
    write_csv(tmp_path / "d.csv", rows=50)
    d = load(tmp_path, source="csv", path="d.csv", train=30, test=10, standardize=False, seed=1)
    assert d.x_train.shape == (30, 3) and d.x_test.shape == (10, 3)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64 and d.num_classes == 3
    ids_train, ids_test = d.x_train[:, 0].astype(int), d.x_test[:, 0].astype(int)
    assert len(set(ids_train) | set(ids_test)) == 40 and not set(ids_train) & set(ids_test)
    np.testing.assert_array_equal(d.y_train, ids_train % 3)  # labels travel with their rows
    assert list(ids_test) == sorted(ids_test)  # test rows keep file order
    assert d.descriptor["files"] == {"path": hashlib.sha256((tmp_path / "d.csv").read_bytes()).hexdigest()}
    assert d.descriptor["params"]["label"] == "label"
    again = load(tmp_path, source="csv", path="d.csv", train=30, test=10, standardize=False, seed=1)
    assert again.sha256 == d.sha256 and np.array_equal(again.x_train, d.x_train)
    other = load(tmp_path, source="csv", path="d.csv", train=30, test=10, standardize=False, seed=2)
    assert other.sha256 != d.sha256


def test_csv_defaults_label_by_name_and_test_file(tmp_path):
    write_csv(tmp_path / "d.csv", rows=50)
    d = load(tmp_path, source="csv", path="d.csv", standardize=False)
    assert (len(d.x_train), len(d.x_test)) == (40, 10)  # test defaults to a fifth
    by_name = load(tmp_path, "regression", source="csv", path="d.csv", label="a", standardize=False)
    assert by_name.y_train.shape == (40, 1) and by_name.y_train.dtype == np.float32
    assert by_name.x_train.shape[1] == 3  # id, b, label
    write_csv(tmp_path / "t.csv", rows=8)
    sep = load(tmp_path, source="csv", path="d.csv", test_path="t.csv", standardize=False)
    assert (len(sep.x_train), len(sep.x_test)) == (50, 8)
    np.testing.assert_array_equal(sep.x_test[:, 0], np.arange(8))


def test_csv_crlf_and_quotes(tmp_path):
    (tmp_path / "q.csv").write_bytes(b'"a","b","label"\r\n"1",2,0\r\n3,"4",1\r\n\r\n5,6,1\r\n')
    d = load(tmp_path, source="csv", path="q.csv", train=2, test=1, standardize=False)
    rows = np.concatenate([np.c_[d.x_train, d.y_train], np.c_[d.x_test, d.y_test]])
    assert sorted(map(tuple, rows.tolist())) == [(1, 2, 0), (3, 4, 1), (5, 6, 1)]


def test_npz_both_layouts(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "s.npz", x_train=rng.normal(size=(20, 1, 4, 4)), y_train=rng.integers(0, 4, 20),
             x_test=rng.normal(size=(6, 1, 4, 4)), y_test=np.arange(6) % 4)
    d = load(tmp_path, source="npz", path="s.npz", train=12)
    assert d.x_train.shape == (12, 1, 4, 4) and d.x_test.shape == (6, 1, 4, 4) and d.num_classes == 4
    assert d.reshaped((16,)).x_test.shape == (6, 16) and d.reshaped((16,)).sha256 != d.sha256
    with pytest.raises(DataError):
        d.reshaped((15,))
    np.savez(tmp_path / "p.npz", x=rng.normal(size=(30, 5)), y=rng.normal(size=30))
    r = load(tmp_path, "regression", source="npz", path="p.npz", train=20, test=10)
    assert r.y_train.shape == (20, 1) and r.num_classes is None


@pytest.mark.parametrize("compress", [False, True])
def test_idx_images_and_labels(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 4, 5), dtype=np.uint8)
    labels = (np.arange(30) % 10).astype(np.uint8)
    write_idx(tmp_path / "img", images, compress=compress)
    write_idx(tmp_path / "lab", labels, compress=compress)
    write_idx(tmp_path / "timg", images[:7], compress=compress)
    write_idx(tmp_path / "tlab", labels[:7], compress=compress)
    np.testing.assert_array_equal(read_idx(tmp_path / "img"), images)
    d = load(tmp_path, source="idx", images="img", labels="lab", test_images="timg", test_labels="tlab", standardize=False)
    assert d.x_train.shape == (30, 1, 4, 5) and d.x_test.shape == (7, 1, 4, 5) and d.num_classes == 10
    np.testing.assert_allclose(d.x_test[:, 0], images[:7] / 255.0, rtol=1e-6)
    assert set(d.descriptor["files"]) == {"images", "labels", "test_images", "test_labels"}
    pooled = load(tmp_path, source="idx", images="img", labels="lab", train=20, test=5)
    assert pooled.x_train.shape == (20, 1, 4, 5)


def test_bundled_and_generated_sources(tmp_path):
    moons = load(tmp_path, source="halfmoons", train=40, test=10, seed=3)
    assert moons.x_train.shape == (40, 2) and moons.descriptor["params"]["noise"] == 0.1 and moons.num_classes == 2
    assert load(tmp_path, source="halfmoons", train=40, test=10, seed=3).sha256 == moons.sha256
    reg = load(tmp_path, "regression", source="regression", train=30)
    assert reg.x_train.shape == (30, 10) and len(reg.x_test) == 8 and reg.descriptor["params"]["features"] == 10
    digits = load(tmp_path, source="digits", train=100, test=50)
    assert digits.x_train.shape == (100, 64) and digits.num_classes == 10
    assert load(tmp_path, source="breast_cancer").num_classes == 2
    assert load(tmp_path, "regression", source="diabetes").y_train.shape[1] == 1


# --- standardisation and trust ----------------------------------------------------------------

def test_standardize_uses_training_statistics_only(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, size=(60, 3))
    x[:, 2] = 0.1  # constant column (std ~1e-17 by rounding): std 1, not a blow-up
    y = rng.normal(10.0, 4.0, size=(60, 2))
    np.savez(tmp_path / "p.npz", x=x, y=y)
    raw = load(tmp_path, "regression", source="npz", path="p.npz", train=40, test=20, standardize=False)
    d = load(tmp_path, "regression", source="npz", path="p.npz", train=40, test=20)
    s = d.descriptor["standardization"]
    np.testing.assert_allclose(s["x_mean"], raw.x_train.mean(0), rtol=1e-5)
    np.testing.assert_allclose(s["x_std"][:2], raw.x_train.std(0)[:2], rtol=1e-5)
    assert s["x_std"][2] == 1.0
    np.testing.assert_allclose(d.x_train.mean(0), [0, 0, 0], atol=1e-5)
    np.testing.assert_allclose((raw.x_test - s["x_mean"]) / s["x_std"], d.x_test, rtol=1e-5, atol=1e-5)
    assert abs(d.x_test[:, :2].mean()) > 1e-3  # test rows were not re-centred on their own statistics
    np.testing.assert_allclose((raw.y_test - s["y_mean"]) / s["y_std"], d.y_test, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d.y_train.std(0), [1, 1], rtol=1e-5)


@pytest.mark.parametrize("trusted,count", [(0.25, 10), (7, 7), (40, 40), (0.999, 39)])
def test_trusted_rows(tmp_path, trusted, count):
    d = load(tmp_path, source="halfmoons", train=40, test=5, trusted=trusted)
    assert d.trusted.dtype == bool and d.trusted.sum() == count and d.trusted[:count].all()
    assert d.descriptor["params"]["trusted"] == count


@pytest.mark.parametrize("trusted", [0.0, -1.0, 0.01, 2.5, 41])
def test_bad_trusted(tmp_path, trusted):
    assert "trusted" in error(tmp_path, source="halfmoons", train=40, test=5, trusted=trusted)


@settings(max_examples=15, deadline=None)
@given(n_train=st.integers(1, 20), n_test=st.integers(1, 10), seed=st.integers(0, 50))
def test_pool_split_property(tmp_path_factory, n_train, n_test, seed):
    tmp = tmp_path_factory.mktemp("pool")
    np.savez(tmp / "p.npz", x=np.arange(30, dtype=float)[:, None], y=np.arange(30) % 2)
    d = load(tmp, source="npz", path="p.npz", train=n_train, test=n_test, seed=seed, standardize=False)
    tr, te = d.x_train[:, 0].astype(int), d.x_test[:, 0].astype(int)
    assert len(tr) == n_train and len(te) == n_test and not set(tr) & set(te) and len(set(tr)) == n_train
    np.testing.assert_array_equal(d.y_train, tr % 2)


# --- errors -----------------------------------------------------------------------------------

def test_file_errors(tmp_path):
    assert "data file not found" in error(tmp_path, source="csv", path="nope.csv")
    assert "needs 'path'" in error(tmp_path, source="npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert "not a readable .npz" in error(tmp_path, source="npz", path="bad.npz")
    np.savez(tmp_path / "k.npz", a=np.ones(3))
    assert "found a" in error(tmp_path, source="npz", path="k.npz")
    (tmp_path / "e.csv").write_text("")
    assert "empty" in error(tmp_path, source="csv", path="e.csv")
    (tmp_path / "h.csv").write_text("a,b\n")
    assert "no data rows" in error(tmp_path, source="csv", path="h.csv")


def test_csv_content_errors(tmp_path):
    (tmp_path / "r.csv").write_text("a,b,label\n1,2,0\n3,4\n5,6,1\n")
    assert "line 3: 2 fields" in error(tmp_path, source="csv", path="r.csv")
    (tmp_path / "s.csv").write_text("a,b,label\n1,2,0\n3,x,1\n")
    assert "line 3, column 'b'" in error(tmp_path, source="csv", path="s.csv")
    (tmp_path / "n.csv").write_text("a,b,label\n1,nan,0\nnan,inf,1\n2,2,1\n")
    assert "3 NaN/inf values (column 'a': 1, column 'b': 2)" in error(tmp_path, source="csv", path="n.csv")
    (tmp_path / "l.csv").write_text("a,label\n1,0\n2,nan\n3,1\n")
    assert "labels (label) in 'l.csv' contain 1 NaN/inf" in error(tmp_path, source="csv", path="l.csv")
    (tmp_path / "f.csv").write_text("a,label\n1,0\n2,0.5\n3,1\n")
    assert "1 are not integers" in error(tmp_path, source="csv", path="f.csv")
    (tmp_path / "m.csv").write_text("a,label\n1,0\n2,-1\n3,1\n")
    assert "1 are negative" in error(tmp_path, source="csv", path="m.csv")
    assert "no label column 'y'" in error(tmp_path, source="csv", path="m.csv", label="y")
    write_csv(tmp_path / "d.csv")
    write_csv(tmp_path / "t.csv", header="id,a,c,label")
    assert "has columns" in error(tmp_path, source="csv", path="d.csv", test_path="t.csv")


def test_array_errors(tmp_path):
    np.savez(tmp_path / "len.npz", x=np.ones((5, 2)), y=np.zeros(4))
    assert "5 feature rows but 4 labels" in error(tmp_path, source="npz", path="len.npz")
    x = np.ones((6, 2))
    x[1, 1] = np.inf
    np.savez(tmp_path / "inf.npz", x=x, y=np.arange(6) % 2)
    assert "features in 'inf.npz' (x, y) contain 1 NaN/inf" in error(tmp_path, source="npz", path="inf.npz")
    np.savez(tmp_path / "scalar.npz", x=np.ones((6, 2)), y=np.array(1.0))
    assert "got scalars" in error(tmp_path, source="npz", path="scalar.npz")
    np.savez(tmp_path / "one.npz", x=np.ones((6, 2)), y=np.zeros(6))
    assert "single class" in error(tmp_path, source="npz", path="one.npz")
    write_idx(tmp_path / "img", np.zeros((4, 2, 2), np.uint8))
    (tmp_path / "junk").write_bytes(b"\x01\x02\x03\x04\x05")
    assert "bad magic" in error(tmp_path, source="idx", images="img", labels="junk")
    (tmp_path / "short").write_bytes((tmp_path / "img").read_bytes()[:-3])
    assert "data bytes" in error(tmp_path, source="idx", images="short", labels="img")
    assert "both 'test_images' and 'test_labels'" in error(tmp_path, source="idx", images="img", labels="img", test_images="img")


def test_split_errors(tmp_path):
    write_csv(tmp_path / "d.csv", rows=20)
    assert "asks for 30 rows" in error(tmp_path, source="csv", path="d.csv", test=30)
    assert "asks for 18 rows" in error(tmp_path, source="csv", path="d.csv", train=18, test=4)
    assert "test split is empty" in error(tmp_path, source="csv", path="d.csv", train=20)
    assert "test split is empty" in error(tmp_path, source="csv", path="d.csv", test=0)
    assert "needs 'train'" in error(tmp_path, source="halfmoons")
    assert "at least 1" in error(tmp_path, source="halfmoons", train=10, test=0)


def test_fields_that_do_not_apply(tmp_path):
    assert "'noise', 'features' does not apply to source 'csv'" in error(tmp_path, source="csv", path="d.csv", noise=0.1, features=3)
    assert "'path' does not apply to source 'digits'" in error(tmp_path, source="digits", path="d.csv")


def test_task_mismatch(tmp_path):
    assert "regression data set" in error(tmp_path, "classification", source="diabetes")
    assert "classification data set" in error(tmp_path, "regression", source="digits")
    assert "task must be" in error(tmp_path, "ranking", source="digits")
