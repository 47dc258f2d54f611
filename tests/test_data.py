"""Datasets: format-exact generated files, checksums, the look-up order, and the download path
against a local HTTP server (there is no internet here)."""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import idx_bytes

from serving.geometry import normalize_uint8
from training import data
from training.data import (
    FIXTURE_SUBSET,
    BatchSampler,
    CorruptFileError,
    DatasetNotFoundError,
    FileSpec,
    get_spec,
    load_dataset,
    normalize,
    parse_cifar10_tar,
    parse_idx,
)

# --- generators of format-exact files -------------------------------------------------------


def make_idx_dataset(directory: Path, n_train=30, n_test=12, size=28, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        (directory / name).write_bytes(gzip.compress(idx_bytes(arr), mtime=0))
    return arrays


def spec_for(directory: Path, base: str = "fashion-mnist", mirrors=("http://127.0.0.1:9/",)):
    """The real spec with checksums of the generated files (content hashes of the payloads)."""
    spec = get_spec(base)
    files = tuple(FileSpec(fs.name, data.file_md5(directory / fs.name),
                           hashlib.sha256(gzip.decompress((directory / fs.name).read_bytes())).hexdigest())
                  for fs in spec.files)
    return replace(spec, files=files, mirrors=mirrors)


def make_cifar_tar(path: Path, n_per_batch=4, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    batches = {}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            d = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(x) for x in rng.integers(0, 10, n_per_batch)],
                 b"batch_label": name.encode()}
            batches[name] = d
            payload = pickle.dumps(d, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return batches


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No real cache, no $BNSERVE_DATA, no Debian folder: only what a test puts there."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BNSERVE_DATA", raising=False)
    monkeypatch.setattr(data, "DEBIAN_DATASETS", tmp_path / "debian")
    return tmp_path


# --- parsing ----------------------------------------------------------------------------------

def test_parse_idx_roundtrip():
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(parse_idx(idx_bytes(arr)), arr)


@pytest.mark.parametrize("mangle, message", [
    (lambda b: b[:-1], "size mismatch"),
    (lambda b: b + b"\0", "size mismatch"),
    (lambda b: b"\x01" + b[1:], "not a uint8 IDX"),
    (lambda b: b[:2] + b"\x0d" + b[3:], "not a uint8 IDX"),  # float32 dtype code
    (lambda b: b[:6], "header truncated"),
    (lambda b: b[:2], "too short"),
])
def test_parse_idx_rejects_malformed(mangle, message):
    raw = idx_bytes(np.zeros((2, 5, 5), np.uint8))
    with pytest.raises(CorruptFileError, match=message):
        parse_idx(mangle(raw))


