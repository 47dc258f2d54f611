"""training/icons.py: the real third-party icons the default model trains on (issue 20)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image, ImageDraw

from scripts.real_images import MANIFEST
from serving.conversions import convert_image
from training import icons
from training.classifier import ClassifierConfig
from training.data import DATASETS

CLASSES = list(DATASETS["fashion-mnist"].classes)


@pytest.mark.parametrize("name, cls", [
    ("t-shirt", "T-shirt/top"), ("t-shirt-2-fill", "T-shirt/top"), ("tshirt-outline", "T-shirt/top"),
    ("running-shirt", "T-shirt/top"), ("jeans", "Trouser"), ("sweater", "Pullover"), ("dress", "Dress"),
    ("lab-coat", "Coat"), ("womans-sandal", "Sandal"), ("mansshirt", "Shirt"), ("running-shoe", "Sneaker"),
    ("backpack2-fill", "Bag"), ("bag-24-regular", "Bag"), ("bag-handle-sharp", "Bag"), ("womans-boot", "Ankle boot"),
    ("hoodie-sharp", "Pullover"), ("turtleneck", "Pullover"), ("bomber-jacket-sharp", "Coat"),
    ("beach-slipper", "Sandal"), ("hiking-boots", "Ankle boot"),
])
def test_label_of_reads_garment_names_with_their_style_words_and_numbers(name, cls):
    assert icons.label_of(name) == cls


@pytest.mark.parametrize("name", [
    "bag-check", "money-bag", "blood-bag", "reboot", "bootstrap-fill", "address-book", "hairdresser", "shirt",
    "shoe", "briefcase", "suitcase", "coat-hanger", "life-jacket", "necktie", "bag-plus-fill", "",
])
def test_label_of_leaves_out_what_is_no_garment_or_could_be_several(name):
    assert icons.label_of(name) is None


def test_every_name_maps_to_a_fashion_mnist_class_and_to_one_only():
    assert set(icons.CLASS_NAMES) == set(CLASSES)
    names = [n for ns in icons.CLASS_NAMES.values() for n in ns]
    assert len(names) == len(set(names))
    assert all(icons.label_of(n) == c for c, ns in icons.CLASS_NAMES.items() for n in ns)


def test_training_sets_are_permissive_pinned_and_none_is_a_source_of_the_evaluation():
    manifest = json.loads(MANIFEST.read_text())
    evaluated = {src["package"] for src in manifest["sources"].values()}
    training = {f"@iconify-json/{s}" for s in icons.ICON_SETS}
    assert not training & evaluated  # the real-image evaluation stays pictures never trained on
    # the bundle's sets are none of the evaluation's sets either, nor a per-set package as well
    evaluated_sets = {s for s, src in manifest["sources"].items() if src["kind"] == "iconify"}
    assert not set(icons.BUNDLED_SETS) & (evaluated_sets | set(icons.ICON_SETS))
    assert all(lic in {"MIT", "Apache-2.0", "ISC"} for lic in icons.BUNDLED_SETS.values())
    assert re.fullmatch(r"\d+\.\d+\.\d+", icons.BUNDLE[1])
    permissive = {"MIT", "Apache-2.0", "ISC", "BSD-3-Clause", "CC-BY-4.0", "CC0-1.0", "Unlicense"}
    assert all(lic in permissive for _, lic in icons.ICON_SETS.values())
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v, _ in icons.ICON_SETS.values())


def test_bundled_sets_unpack_only_the_set_files_asked_for_once(tmp_path, monkeypatch):
    """The sets npm has only in the bundle of all sets: ``npm pack`` of the bundle (faked here
    by a tarball of three set files), only the asked-for files kept, no second fetch."""
    import io
    import tarfile
    import types

    packs = []

    def fake_npm(cmd, cwd, **_):
        packs.append(cmd[-1])
        with tarfile.open(cwd / "bundle.tgz", "w:gz") as tar:
            for name in ("a", "b", "c"):
                data = json.dumps({"icons": {name: {}}, "info": {"license": {"spdx": "MIT"}}}).encode()
                info = tarfile.TarInfo(f"package/json/{name}.json")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return types.SimpleNamespace(stdout="bundle.tgz\n")

    monkeypatch.setattr(icons.subprocess, "run", fake_npm)
    got = icons.bundled_sets(tmp_path, ["a", "c"], bundle=("@x/json", "1.0.0"))
    assert got == {n: {"icons": {n: {}}, "info": {"license": {"spdx": "MIT"}}} for n in ("a", "c")}
    folder = tmp_path / "npm" / "x-json-1.0.0" / "package" / "json"
    assert sorted(p.name for p in folder.iterdir()) == ["a.json", "c.json"]
    assert icons.bundled_sets(tmp_path, ["c"], bundle=("@x/json", "1.0.0")) == {"c": got["c"]}
    assert packs == ["@x/json@1.0.0"]  # cached: asked once
    assert not (tmp_path / "npm" / "bundle.tgz").exists()
    with pytest.raises(FileNotFoundError, match="package/json/z.json"):
        icons.bundled_sets(tmp_path, ["z"], bundle=("@x/json", "1.0.0"))


def test_sampling_weights_draw_each_class_by_the_fourth_root_of_its_size():
    s = icons.IconSet(np.zeros((17, 1, 28, 28), np.uint8), np.array([0] + [1] * 16), [""] * 17, {})
    w = s.sampling_weights()
    assert w.sum() == pytest.approx(1.0)
    assert w[1:].sum() / w[0] == pytest.approx(16 ** 0.25)  # 2x, not 16x
    assert s.sampling_weights(1.0)[1:].sum() == pytest.approx(0.5)  # every class equally
    assert s.sampling_weights(0.0)[1:].sum() == pytest.approx(16 / 17)  # as found
    assert s.counts(["a", "b", "c"]) == {"a": 1, "b": 16, "c": 0}


def fake_render(svg: str) -> Image.Image:
    """A stand-in for cairosvg: the SVG's fill colour as a filled square on transparent."""
    colour = re.search(r'fill="(#[0-9a-f]{6})"', svg).group(1)
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(img).rectangle((16, 8, 47, 55), fill=colour)
    return img


