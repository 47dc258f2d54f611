"""training/drawings.py: procedural garment drawings the default model trains on (issue 20)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image, ImageDraw

from training import drawings
from training.classifier import DRAWING_SEED, ClassifierConfig
from training.data import DATASETS
from training.icons import IconSet

CLASSES = list(DATASETS["fashion-mnist"].classes)
SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return root


def test_every_drawn_class_is_a_fashion_mnist_class_of_the_upper_body():
    assert set(drawings.CLASSES) == {"T-shirt/top", "Shirt", "Pullover", "Coat", "Dress"}
    assert set(drawings.CLASSES) <= set(CLASSES)
    with pytest.raises(ValueError, match="no drawings of 'Bag'"):
        drawings.garment_svg("Bag", np.random.default_rng(0))


@pytest.mark.parametrize("cls", drawings.CLASSES)
def test_body_length_over_shoulder_width_is_the_class_range(cls):
    lo, hi = drawings.FEATURES[cls]["length"]
    rng = np.random.default_rng(1)
    for _ in range(200):
        b = drawings._body(cls, rng)
        ratio = (b.hem[1] - b.top) / (2 * (b.shoulder[0] - 50))
        assert lo <= ratio <= hi


def test_coats_are_drawn_longer_than_pullovers_and_shirts():
    assert drawings.FEATURES["Coat"]["length"][0] > drawings.FEATURES["Pullover"]["length"][0]
    assert drawings.FEATURES["Coat"]["length"][1] > drawings.FEATURES["Shirt"]["length"][1]


@pytest.mark.parametrize("cls", drawings.CLASSES)
def test_a_drawing_is_one_svg_its_seed_makes_again(cls):
    a = drawings.garment_svg(cls, np.random.default_rng(7))
    assert a == drawings.garment_svg(cls, np.random.default_rng(7))
    assert a != drawings.garment_svg(cls, np.random.default_rng(8))
    root = parse(a)
    x, y, w, h = map(float, root.get("viewBox").split())
    assert w > 0 and h > 0 and len(root) >= 1  # the body at least (a sleeveless dress: only it)


def test_styles_are_strokes_cut_outs_or_colour_with_details():
    rng = np.random.default_rng(3)
    for _ in range(20):
        outline = parse(drawings.garment_svg("Coat", rng, "outline"))
        assert all(p.get("stroke") not in (None, "none", "#ffffff") for p in outline.iter(f"{SVG}path"))
        cutout = parse(drawings.garment_svg("Shirt", rng, "cutout"))
        # the details are cut out of the filled shape in the background's white
        assert {p.get("stroke") for p in cutout.iter(f"{SVG}path")} == {"#ffffff"}
        assert {c.get("fill") for c in cutout.iter(f"{SVG}circle")} == {"#ffffff"}  # buttons
        emoji = parse(drawings.garment_svg("Pullover", rng, "emoji"))
        assert all(p.get("fill") not in ("none", "#ffffff") for p in list(emoji)[:2])


def test_shirts_have_buttons_and_coats_an_opening_pullovers_and_t_shirts_neither():
    def buttons(cls, seed):
        return len(list(parse(drawings.garment_svg(cls, np.random.default_rng(seed))).iter(f"{SVG}circle")))

    assert all(buttons("Shirt", s) >= 3 for s in range(30))
    assert all(buttons(c, s) == 0 for c in ("Pullover", "T-shirt/top", "Dress") for s in range(30))
    assert sum(buttons("Coat", s) > 0 for s in range(30)) >= 10  # buttons, or a zip


def points(path: str) -> list[tuple[float, float]]:
    """The vertices of a path of M/L segments (a neckline's curve or a hood's ends it)."""
    out = []
    for token in path.replace("M", " ").replace("L", " ").split("Q")[0].split("C")[0].split():
        if "," in token:
            x, y = token.split(",")
            out.append((float(x), float(y)))
    return out


def test_some_shirts_are_folded_as_in_a_shop_about_as_high_as_wide_without_sleeves():
    rng = np.random.default_rng(4)
    folded = 0
    for _ in range(100):
        first = next(parse(drawings.garment_svg("Shirt", rng)).iter(f"{SVG}path")).get("d")
        if first.count("M") == 1:  # no sleeves: the body comes first
            folded += 1
            xs, ys = zip(*points(first), strict=True)
            assert 0.85 <= (max(ys) - min(ys)) / (max(xs) - min(xs)) <= 1.15
    assert 10 <= folded <= 45
    assert all(next(parse(drawings.garment_svg(c, rng)).iter(f"{SVG}path")).get("d").count("M") == 2
               for c in ("Coat", "Pullover") for _ in range(30))  # their sleeves come first


def test_neckties_only_on_shirts_quilting_only_on_coats():
    def is_tie(path) -> bool:  # a filled part of 5 vertices, one of the lowest on the centre line
        q = points(path.get("d"))
        return bool(path.get("stroke-linejoin")) and len(q) == 5 and (50.0, max(y for _, y in q)) in q

    def is_band(path) -> bool:  # a stroke straight across the centre line, over 20 wide
        q = points(path.get("d"))
        return (bool(path.get("stroke-linecap")) and len(q) == 2 and q[0][1] == q[1][1]
                and abs(q[0][0] + q[1][0] - 100) < 0.02 and abs(q[1][0] - q[0][0]) > 20)

    def features(cls, seed):
        paths = list(parse(drawings.garment_svg(cls, np.random.default_rng(seed), "outline")).iter(f"{SVG}path"))
        return any(map(is_tie, paths)), sum(map(is_band, paths)) >= 4

    found = {c: [features(c, s) for s in range(60)] for c in drawings.CLASSES}
    assert 5 <= sum(t for t, _ in found["Shirt"]) <= 35
    assert 5 <= sum(q for _, q in found["Coat"]) <= 30
    assert not any(t or q for c in drawings.CLASSES if c not in ("Shirt", "Coat") for t, q in found[c])
    assert not any(t for t, _ in found["Coat"]) and not any(q for _, q in found["Shirt"])


def silhouette_render(svg: str) -> Image.Image:
    """A stand-in for cairosvg (make default-model installs it, `make test` does not): a black
    ellipse of the drawing's aspect on transparent."""
    _, _, w, h = map(float, parse(svg).get("viewBox").split())
    img = Image.new("RGBA", (96, 96), (0, 0, 0, 0))
    scale = 80 / max(w, h)
    ImageDraw.Draw(img).ellipse((8, 8, 8 + w * scale, 8 + h * scale), fill=(0, 0, 0, 255))
    return img