def test_load_generated_idx_dataset(isolated):
    d = isolated / "mine"
    arrays = make_idx_dataset(d)
    spec = spec_for(d)
    ds = load_dataset(spec, data_dir=d, download=False)
    assert ds.source == d
    assert ds.train.images.dtype == torch.uint8 and ds.train.images.shape == (30, 1, 28, 28)
    assert ds.test.labels.dtype == torch.int64 and ds.test.labels.shape == (12,)
    np.testing.assert_array_equal(ds.train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(ds.test.labels.numpy(), arrays["t10k-labels-idx1-ubyte.gz"])


def test_repacked_file_accepted_by_content_checksum(isolated):
    """Debian re-gzipped Fashion-MNIST: different md5, same payload. Accepted."""
    d = isolated / "repacked"
    make_idx_dataset(d)
    spec = spec_for(d)
    spec = replace(spec, files=tuple(replace(fs, md5="0" * 32) for fs in spec.files))
    name = spec.files[0].name
    (d / name).write_bytes(gzip.compress(gzip.decompress((d / name).read_bytes()), compresslevel=1, mtime=123))
    assert load_dataset(spec, data_dir=d, download=False).train.images.shape[0] == 30


def test_checksum_mismatch_is_a_clear_error(isolated):
    d = isolated / "bad"
    make_idx_dataset(d)
    spec = spec_for(d)
    raw = bytearray(gzip.decompress((d / "t10k-images-idx3-ubyte.gz").read_bytes()))
    raw[100] ^= 0xFF  # one flipped pixel: the format check cannot see it, the checksum does
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset(spec, data_dir=d, download=False)
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte.gz: checksum mismatch" in msg
    assert str(d) in msg and "download: disabled" in msg


def test_truncated_file_is_a_clear_error(isolated):
    d = isolated / "trunc"
    make_idx_dataset(d)
    spec = spec_for(d)
    p = d / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    with pytest.raises(DatasetNotFoundError, match="train-images-idx3-ubyte.gz"):
        load_dataset(spec, data_dir=d, download=False)


def test_error_lists_every_place_tried_and_the_fix(isolated, monkeypatch):
    monkeypatch.setenv("BNSERVE_DATA", str(isolated / "env"))
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("fashion-mnist", data_dir=isolated / "explicit", download=False)
    msg = str(e.value)
    for place in (isolated / "explicit", isolated / "explicit" / "fashion-mnist", isolated / "env",
                  isolated / "env" / "fashion-mnist", isolated / "home" / ".cache" / "bnserve" / "fashion-mnist",
                  isolated / "debian" / "fashion-mnist"):
        assert f"{place}: missing" in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_lookup_order_prefers_explicit_then_env_then_cache(isolated, monkeypatch):
    spec = None
    for where in ("explicit", "env/fashion-mnist", "home/.cache/bnserve/fashion-mnist", "debian/fashion-mnist"):
        make_idx_dataset(isolated / where, n_train=10 + len(where))
        spec = spec or spec_for(isolated / where)
    # content checksums differ between the copies; accept any by clearing them to the md5 check
    def check(expected_dir, **kw):
        s = replace(spec, files=tuple(replace(fs, md5=data.file_md5(expected_dir / fs.name), content_sha256=None)
                                      for fs in spec.files))
        assert load_dataset(s, download=False, **kw).source == expected_dir

    monkeypatch.setenv("BNSERVE_DATA", str(isolated / "env"))
    check(isolated / "explicit", data_dir=isolated / "explicit")
    check(isolated / "env" / "fashion-mnist")
    monkeypatch.delenv("BNSERVE_DATA")
    check(isolated / "home/.cache/bnserve/fashion-mnist")
    check(isolated / "debian" / "fashion-mnist")


def test_cifar10_tar_parses(isolated):
    path = isolated / "c" / "cifar-10-python.tar.gz"
    batches = make_cifar_tar(path)
    spec = replace(get_spec("cifar10"), files=(FileSpec(path.name, data.file_md5(path)),))
    ds = load_dataset(spec, data_dir=path.parent, download=False)
    assert ds.train.images.shape == (20, 3, 32, 32) and ds.test.images.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(ds.test.images.reshape(4, -1).numpy(), batches["test_batch"][b"data"])
    assert ds.train.labels.tolist()[:4] == batches["data_batch_1"][b"labels"]


def test_cifar10_corrupt_archive_is_clear(isolated):
    with pytest.raises(CorruptFileError, match="cannot read archive"):
        parse_cifar10_tar(b"not a tarball at all")


# --- the download path, against 127.0.0.1 ----------------------------------------------------

@contextlib.contextmanager
def serve_directory(directory: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.network
def test_download_from_mirror_with_checksum(isolated):
    www = isolated / "www"
    arrays = make_idx_dataset(www)
    with serve_directory(www) as url, serve_directory(isolated / "empty") as broken:
        (isolated / "empty").mkdir(exist_ok=True)
        spec = spec_for(www, mirrors=(broken, url))  # first mirror answers 404 for everything
        ds = load_dataset(spec, progress=False)
    target = isolated / "home" / ".cache" / "bnserve" / "fashion-mnist"
    assert ds.source == target
    assert sorted(p.name for p in target.iterdir()) == sorted(arrays)  # no .part files left
    np.testing.assert_array_equal(ds.test.images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte.gz"])
    # a second load finds the cache and does not need the mirrors any more
    assert load_dataset(spec, download=False).source == target


@pytest.mark.network
def test_download_with_wrong_checksum_leaves_nothing(isolated):
    www = isolated / "www"
    make_idx_dataset(www)
    spec = spec_for(www)
    spec = replace(spec, files=(replace(spec.files[0], md5="f" * 32),) + spec.files[1:])
    with serve_directory(www) as url:
        with pytest.raises(DatasetNotFoundError) as e:
            load_dataset(replace(spec, mirrors=(url,)), data_dir=isolated / "dl", progress=False)
    assert "md5" in str(e.value) and "download into" in str(e.value)
    assert not (isolated / "dl" / spec.files[0].name).exists()
    assert not list((isolated / "dl").glob("*.part"))


# --- the committed real-image fixtures (tests/data) -------------------------------------------

# The official first labels (../shared/data/README.md for MNIST; Fashion-MNIST's first ten).
FIRST_LABELS = {"mnist": ([5, 0, 4, 1, 9, 2, 1, 3, 1, 4], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]),
                "fashion-mnist": ([9, 0, 0, 3, 0, 2, 7, 2, 5, 5], [9, 2, 1, 1, 6, 1, 4, 6, 5, 7])}


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_fixture_subset_is_accepted_as_a_subset(isolated, fixture_data_dir, name):
    ds = load_dataset(name, data_dir=fixture_data_dir, download=False)
    assert ds.source == fixture_data_dir / name and ds.subset == FIXTURE_SUBSET.name
    assert ds.describe() == f"{name} (subset {FIXTURE_SUBSET.name})"
    assert (len(ds.train), len(ds.test)) == (2000, 1000)
    assert ds.train.images.shape[1:] == (1, 28, 28)
    train_first, test_first = FIRST_LABELS[name]
    assert ds.train.labels[:10].tolist() == train_first and ds.test.labels[:10].tolist() == test_first
    for split in (ds.train, ds.test):  # every class present, none dominating
        counts = torch.bincount(split.labels, minlength=10)
        assert counts.min() >= 0.08 * len(split) and counts.max() <= 0.13 * len(split)
    mean = ds.train.images.float().div(255).mean().item()  # real pixels: near the dataset's mean
    assert abs(mean - ds.spec.mean[0]) < 0.01
    for fs in ds.spec.files:  # gzip -n: no name, mtime 0 (reproducible bytes)
        raw = (fixture_data_dir / name / fs.name).read_bytes()
        assert raw[:4] == b"\x1f\x8b\x08\x00" and raw[4:8] == b"\0\0\0\0"


def test_fixture_with_one_changed_pixel_is_refused(isolated, fixture_data_dir):
    d = isolated / "fixture"
    d.mkdir()
    for fs in get_spec("mnist").files:
        (d / fs.name).write_bytes((fixture_data_dir / "mnist" / fs.name).read_bytes())
    raw = bytearray(gzip.decompress((d / "t10k-images-idx3-ubyte.gz").read_bytes()))
    raw[5000] ^= 0x01
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(raw), mtime=0))
    with pytest.raises(DatasetNotFoundError, match="nor is it the payload of a registered subset"):
        load_dataset("mnist", data_dir=d, download=False)


