"""A real-image evaluation set (issue 20): third-party emoji, icons, clip art and digit scans, as
users send them, through HTTP.

    .venv/bin/pip install -r requirements/real-images.txt   # cairosvg, scikit-learn; and npm
    .venv/bin/python -m scripts.real_images build            # fetch the packages, render the set
    .venv/bin/python -m scripts.real_images eval --url http://127.0.0.1:3000          # fashion
    .venv/bin/python -m scripts.real_images eval --url http://127.0.0.1:3001 --digits # models/mnist
    .venv/bin/python -m scripts.real_images sheet SOURCE     # contact sheets for labelling

The images are not in the repository (some sets are share-alike, CC BY-SA 4.0): ``build`` fetches
the packages named in the manifest (``scripts/real_images_manifest.json``: source package,
version, license; each image's original name, its label and its style) with the ordinary npm
client, ``apt-get download`` (Debian's Open Clip Art Library, public domain) and scikit-learn,
and renders every SVG with cairosvg at 128 px (training/icons.py's renderer) on a white and on a
transparent background, into ``--cache`` (default ``~/.cache/bnserve/real-images``). Labels
were given by looking at the renders (contact sheets); images whose class was ambiguous (ballet
flats, pumps, kimonos, shorts, vests) were left out. ``label: null`` marks the images that are
none of the classes (animals, objects, faces, text, digits): the out-of-distribution part.

``eval`` POSTs each image to ``/classify`` and prints accuracy per class, per source, per style
and per background, the confusion matrix, and how often the answer says ``in_distribution:
false`` for garments and for the rest. ``--json FILE`` writes the numbers too.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from training.icons import BACKGROUNDS, iconify_svg, npm_package, on_background, render_svg

MANIFEST = Path(__file__).with_name("real_images_manifest.json")
DEFAULT_CACHE = Path.home() / ".cache" / "bnserve" / "real-images"


def load_manifest(path: Path = MANIFEST) -> dict:
    return json.loads(path.read_text())


# --- fetching and rendering ------------------------------------------------------------------------


@functools.cache
def _sklearn_digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().images


def sklearn_digit(index: int, size: int = 64):
    """scikit-learn's bundled UCI 8x8 digit scan ``index`` (16 = ink), as dark ink on white
    paper, upscaled to ``size`` px with a bilinear filter (what a user's scan looks like)."""
    from PIL import Image

    img = _sklearn_digits()[index]
    gray = np.clip(255 - img * (255 / 16), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, "L").resize((size, size), Image.BILINEAR)


def debian_package(cache: Path, package: str, version: str) -> Path:
    """The unpacked files of Debian's ``package`` at ``version`` (``apt-get download``, then
    ``dpkg-deb -x``; the package is not installed)."""
    folder = cache / "debian" / f"{package}-{version.replace(':', '_')}"
    if not folder.is_dir():
        (cache / "debian").mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=cache / "debian", check=True,
                       capture_output=True)
        deb = next((cache / "debian").glob(f"{package}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(folder)], check=True)
        deb.unlink()
    return folder


def image_path(cache: Path, item: dict, background: str) -> Path:
    name = item["name"].replace("/", "__")  # a Debian file's path inside its package
    return cache / "images" / item["source"] / f"{name}.{background}.png"


def build(cache: Path, manifest: dict) -> int:
    """Fetch every source and render every image on each background; returns the file count."""
    sets: dict[str, dict] = {}
    count = 0
    for item in manifest["images"]:
        src = manifest["sources"][item["source"]]
        for background in backgrounds_of(src):
            path = image_path(cache, item, background)
            if path.exists():
                count += 1
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if src["kind"] == "iconify":
                if item["source"] not in sets:
                    folder = npm_package(cache, src["package"], src["version"])
                    sets[item["source"]] = json.loads((folder / "icons.json").read_text())
                img = on_background(render_svg(iconify_svg(sets[item["source"]], item["name"])), background)
            elif src["kind"] == "debian":
                folder = debian_package(cache, src["package"], src["version"])
                svg = (folder / src["root"] / item["name"]).read_text()
                img = on_background(render_svg(svg), background)
            elif src["kind"] == "sklearn-digits":
                img = sklearn_digit(int(item["name"]))
            else:
                raise ValueError(f"unknown source kind {src['kind']!r}")
            img.save(path)
            count += 1
    return count


def backgrounds_of(src: dict) -> tuple[str, ...]:
    return tuple(src.get("backgrounds", BACKGROUNDS))


# --- evaluation -----------------------------------------------------------------------------------


def post_all(url: str, files: list[Path], concurrency: int = 4) -> list[dict]:
    import httpx

    from scripts import http_client

    with httpx.Client(base_url=url, timeout=120) as client:
        def classify(path: Path) -> dict:
            return http_client.classify(client, {"image": (path.name, path.read_bytes(), "image/png")})

        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(classify, files))


def rows_for(manifest: dict, cache: Path, digits: bool) -> list[dict]:
    """One row per (image, background) of the fashion part (``digits`` False: garments and the
    non-garments) or the digit part (``digits`` True)."""
    rows = []
    for item in manifest["images"]:
        src = manifest["sources"][item["source"]]
        if (item.get("set") == "digits") != digits:
            continue
        for background in backgrounds_of(src):
            rows.append({**item, "background": background, "path": image_path(cache, item, background),
                         "package": src["package"], "license": src["license"]})
    return rows


def accuracy_table(rows: list[dict], key: str) -> list[tuple[str, int, int]]:
    """(group, right, total) per value of ``key`` over the labelled rows, sorted by group."""
    right, total = Counter(), Counter()
    for r in rows:
        if r["label"] is None:
            continue
        total[r[key]] += 1
        right[r[key]] += int(r["answer"]["label"] == r["label"])
    return [(g, right[g], total[g]) for g in sorted(total)]


def summarise(rows: list[dict], classes: list[str]) -> dict:
    """Accuracy (overall, class-balanced, per class / source / style / background), confusion
    matrix, mean top probability and the out-of-distribution flag rates."""
    garments = [r for r in rows if r["label"] is not None]
    others = [r for r in rows if r["label"] is None]
    right = [r["answer"]["label"] == r["label"] for r in garments]
    per_class = accuracy_table(garments, "label")
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    for r in garments:
        confusion[classes.index(r["label"]), r["answer"]["index"]] += 1

    def flagged(rs: list[dict]) -> float | None:
        flags = [r["answer"].get("in_distribution") for r in rs]
        if not rs or any(f is None for f in flags):
            return None
        return float(np.mean([not f for f in flags]))

    def mean_prob(rs: list[dict]) -> float | None:
        return float(np.mean([r["answer"]["probability"] for r in rs])) if rs else None

    return {
        "n_garments": len(garments), "n_other": len(others),
        "accuracy": float(np.mean(right)) if right else None,
        "class_balanced_accuracy": float(np.mean([a / n for _, a, n in per_class])) if per_class else None,
        "per_class": per_class, "per_source": accuracy_table(garments, "source"),
        "per_style": accuracy_table(garments, "style"), "per_background": accuracy_table(garments, "background"),
        "confusion": confusion.tolist(), "classes": classes,
        "mean_probability_garments": mean_prob(garments), "mean_probability_other": mean_prob(others),
        "flagged_garments": flagged(garments), "flagged_other": flagged(others),
        "flagged_other_by_kind": {k: flagged([r for r in others if r.get("kind") == k])
                                  for k in sorted({r.get("kind") for r in others})},
    }


def print_summary(s: dict, out=sys.stdout) -> None:
    def pr(*a):
        print(*a, file=out)

    pr(f"labelled images: {s['n_garments']}, accuracy {s['accuracy']:.3f}, "
       f"class-balanced {s['class_balanced_accuracy']:.3f}, mean top probability "
       f"{s['mean_probability_garments']:.3f}")
    for title, key in (("class", "per_class"), ("source", "per_source"), ("style", "per_style"),
                       ("background", "per_background")):
        pr(f"\n{title:<34} right / n  accuracy")
        for g, a, n in s[key]:
            pr(f"  {g:<32} {a:>4} / {n:<4} {a / n:.3f}")
    classes = s["classes"]
    pr("\nconfusion (rows: label, columns: answer)")
    pr(" " * 12 + " ".join(f"{c[:5]:>5}" for c in classes))
    for c, row in zip(classes, s["confusion"], strict=True):
        pr(f"  {c[:10]:<10}" + " ".join(f"{v:>5}" for v in row))
    if s["n_other"]:
        pr(f"\nnot one of the classes: {s['n_other']} images, mean top probability "
           f"{s['mean_probability_other']:.3f}")
    if s["flagged_garments"] is not None:
        pr(f"in_distribution false: {s['flagged_garments']:.1%} of labelled images, "
           + (f"{s['flagged_other']:.1%} of the others " if s["flagged_other"] is not None else "")
           + "(" + ", ".join(f"{k} {v:.0%}" for k, v in s["flagged_other_by_kind"].items() if v is not None) + ")")
    else:
        pr("the answers carry no in_distribution field")


def evaluate(url: str, cache: Path, manifest: dict, digits: bool, concurrency: int = 4) -> dict:
    rows = rows_for(manifest, cache, digits)
    missing = [str(r["path"]) for r in rows if not r["path"].exists()]
    if missing:
        raise SystemExit(f"{len(missing)} images are not built (first: {missing[0]}); "
                         f"run `python -m scripts.real_images build --cache {cache}` first")
    answers = post_all(url, [r["path"] for r in rows], concurrency)
    for r, a in zip(rows, answers, strict=True):
        r["answer"] = a
    classes = manifest["digit_classes"] if digits else manifest["classes"]
    return summarise(rows, classes)


# --- labelling aid --------------------------------------------------------------------------------


def contact_sheet(paths: list[Path], titles: list[str], out: Path, cols: int = 8, cell: int = 128) -> None:
    """A grid of the images with their titles underneath (for labelling by eye)."""
    from PIL import Image, ImageDraw

    rows = (len(paths) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell, rows * (cell + 14)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (p, t) in enumerate(zip(paths, titles, strict=True)):
        img = Image.open(p).convert("RGBA")
        img.thumbnail((cell - 8, cell - 8))
        x, y = (i % cols) * cell, (i // cols) * (cell + 14)
        bg = Image.new("RGB", img.size, (255, 255, 255))
        bg.paste(img, mask=img.getchannel("A"))
        sheet.paste(bg, (x + 4, y + 4))
        draw.text((x + 2, y + cell), t[:22], fill=(200, 0, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["build", "eval", "sheet"])
    p.add_argument("source", nargs="?", help="sheet: the source to draw")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where packages and renders go")
    p.add_argument("--manifest", type=Path, default=MANIFEST)
    p.add_argument("--url", default="http://127.0.0.1:3000", help="eval: the running service")
    p.add_argument("--digits", action="store_true", help="eval: the digit part (serve models/mnist)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--json", type=Path, default=None, help="eval: also write the numbers here")
    args = p.parse_args(argv)
    manifest = load_manifest(args.manifest)
    if args.command == "build":
        n = build(args.cache, manifest)
        print(f"{n} images in {args.cache / 'images'}")
        return 0
    if args.command == "sheet":
        items = [i for i in manifest["images"] if i["source"] == args.source]
        paths = [image_path(args.cache, i, "white") for i in items]
        out = args.cache / "sheets" / f"{args.source}.png"
        contact_sheet(paths, [f"{i['name']}|{i['label'] or i.get('kind')}" for i in items], out)
        print(out)
        return 0
    summary = evaluate(args.url, args.cache, manifest, args.digits, args.concurrency)
    print_summary(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
