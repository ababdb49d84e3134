"""Data sets for the experiments, as NumPy arrays: nothing is downloaded at run time.

* `bundled`: scikit-learn's bundled sets (breast cancer, digits, iris, wine and binary
  variants), standardised.
* `load_libsvm`: a LIBSVM / svmlight file (a9a, w8a, mushrooms, ...: the logistic-regression
  sets of the error-feedback papers), read with scikit-learn.
* `load_idx`: MNIST / Fashion-MNIST's IDX files (plain or gzipped).
* `mnist1d`: MNIST-1D generated locally by the optional ``mnist1d`` package.
* `split`: a stratified train / test split of a `Dataset`.
* `worker_split`: n equal shards with a leading worker axis, sorted by label (heterogeneous)
  or i.i.d.

Every loader returns a `Dataset`: ``x`` float32 with the samples on the first axis, ``y``
int32 labels in ``0 .. num_classes - 1``.
"""

from __future__ import annotations

import gzip
import operator
import os
import random
import struct
from typing import NamedTuple

import numpy as np

__all__ = [
  "BUNDLED",
  "Dataset",
  "bundled",
  "load_idx",
  "load_libsvm",
  "mnist1d",
  "read_idx",
  "split",
  "worker_split",
]


class Dataset(NamedTuple):
  """A labelled data set.

  Attributes:
    x: float32 features, shape ``(m, ...)`` (m samples).
    y: int32 labels in ``0 .. num_classes - 1``, shape ``(m,)``.
    num_classes: the number of classes k.
    name: a short description (shown in task names and tables).

  Example:
    >>> ds = Dataset(np.zeros((3, 2), np.float32), np.array([0, 1, 1], np.int32), 2, "toy")
    >>> ds.x.shape, ds.num_classes, ds.name
    ((3, 2), 2, 'toy')
  """

  x: np.ndarray
  y: np.ndarray
  num_classes: int
  name: str


# ----------------------------------------------------------------------------------------------
# scikit-learn's bundled sets


def _load_sklearn(loader: str) -> tuple[np.ndarray, np.ndarray]:
  from sklearn import datasets

  x, y = getattr(datasets, loader)(return_X_y=True)
  return np.asarray(x, np.float64), np.asarray(y, np.int64)


# name -> (scikit-learn loader, relabelling of the original labels or None, description)
_BUNDLED = {
  "breast_cancer": ("load_breast_cancer", None, "569 x 30, 2 classes (malignant 0, benign 1)"),
  "digits": ("load_digits", None, "1797 x 64 (8 x 8 images), 10 classes"),
  "iris": ("load_iris", None, "150 x 4, 3 classes"),
  "wine": ("load_wine", None, "178 x 13, 3 classes"),
  "digits_binary": ("load_digits", lambda y: y >= 5, "digits, 0-4 -> 0 and 5-9 -> 1"),
  "iris_binary": ("load_iris", lambda y: y == 2, "iris, virginica -> 1 and the others -> 0"),
  "wine_binary": ("load_wine", lambda y: y == 0, "wine, class 0 -> 1 and the others -> 0"),
}

BUNDLED: tuple[str, ...] = tuple(_BUNDLED)
"""The names `bundled` accepts."""


def _standardise(x: np.ndarray) -> np.ndarray:
  """Zero mean and unit variance per feature (float64 statistics); constant features -> 0."""
  mean = x.mean(axis=0)
  std = x.std(axis=0)
  return ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