def test_build_icon_set_converts_each_render_as_the_service_would(tmp_path):
    sets = {"a": {"width": 24, "height": 24, "info": {"author": {"name": "Someone"}}, "icons": {
        "t-shirt": {"body": '<path fill="currentColor"/>'},  # monochrome: one render per colour
        "womans-boot": {"body": '<path fill="#aa3300"/>'},  # coloured: as it is
        "bag-check": {"body": '<path fill="currentColor"/>'}}}}  # no garment name: left out
    s = icons.build_icon_set(CLASSES, "fashion-mnist", cache=tmp_path, sets=sets, render=fake_render)
    n_colours, n_backgrounds = len(icons.COLOURS), len(icons.BACKGROUNDS)
    assert len(s.labels) == (n_colours + 1) * n_backgrounds == len(s.names)
    assert s.counts(CLASSES)["T-shirt/top"] == n_colours * n_backgrounds
    assert s.counts(CLASSES)["Ankle boot"] == n_backgrounds and s.counts(CLASSES)["Bag"] == 0
    first = fake_render('fill="#000000"')
    canvas = Image.new("RGB", first.size, (255, 255, 255))
    canvas.paste(first, mask=first.getchannel("A"))
    expected, converted = convert_image(canvas, 1, 28, 28, {"pipeline": "fashion-mnist"}, "auto")
    assert converted == "photo"
    assert np.array_equal(s.images[s.names.index("a:t-shirt|white|#000000")], expected)
    assert s.images.dtype == np.uint8 and s.images.shape[1:] == (1, 28, 28)
    assert not list(tmp_path.iterdir())  # sets given by the caller are not cached as the real set
    assert s.sources == {"a": {"version": "", "license": "", "author": "Someone", "icons": 2,
                               "images": len(s.labels)}}


def test_classifier_refuses_icons_outside_fashion_mnist_or_a_whole_batch():
    for bad in ({"icons": 1.0}, {"icons": -0.1}, {"icons": 0.1, "dataset": "mnist"}):
        with pytest.raises(ValueError, match="--icons"):
            ClassifierConfig(**bad).validate()
    ClassifierConfig(icons=0.125).validate()


def test_classifier_trains_on_the_icons_it_is_given(tmp_path, fixture_data_dir, monkeypatch):
    """--icons puts icons into every batch: a fixed, tiny icon set stands in for the npm one and
    the run's summary names it."""
    from training.__main__ import main

    asked = []
    tiny = icons.IconSet(np.full((4, 1, 28, 28), 200, np.uint8), np.array([0, 5, 6, 9]), ["x"] * 4, {})

    def fake_build(classes, pipeline, *a, **k):
        asked.append((classes, pipeline))
        return tiny

    monkeypatch.setattr(icons, "build_icon_set", fake_build)
    assert main(["classifier", "--model", "vgg11", "--width", "0.125", "--batch-size", "16", "--steps", "3",
                 "--eval-every", "3", "--icons", "0.25", "--data-dir", str(fixture_data_dir), "--no-progress",
                 "--out", str(tmp_path / "run")]) == 0
    assert asked == [(CLASSES, "fashion-mnist")]
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "real icons: 4 added to each batch of 16 from 4 renders" in summary
    record = json.loads((tmp_path / "run" / "icons.json").read_text())
    assert record["added_per_batch"] == 4 and record["per_class"]["Sandal"] == 1


def test_icons_labelled_by_looking_are_in_the_training_sets_and_win_over_the_name():
    assert all(key.split(":")[0] in icons.SET_SOURCES and cls in CLASSES
               for key, cls in icons.LABELLED_BY_LOOKING.items())
    sets = {"ri": {"icons": {"shirt-line": {}, "t-shirt-line": {}, "shirt-x": {}}}}
    assert icons.labelled_icons(sets) == [("ri", "shirt-line", "Shirt"), ("ri", "t-shirt-line", "T-shirt/top")]


def test_model_card_names_every_icon_set_with_its_licence_and_author(tmp_path):
    from scripts.model_card import icons_section

    assert icons_section(tmp_path) == ""  # a run without icons
    s = icons.IconSet(np.zeros((3, 1, 28, 28), np.uint8), np.array([0, 0, 8]), ["x"] * 3,
                      {"solar": {"version": "1.2.13", "license": "CC-BY-4.0", "author": "480 Design", "icons": 2,
                                 "images": 3}})
    (tmp_path / "icons.json").write_text(json.dumps(s.record(CLASSES, 16)))
    text = icons_section(tmp_path)
    assert "| solar | 1.2.13 | CC-BY-4.0 | 480 Design | 2 | 3 |" in text
    assert "16 renders added to every batch, drawn from 3 renders" in text and "T-shirt/top 2" in text
