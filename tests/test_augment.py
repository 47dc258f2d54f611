"""Training augmentation for what users send (training/augment.py), the held-out split of the
classifier, the transparent-upload background (serving.conversions.alpha_background) and the
real-image evaluation's summary (scripts/real_images.py): closed-form cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from scripts.real_images import iconify_svg, summarise
from serving.conversions import alpha_background, convert_image
from training import augment as aug
from training.classifier import ClassifierConfig, split_holdout
from training.data import Split


def square(size: int = 12, side: int = 6, value: float = 1.0) -> torch.Tensor:
    x = torch.zeros(1, 1, size, size)
    lo = (size - side) // 2
    x[..., lo:lo + side, lo:lo + side] = value
    return x


def test_dilate_and_erode_grow_and_shrink_a_square_by_one_pixel():
    x = square()
    assert aug.dilate(x).sum() == 8 * 8
    assert aug.erode(x).sum() == 4 * 4
    assert torch.equal(aug.erode(aug.dilate(x)), x)  # closing a convex shape changes nothing


def test_outline_of_a_filled_square_is_a_ring():
    ring = aug.outline(square(value=0.7))
    assert ring.max() == 1.0
    assert ring[0, 0, 6, 6] == 0  # the inside is empty
    assert ring.sum() == 8 * 8 - 4 * 4  # dilate(6x6) minus erode(6x6)


def test_filled_turns_faint_pixels_into_a_flat_silhouette():
    x = square(value=0.2)
    assert torch.equal(aug.filled(x), square(value=1.0))


def test_gamma_keeps_the_brightest_pixel_at_one():
    x = torch.tensor([0.25, 0.5]).view(1, 1, 1, 2)
    y = aug.gamma(x, torch.tensor([2.0]))
    assert torch.allclose(y.flatten(), torch.tensor([0.25, 1.0]))


def test_affine_mirror_alone_is_a_horizontal_flip():
    x = torch.rand(3, 1, 8, 8)
    n = len(x)
    y = aug.affine(x, torch.zeros(n), torch.ones(n), torch.zeros(n, 2), torch.ones(n, dtype=torch.bool))
    assert torch.allclose(y, torch.flip(x, dims=[3]), atol=1e-6)
    same = aug.affine(x, torch.zeros(n), torch.ones(n), torch.zeros(n, 2), torch.zeros(n, dtype=torch.bool))
    assert torch.allclose(same, x, atol=1e-6)


def test_low_resolution_of_a_constant_image_is_the_image():
    x = torch.full((1, 1, 28, 28), 0.5)
    assert torch.allclose(aug.low_resolution(x, 7), x)


KW = {"mirror": True, "degrees": 15.0, "scale": (0.7, 1.1), "shift": 3.0, "gamma_range": 0.7,
      "style": 0.6, "photo": 0.5, "pipeline": "fashion-mnist", "lowres": 0.2}


def test_augment_batch_changes_the_fraction_asked_and_is_seeded():
    x = (aug.dilate(square(28, 14)) * 200).to(torch.uint8).repeat(16, 1, 1, 1)
    assert torch.equal(aug.augment_batch(x, torch.Generator().manual_seed(0), fraction=0.0, **KW), x)
    a = aug.augment_batch(x, torch.Generator().manual_seed(0), fraction=0.5, **KW)
    b = aug.augment_batch(x, torch.Generator().manual_seed(0), fraction=0.5, **KW)
    assert a.dtype == torch.uint8 and a.shape == x.shape and torch.equal(a, b)
    unchanged = (a == x).flatten(1).all(1)
    assert unchanged.sum() >= 8  # the other half is the dataset's images as they are


def test_photo_round_trip_gives_the_dataset_form():
    x = np.zeros((2, 28, 28), np.uint8)
    x[:, 10:18, 6:22] = 180  # a light bar on black, as Fashion-MNIST stores a garment
    out = aug.photo_round_trip(x, "fashion-mnist")
    assert out.shape == x.shape and out.dtype == np.uint8
    assert out.max() == 255 and out[:, 0, :].max() == 0  # stretched; the fitted bar fills the width


def test_split_holdout_is_disjoint_and_seeded():
    train = Split(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1), torch.arange(100))
    keep, held = split_holdout(train, 10, seed=3)
    assert len(keep) == 90 and len(held) == 10
    assert set(keep.labels.tolist()).isdisjoint(held.labels.tolist())
    assert torch.equal(split_holdout(train, 10, seed=3)[1].labels, held.labels)
    assert split_holdout(train, 0, seed=3) == (train, None)
    with pytest.raises(ValueError):
        split_holdout(train, 100, seed=3)


def test_classifier_config_refuses_bad_augmentation():
    for bad in ({"augment": 1.5}, {"aug_scale": (1.2, 0.8)}, {"holdout": -1}, {"ood_quantile": 1.0}):
        with pytest.raises(ValueError):
            ClassifierConfig(**bad).validate()


def rgba(color: tuple[int, int, int]) -> Image.Image:
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    img.paste((*color, 255), (16, 16, 48, 48))
    return img


def test_transparent_uploads_go_onto_the_background_that_shows_them():
    assert alpha_background(rgba((0, 0, 0))) == 255  # a black icon: onto white
    assert alpha_background(rgba((255, 255, 255))) == 0  # a white one: onto black
    assert alpha_background(Image.new("RGB", (8, 8))) == 0  # opaque: as before
    px, converted = convert_image(rgba((0, 0, 0)), 1, 28, 28, {"pipeline": "fashion-mnist"})
    assert converted == "photo" and px.max() == 255  # the square is seen, not black on black


def test_iconify_svg_uses_the_set_defaults_and_the_icon_size():
    icons = {"width": 24, "height": 24, "icons": {"a": {"body": '<path fill="currentColor"/>'},
                                                   "b": {"body": "<g/>", "width": 32, "left": 2}}}
    assert 'viewBox="0 0 24 24"' in iconify_svg(icons, "a") and "#000000" in iconify_svg(icons, "a")
    assert 'viewBox="2 0 32 24"' in iconify_svg(icons, "b")


def test_summarise_counts_accuracy_confusion_and_flags():
    classes = ["a", "b"]

    def row(label, said, flag, source="s", kind=None):
        return {"label": label, "source": source, "style": "icon", "background": "white", "kind": kind,
                "answer": {"label": said, "index": classes.index(said), "probability": 0.5,
                           "in_distribution": flag}}

    rows = [row("a", "a", True), row("a", "b", False), row("b", "b", True), row(None, "a", False, kind="animal")]
    s = summarise(rows, classes)
    assert s["accuracy"] == pytest.approx(2 / 3) and s["class_balanced_accuracy"] == pytest.approx(0.75)
    assert s["confusion"] == [[1, 1], [0, 1]]
    assert s["flagged_garments"] == pytest.approx(1 / 3) and s["flagged_other"] == 1.0


@pytest.mark.slow
def test_augmented_fine_tune_carries_its_calibration_into_the_served_file(tmp_path, fixture_data_dir):
    """classifier --init --augment --holdout -> checkpoint with a calibration record -> export ->
    the service's answer has in_distribution on the served score (the higher held-out AUROC)."""
    from export import export_checkpoint
    from serving.calibration import ood_score
    from serving.model import OnnxClassifier, answer, read_model
    from training.__main__ import main
    from training.checkpoint import load_checkpoint

    common = ["--model", "vgg11", "--width", "0.125", "--batch-size", "32", "--data-dir", str(fixture_data_dir),
              "--no-progress"]
    assert main(["classifier", *common, "--steps", "6", "--eval-every", "6", "--out", str(tmp_path / "base")]) == 0
    assert main(["classifier", *common, "--steps", "4", "--eval-every", "4", "--augment", "0.5", "--holdout", "200",
                 "--init", str(tmp_path / "base" / "checkpoint.pt"), "--out", str(tmp_path / "ft")]) == 0
    _, ckpt = load_checkpoint(tmp_path / "ft" / "checkpoint.pt")
    rec = ckpt["calibration"]
    m = rec["measured"]  # the served score: the higher held-out AUROC vs the held-out outliers
    served = "energy" if m["auroc_energy"] > m["auroc_max_probability"] else "max_probability"
    assert rec["temperature"] > 0 and rec["ood_score"] == served and "AUROC" in rec["ood_score_reason"]
    assert rec["measured"]["held_flagged"] == pytest.approx(0.05, abs=0.01)  # 5% of 200 by design
    export_checkpoint(tmp_path / "ft" / "checkpoint.pt", tmp_path / "m.onnx", data_dir=fixture_data_dir, max_images=64)
    info = read_model(tmp_path / "m.onnx")
    assert info.calibration == (rec["temperature"], rec["ood_threshold"], served)
    logits = OnnxClassifier(tmp_path / "m.onnx", want="cpu", threads=1)(np.zeros((1, 1, 28, 28), np.float32))[0]
    out = answer(logits, info.classes, calibration=info.calibration)
    assert out["ood_score"] == served and out["ood_threshold"] == rec["ood_threshold"]
    assert out["ood_value"] == pytest.approx(float(ood_score(logits[None].astype(np.float64), rec["temperature"], served)[0]))
    assert out["in_distribution"] == (out["ood_value"] >= rec["ood_threshold"])


def test_model_card_real_images_section_quotes_the_saved_summary(tmp_path):
    """The card's real-image part is read from the run's real_images*.json, non-garments per kind."""
    import json

    from scripts.model_card import real_images_section

    assert real_images_section(tmp_path) == ""
    summary = {"n_garments": 4, "accuracy": 0.75, "class_balanced_accuracy": 0.5, "mean_probability_garments": 0.8,
               "flagged_garments": 0.25, "flagged_other": 0.5, "n_other": 2,
               "flagged_other_by_kind": {"text": 1.0, "animal": 0.0},
               "per_class": [["Bag", 3, 3], ["Shirt", 0, 1]], "per_style": [["emoji", 3, 4]],
               "per_background": [["white", 3, 4]]}
    (tmp_path / "real_images.json").write_text(json.dumps(summary))
    text = real_images_section(tmp_path)
    assert "accuracy **0.750**, class-balanced\n0.500" in text
    assert "for 25.0% of them and for 50.0% of 2 images that are none of the classes (animal 0.0%, text 100.0%)" in text
    assert "| Shirt | 0/1 | 0.000 |" in text and "| emoji | 3/4 | 0.750 |" in text