def bundled(name: str) -> Dataset:
  """One of scikit-learn's bundled data sets (shipped with it: no download), standardised.

  The features are standardised to zero mean and unit variance per feature, with the
  statistics of the whole set (train and test parts alike: a `split` afterwards sees a slight
  leak, harmless for optimisation studies); a constant feature (digits' blank corner pixels)
  becomes all zeros.

  ===================  ==========================================================
  name                 contents
  ===================  ==========================================================
  ``breast_cancer``    569 x 30, 2 classes (malignant 0, benign 1)
  ``digits``           1797 x 64 (8 x 8 images, flattened), 10 classes
  ``iris``             150 x 4, 3 classes
  ``wine``             178 x 13, 3 classes
  ``digits_binary``    digits: 0-4 -> 0, 5-9 -> 1
  ``iris_binary``      iris: virginica -> 1, the others -> 0 (not linearly separable)
  ``wine_binary``      wine: class 0 -> 1, the others -> 0
  ===================  ==========================================================

  Args:
    name: one of `BUNDLED`.

  Returns:
    The `Dataset`, ``x`` float32 of shape (m, d), ``y`` int32.

  Raises:
    ValueError: for an unknown name.

  Example:
    >>> ds = bundled("digits_binary")
    >>> ds.x.shape, ds.x.dtype, ds.num_classes, sorted(set(ds.y.tolist()))
    ((1797, 64), dtype('float32'), 2, [0, 1])
  """
  if name not in _BUNDLED:
    raise ValueError(f"bundled: unknown data set {name!r}; choose from {', '.join(BUNDLED)}")
  loader, relabel, _ = _BUNDLED[name]
  x, y = _load_sklearn(loader)
  if relabel is not None:
    y = relabel(y)
  y = y.astype(np.int32)
  return Dataset(_standardise(x), y, int(y.max()) + 1, name)


# ----------------------------------------------------------------------------------------------
# LIBSVM / svmlight files


def _check_file(fn: str, path: str | os.PathLike) -> str:
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{fn}: no such file: {path!r}")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{fn}: not a file: {path!r}")
  return path


def load_libsvm(
  path: str | os.PathLike,
  *,
  n_features: int | None = None,
  zero_based: bool | str = "auto",
  classes=None,
  name: str | None = None,
) -> Dataset:
  """A classification data set in LIBSVM / svmlight format (a9a, w8a, mushrooms, ...).

  Read with `sklearn.datasets.load_svmlight_file` (``.gz`` and ``.bz2`` files are opened
  transparently) and densified to float32; the features are left as the file gives them (the
  LIBSVM site's copies are mostly already scaled).

  The labels are mapped to ``0 .. k - 1`` in increasing order of their values: the i-th
  smallest label becomes i. A two-class file thus gets {0, 1} with **the larger label as 1**:
  {-1, +1} files (a9a, w8a) map -1 -> 0 and +1 -> 1, {1, 2} files (mushrooms) 1 -> 0 and
  2 -> 1, and {0, 1} files stay as they are. A file whose labels are already 0 .. k - 1 keeps
  them. To load a train and a test file consistently (a test file may lack a class), pass the
  label values with ``classes``, e.g. ``classes=(-1, 1)``.

  Args:
    path: the file.
    n_features: the number of features; by default the largest index in the file (pass it
      for a test file whose last features never occur, e.g. 123 for ``a9a.t``).
    zero_based: whether the feature indices start at 0 (True), 1 (False), or "auto" (guess
      from the file: 1-based unless an index 0 occurs).
    classes: the label values in the order of the classes 0, 1, ...; by default the sorted
      distinct labels of the file. A label outside it is an error.
    name: the data set's name; by default the file's name.

  Returns:
    The `Dataset`, ``x`` float32 of shape (m, n_features), ``y`` int32.

  Raises:
    FileNotFoundError: for a missing file.
    ValueError: for a malformed file, an empty one, non-integer labels (a regression file)
      or a label not in ``classes``; the message names the path.

  Example:
    >>> import tempfile
    >>> from sklearn.datasets import dump_svmlight_file
    >>> path = os.path.join(tempfile.mkdtemp(), "toy.svm")
    >>> dump_svmlight_file(np.eye(3), np.array([-1, 1, 1]), path, zero_based=False)
    >>> ds = load_libsvm(path)
    >>> ds.x.shape, ds.y.tolist(), ds.num_classes
    ((3, 3), [0, 1, 1], 2)
  """
  fn = "load_libsvm"
  path = _check_file(fn, path)
  from sklearn.datasets import load_svmlight_file

  try:
    x, labels = load_svmlight_file(
      path, n_features=n_features, zero_based=zero_based, dtype=np.float64
    )
  except (ValueError, UnicodeDecodeError, OSError, EOFError) as e:
    raise ValueError(f"{fn}: malformed LIBSVM / svmlight file {path!r}: {e}") from e
  if x.shape[0] == 0:
    raise ValueError(f"{fn}: no samples in {path!r}")
  labels = np.asarray(labels, np.float64)
  if not np.all(np.isfinite(labels) & (labels == np.round(labels))):
    bad = float(labels[~(np.isfinite(labels) & (labels == np.round(labels)))][0])
    raise ValueError(
      f"{fn}: {path!r} has a non-integer label {bad!r}; only classification files are read"
    )
  if classes is None:
    values = np.unique(labels)
  else:
    values = np.asarray(classes, np.float64).reshape(-1)
    if values.size == 0 or np.unique(values).size != values.size:
      raise ValueError(f"{fn}: classes must be distinct label values, got {classes!r}")
  # map every label to its position in `values` (sorted lookup, then a check)
  order = np.argsort(values, kind="stable")
  pos = np.searchsorted(values[order], labels).clip(0, values.size - 1)
  found = values[order][pos] == labels
  if not np.all(found):
    bad = float(labels[~found][0])
    raise ValueError(f"{fn}: {path!r} has the label {bad!r}, not in classes {classes!r}")
  y = order[pos].astype(np.int32)
  if name is None:
    name = os.path.basename(path)
  return Dataset(np.asarray(x.toarray(), np.float32), y, int(values.size), name)


