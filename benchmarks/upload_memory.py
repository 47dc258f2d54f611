"""Memory and time of one upload's preprocessing (bytes -> model input), per image format, for
today's pipeline (``serving.conversions.prepare_image``) and the one before the reduced decoding
(``serving/preprocess.py`` at BASELINE_COMMIT, read with ``git show``), side by side.

    .venv/bin/python -m benchmarks upload            # through the registry, or:
    .venv/bin/python -m benchmarks.upload_memory [--quick] [--new-only] [--agreement]

Memory: each (format, pipeline) runs in a fresh Python process; after a warm-up on a small image
of the same format (codecs loaded) it resets the kernel's peak-RSS mark (``/proc/self/clear_refs``),
reads VmRSS (idle), prepares the image, and reads VmHWM: peak RSS above idle, every allocation
counted (Pillow's and libjpeg's buffers too, which tracemalloc does not see). Time: the median of
the following requests in the same process. Requests are the service's default model's: 1 x 28 x
28, Fashion-MNIST's input convention, ``convert=auto``.

``--agreement`` checks that the answers did not change: every Fashion-MNIST and MNIST test image
in dataset form (PNG) gives bit-identical model inputs, and photo renders (scripts/make_photos.py,
at their own size and enlarged 4x to exercise the reduced decoding) give the same class with
models/default and models/mnist (agreement and the largest probability difference)."""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from serving.decode import DECODE_MEMORY_LIMIT

from .common import markdown_table

REPO = Path(__file__).resolve().parent.parent
# The last commit whose serving/preprocess.py decoded and converted at full resolution.
BASELINE_COMMIT = "7233e8b96944893a2b1fe9fd9821e2cf88032592"
BASELINE_PATH = "serving/preprocess.py"
FASHION = {"pipeline": "fashion-mnist", "background": "dark"}
BOUND_MIB = DECODE_MEMORY_LIMIT // 2**20  # every accepted image's peak must stay under it
MEAN, STD = (0.2860,), (0.3530,)


# --- the inputs ---------------------------------------------------------------------------------

def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A dark garment-like shape on a light, slightly uneven, noisy background: RGB uint8."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    cols = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    light = 225 + 15 * rows - 10 * cols
    yy, xx = (rows - 0.5) / 0.35, (cols - 0.5) / 0.25
    inside = (yy ** 2 + xx ** 2) < 1.0
    gray = np.where(inside, np.float32(40), light)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    rgb += rng.normal(0, 2, size=(height, 1, 1)).astype(np.float32)  # cheap row noise
    return np.clip(rgb, 0, 255).astype(np.uint8)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def cases() -> list[tuple[str, bytes, bytes]]:
    """(name, file bytes, a small file of the same format for the warm-up). Beside the sizes
    people send, every format at 5000 x 5000, the default pixel limit (25 megapixels)."""
    photo_12mp = Image.fromarray(photo(4000, 3000))
    photo_25mp = Image.fromarray(photo(5000, 5000))
    small = Image.fromarray(photo(64, 48))
    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 9:19] = 200
    sixteen = np.asarray(photo_25mp.convert("L"), dtype=np.uint16) * 257
    return [
        ("28x28 PNG", encode(Image.fromarray(digit), "PNG"), encode(small.convert("L"), "PNG")),
        ("640x480 JPEG", encode(Image.fromarray(photo(640, 480)), "JPEG", quality=90),
         encode(small, "JPEG")),
        ("4000x3000 JPEG", encode(photo_12mp, "JPEG", quality=90), encode(small, "JPEG")),
        ("4000x3000 JPEG, progressive", encode(photo_12mp, "JPEG", quality=90, progressive=True),
         encode(small, "JPEG", progressive=True)),
        ("5000x5000 JPEG, progressive", encode(photo_25mp, "JPEG", quality=90, progressive=True),
         encode(small, "JPEG", progressive=True)),
        ("5000x5000 PNG (white RGB)", encode(Image.new("RGB", (5000, 5000), (255, 255, 255)), "PNG"),
         encode(small, "PNG")),
        ("5000x5000 PNG, 16-bit gray", encode(Image.fromarray(sixteen), "PNG"),
         encode(Image.fromarray(np.zeros((48, 64), np.uint16)), "PNG")),
        ("5000x5000 GIF", encode(photo_25mp.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "GIF"),
         encode(small.convert("P"), "GIF")),
        ("5000x5000 TIFF (deflate, RGB)", encode(photo_25mp, "TIFF", compression="tiff_deflate"),
         encode(small, "TIFF", compression="tiff_deflate")),
        ("5000x5000 WebP", encode(photo_25mp, "WEBP", quality=80), encode(small, "WEBP")),
    ]


# --- the two pipelines --------------------------------------------------------------------------

