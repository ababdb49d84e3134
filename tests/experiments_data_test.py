"""The experiments' data loaders: files written here in each format and read back."""

import gzip
import random
import struct

import numpy as np
import pytest
from sklearn.datasets import dump_svmlight_file

from biased_compression.experiments import _data

# ----------------------------------------------------------------------------------------------
# bundled


@pytest.mark.parametrize(
  "name, shape, k",
  [
    ("breast_cancer", (569, 30), 2),
    ("digits", (1797, 64), 10),
    ("iris", (150, 4), 3),
    ("wine", (178, 13), 3),
    ("digits_binary", (1797, 64), 2),
    ("iris_binary", (150, 4), 2),
    ("wine_binary", (178, 13), 2),
  ],
)
def test_bundled_shapes_and_standardisation(name, shape, k):
  ds = _data.bundled(name)
  assert ds.name == name
  assert ds.x.shape == shape and ds.x.dtype == np.float32
  assert ds.y.shape == shape[:1] and ds.y.dtype == np.int32
  assert ds.num_classes == k
  assert set(np.unique(ds.y).tolist()) == set(range(k))
  x = ds.x.astype(np.float64)
  np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-5)
  std = x.std(0)
  constant = std < 1e-6  # digits' blank pixels: all zeros
  np.testing.assert_allclose(std[~constant], 1.0, atol=1e-4)
  assert np.all(x[:, constant] == 0)


def test_bundled_binary_variants_relabel():
  digits, binary = _data.bundled("digits"), _data.bundled("digits_binary")
  np.testing.assert_array_equal(binary.y, (digits.y >= 5).astype(np.int32))
  np.testing.assert_array_equal(binary.x, digits.x)


def test_bundled_unknown_name():
  with pytest.raises(ValueError, match="unknown data set 'mnist'.*breast_cancer"):
    _data.bundled("mnist")


def test_bundled_names():
  assert {"breast_cancer", "digits", "iris", "wine", "digits_binary"} <= set(_data.BUNDLED)


# ----------------------------------------------------------------------------------------------
# LIBSVM


@pytest.mark.parametrize(
  "labels, expected",
  [
    ([-1, 1, 1, -1, 1], [0, 1, 1, 0, 1]),  # a9a, w8a
    ([1, 2, 2, 1, 2], [0, 1, 1, 0, 1]),  # mushrooms
    ([0, 1, 1, 0, 1], [0, 1, 1, 0, 1]),
    ([3, 1, 2, 1, 3], [2, 0, 1, 0, 2]),  # multi-class: rank order
  ],
)
@pytest.mark.parametrize("zero_based", [True, False])
@pytest.mark.parametrize("compressed", [False, True])
def test_libsvm_round_trip(tmp_path, labels, expected, zero_based, compressed):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 4)) * (rng.random((5, 4)) < 0.6)
  x[:, -1] = 1.0  # the last feature occurs, so the width is 4 with "auto"
  x[0, 0] = 1.0  # index 0 occurs in a zero-based file
  path = tmp_path / "data.svm"
  dump_svmlight_file(x, np.array(labels), str(path), zero_based=zero_based)
  if compressed:
    gz = tmp_path / "data.svm.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    path = gz
  ds = _data.load_libsvm(path)
  assert ds.x.dtype == np.float32 and ds.y.dtype == np.int32
  np.testing.assert_allclose(ds.x, x.astype(np.float32), rtol=1e-6)
  assert ds.y.tolist() == expected
  assert ds.num_classes == len(set(labels))
  assert ds.name == path.name


def test_libsvm_n_features_and_classes(tmp_path):
  path = tmp_path / "a9a.t"
  dump_svmlight_file(np.eye(3), np.array([1, 1, 1]), str(path), zero_based=False)
  ds = _data.load_libsvm(path, n_features=5, zero_based=False, classes=(-1, 1), name="a9a test")
  assert ds.x.shape == (3, 5)
  np.testing.assert_array_equal(ds.x[:, :3], np.eye(3))
  assert ds.y.tolist() == [1, 1, 1] and ds.num_classes == 2 and ds.name == "a9a test"
  with pytest.raises(ValueError, match=r"label 1\.0, not in classes"):
    _data.load_libsvm(path, classes=(0, 2))


def test_libsvm_errors(tmp_path):
  missing = tmp_path / "missing.svm"
  with pytest.raises(FileNotFoundError, match="missing.svm"):
    _data.load_libsvm(missing)
  bad = tmp_path / "bad.svm"
  bad.write_text("hello world\n")
  with pytest.raises(ValueError, match="malformed.*bad.svm"):
    _data.load_libsvm(bad)
  unsorted = tmp_path / "unsorted.svm"
  unsorted.write_text("1 3:1 1:1\n")
  with pytest.raises(ValueError, match="malformed.*unsorted.svm"):
    _data.load_libsvm(unsorted)
  empty = tmp_path / "empty.svm"
  empty.write_text("")
  with pytest.raises(ValueError, match="no samples.*empty.svm"):
    _data.load_libsvm(empty)
  regression = tmp_path / "regression.svm"
  regression.write_text("1.5 1:1\n2 2:1\n")
  with pytest.raises(ValueError, match="non-integer label 1.5"):
    _data.load_libsvm(regression)