# ----------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)

# IDX type code -> big-endian NumPy dtype
_IDX_DTYPES = {
  0x08: np.dtype(">u1"),
  0x09: np.dtype(">i1"),
  0x0B: np.dtype(">i2"),
  0x0C: np.dtype(">i4"),
  0x0D: np.dtype(">f4"),
  0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """The array in an IDX file (plain, or gzipped: recognised by its content, not its name).

  The format: a magic number of 4 bytes, ``0x00 0x00 <type> <ndim>`` (type 0x08 unsigned
  byte, 0x09 signed byte, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), then ``ndim``
  big-endian uint32 dimensions, then the data, big-endian, in C order.

  Args:
    path: the file.

  Returns:
    The array in native byte order, with the file's dtype and dimensions.

  Raises:
    FileNotFoundError: for a missing file.
    ValueError: for a bad magic number, a bad type code, or a data size that does not match
      the dimensions (a truncated file); the message names the path.

  Example:
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
    >>> with open(path, "wb") as f:
    ...   _ = f.write(struct.pack(">BBBBI", 0, 0, 0x08, 1, 3) + bytes([7, 0, 2]))
    >>> read_idx(path)
    array([7, 0, 2], dtype=uint8)
  """
  fn = "read_idx"
  path = _check_file(fn, path)
  with open(path, "rb") as f:
    raw = f.read()
  if raw[:2] == b"\x1f\x8b":  # gzip
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
      raise ValueError(f"{fn}: corrupt gzip file {path!r}: {e}") from e
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    magic = raw[:4].hex() or "(empty)"
    raise ValueError(
      f"{fn}: bad magic number 0x{magic} in {path!r}: not an IDX file (expected 0x0000 followed "
      "by a type code and a number of dimensions, e.g. 0x00000803 for MNIST images)"
    )
  code, ndim = raw[2], raw[3]
  if code not in _IDX_DTYPES:
    raise ValueError(
      f"{fn}: bad magic number 0x{raw[:4].hex()} in {path!r}: type code 0x{code:02x}"
    )
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f"{fn}: truncated header in {path!r} ({ndim} dimensions announced)")
  shape = struct.unpack(f">{ndim}I", raw[4:header])
  dtype = _IDX_DTYPES[code]
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(raw) - header != expected:
    raise ValueError(
      f"{fn}: {path!r} announces shape {shape} of {dtype.name} ({expected} bytes of data) but "
      f"has {len(raw) - header} bytes of data"
    )
  data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
  return data.astype(dtype.newbyteorder("="))