def test_build_drawing_set_renders_and_converts_as_the_service_would():
    s = drawings.build_drawing_set(CLASSES, "fashion-mnist", per_class=4, seed=11, render=silhouette_render)
    assert s.counts(CLASSES) == {c: (4 if c in drawings.CLASSES else 0) for c in CLASSES}
    assert s.images.dtype == np.uint8 and s.images.shape == (20, 1, 28, 28)
    # each render on its background through the service's own conversion (dataset form)
    assert s.names[0].startswith("drawing:T-shirt/top:0|")
    for img, name in zip(s.images, s.names, strict=True):
        background = name.split("|")[1]
        assert background in ("white", "transparent") and img[0, 0, 0] == 0 and img.max() > 128
    again = drawings.build_drawing_set(CLASSES, "fashion-mnist", per_class=4, seed=11, render=silhouette_render)
    assert np.array_equal(s.images, again.images) and s.names == again.names
    other = drawings.build_drawing_set(CLASSES, "fashion-mnist", per_class=4, seed=12, render=silhouette_render)
    assert s.names != other.names or not np.array_equal(s.images, other.images)
    assert s.sources["drawings"]["images"] == 20
    # labels index the classes given, whatever their order
    backwards = drawings.build_drawing_set(CLASSES[::-1], "fashion-mnist", per_class=1, seed=11,
                                           render=silhouette_render)
    assert sorted(CLASSES[::-1][i] for i in backwards.labels) == sorted(drawings.CLASSES)


def test_a_coat_converts_longer_than_a_pullover():
    """The length a drawing is given survives the service's conversion (the box fitted to 28 x 28)."""
    coat = drawings.build_drawing_set(["Coat"], "fashion-mnist", 30, 5, render=silhouette_render)
    pullover = drawings.build_drawing_set(["Pullover"], "fashion-mnist", 30, 5, render=silhouette_render)

    def aspect(img):
        rows, cols = np.nonzero(img[0] > 64)
        return (rows.max() - rows.min() + 1) / (cols.max() - cols.min() + 1)

    assert np.median([aspect(i) for i in coat.images]) > np.median([aspect(i) for i in pullover.images])


def test_classifier_refuses_drawings_outside_fashion_mnist_or_a_whole_batch():
    for bad in ({"drawings": 1.0}, {"drawings": -0.1}, {"drawings": 0.1, "dataset": "mnist"}):
        with pytest.raises(ValueError, match="--drawings"):
            ClassifierConfig(**bad).validate()
    with pytest.raises(ValueError, match="--drawings-per-class"):
        ClassifierConfig(drawings=0.1, drawings_per_class=0).validate()
    ClassifierConfig(drawings=0.1).validate()


def test_classifier_trains_on_the_drawings_it_is_given(tmp_path, fixture_data_dir, monkeypatch):
    """--drawings puts drawings into every batch: a tiny set stands in for the rendered one and the
    run's summary and drawings.json name it."""
    from training.__main__ import main

    asked = []
    tiny = IconSet(np.full((3, 1, 28, 28), 200, np.uint8), np.array([2, 4, 6]), ["x"] * 3,
                   {"drawings": {"version": "seed 7", "license": "", "author": "", "icons": 3, "images": 3}})

    def fake_build(classes, pipeline, per_class, seed):
        asked.append((classes, pipeline, per_class, seed))
        return tiny

    monkeypatch.setattr(drawings, "build_drawing_set", fake_build)
    assert main(["classifier", "--model", "vgg11", "--width", "0.125", "--batch-size", "16", "--steps", "3",
                 "--eval-every", "3", "--drawings", "0.125", "--drawings-per-class", "5",
                 "--data-dir", str(fixture_data_dir), "--no-progress", "--out", str(tmp_path / "run")]) == 0
    assert asked == [(CLASSES, "fashion-mnist", 5, DRAWING_SEED)]
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "procedural drawings: 2 added to each batch from 3" in summary
    record = json.loads((tmp_path / "run" / "drawings.json").read_text())
    assert record["added_per_batch"] == 2 and record["per_class"]["Coat"] == 1
    assert not (tmp_path / "run" / "icons.json").exists()


def test_model_card_says_how_many_drawings_of_which_class(tmp_path):
    from scripts.model_card import drawings_section

    assert drawings_section(tmp_path) == ""  # a run without drawings
    s = IconSet(np.zeros((3, 1, 28, 28), np.uint8), np.array([4, 4, 6]), ["x"] * 3,
                {"drawings": {"version": "seed 7", "license": "", "author": "", "icons": 3, "images": 3}})
    (tmp_path / "drawings.json").write_text(json.dumps(s.record(CLASSES, 6)))
    text = drawings_section(tmp_path)
    assert "6 drawings added to every batch, drawn from 3 made once (seed 7)" in text
    assert "Per class: Coat 2, Shirt 1." in text
