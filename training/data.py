"""Datasets: where they are found, how they are checked, how they are parsed.

Dataset facts (class names, image size, channels, mean/std) are defined here once and travel
inside every checkpoint and then the ONNX metadata; nothing downstream re-declares them.

Look-up order for a dataset's files (the first place holding valid files wins):
  1. an explicit ``data_dir`` (``--data-dir``), 2. ``$BNSERVE_DATA``, 3. ``~/.cache/bnserve/<name>``,
  4. ``/usr/share/datasets/<name>`` (Debian's ``dataset-*`` packages), 5. a download from the
  official mirrors into the first writable of 1-3, verified by checksum, written to a temporary
  file and renamed only when complete.
For 1 and 2 both ``DIR`` and ``DIR/<name>`` are looked at. Missing or corrupt files raise one
``DatasetNotFoundError`` that lists every place tried and why it was rejected.

Which files are accepted: the official files by their md5, faithful re-packs (re-gzipped, as
Debian's Fashion-MNIST) by the sha256 of the decompressed payload, and a registered
``Subset`` (the real-image test fixtures under tests/data/: the first 2,000 train and 1,000 test
images) by the sha256 of each of its payloads. All files of a directory must belong to the same
set; a subset is reported as ``Dataset.subset`` and never passes for the full dataset.

Whole splits load as uint8 tensors (N, C, H, W) plus int64 labels; normalisation happens on the
device, per batch (``normalize``), so a whole dataset can sit on a GPU as bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

DEBIAN_DATASETS = Path("/usr/share/datasets")


@dataclass(frozen=True)
class FileSpec:
    """One distributed file. ``md5`` is the official checksum of the file as the mirrors serve
    it; ``content_sha256`` (optional) is the sha256 of its decompressed payload, which also
    accepts faithful re-packs (Debian's fashion-mnist package re-gzipped the upstream files)."""

    name: str
    md5: str
    content_sha256: str | None = None


@dataclass(frozen=True)
class Subset:
    """A documented selection from a dataset: the first ``train`` training and the first ``test``
    test images, in the official order (written by scripts/make_test_data.py). Accepted by the
    sha256 of each decompressed payload, ``content_sha256``, one per ``DatasetSpec.files``."""

    name: str
    train: int
    test: int
    content_sha256: tuple[str, ...] = ()


# The real-image fixtures committed under tests/data/<dataset>/.
FIXTURE_SUBSET = Subset("first-2000-train-1000-test", train=2000, test=1000)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: tuple[str, ...]
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    format: str  # "idx" (MNIST family) or "cifar10-python"
    files: tuple[FileSpec, ...]
    mirrors: tuple[str, ...]
    citation: str = ""
    debian_package: str | None = None
    # How the dataset's images were made from real pictures, so that serving can convert a
    # user's photo or scan the same way (serving/conversions.py, docs/ARTIFACTS.md):
    # "pipeline" names the recipe, "background" the background of the stored images.
    input_convention: dict = field(default_factory=dict)
    subsets: tuple[Subset, ...] = ()
    extra: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def facts(self) -> dict:
        """What a checkpoint and an ONNX file carry about the data they were trained on."""
        return {
            "dataset": self.name,
            "classes": list(self.classes),
            "channels": self.channels,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "input_convention": dict(self.input_convention),
        }


_IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        classes=tuple(str(i) for i in range(10)),
        channels=1, image_size=28, mean=(0.1307,), std=(0.3081,),
        format="idx",
        # content sha256 of the official payloads: accepts re-gzipped copies (gzip -9 -n etc.)
        files=tuple(FileSpec(n, m, s) for n, m, s in zip(_IDX_FILES, (
            "f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"), (
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"), strict=True)),
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "http://yann.lecun.com/exdb/mnist/"),
        citation="LeCun et al., MNIST handwritten digit database",
        debian_package=None,
        # each digit fitted into a 20x20 box (aspect kept, anti-aliased), centred in 28x28 by its
        # centre of mass; white ink on black
        input_convention={"pipeline": "mnist", "background": "dark"},
        subsets=(replace(FIXTURE_SUBSET, content_sha256=(
            "729d340c0177402770b27c04f817dfb40ed8844459b35a9f11ae21067b05cf19",
            "90795ea2219655a7281c0d6756d0ae8a33bebac7ec84bac89bbdcc5e3baa9f8c",
            "de7c252b04f05e1f8309634180ccdf286dc6dbac8c579b74e76e02ae0331ca52",
            "832c0d20f0dc42e575488c75a83a970787d4c8d4d05831b2ef03701b4a478a90")),),
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        channels=1, image_size=28, mean=(0.2860,), std=(0.3530,),
        format="idx",
        files=tuple(FileSpec(n, m, s) for n, m, s in zip(_IDX_FILES, (
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
            "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"), (
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"), strict=True)),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        citation="Xiao, Rasul, Vollgraf 2017, Fashion-MNIST (zalandoresearch)",
        debian_package="dataset-fashion-mnist",
        # Xiao et al. 2017, Sec. 2: Zalando's product photos (white background) trimmed, longest
        # edge resized to 28, sharpened, shorter edge extended to 28 centred, negated, 8-bit gray
        input_convention={"pipeline": "fashion-mnist", "background": "dark"},
        subsets=(replace(FIXTURE_SUBSET, content_sha256=(
            "71a9f8cec24060d6752b3e4940ce6d6fd729334afa47b735dd553481aa83b53e",
            "8983259dfbc9f185f92698916f7daf361704b43ba7d19568cc7bcdeefdc1bece",
            "7a6d8e07ea021ec5bc73135ebd0a5770799557ec6f8242d8749c4f32a3cf4643",
            "b40abac7ec8228f434940f579deb7cf7b6e3103b5274cb91d1545771f5ef1c8b")),),
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        classes=("airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"),
        channels=3, image_size=32,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        format="cifar10-python",
        files=(FileSpec("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        citation="Krizhevsky 2009, Learning Multiple Layers of Features from Tiny Images",
        debian_package=None,
        # natural photos downsampled to 32x32: nothing to trim or negate, a plain resize
        input_convention={"pipeline": "cifar10", "background": "natural"},
    ),
}


class DatasetNotFoundError(FileNotFoundError):
    """No valid copy of a dataset could be found or downloaded."""


class CorruptFileError(ValueError):
    """A dataset file exists but fails its checksum or its format check."""


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``idx`` of images and labels (index_select: several times cheaper per call than
        advanced indexing, which shows at the MLP's 1,000+ steps/s)."""
        return self.images.index_select(0, idx), self.labels.index_select(0, idx)


@dataclass
class Dataset:
    spec: DatasetSpec
    train: Split
    test: Split
    source: Path  # the directory the files were read from
    subset: str | None = None  # a registered Subset's name, None for the full dataset

    def describe(self) -> str:
        """``fashion-mnist`` or ``fashion-mnist (subset first-2000-train-1000-test)``."""
        return self.spec.name + (f" (subset {self.subset})" if self.subset else "")


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


# --- checksums and parsing (pure functions) -------------------------------------------------

def file_md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parse_idx(raw: bytes) -> np.ndarray:
    """Parse an (uncompressed) IDX file as used by MNIST: magic 0x0000 08 <ndim>, big-endian
    uint32 dims, then uint8 data. Raises CorruptFileError on any inconsistency."""
    if len(raw) < 4:
        raise CorruptFileError(f"IDX file too short ({len(raw)} bytes)")
    zero, dtype_code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
        raise CorruptFileError(f"not a uint8 IDX file (magic bytes {raw[:4].hex()})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptFileError("IDX header truncated")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise CorruptFileError(
            f"IDX size mismatch: header says {dims} -> {expected} bytes, file has {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_gz(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:  # BadGzipFile is an OSError; truncation is EOFError
        raise CorruptFileError(f"{path.name}: cannot decompress ({e})") from e


def verify_file(path: Path, spec: FileSpec) -> bytes | None:
    """Check one file against its spec. Returns the decompressed payload when it had to be
    read to check it (so callers do not read it twice), None when the md5 alone sufficed."""
    if file_md5(path) == spec.md5:
        return None
    if spec.content_sha256 is not None and path.name.endswith(".gz"):
        payload = _read_gz(path)
        if hashlib.sha256(payload).hexdigest() == spec.content_sha256:
            return payload
    raise CorruptFileError(f"{path.name}: checksum mismatch (expected md5 {spec.md5}"
                           + (f" or content sha256 {spec.content_sha256}" if spec.content_sha256 else "")
                           + ")")


def identify_files(directory: Path, spec: DatasetSpec) -> tuple[list[bytes | None], Subset | None]:
    """Check every file of ``spec`` in ``directory`` as the full dataset or one registered subset
    (all files from the same one). Returns the payloads read while checking (None where the md5
    sufficed) and the subset, None for the full dataset. Raises CorruptFileError otherwise."""
    payloads: list[bytes | None] = []
    found: list[Subset | None] = []
    for i, fs in enumerate(spec.files):
        path = directory / fs.name
        try:
            payloads.append(verify_file(path, fs))
            found.append(None)
            continue
        except CorruptFileError as e:
            if not spec.subsets or not fs.name.endswith(".gz"):
                raise
            full_error = e
        payload = _read_gz(path)
        digest = hashlib.sha256(payload).hexdigest()
        subset = next((s for s in spec.subsets if s.content_sha256[i] == digest), None)
        if subset is None:
            raise CorruptFileError(f"{full_error}; nor is it the payload of a registered subset "
                                   f"({', '.join(s.name for s in spec.subsets)}): sha256 {digest}")
        payloads.append(payload)
        found.append(subset)
    if len({s.name if s else None for s in found}) > 1:
        mix = ", ".join(f"{fs.name}: {s.name if s else 'full dataset'}"
                        for fs, s in zip(spec.files, found, strict=True))
        raise CorruptFileError(f"files from different sets in one directory ({mix})")
    return payloads, found[0]


def _load_idx_dir(directory: Path, spec: DatasetSpec) -> tuple[Split, Split, Subset | None]:
    payloads, subset = identify_files(directory, spec)
    arrays = [parse_idx(payload if payload is not None else _read_gz(directory / fs.name))
              for fs, payload in zip(spec.files, payloads, strict=True)]
    train_x, train_y, test_x, test_y = arrays
    splits = []
    for x, y, which in ((train_x, train_y, "train"), (test_x, test_y, "test")):
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise CorruptFileError(f"{which}: images {x.shape} and labels {y.shape} do not match")
        if x.shape[1:] != (spec.image_size, spec.image_size):
            raise CorruptFileError(f"{which}: images are {x.shape[1:]}, expected "
                                   f"{spec.image_size}x{spec.image_size}")
        if y.size and int(y.max()) >= len(spec.classes):
            raise CorruptFileError(f"{which}: label {int(y.max())} out of range")
        if subset is not None and y.shape[0] != {"train": subset.train, "test": subset.test}[which]:
            raise CorruptFileError(f"{which}: {y.shape[0]} images, subset {subset.name} has "
                                   f"{subset.train} train / {subset.test} test")
        splits.append(Split(torch.from_numpy(x.copy()).unsqueeze(1),
                            torch.from_numpy(y.astype(np.int64))))
    return splits[0], splits[1], subset


def parse_cifar10_tar(fileobj: io.BufferedIOBase | bytes) -> tuple[Split, Split]:
    """Parse the official ``cifar-10-python.tar.gz`` (pickled batches) without extracting."""
    if isinstance(fileobj, bytes):
        fileobj = io.BytesIO(fileobj)
    batches: dict[str, dict] = {}
    try:
        with tarfile.open(fileobj=fileobj, mode="r:gz") as tar:
            for member in tar.getmembers():
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and (base.startswith("data_batch_") or base == "test_batch"):
                    f = tar.extractfile(member)
                    assert f is not None
                    batches[base] = pickle.load(f, encoding="bytes")  # noqa: S301 - checksummed
    except (tarfile.TarError, EOFError, OSError, pickle.UnpicklingError) as e:
        raise CorruptFileError(f"cifar-10-python.tar.gz: cannot read archive ({e})") from e

    def to_split(names: Sequence[str]) -> Split:
        missing = [n for n in names if n not in batches]
        if missing:
            raise CorruptFileError(f"cifar-10 archive lacks {', '.join(missing)}")
        data = np.concatenate([np.asarray(batches[n][b"data"], dtype=np.uint8) for n in names])
        labels = np.concatenate([np.asarray(batches[n][b"labels"], dtype=np.int64) for n in names])
        if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
            raise CorruptFileError(f"cifar-10 batch has shape {data.shape}, expected (N, 3072)")
        return Split(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels))

    return to_split([f"data_batch_{i}" for i in range(1, 6)]), to_split(["test_batch"])


def _load_cifar_dir(directory: Path, spec: DatasetSpec) -> tuple[Split, Split, Subset | None]:
    path = directory / spec.files[0].name
    verify_file(path, spec.files[0])
    with open(path, "rb") as f:
        return (*parse_cifar10_tar(f), None)


_LOADERS = {"idx": _load_idx_dir, "cifar10-python": _load_cifar_dir}


# --- locating and downloading -----------------------------------------------------------------

def candidate_dirs(spec: DatasetSpec, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Every directory looked at, in order (before any download)."""
    out: list[Path] = []
    for base in (data_dir, os.environ.get("BNSERVE_DATA") or None):
        if base:
            out += [Path(base), Path(base) / spec.name]
    out.append(cache_dir(spec))
    out.append(DEBIAN_DATASETS / spec.name)
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def cache_dir(spec: DatasetSpec) -> Path:
    return Path(os.path.expanduser("~")) / ".cache" / "bnserve" / spec.name


def download_dir(spec: DatasetSpec, data_dir: str | os.PathLike | None = None) -> Path:
    """Where a download goes: the explicit directory, else $BNSERVE_DATA/<name>, else the cache."""
    if data_dir:
        return Path(data_dir)
    env = os.environ.get("BNSERVE_DATA")
    return Path(env) / spec.name if env else cache_dir(spec)


def download_file(url: str, dest: Path, expected_md5: str, timeout: float = 60.0,
                  progress: bool = True) -> None:
    """Download ``url`` to ``dest`` atomically: into a temporary file beside it, md5-checked,
    then renamed. A failed or mismatching download leaves nothing behind."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.md5(usedforsecurity=False)
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "bnserve/0.1"})
        with urllib.request.urlopen(req, timeout=timeout) as resp, os.fdopen(fd, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            bar = None
            if progress:
                from tqdm import tqdm
                bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False)
            for block in iter(lambda: resp.read(1 << 20), b""):
                out.write(block)
                h.update(block)
                if bar is not None:
                    bar.update(len(block))
            if bar is not None:
                bar.close()
        if h.hexdigest() != expected_md5:
            raise CorruptFileError(f"downloaded {url}: md5 {h.hexdigest()} != expected {expected_md5}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _try_download(spec: DatasetSpec, target: Path, tried: list[str], progress: bool) -> bool:
    for fs in spec.files:
        if (target / fs.name).exists():
            try:
                verify_file(target / fs.name, fs)
                continue
            except CorruptFileError:
                pass  # replaced below
        errors = []
        for mirror in spec.mirrors:
            url = mirror + fs.name
            try:
                download_file(url, target / fs.name, fs.md5, progress=progress)
                break
            except (urllib.error.URLError, OSError, CorruptFileError, ValueError) as e:
                errors.append(f"{url}: {e}")
        else:
            tried.append(f"download into {target}: " + "; ".join(errors))
            return False
    return True


def load_dataset(name: str | DatasetSpec, data_dir: str | os.PathLike | None = None,
                 download: bool = True, progress: bool = True) -> Dataset:
    """Find (or download) and parse a dataset. See the module docstring for the look-up order."""
    spec = get_spec(name) if isinstance(name, str) else name
    loader = _LOADERS[spec.format]
    tried: list[str] = []
    for directory in candidate_dirs(spec, data_dir):
        missing = [fs.name for fs in spec.files if not (directory / fs.name).is_file()]
        if missing:
            tried.append(f"{directory}: missing {', '.join(missing)}")
            continue
        try:
            train, test, subset = loader(directory, spec)
            return Dataset(spec, train, test, directory, subset.name if subset else None)
        except CorruptFileError as e:
            tried.append(f"{directory}: {e}")
    if download:
        target = download_dir(spec, data_dir)
        if _try_download(spec, target, tried, progress):
            try:
                train, test, subset = loader(target, spec)
                return Dataset(spec, train, test, target, subset.name if subset else None)
            except CorruptFileError as e:
                tried.append(f"{target} (after download): {e}")
    else:
        tried.append("download: disabled")
    fixes = [f"put the official files ({', '.join(fs.name for fs in spec.files)}) in one of "
             f"the directories above, or pass --data-dir / set BNSERVE_DATA"]
    if spec.debian_package:
        fixes.append(f"on Debian/Ubuntu: apt-get install {spec.debian_package}")
    if spec.name == "mnist":
        fixes.append("without internet, use --dataset fashion-mnist (same format)")
    raise DatasetNotFoundError(
        f"dataset {spec.name!r} not found or corrupt. Tried:\n  - " + "\n  - ".join(tried)
        + "\nTo fix: " + "; ".join(fixes) + ".")


# --- on-device batches ---------------------------------------------------------------------------

def normalize(images_u8: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 normalised: ``x * (1 / (255 std)) - mean / std``. The one
    definition used by training and tests; serving.geometry.normalize_uint8 is its NumPy twin (tested equal)."""
    return Normalizer(mean, std, images_u8.device)(images_u8)


class Normalizer(torch.nn.Module):
    """``normalize`` with the constants kept on the device (no per-batch host->device copy)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device=None):
        super().__init__()
        c = len(mean)
        self.register_buffer("scale", (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).view(1, c, 1, 1))
        self.register_buffer("shift", (-torch.tensor(mean) / torch.tensor(std)).float().view(1, c, 1, 1))
        if device is not None:
            self.to(device)

    def forward(self, images_u8: torch.Tensor) -> torch.Tensor:
        # uint8 * float32 casts inside the multiply (no separate conversion pass); then the add
        # in place. Two roundings, as in serving's NumPy twin, so both stay bit-identical.
        return torch.mul(images_u8, self.scale).add_(self.shift)


class BatchSampler:
    """Random mini-batches without replacement, epoch after epoch, drawn on the data's device
    from a seeded generator: no host sync and no DataLoader workers per step."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device | str = "cpu"):
        if batch_size > n:
            raise ValueError(f"batch size {batch_size} exceeds dataset size {n}")
        self.n, self.batch_size, self.device = n, batch_size, torch.device(device)
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self._perm = None
        self._pos = n  # force a new permutation on first use

    def next_indices(self) -> torch.Tensor:
        if self._pos + self.batch_size > self.n:
            self._perm = torch.randperm(self.n, generator=self.gen).to(self.device)
            self._pos = 0
        idx = self._perm[self._pos: self._pos + self.batch_size]
        self._pos += self.batch_size
        return idx