def load_idx(
  images_path: str | os.PathLike, labels_path: str | os.PathLike, *, name: str | None = None
) -> Dataset:
  """MNIST / Fashion-MNIST from their standard IDX files (plain or gzipped ``.gz``).

  Args:
    images_path: the images, unsigned bytes with 3 dimensions (m, rows, cols), e.g.
      ``train-images-idx3-ubyte.gz``.
    labels_path: the labels, non-negative integers with 1 dimension (m,), e.g.
      ``train-labels-idx1-ubyte.gz``.
    name: the data set's name; by default the images file's name.

  Returns:
    The `Dataset`: ``x`` float32 in [0, 1] (the bytes / 255) of shape (m, rows, cols), ``y``
    int32, ``num_classes`` the largest label + 1 (10 for MNIST).

  Raises:
    FileNotFoundError: for a missing file.
    ValueError: for a bad magic number or size (see `read_idx`), images that are not 3-D
      unsigned bytes, labels that are not 1-D non-negative integers, or different numbers of
      images and labels; the message names the path(s).

  Example:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with open(os.path.join(d, "images"), "wb") as f:
    ...   _ = f.write(struct.pack(">BBBBIII", 0, 0, 8, 3, 2, 1, 2) + bytes([0, 255, 51, 102]))
    >>> with open(os.path.join(d, "labels"), "wb") as f:
    ...   _ = f.write(struct.pack(">BBBBI", 0, 0, 8, 1, 2) + bytes([3, 9]))
    >>> ds = load_idx(os.path.join(d, "images"), os.path.join(d, "labels"))
    >>> ds.x.shape, ds.x.dtype, float(ds.x.max()), ds.y.tolist(), ds.num_classes
    ((2, 1, 2), dtype('float32'), 1.0, [3, 9], 10)
  """
  fn = "load_idx"
  images_path, labels_path = os.fspath(images_path), os.fspath(labels_path)
  images = read_idx(images_path)
  labels = read_idx(labels_path)
  if images.dtype != np.uint8 or images.ndim != 3:
    raise ValueError(
      f"{fn}: {images_path!r} holds {images.dtype.name} of shape {images.shape}; expected "
      "unsigned-byte images of shape (m, rows, cols) (magic number 0x00000803)"
    )
  if labels.dtype.kind not in "iu" or labels.ndim != 1:
    raise ValueError(
      f"{fn}: {labels_path!r} holds {labels.dtype.name} of shape {labels.shape}; expected "
      "integer labels of shape (m,) (magic number 0x00000801)"
    )
  if images.shape[0] != labels.shape[0]:
    raise ValueError(
      f"{fn}: {images.shape[0]} images in {images_path!r} but {labels.shape[0]} labels in "
      f"{labels_path!r}"
    )
  if labels.size == 0:
    raise ValueError(f"{fn}: no samples in {images_path!r}")
  if labels.min() < 0:
    raise ValueError(f"{fn}: negative label {int(labels.min())} in {labels_path!r}")
  x = images.astype(np.float32) / np.float32(255)
  y = labels.astype(np.int32)
  if name is None:
    name = os.path.basename(images_path)
  return Dataset(x, y, int(y.max()) + 1, name)


# ----------------------------------------------------------------------------------------------
# MNIST-1D