def test_files_from_the_full_set_and_a_subset_are_not_mixed(isolated):
    full, small = isolated / "full", isolated / "small"
    make_idx_dataset(full, seed=1)
    make_idx_dataset(small, n_train=5, n_test=3, seed=2)
    sha = tuple(hashlib.sha256(gzip.decompress((small / fs.name).read_bytes())).hexdigest()
                for fs in get_spec("mnist").files)
    spec = replace(spec_for(full), subsets=(replace(FIXTURE_SUBSET, train=5, test=3, content_sha256=sha),))
    assert load_dataset(spec, data_dir=small, download=False).subset == FIXTURE_SUBSET.name
    assert load_dataset(spec, data_dir=full, download=False).subset is None
    (full / "t10k-labels-idx1-ubyte.gz").write_bytes((small / "t10k-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(DatasetNotFoundError, match="files from different sets"):
        load_dataset(spec, data_dir=full, download=False)


# --- the full real datasets, where the loader finds them ----------------------------------------


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.full_data(n)) for n in ("mnist", "fashion-mnist")])
def test_real_full_dataset(full_dataset, name):
    ds = full_dataset
    assert ds.spec.name == name and ds.subset is None
    assert len(ds.train) == 60_000 and len(ds.test) == 10_000
    assert ds.train.images.shape[1:] == (1, 28, 28)
    assert sorted(ds.test.labels.unique().tolist()) == list(range(10))
    train_first, test_first = FIRST_LABELS[name]
    assert ds.train.labels[:10].tolist() == train_first and ds.test.labels[:10].tolist() == test_first
    x = ds.train.images.float().div(255)
    assert abs(x.mean().item() - ds.spec.mean[0]) < 1e-3 and abs(x.std().item() - ds.spec.std[0]) < 1e-3


# --- normalisation and sampling ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_normalize_matches_serving_bit_for_bit(name):
    spec = get_spec(name)
    x = np.random.default_rng(0).integers(0, 256, (7, *spec.input_shape), dtype=np.uint8)
    ours = normalize(torch.from_numpy(x), spec.mean, spec.std).numpy()
    np.testing.assert_array_equal(ours, normalize_uint8(x, spec.mean, spec.std))
    ref = (x / 255.0 - np.array(spec.mean).reshape(-1, 1, 1)) / np.array(spec.std).reshape(-1, 1, 1)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_batch_sampler_epochs_without_replacement():
    s = BatchSampler(10, 3, seed=1)
    first_epoch = torch.cat([s.next_indices() for _ in range(3)])
    assert len(set(first_epoch.tolist())) == 9
    again = BatchSampler(10, 3, seed=1)
    assert torch.equal(torch.cat([again.next_indices() for _ in range(3)]), first_epoch)
    with pytest.raises(ValueError, match="exceeds"):
        BatchSampler(2, 3, seed=0)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        get_spec("svhn")