# ----------------------------------------------------------------------------------------------
# IDX


def _idx_bytes(array, code=0x08, dtype=">u1"):
  header = struct.pack(">BBBB", 0, 0, code, array.ndim)
  header += struct.pack(f">{array.ndim}I", *array.shape)
  return header + np.asarray(array, dtype=dtype).tobytes()


def _write(path, data, compressed):
  path.write_bytes(gzip.compress(data) if compressed else data)
  return path


@pytest.mark.parametrize("compressed", [False, True])
def test_idx_round_trip(tmp_path, compressed):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(6, 5, 4), dtype=np.uint8)
  images[0, 0, 0], images[0, 0, 1] = 0, 255
  labels = np.array([0, 9, 3, 3, 1, 7], np.uint8)
  suffix = ".gz" if compressed else ""
  ip = _write(tmp_path / f"images-idx3-ubyte{suffix}", _idx_bytes(images), compressed)
  lp = _write(tmp_path / f"labels-idx1-ubyte{suffix}", _idx_bytes(labels), compressed)
  ds = _data.load_idx(ip, lp)
  assert ds.x.shape == (6, 5, 4) and ds.x.dtype == np.float32
  assert ds.y.dtype == np.int32 and ds.num_classes == 10 and ds.name == ip.name
  assert ds.x.min() == 0.0 and ds.x.max() == 1.0
  np.testing.assert_array_equal(np.round(ds.x * 255).astype(np.uint8), images)
  np.testing.assert_array_equal(ds.y, labels)


@pytest.mark.parametrize(
  "code, dtype",
  [(0x08, ">u1"), (0x09, ">i1"), (0x0B, ">i2"), (0x0C, ">i4"), (0x0D, ">f4"), (0x0E, ">f8")],
)
def test_read_idx_dtypes(tmp_path, code, dtype):
  a = np.arange(24).reshape(2, 3, 4) - (0 if code == 0x08 else 5)
  path = _write(tmp_path / "a.idx", _idx_bytes(a, code, dtype), False)
  b = _data.read_idx(path)
  assert b.shape == (2, 3, 4) and b.dtype == np.dtype(dtype).newbyteorder("=")
  np.testing.assert_array_equal(b, a)


def test_idx_errors(tmp_path):
  images = np.zeros((3, 2, 2), np.uint8)
  ip = _write(tmp_path / "images", _idx_bytes(images), False)
  lp = _write(tmp_path / "labels", _idx_bytes(np.array([1, 2, 3, 4], np.uint8)), False)
  with pytest.raises(ValueError, match=r"3 images in .*images.* but 4 labels in .*labels"):
    _data.load_idx(ip, lp)
  with pytest.raises(FileNotFoundError, match="nothing-here"):
    _data.load_idx(tmp_path / "nothing-here", lp)
  with pytest.raises(FileNotFoundError, match="no-labels"):
    _data.load_idx(ip, tmp_path / "no-labels")
  bad = _write(tmp_path / "bad-magic", b"\x12\x34\x08\x01" + struct.pack(">I", 0), False)
  with pytest.raises(ValueError, match="bad magic number 0x12340801.*bad-magic"):
    _data.load_idx(bad, lp)
  bad_gz = _write(tmp_path / "bad-magic.gz", b"\x12\x34\x08\x01" + struct.pack(">I", 0), True)
  with pytest.raises(ValueError, match="bad magic number"):
    _data.read_idx(bad_gz)
  bad_code = _write(tmp_path / "bad-code", b"\x00\x00\x07\x01" + struct.pack(">I", 0), False)
  with pytest.raises(ValueError, match="type code 0x07"):
    _data.read_idx(bad_code)
  truncated = _write(tmp_path / "truncated", _idx_bytes(images)[:-1], False)
  with pytest.raises(
    ValueError, match=r"truncated' announces shape \(3, 2, 2\) of uint8 \(12 bytes.*has 11"
  ):
    _data.read_idx(truncated)
  with pytest.raises(ValueError, match=r"expected unsigned-byte images"):
    _data.load_idx(lp, lp)  # 1-D labels given as images
  with pytest.raises(ValueError, match=r"expected integer labels"):
    _data.load_idx(ip, ip)


# ----------------------------------------------------------------------------------------------
# MNIST-1D