def mnist1d(num_samples: int = 4000, seed: int = 0) -> Dataset:
  """MNIST-1D (Greydanus & Kobak, 2020), generated locally by the optional ``mnist1d`` package.

  The package's generator (``mnist1d.data.make_dataset``) builds the samples from templates
  written in its source: nothing is downloaded. It draws from NumPy's and Python's global
  random generators; their states are saved and restored around the call, so the caller's
  streams are unaffected. The package's defaults are kept (signals of length 40, its noise
  and transformation scales) except for ``num_samples`` and ``seed``; the package's own
  "original" set corresponds to ``num_samples=5000, seed=42``, of which its first 80% is the
  training part. The whole set is standardised by the package to mean 0 and standard
  deviation 1 over all its values (not per feature).

  Args:
    num_samples: the number of samples, >= 10; ``num_samples // 10`` of each digit are made
      (so the set has ``10 * (num_samples // 10)`` samples), in random order.
    seed: the generator's seed.

  Returns:
    The `Dataset`, ``x`` float32 of shape (10 * (num_samples // 10), 40), ``y`` int32 in
    0 .. 9.

  Raises:
    ImportError: when ``mnist1d`` is not installed (``pip install mnist1d``).
    ValueError: for ``num_samples < 10``.
  """
  fn = "mnist1d"
  num_samples = operator.index(num_samples)
  if num_samples < 10:
    raise ValueError(f"{fn}: num_samples must be >= 10 (one per digit), got {num_samples!r}")
  try:
    from mnist1d import data as m1d
  except ImportError as e:
    raise ImportError(
      f"{fn}: the optional package mnist1d is needed: pip install mnist1d ({e})"
    ) from e
  args = m1d.get_dataset_args()
  args.num_samples = num_samples
  args.seed = operator.index(seed)
  args.train_split = 1.0
  np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
  try:
    raw = m1d.make_dataset(args)
  finally:
    np.random.set_state(np_state)  # noqa: NPY002
    random.setstate(py_state)
  x = np.concatenate([raw["x"], raw["x_test"]]).astype(np.float32)
  y = np.concatenate([raw["y"], raw["y_test"]]).astype(np.int32)
  return Dataset(x, y, 10, "mnist1d")


# ----------------------------------------------------------------------------------------------
# splits


def split(dataset: Dataset, fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
  """A stratified random train / test split.

  The test part has ``round(fraction * m)`` samples (at least 1, and at least 1 left for
  training), shared between the classes in proportion to their sizes (largest remainders
  break the rounding, so each class's share is within one of ``fraction`` times its size).
  Which samples of a class go where is random; both parts are returned in a random order.

  Args:
    dataset: the `Dataset`, with at least 2 samples.
    fraction: the test part, in (0, 1).
    seed: the draw.

  Returns:
    ``(train, test)``, named ``"<name>/train"`` and ``"<name>/test"``, with the same
    ``num_classes`` as ``dataset``.

  Raises:
    ValueError: for a fraction outside (0, 1) or fewer than 2 samples.

  Example:
    >>> ds = bundled("iris")
    >>> train, test = split(ds, fraction=0.2)
    >>> len(train.y), len(test.y), np.bincount(test.y).tolist()
    (120, 30, [10, 10, 10])
  """
  fn = "split"
  fraction = float(fraction)
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"{fn}: fraction must be in (0, 1), got {fraction!r}")
  y = np.asarray(dataset.y)
  m = y.shape[0]
  if m < 2:
    raise ValueError(f"{fn}: dataset {dataset.name!r} has {m} sample(s); need at least 2")
  n_test = min(max(round(fraction * m), 1), m - 1)
  rng = np.random.default_rng(seed)
  labels, counts = np.unique(y, return_counts=True)
  quota = n_test * counts / m
  share = np.floor(quota).astype(np.int64)
  extra = n_test - int(share.sum())
  # largest remainders (ties broken at random) get one more
  key = np.lexsort((rng.random(labels.size), -(quota - share)))
  share[key[:extra]] += 1
  test_idx = []
  for label, k in zip(labels, share, strict=True):
    members = np.flatnonzero(y == label)
    test_idx.append(rng.permutation(members)[:k])
  test_idx = np.concatenate(test_idx)
  mask = np.zeros(m, bool)
  mask[test_idx] = True
  train_idx = rng.permutation(np.flatnonzero(~mask))
  test_idx = rng.permutation(test_idx)

  def part(idx, suffix):
    return Dataset(dataset.x[idx], dataset.y[idx], dataset.num_classes, f"{dataset.name}/{suffix}")

  return part(train_idx, "train"), part(test_idx, "test")