def baseline_source() -> str | None:
    """serving/preprocess.py as it was at BASELINE_COMMIT, or None without git history."""
    try:
        return subprocess.run(["git", "show", f"{BASELINE_COMMIT}:{BASELINE_PATH}"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def load_prepare(which: str, baseline_file: str | None = None):
    """prepare_image of the new pipeline ("new") or of the baseline file ("old")."""
    if which == "new":
        from serving.conversions import prepare_image
        return prepare_image
    spec = importlib.util.spec_from_file_location("preprocess_before", baseline_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.prepare_image


# --- one measurement, in a fresh process ----------------------------------------------------------

def _status(field: str) -> int:
    """A VmRSS/VmHWM-style field of /proc/self/status, in bytes."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(which: str, image: str, warm: str, baseline_file: str | None, repeats: int) -> dict:
    prepare = load_prepare(which, baseline_file)
    data, warm_data = Path(image).read_bytes(), Path(warm).read_bytes()

    def request(d: bytes) -> np.ndarray:
        return prepare(d, 1, 28, 28, MEAN, STD, convention=FASHION, convert="auto")

    from serving.decode import InputError

    for _ in range(2):
        request(warm_data)
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS mark := current RSS
    idle = _status("VmRSS")
    t0 = time.perf_counter()
    try:
        request(data)
    except InputError as e:  # refused from its header (the new pipeline's memory bound): the answer
        first = time.perf_counter() - t0
        return {"peak_bytes": _status("VmHWM") - idle, "first_s": first, "median_s": first,
                "cpu_median_s": None, "refused": f"{e.status} {e.error}: {e.detail}"}
    first = time.perf_counter() - t0
    peak = _status("VmHWM") - idle
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        request(data)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"peak_bytes": max(peak, _status("VmHWM") - idle), "first_s": first,
            "median_s": statistics.median(times) if times else first,
            "cpu_median_s": statistics.median(cpu) if cpu else None}


def measure(which: str, data: bytes, warm: bytes, baseline_file: str | None, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        image, small = Path(tmp) / "image", Path(tmp) / "warm"
        image.write_bytes(data)
        small.write_bytes(warm)
        cmd = [sys.executable, "-m", "benchmarks.upload_memory", "--child", which, str(image),
               str(small), str(repeats)] + ([baseline_file] if baseline_file else [])
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run(quick: bool = False, old_too: bool = True) -> dict:
    """The table: per format, peak memory above idle and time per request, new and old (the
    old pipeline left out with ``old_too`` False: minutes less on a 25-megapixel image)."""
    from serving.decode import decode_bytes_estimate, open_image

    source = baseline_source() if old_too else None
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        baseline_file = None
        if source is not None:
            baseline_file = str(Path(tmp) / "preprocess_before.py")
            Path(baseline_file).write_text(source)
        for name, data, warm in cases():
            new = measure("new", data, warm, None, 2 if quick else 5)
            old = (measure("old", data, warm, baseline_file, 1 if quick else 2)
                   if baseline_file else None)
            mib = 1024 * 1024
            estimate = decode_bytes_estimate(open_image(data), data)
            refused = new.get("refused")
            r = {"format": name, "bytes": len(data), "new_peak_mib": new["peak_bytes"] / mib,
                 "estimate_mib": estimate / mib, "new_ms": new["median_s"] * 1e3,
                 "new_cpu_ms": new["cpu_median_s"] * 1e3 if new["cpu_median_s"] is not None else None,
                 "new_refused": refused,
                 "old_peak_mib": old["peak_bytes"] / mib if old else None,
                 "old_ms": old["median_s"] * 1e3 if old else None,
                 "old_cpu_ms": old["cpu_median_s"] * 1e3 if old else None}
            results.append(r)
            ratio = lambda a, b: f"{a / b:.3f}x" if b else "-"  # noqa: E731
            if refused:  # the time of a refusal is no decode time: not compared
                name_cell = f"{name} (refused: {refused.split(':', 1)[0]})"
                times = [f"{r['new_ms']:.1f}", f"{r['old_ms']:.1f}" if old else "-", "-", "-",
                         f"{r['old_cpu_ms']:.1f}" if old else "-", "-"]
            else:
                name_cell = name
                times = [f"{r['new_ms']:.1f}", f"{r['old_ms']:.1f}" if old else "-",
                         ratio(r["new_ms"], r["old_ms"]) if old else "-",
                         f"{r['new_cpu_ms']:.1f}", f"{r['old_cpu_ms']:.1f}" if old else "-",
                         ratio(r["new_cpu_ms"], r["old_cpu_ms"]) if old else "-"]
            rows.append([name_cell, f"{len(data) / 1024:,.0f} KiB",
                         f"{r['new_peak_mib']:.1f}", f"{r['estimate_mib']:.1f}",
                         f"{r['old_peak_mib']:.1f}" if old else "-",
                         ratio(r["new_peak_mib"], r["old_peak_mib"]) if old else "-", *times])
            verdict = "PASS" if r["new_peak_mib"] <= BOUND_MIB else "FAIL"
            print(f"  {verdict} {name}: new {r['new_peak_mib']:.1f} MiB (bound {BOUND_MIB} MiB) "
                  + (f"REFUSED {refused}" if refused else f"{r['new_ms']:.1f} ms (CPU {r['new_cpu_ms']:.1f} ms)")
                  + (f"; old {r['old_peak_mib']:.1f} MiB {r['old_ms']:.1f} ms (CPU {r['old_cpu_ms']:.1f} ms)"
                     if old else ""), flush=True)
    table = markdown_table(["image", "file", "peak MiB (new)", "estimate MiB (new)", "peak MiB (old)",
                            "memory new/old", "ms (new)", "ms (old)", "time new/old",
                            "CPU ms (new)", "CPU ms (old)", "CPU new/old"], rows)
    note = ("Peak RSS above idle of a fresh process per (format, pipeline), every allocation counted; "
            "estimate: serving.decode.decode_bytes_estimate from the header; an image whose estimate is over "
            f"the bound ({BOUND_MIB} MiB, serving.decode.DECODE_MEMORY_LIMIT) is refused with 413 before "
            "decoding (its row says so; its peak is the refusal's). Time: median wall and "
            "CPU (process) time per request after the first (CPU time is what a busy machine "
            "inflates least). old = serving/preprocess.py at "
            f"{BASELINE_COMMIT[:7]}" + ("" if source else " (left out: --new-only, or no git history)") + ".")
    return {"name": "upload", "table": table, "note": note, "results": results}


# --- the answers did not change -------------------------------------------------------------------

def agreement(old_prepare, n_photos: int = 1000, n_large: int = 200, data_dir: str | None = None) -> str:
    """Dataset-form test images: identical model inputs; photo renders: same class."""
    from scripts.make_photos import render_photo
    from serving.conversions import prepare_image
    from serving.model import OnnxClassifier
    from training.data import load_dataset

    lines = []
    for name, model in (("fashion-mnist", REPO / "models/default/model.onnx"),
                        ("mnist", REPO / "models/mnist/model.onnx")):
        clf = OnnxClassifier(model)
        i = clf.info
        args = (i.channels, i.height, i.width, i.mean, i.std)
        kw = {"convention": i.input_convention, "convert": "auto"}
        test = load_dataset(name, data_dir=data_dir, download=False, progress=False).test
        images = test.images[:, 0].numpy()
        same = sum(np.array_equal(prepare_image(encode(Image.fromarray(a), "PNG"), *args, **kw),
                                  old_prepare(encode(Image.fromarray(a), "PNG"), *args, **kw))
                   for a in images)
        lines.append(f"{name}: {same} of {len(images)} dataset-form test images give bit-identical "
                     "model inputs")
        rng = np.random.default_rng(1)
        for scale, count in ((1, n_photos), (4, n_large)):
            agree, max_dp, n = 0, 0.0, 0
            for a in images[:count]:
                data, _ = render_photo(a, rng)
                if scale > 1:
                    img = Image.open(io.BytesIO(data))
                    big = img.resize((img.width * scale, img.height * scale), Image.BICUBIC)
                    data = encode(big, img.format, **({"quality": 90} if img.format == "JPEG" else {}))
                p_new = _probabilities(clf, prepare_image(data, *args, **kw))
                p_old = _probabilities(clf, old_prepare(data, *args, **kw))
                agree += int(p_new.argmax() == p_old.argmax())
                max_dp = max(max_dp, float(np.abs(p_new - p_old).max()))
                n += 1
            size = "own size (100-1,000 px)" if scale == 1 else f"enlarged {scale}x (400-4,000 px)"
            lines.append(f"{name} photo renders, {size}: same class {agree} of {n}, "
                         f"max probability difference {max_dp:.4f}")
    return "\n".join(lines)


def _probabilities(clf, x: np.ndarray) -> np.ndarray:
    logits = np.asarray(clf(x[None].astype(clf.info.dtype)), dtype=np.float64)[0]
    e = np.exp(logits - logits.max())
    return e / e.sum()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        which, image, warm, repeats, *rest = argv[1:]
        print(json.dumps(child(which, image, warm, rest[0] if rest else None, int(repeats))))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--new-only", action="store_true", help="leave the old (full-resolution) pipeline out")
    p.add_argument("--agreement", action="store_true", help="also check the answers (module doc)")
    p.add_argument("--photos", type=int, default=1000, help="photo renders per dataset, own size")
    p.add_argument("--large", type=int, default=200, help="photo renders per dataset, enlarged 4x")
    p.add_argument("--skip-table", action="store_true", help="only the agreement check")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    if not args.skip_table:
        r = run(args.quick, old_too=not args.new_only)
        print("\n" + r["table"] + "\n" + r["note"])
    if args.agreement:
        source = baseline_source()
        if source is None:
            print("no baseline (git history) for the agreement check")
            return 1
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "preprocess_before.py"
            path.write_text(source)
            print("\n" + agreement(load_prepare("old", str(path)), args.photos, args.large, args.data_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