def test_mnist1d():
  pytest.importorskip("mnist1d")
  np.random.seed(123)  # noqa: NPY002 (the caller's global streams survive the call)
  random.seed(123)
  before = (np.random.random(), random.random())  # noqa: NPY002
  np.random.seed(123)  # noqa: NPY002
  random.seed(123)
  ds = _data.mnist1d(num_samples=105, seed=1)
  assert (np.random.random(), random.random()) == before  # noqa: NPY002
  assert ds.x.shape == (100, 40) and ds.x.dtype == np.float32
  assert ds.y.dtype == np.int32 and ds.num_classes == 10
  assert np.bincount(ds.y).tolist() == [10] * 10
  again = _data.mnist1d(num_samples=105, seed=1)
  np.testing.assert_array_equal(again.x, ds.x)
  other = _data.mnist1d(num_samples=105, seed=2)
  assert not np.array_equal(other.x, ds.x)
  with pytest.raises(ValueError, match="num_samples"):
    _data.mnist1d(num_samples=5)


def test_mnist1d_missing_package(monkeypatch):
  import sys

  monkeypatch.setitem(sys.modules, "mnist1d", None)  # import mnist1d now raises ImportError
  with pytest.raises(ImportError, match="pip install mnist1d"):
    _data.mnist1d(num_samples=20)


# ----------------------------------------------------------------------------------------------
# split, worker_split


def _toy(m=103, k=3, seed=0):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, k, size=m).astype(np.int32)
  x = np.arange(m, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
  return _data.Dataset(x, y, k, "toy")


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
def test_split_stratified_partition(fraction):
  ds = _toy()
  train, test = _data.split(ds, fraction=fraction, seed=3)
  m = len(ds.y)
  assert len(test.y) == round(fraction * m) and len(train.y) + len(test.y) == m
  ids = np.concatenate([train.x[:, 0], test.x[:, 0]]).astype(int)
  assert sorted(ids.tolist()) == list(range(m))  # a partition
  np.testing.assert_array_equal(train.y, ds.y[train.x[:, 0].astype(int)])  # rows kept whole
  counts, test_counts = np.bincount(ds.y), np.bincount(test.y, minlength=3)
  assert np.all(np.abs(test_counts - fraction * counts) <= 1)  # stratified
  assert train.name == "toy/train" and test.name == "toy/test" and test.num_classes == 3
  again = _data.split(ds, fraction=fraction, seed=3)[1]
  np.testing.assert_array_equal(again.x, test.x)


def test_split_errors():
  with pytest.raises(ValueError, match="fraction"):
    _data.split(_toy(), fraction=1.0)
  with pytest.raises(ValueError, match="fraction"):
    _data.split(_toy(), fraction=0.0)
  with pytest.raises(ValueError, match="at least 2"):
    _data.split(_toy(m=1), fraction=0.5)


@pytest.mark.parametrize("heterogeneous", [True, False])
@pytest.mark.parametrize("n", [1, 4, 10, 103])
def test_worker_split(heterogeneous, n):
  ds = _toy()
  m = len(ds.y)
  x_w, y_w = _data.worker_split(ds.x, ds.y, n, heterogeneous=heterogeneous, seed=5)
  shard = m // n
  assert x_w.shape == (n, shard, 2) and y_w.shape == (n, shard)
  assert x_w.dtype == ds.x.dtype and y_w.dtype == ds.y.dtype
  ids = x_w[..., 0].astype(int).reshape(-1)
  assert len(set(ids.tolist())) == n * shard  # each kept sample once: a partition of the kept
  np.testing.assert_array_equal(y_w.reshape(-1), ds.y[ids])  # samples keep their labels
  flat = y_w.reshape(-1)
  if heterogeneous:
    assert np.all(np.diff(y_w, axis=1) >= 0)  # each worker's labels sorted
    assert np.all(np.diff(flat) >= 0)  # and contiguous across workers
  elif n in (1, 4):
    assert np.any(np.diff(flat) < 0)  # shuffled
  again = _data.worker_split(ds.x, ds.y, n, heterogeneous=heterogeneous, seed=5)[0]
  np.testing.assert_array_equal(again, x_w)


def test_worker_split_heterogeneous_on_a_real_set():
  ds = _data.bundled("digits")
  _, y_w = _data.worker_split(ds.x, ds.y, 10, heterogeneous=True)
  # 1797 // 10 = 179 each, the classes 174 to 183 samples: each worker sees 1 to 3 digits,
  # mostly one
  assert all(len(np.unique(row)) <= 3 for row in y_w)
  assert all(np.bincount(row).max() > len(row) / 2 for row in y_w)


def test_worker_split_errors():
  ds = _toy(m=5)
  with pytest.raises(ValueError, match=r"n \(the number of workers\) must be >= 1"):
    _data.worker_split(ds.x, ds.y, 0, heterogeneous=True)
  with pytest.raises(ValueError, match="n=6 workers but only 5 samples"):
    _data.worker_split(ds.x, ds.y, 6, heterogeneous=False)
  with pytest.raises(TypeError, match="n must be an integer"):
    _data.worker_split(ds.x, ds.y, True, heterogeneous=False)
  with pytest.raises(TypeError):
    _data.worker_split(ds.x, ds.y, 2.0, heterogeneous=False)
  with pytest.raises(ValueError, match="same number of samples"):
    _data.worker_split(ds.x, ds.y[:4], 2, heterogeneous=False)