def worker_split(
  x: np.ndarray, y: np.ndarray, n: int, *, heterogeneous: bool, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """The samples dealt to n workers in equal shards, with a leading worker axis.

  Each worker gets ``m // n`` samples; the remainder ``m % n`` is dropped, chosen at random.
  ``heterogeneous=True`` is the split of the EF21 / DIANA experiments: the kept samples are
  sorted by label (in random order within a label) and cut into n contiguous shards, so each
  worker sees one or a few classes and worker i's labels are <= worker i+1's. False shuffles
  the kept samples and cuts them into n i.i.d. shards.

  Args:
    x: the features, shape (m, ...).
    y: the labels, shape (m,).
    n: the number of workers, in 1 .. m.
    heterogeneous: sorted-label shards (True) or i.i.d. shards (False).
    seed: the draw.

  Returns:
    ``(x_w, y_w)`` of shapes (n, m // n, ...) and (n, m // n), dtypes kept.

  Raises:
    ValueError: for n < 1, n > m, or x and y of different lengths.

  Example:
    >>> x = np.arange(9, dtype=np.float32)[:, None]
    >>> y = np.array([1, 0, 1, 0, 1, 0, 1, 0, 1])
    >>> x_w, y_w = worker_split(x, y, 3, heterogeneous=True)
    >>> x_w.shape, y_w.tolist()
    ((3, 3, 1), [[0, 0, 0], [0, 1, 1], [1, 1, 1]])
    >>> worker_split(x, y, 4, heterogeneous=False)[1].shape  # 9 // 4 = 2 each, 1 dropped
    (4, 2)
  """
  fn = "worker_split"
  x, y = np.asarray(x), np.asarray(y)
  if y.ndim != 1 or x.ndim < 1 or x.shape[0] != y.shape[0]:
    raise ValueError(
      f"{fn}: x and y must have the same number of samples on their first axis (y 1-D), got "
      f"shapes {x.shape} and {y.shape}"
    )
  m = y.shape[0]
  if isinstance(n, bool):
    raise TypeError(f"{fn}: n must be an integer, got {n!r}")
  n = operator.index(n)
  if n < 1:
    raise ValueError(f"{fn}: n (the number of workers) must be >= 1, got {n}")
  if n > m:
    raise ValueError(f"{fn}: n={n} workers but only {m} samples; n must be at most {m}")
  shard = m // n
  rng = np.random.default_rng(seed)
  idx = rng.permutation(m)[: n * shard]
  if heterogeneous:
    idx = idx[np.argsort(y[idx], kind="stable")]
  return x[idx].reshape((n, shard) + x.shape[1:]), y[idx].reshape(n, shard)


def from_spec(spec: str | Dataset) -> Dataset:
  """The data set a config names: a bundled name, ``"mnist1d"``, ``"libsvm:PATH"`` or
  ``"idx:IMAGES,LABELS"`` (so a result file with a user's data says where they came from);
  a `Dataset` is returned as it is.

  Example:
    >>> from_spec("breast_cancer").x.shape
    (569, 30)
  """
  if isinstance(spec, Dataset):
    return spec
  if not isinstance(spec, str):
    raise TypeError(f"from_spec: expected a data set name or a Dataset, got {spec!r}")
  if spec.startswith("libsvm:"):
    return load_libsvm(spec[len("libsvm:") :])
  if spec.startswith("idx:"):
    paths = spec[len("idx:") :].split(",")
    if len(paths) != 2:
      raise ValueError(f"from_spec: write idx:IMAGES,LABELS, got {spec!r}")
    return load_idx(*paths)
  if spec == "mnist1d":
    return mnist1d()
  return bundled(spec)
