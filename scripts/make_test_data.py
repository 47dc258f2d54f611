"""Write the real-image test fixtures of tests/data/ from the full, checksum-verified datasets.

    .venv/bin/python -m scripts.make_test_data [--data-dir DIR] [--out tests/data]

DIR (or the loader's usual look-up) must hold the FULL datasets, checked by their checksums.

Selection (deterministic, no randomness): the FIRST ``TRAIN_N`` images of the training split and
the FIRST ``TEST_N`` images of the test split, in the official order, with their labels. Files
are format-exact IDX (the official header with the smaller count), gzip level 9 with no name and
mtime 0 (as ``gzip -9 -n``), so the same input gives the same payload. The loader accepts them
by the sha256 of each decompressed payload, registered in ``training/data.py`` as the subset
``SUBSET_NAME``; regenerate, then update those values if the selection ever changes.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
from pathlib import Path

import numpy as np

from training.data import FIXTURE_SUBSET, load_dataset

TRAIN_N, TEST_N = FIXTURE_SUBSET.train, FIXTURE_SUBSET.test
DATASETS = ("mnist", "fashion-mnist")


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array (magic 0x00000803 / 0x00000801, big-endian dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_subset(name: str, out: Path, data_dir: str | None) -> dict[str, str]:
    """Write one dataset's four fixture files into ``out/<name>``; return name -> payload sha256."""
    ds = load_dataset(name, data_dir=data_dir, download=False, progress=False)
    if ds.subset is not None:
        raise SystemExit(f"{name}: {ds.source} holds the subset {ds.subset!r}, not the full dataset")
    arrays = {
        "train-images-idx3-ubyte.gz": ds.train.images[:TRAIN_N, 0].numpy(),
        "train-labels-idx1-ubyte.gz": ds.train.labels[:TRAIN_N].numpy().astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": ds.test.images[:TEST_N, 0].numpy(),
        "t10k-labels-idx1-ubyte.gz": ds.test.labels[:TEST_N].numpy().astype(np.uint8),
    }
    target = out / name
    target.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for file_name, array in arrays.items():
        payload = idx_bytes(array)
        (target / file_name).write_bytes(gzip.compress(payload, compresslevel=9, mtime=0))
        hashes[file_name] = hashlib.sha256(payload).hexdigest()
    print(f"{name}: from {ds.source}")
    for file_name, h in hashes.items():
        print(f"  {file_name}  {h}")
    return hashes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="tests/data")
    p.add_argument("--data-dir", default=None, help="where the full datasets are (see docs/reproduction.md, \"Data\")")
    p.add_argument("--dataset", choices=DATASETS, action="append",
                   help="only this dataset (repeatable); default: both")
    args = p.parse_args(argv)
    for name in args.dataset or DATASETS:
        write_subset(name, Path(args.out), args.data_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
