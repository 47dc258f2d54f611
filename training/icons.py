"""Real third-party icons and emoji for training the default model (issue 20): what users send.

Fashion-MNIST is one photographer's grey silhouettes; users send emoji, icons and drawings. This
module builds a small labelled set of such pictures from Iconify's icon and emoji sets on npm
(``ICON_SETS``: pinned versions, permissive licences only: MIT, Apache-2.0, ISC, BSD, CC BY 4.0,
Unlicense; no share-alike, GPL or MPL set), labelled by the icon's name (``label_of``: whole
names such as ``t-shirt``, ``running-shoe``, ``womans-boot``, ``bag-fill``; names that could be
several classes, such as a plain ``shirt``, ``shoe``, ``suitcase`` or ``briefcase``, are left
out). None of these sets is a source of the real-image evaluation set
(scripts/real_images_manifest.json; a test holds the two disjoint), so that evaluation stays a
measure of pictures the model never saw.

Each icon is rendered with cairosvg at 128 px (monochrome icons in black and in a colour), on
white and on a transparent background, and goes through the service's own conversion
(serving.conversions.convert_image), so the model trains on exactly the pixels the service
would feed it for that upload. The set is cached as one ``.npz`` under
``~/.cache/bnserve/icons`` (keyed by a digest of everything that defines it); building it needs
``npm`` and ``cairosvg`` (requirements/real-images.txt), training from the cache needs neither.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.conversions import convert_image

DEFAULT_CACHE = Path.home() / ".cache" / "bnserve" / "icons"
RENDER_SIZE = 128  # px, longest side (as scripts/real_images.py renders its set)
BACKGROUNDS = ("white", "transparent")
# monochrome icons (``currentColor``) are drawn in each of these
COLOURS = ("#000000", "#2f6db5")

# Iconify JSON sets on npm (@iconify-json/<name>): version, licence (SPDX, from the set's info.json).
# Only the sets where label_of finds a garment, and only permissive licences (CC0 included). Sets
# whose garments are drawn inside badges or as brand logos (streamline-kameleon, simple-icons'
# "boots") or look like another class (iconmind's raincoat is an apron) are not listed.
ICON_SETS: dict[str, tuple[str, str]] = {
    "akar-icons": ("1.2.7", "MIT"), "basil": ("1.2.4", "CC-BY-4.0"), "bi": ("1.2.7", "MIT"),
    "bx": ("1.2.3", "MIT"), "bxs": ("1.2.3", "MIT"), "carbon": ("1.2.30", "Apache-2.0"),
    "clarity": ("1.2.4", "MIT"), "duo-icons": ("1.2.2", "MIT"), "ep": ("1.2.4", "MIT"),
    "eva": ("1.2.3", "MIT"), "f7": ("1.2.2", "MIT"), "famicons": ("1.2.2", "MIT"),
    "fe": ("1.2.4", "MIT"), "flowbite": ("1.2.7", "MIT"), "fluent": ("1.2.60", "MIT"),
    "fontisto": ("1.2.1", "MIT"), "fxemoji": ("1.2.2", "Apache-2.0"), "gg": ("1.2.2", "MIT"),
    "gravity-ui": ("1.2.15", "MIT"), "heroicons": ("1.2.3", "MIT"), "ic": ("1.2.4", "Apache-2.0"),
    "iconamoon": ("1.2.2", "CC-BY-4.0"), "ion": ("1.2.7", "MIT"), "jam": ("1.2.3", "MIT"),
    "lets-icons": ("1.2.2", "CC-BY-4.0"), "lineicons": ("1.2.6", "MIT"),
    "lsicon": ("1.2.5", "MIT"), "lucide-lab": ("1.2.3", "ISC"), "mage": ("1.2.4", "Apache-2.0"),
    "majesticons": ("1.2.5", "MIT"), "meteor-icons": ("1.2.8", "MIT"), "mynaui": ("1.2.19", "MIT"),
    "noto-v1": ("1.2.5", "Apache-2.0"), "pepicons-pop": ("1.2.4", "CC-BY-4.0"),
    "pixelarticons": ("1.2.9", "MIT"), "prime": ("1.2.5", "MIT"),
    "qlementine-icons": ("1.2.16", "MIT"), "radix-icons": ("1.2.6", "MIT"),
    "ri": ("1.2.10", "Apache-2.0"), "rivet-icons": ("1.2.2", "BSD-3-Clause"),
    "simple-line-icons": ("1.2.1", "MIT"), "solar": ("1.2.13", "CC-BY-4.0"),
    "streamline": ("1.2.5", "CC-BY-4.0"), "streamline-emojis": ("1.2.4", "CC-BY-4.0"),
    "streamline-flex": ("1.2.3", "CC-BY-4.0"), "streamline-plump": ("1.2.0", "CC-BY-4.0"),
    "system-uicons": ("1.2.4", "Unlicense"), "teenyicons": ("1.2.2", "MIT"),
    "token": ("1.2.40", "MIT"), "uil": ("1.2.3", "Apache-2.0"), "uim": ("1.2.3", "Apache-2.0"),
    "uis": ("1.2.3", "Apache-2.0"), "wpf": ("1.2.0", "MIT"), "fluent-mdl2": ("1.2.1", "MIT"),
    "zondicons": ("1.2.2", "MIT"), "boxicons": ("1.2.0", "MIT"), "dinkie-icons": ("1.2.0", "MIT"),
    "pepicons-pencil": ("1.2.4", "CC-BY-4.0"), "pepicons-print": ("1.2.2", "CC-BY-4.0"),
    "pinhead": ("1.2.28", "CC0-1.0"), "temaki": ("1.2.6", "CC0-1.0"), "raphael": ("1.2.1", "MIT"),
}
# Sets that npm has only inside the bundle of all Iconify sets (@iconify/json, one pinned version):
# set -> licence (SPDX, from the set's info). Only the set files named here are unpacked.
BUNDLE = ("@iconify/json", "2.2.553")
BUNDLED_SETS: dict[str, str] = {
    "iconoven": "MIT", "lucide-extended": "ISC", "vadivam": "MIT", "reicon": "MIT",
}
# every training set -> (version, licence) as the model card names it (a bundled set: the bundle)
SET_SOURCES: dict[str, tuple[str, str]] = {
    **ICON_SETS, **{s: (f"{BUNDLE[0]}@{BUNDLE[1]}", licence) for s, licence in BUNDLED_SETS.items()}}

# An icon's name, once its style words and numbers are dropped (NAME_STYLE_WORDS), is looked up
# whole: these names -> the Fashion-MNIST class. The emoji names follow the Unicode names
# (``womans-clothes``: a blouse; ``running-shirt``: a vest top). ``necktie`` is left out: some
# sets draw a shirt collar with its tie, others the tie alone.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "T-shirt/top": ("t-shirt", "tshirt", "tshirt-crew", "tshirt-v", "running-shirt", "runningshirt",
                    "womans-clothes", "tank-top", "shirt-t", "shirt-t-v-neck", "sleeveless-top",
                    "undershirt"),
    "Trouser": ("jeans", "pants", "pant", "trousers", "trouser", "jogger-pants"),
    "Pullover": ("hoodie", "sweater", "jumper", "pullover", "sweatshirt", "long-sleeve-shirt",
                 "holiday-sweater", "turtleneck"),
    "Dress": ("dress", "womans-dress"),
    "Coat": ("coat", "lab-coat", "jacket", "jacket-sports", "parka", "windbreaker", "raincoat",
             "blazer", "bomber-jacket", "trench-coat"),
    "Sandal": ("sandal", "sandals", "womans-sandal", "thong-sandal", "flip-flop", "flip-flops",
               "beach-slipper"),
    "Shirt": ("mansshirt", "womansshirt", "shirt-folded", "shirt-folded-buttons",
              "shirt-long-sleeve"),
    "Sneaker": ("sneaker", "sneakers", "running-shoe", "runningshoe", "sport-shoe", "shoe-sneaker"),
    "Bag": ("handbag", "purse", "clutch-bag", "backpack", "school-backpack", "shopping-bag",
            "shopping-bags", "bag", "bag-handle", "bag-personal", "tote-bag", "bag-hand"),
    "Ankle boot": ("boot", "boots", "hiking-boot", "hiking-boots", "womans-boot", "womans-boots",
                   "ankle-boot", "leather-boot", "chelsea-boot"),
}
NAME_STYLE_WORDS = frozenset(
    "filled regular fill line outline outlined solid bold duotone light thin linear broken sharp "
    "remix twotone alt baseline round rounded ios md f".split())
_NAME_TO_CLASS = {name: cls for cls, names in CLASS_NAMES.items() for name in names}
# Icons whose name alone could be several classes (a plain "shirt" is drawn as a T-shirt in most
# sets, as a collared shirt in some), labelled by looking at each render: "<set>:<name>" -> class.
LABELLED_BY_LOOKING: dict[str, str] = {
    "ri:shirt-fill": "Shirt", "ri:shirt-line": "Shirt",
    "fluent:shirt-20-filled": "T-shirt/top", "fluent:shirt-20-regular": "T-shirt/top",
    "pixelarticons:shirt": "T-shirt/top", "rivet-icons:shirt": "T-shirt/top",
    "rivet-icons:shirt-solid": "T-shirt/top", "lineicons:shirt-1": "T-shirt/top",
    "famicons:shirt": "T-shirt/top", "ion:md-shirt": "T-shirt/top", "lsicon:clothes-filled": "T-shirt/top",
    "lucide-lab:vest": "T-shirt/top", "fluent-mdl2:shirt": "T-shirt/top", "zondicons:apparel": "T-shirt/top",
    "streamline:shopping-catergories-dress-clothing-dress-skirt-women": "Dress",
    "iconoven:shirt": "Shirt", "iconoven:shirt-sharp": "Shirt",  # collared, buttoned
}


def label_of(name: str) -> str | None:
    """The Fashion-MNIST class an icon's name means, or None (not a garment, or ambiguous):
    the name's words without style words and numbers (``bag-2-fill`` -> ``bag``,
    ``backpack2`` -> ``backpack``) must be one of CLASS_NAMES' names as a whole, so
    ``bag-check``, ``money-bag``, ``reboot`` or ``address-book`` are never taken."""
    words = [re.sub(r"\d+$", "", w) for w in name.lower().split("-")]
    words = [w for w in words if w and w not in NAME_STYLE_WORDS]
    return _NAME_TO_CLASS.get("-".join(words))


# --- fetching and rendering (also used by scripts/real_images.py) --------------------------------


def _npm_folder(cache: Path, package: str, version: str) -> Path:
    return cache / "npm" / f"{package.replace('@', '').replace('/', '-')}-{version}"


def _npm_unpack(cache: Path, package: str, version: str, keep=None) -> None:
    """``npm pack`` of ``package@version`` into ``cache/npm``, unpacked into its folder (only the
    members ``keep(member)`` returns True for, when given), the tarball deleted."""
    (cache / "npm").mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["npm", "pack", "--silent", f"{package}@{version}"], cwd=cache / "npm",
                         check=True, capture_output=True, text=True).stdout.split()[-1]
    try:
        with tarfile.open(cache / "npm" / out) as tar:
            members = [m for m in tar.getmembers() if keep is None or keep(m)]
            tar.extractall(_npm_folder(cache, package, version), members=members, filter="data")
    finally:
        (cache / "npm" / out).unlink()


def npm_package(cache: Path, package: str, version: str) -> Path:
    """The unpacked ``package/`` folder of ``package@version``, fetched once with ``npm pack``."""
    folder = _npm_folder(cache, package, version)
    if not (folder / "package").is_dir():
        _npm_unpack(cache, package, version)
    return folder / "package"


def bundled_sets(cache: Path, names: list[str], bundle: tuple[str, str] = BUNDLE) -> dict[str, dict]:
    """Iconify JSON of the sets ``names`` from the bundle of all sets (``@iconify/json``, whose
    ``package/json/<set>.json`` carries the set's ``info``), fetched once with ``npm pack``; only
    these set files are unpacked (the whole bundle is over 600 MB unpacked)."""
    folder = _npm_folder(cache, *bundle) / "package" / "json"
    missing = {f"package/json/{n}.json" for n in names if not (folder / f"{n}.json").exists()}
    if missing:
        _npm_unpack(cache, *bundle, keep=lambda member: member.name in missing)
        if lacking := sorted(m for m in missing if not (folder.parent.parent / m).exists()):
            raise FileNotFoundError(f"{bundle[0]}@{bundle[1]} lacks {lacking}")
    return {n: json.loads((folder / f"{n}.json").read_text()) for n in names}


def iconify_svg(icons: dict, name: str, color: str = "#000000") -> str:
    """A standalone SVG of one icon of an Iconify JSON set (``currentColor``: ``color``)."""
    icon = icons["icons"][name]
    left, top = icon.get("left", icons.get("left", 0)), icon.get("top", icons.get("top", 0))
    width, height = icon.get("width", icons.get("width", 16)), icon.get("height", icons.get("height", 16))
    body = icon["body"].replace("currentColor", color)
    transform = ""
    if icon.get("hFlip"):
        transform = f' transform="translate({2 * left + width} 0) scale(-1 1)"'
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'viewBox="{left} {top} {width} {height}" width="{width}" height="{height}">'
            f'<g{transform}>{body}</g></svg>')


def render_svg(svg: str, size: int = RENDER_SIZE):
    """SVG text -> RGBA PIL image, longest side ``size``, transparent where nothing is drawn."""
    import cairosvg
    from PIL import Image

    png = cairosvg.svg2png(bytestring=svg.encode(), output_width=size, output_height=size)
    return Image.open(io.BytesIO(png)).convert("RGBA")


def on_background(img, background: str):
    """The RGBA render as a user would send it: flattened onto white (RGB), or as it is."""
    from PIL import Image

    if background == "transparent":
        return img
    canvas = Image.new("RGB", img.size, (255, 255, 255))
    canvas.paste(img, mask=img.getchannel("A"))
    return canvas


# --- the training set -----------------------------------------------------------------------------


@dataclass(frozen=True)
class IconSet:
    images: np.ndarray  # uint8 (N, 1, 28, 28): what the service's conversion makes of each upload
    labels: np.ndarray  # int64 (N,), indices into the classes it was built for
    names: list[str]  # "<set>:<icon>|<background>|<colour>" per image
    sources: dict[str, dict]  # set -> version, licence, author, icons, images (the attribution)

    def counts(self, classes: list[str]) -> dict[str, int]:
        """Images per class (every class listed, zeros included)."""
        return {c: int((self.labels == i).sum()) for i, c in enumerate(classes)}

    def record(self, classes: list[str], added_per_batch: int) -> dict:
        """What a run trained on (the run directory's icons.json, the model card's attribution)."""
        return {"added_per_batch": added_per_batch, "images": len(self.labels),
                "per_class": self.counts(classes), "sources": self.sources}

    def sampling_weights(self, balance: float = 0.75) -> np.ndarray:
        """Per image, proportional to (images of its class) ** -balance, so each class is drawn
        in proportion to its size ** (1 - balance): at 0.75 the fourth root, the rare classes
        (a few emoji) far more often than their share, the 800-odd bags less, without the one
        pullover icon being drawn as often as all the bags together (1: every class equally)."""
        counts = np.bincount(self.labels)
        w = counts[self.labels].astype(np.float64) ** -balance
        return w / w.sum()


def labelled_icons(sets: dict[str, dict]) -> list[tuple[str, str, str]]:
    """(set, icon name, class) for every icon of the loaded ``sets`` (name -> Iconify JSON) that
    LABELLED_BY_LOOKING lists or whose name label_of knows, sorted; aliases are not followed
    (they repeat an icon)."""
    return sorted((s, name, cls) for s, icons in sets.items() for name in icons["icons"]
                  if (cls := LABELLED_BY_LOOKING.get(f"{s}:{name}") or label_of(name)) is not None)


def set_digest(classes: list[str], pipeline: str) -> str:
    """What defines the built set: sets and versions, names, rendering, conversion."""
    spec = {"sets": ICON_SETS, "bundle": BUNDLE, "bundled": BUNDLED_SETS, "names": CLASS_NAMES,
            "style": sorted(NAME_STYLE_WORDS), "looked": LABELLED_BY_LOOKING,
            "size": RENDER_SIZE, "backgrounds": BACKGROUNDS, "colours": COLOURS,
            "classes": classes, "pipeline": pipeline, "version": 2}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def build_icon_set(classes: list[str], pipeline: str, cache: Path = DEFAULT_CACHE,
                   sets: dict[str, dict] | None = None, render=render_svg) -> IconSet:
    """Render every labelled icon on each background (monochrome ones in each colour) and convert
    it as the service would an upload; cached under ``cache`` by set_digest. ``sets``: Iconify
    JSON by set name (default: ICON_SETS fetched with npm into ``cache``; only that set is
    cached); ``render``: SVG text -> RGBA PIL image (default: cairosvg at RENDER_SIZE)."""
    path = cache / f"icons-{pipeline}-{set_digest(classes, pipeline)}.npz"
    fetched = sets is None
    if fetched and path.exists():
        with np.load(path) as z:
            return IconSet(z["images"], z["labels"], [str(n) for n in z["names"]], json.loads(str(z["sources"])))
    if fetched:
        sets = {}
        for s, (version, _) in ICON_SETS.items():
            folder = npm_package(cache, f"@iconify-json/{s}", version)
            sets[s] = {**json.loads((folder / "icons.json").read_text()),
                       "info": json.loads((folder / "info.json").read_text())}
        sets.update(bundled_sets(cache, sorted(BUNDLED_SETS)))
    images, labels, names = [], [], []
    sources: dict[str, dict] = {}
    for s, name, cls in labelled_icons(sets):
        version, licence = SET_SOURCES.get(s, ("", ""))
        src = sources.setdefault(s, {"version": version, "license": licence, "icons": 0, "images": 0,
                                     "author": sets[s].get("info", {}).get("author", {}).get("name", "")})
        src["icons"] += 1
        body = sets[s]["icons"][name]["body"]
        for colour in (COLOURS if "currentColor" in body else COLOURS[:1]):
            rgba = render(iconify_svg(sets[s], name, colour))
            for background in BACKGROUNDS:
                px, _ = convert_image(on_background(rgba, background), 1, 28, 28,
                                      {"pipeline": pipeline}, "auto")
                images.append(px)
                labels.append(classes.index(cls))
                names.append(f"{s}:{name}|{background}|{colour}")
                src["images"] += 1
    icon_set = IconSet(np.stack(images).astype(np.uint8), np.asarray(labels, dtype=np.int64), names, sources)
    if fetched:
        cache.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, images=icon_set.images, labels=icon_set.labels,
                            names=np.asarray(names), sources=json.dumps(sources))
    return icon_set
