"""The dataset's own conversion of photos and scans (serving/conversions.py), step by step on
small synthetic images whose right answer is known, then end to end: dataset-form images keep
their exact pixels, rendered photos come back close to the dataset image they were made from."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving import conversions as cv
from serving.conversions import convert_image
from serving.decode import DECODE_MEMORY_LIMIT, InputError, decode_image
from serving.geometry import to_model_pixels

FASHION = {"pipeline": "fashion-mnist", "background": "dark"}
MNIST = {"pipeline": "mnist", "background": "dark"}
CIFAR = {"pipeline": "cifar10", "background": "natural"}


def page(h: int, w: int, shade: float = 255.0) -> np.ndarray:
    return np.full((h, w), shade, dtype=np.float32)


def encode(a: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(a, dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


# --- the decision: light background ---------------------------------------------------------------

def test_border_mean_is_the_mean_of_the_outer_ring():
    a = page(5, 6, 0.0)
    a[0, :] = 60  # top row: 6 of the ring's 18 pixels
    assert cv.border_mean(a) == pytest.approx(60 * 6 / 18)
    a[2, 3] = 255  # the interior does not count
    assert cv.border_mean(a) == pytest.approx(20.0)


def test_light_background_threshold():
    assert cv.light_background(page(10, 10, cv.LIGHT_BORDER))
    assert not cv.light_background(page(10, 10, cv.LIGHT_BORDER - 1))
    dark_with_light_middle = page(10, 10, 0.0)
    dark_with_light_middle[1:-1, 1:-1] = 255
    assert not cv.light_background(dark_with_light_middle)


# --- the steps ------------------------------------------------------------------------------------

def test_background_plane_recovers_a_gradient_even_with_an_object_on_the_edge():
    rows, cols = np.indices((40, 60), dtype=np.float32)
    light = 200 + 20 * rows / 39 - 10 * cols / 59
    photo = light.copy()
    photo[10:30, 0:25] = 30  # a dark object touching the left edge
    np.testing.assert_allclose(cv.background_plane(photo), light, atol=1e-3)


def test_negate_maps_background_to_zero_and_undoes_the_shade():
    white = page(20, 20)
    white[5:10, 5:10] = 0
    ink = cv.negate(white)
    assert ink[0, 0] == 0 and ink[7, 7] == 255  # exactly 255 - v on white
    grey = page(20, 20, 200.0)
    grey[5:10, 5:10] = 100  # half as bright as the paper
    assert cv.negate(grey)[7, 7] == pytest.approx(127.5)
    assert cv.negate(grey)[0, 0] == 0


def test_trim_box_keeps_everything_above_5_percent_and_only_that():
    ink = np.zeros((50, 80), dtype=np.float32)
    ink[10:20, 30:45] = 200
    ink[40, 5] = 0.04 * 255  # within 5% of the background: trimmed away
    assert cv.trim_box(ink) == (10, 20, 30, 45)
    assert cv.trim_box(np.zeros((7, 9), np.float32)) == (0, 7, 0, 9)  # nothing: keep all


def test_trim_box_ignores_isolated_noise_on_a_large_photo():
    ink = np.zeros((600, 800), dtype=np.float32)
    ink[100:300, 200:500] = 255
    ink[550, 750] = 60  # one hot pixel of sensor noise, far away
    assert cv.trim_box(ink) == (100, 300, 200, 500)


def test_fit_longest_keeps_the_aspect_and_a_constant_stays_constant():
    out = cv.fit_longest(np.full((40, 10), 120, np.float32), 28)
    assert out.shape == (28, 7)
    np.testing.assert_allclose(out, 120, atol=1e-3)
    assert cv.fit_longest(np.full((3, 300), 9, np.float32), 28).shape == (1, 28)  # at least 1


def test_sharpen_leaves_flat_areas_and_raises_a_peak():
    flat = np.full((9, 9), 100, np.float32)
    np.testing.assert_allclose(cv.sharpen(flat)[3:6, 3:6], 100, atol=1e-4)
    peak = np.zeros((9, 9), np.float32)
    peak[4, 4] = 100
    out = cv.sharpen(peak)
    assert out[4, 4] > 100 and out[0, 0] == 0


def test_gaussian_blur_keeps_the_mass_of_an_interior_impulse():
    a = np.zeros((11, 11), np.float32)
    a[5, 5] = 1.0
    b = cv.gaussian_blur(a, 1.0)
    assert b.sum() == pytest.approx(1.0, abs=1e-5)
    assert b[5, 5] == b.max() and b[5, 4] == pytest.approx(b[4, 5])


def test_pad_centred_places_the_image_in_the_middle():
    out = cv.pad_centred(np.ones((28, 14), np.float32), 28, 28)
    assert out.shape == (28, 28) and out[:, 7:21].min() == 1 and out[:, :7].max() == 0 and out[:, 21:].max() == 0


def test_centre_of_mass_and_place_by_mass():
    a = np.zeros((5, 7), np.float32)
    a[1, 6] = 3.0
    assert cv.centre_of_mass(a) == (1.0, 6.0)
    out = cv.place_by_mass(a, 28, 28)
    assert out[14, 14] == 3.0 and out.sum() == 3.0
    assert cv.centre_of_mass(np.zeros((4, 4))) == (1.5, 1.5)


def test_stretch_brings_the_brightest_pixel_to_255():
    out = cv.stretch(np.array([[0, 50, 100]], np.float32))
    np.testing.assert_allclose(out, [[0, 127.5, 255]])
    assert cv.stretch(np.zeros((2, 2), np.float32)).max() == 0


# --- the pipelines on synthetic photos --------------------------------------------------------------

def test_fashion_mnist_pipeline_on_a_dark_rectangle_on_white():
    photo = page(300, 200)
    photo[50:250, 80:180] = 0  # 200 x 100 dark garment, off centre
    out = cv.fashion_mnist_pipeline(photo)
    assert out.dtype == np.uint8 and out.shape == (28, 28)
    # longest edge fitted to 28, the shorter one (14) centred: columns 7..20 hold it
    assert out[:, :7].max() == 0 and out[:, 21:].max() == 0
    assert out[3:25, 9:19].min() == 255


def test_mnist_pipeline_fits_a_20_box_and_centres_the_mass():
    scan = page(120, 90, 220.0)  # grey paper
    scan[20:100, 30:50] = 20  # a tall dark stroke: 80 x 20
    out = cv.mnist_pipeline(scan).astype(np.float64)
    rows, cols = np.flatnonzero(out.sum(1) > 0), np.flatnonzero(out.sum(0) > 0)
    assert rows[-1] - rows[0] + 1 == 20 and cols[-1] - cols[0] + 1 == 5
    cy, cx = cv.centre_of_mass(out)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5
    assert out.max() == 255


def test_cifar10_pipeline_is_a_centre_crop_and_resize():
    rgb = np.zeros((32, 64, 3), np.uint8)
    rgb[:, :32] = (255, 0, 0)
    rgb[:, 32:] = (0, 0, 255)
    out = cv.cifar10_pipeline(Image.fromarray(rgb), 32, 32)  # crop columns 16..47: half and half
    assert out.shape == (32, 32, 3)
    assert (out[:, :16] == (255, 0, 0)).all() and (out[:, 16:] == (0, 0, 255)).all()


# --- convert_image: the decision and the overrides -----------------------------------------------------

def dataset_like() -> np.ndarray:
    a = np.zeros((28, 28), np.uint8)
    a[4:24, 9:19] = 200
    return a


def test_dataset_form_image_is_not_converted_and_keeps_its_pixels():
    img = decode_image(encode(dataset_like()))
    px, converted = convert_image(img, 1, 28, 28, FASHION, "auto")
    assert converted == "none"
    np.testing.assert_array_equal(px, to_model_pixels(img, 1, 28, 28))


def test_light_photo_is_converted_and_none_turns_it_off():
    photo = np.full((300, 500), 240, np.uint8)
    photo[60:240, 200:300] = 30
    img = decode_image(encode(photo, "JPEG"))
    px, converted = convert_image(img, 1, 28, 28, FASHION, "auto")
    assert converted == "photo" and px.shape == (1, 28, 28) and px[0, 0, 0] == 0 and px.max() == 255
    px, converted = convert_image(img, 1, 28, 28, FASHION, "none")
    assert converted == "none"
    np.testing.assert_array_equal(px, to_model_pixels(img, 1, 28, 28))


def test_dataset_forces_the_conversion_and_no_convention_means_none():
    img = decode_image(encode(dataset_like()))
    assert convert_image(img, 1, 28, 28, MNIST, "dataset")[1] == "photo"
    photo = decode_image(encode(np.full((50, 50), 255, np.uint8)))
    assert convert_image(photo, 1, 28, 28, None, "dataset")[1] == "none"  # a file from before


def test_cifar10_converts_only_images_not_at_the_model_size():
    small = decode_image(encode(np.zeros((32, 32, 3), np.uint8)))
    assert convert_image(small, 3, 32, 32, CIFAR, "auto")[1] == "none"
    big = decode_image(encode(np.zeros((100, 150, 3), np.uint8)))
    px, converted = convert_image(big, 3, 32, 32, CIFAR, "auto")
    assert converted == "photo" and px.shape == (3, 32, 32)


def test_bad_convert_mode_is_a_400():
    with pytest.raises(InputError) as e:
        convert_image(decode_image(encode(dataset_like())), 1, 28, 28, FASHION, "maybe")
    assert e.value.status == 400 and e.value.error == "bad_convert"


# --- real images: parity kept, photos recovered --------------------------------------------------------

@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_every_fixture_test_image_keeps_its_exact_pixels(name, fixture_data_dir):
    """Bit-exact parity: all 1,000 fixture test images, as PNG, go through "auto" untouched."""
    from training.data import get_spec, load_dataset

    convention = get_spec(name).input_convention
    images = load_dataset(name, data_dir=fixture_data_dir, download=False, progress=False).test.images[:, 0].numpy()
    for a in images:
        img = decode_image(encode(a))
        px, converted = convert_image(img, 1, 28, 28, convention, "auto")
        assert converted == "none"
        np.testing.assert_array_equal(px[0], a)


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_rendered_photos_come_back_close_to_the_dataset_image(name, fixture_data_dir):
    """scripts/make_photos renders a test image as a photo (light background, any size, JPEG or
    PNG); the conversion brings it back near the original: mean |difference| well under the
    ~60 gray levels between two different images of the same class."""
    from scripts.make_photos import render_photo
    from training.data import get_spec, load_dataset

    convention = get_spec(name).input_convention
    images = load_dataset(name, data_dir=fixture_data_dir, download=False, progress=False).test.images[:16, 0].numpy()
    rng = np.random.default_rng(0)
    diffs = []
    for a in images:
        data, _ = render_photo(a, rng)
        px, converted = convert_image(decode_image(data), 1, 28, 28, convention, "auto")
        assert converted == "photo"
        diffs.append(np.abs(px[0].astype(np.float64) - a).mean())
    assert np.median(diffs) < 20, diffs


# --- the convert option: one definition, one validator ---------------------------------------------

def test_parse_convert_accepts_the_modes_in_any_case_and_refuses_the_rest():
    assert [cv.parse_convert(v) for v in ("auto", " Dataset ", "NONE")] == ["auto", "dataset", "none"]
    for bad in ("", "photo", "sometimes", None):
        with pytest.raises(InputError) as e:
            cv.parse_convert(bad)
        assert e.value.status == 400 and e.value.error == "bad_convert" and "auto, dataset, none" in e.value.detail


def test_every_pipeline_name_of_the_contract_has_a_recipe():
    from serving.contract import PIPELINES

    assert set(cv.GRAY_RECIPES) | set(cv.RGB_RECIPES) == set(PIPELINES)
    assert not set(cv.GRAY_RECIPES) & set(cv.RGB_RECIPES)


# --- reduced decoding: each format path, then memory -------------------------------------------------

def scene(w: int, h: int, seed: int = 0) -> np.ndarray:
    """An RGB uint8 picture with edges, gradients and noise (every PNG filter gets used)."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 255, h)[:, None]
    cols = np.linspace(0, 255, w)[None, :]
    a = np.stack([rows + 0 * cols, cols + 0 * rows, (rows + cols) / 2], axis=2)
    a[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = (20, 200, 90)
    a += rng.integers(-8, 9, size=a.shape)
    return np.clip(a, 0, 255).astype(np.uint8)


def whole_then_reduced(data: bytes, factor: int) -> np.ndarray:
    """The reference: Pillow's full decode, to 8 bits, one reduce of the whole image."""
    from serving.geometry import to_8bit

    img = Image.open(io.BytesIO(data))
    img.load()
    return np.asarray(to_8bit(img).reduce(factor))


def test_reduction_factor_brings_the_long_side_into_work_side_to_twice_it():
    from serving.geometry import reduction_factor

    assert reduction_factor((1023, 700), 512) == 1  # every make_photos render stays as it is
    assert reduction_factor((1024, 10), 512) == 2
    assert reduction_factor((3000, 4000), 512) == 7 and 4000 // 7 >= 512
    assert reduction_factor((5000, 5000), None) == 1


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "P+transparency", "1", "I;16"])
def test_png_decoded_in_strips_equals_the_whole_image_reduced(mode):
    """Strip-by-strip PNG decoding (each strip behind the previous row, unfiltered) gives exactly
    the pixels of decoding the whole file and reducing it once."""
    rgb = scene(1300, 1100)
    img = Image.fromarray(rgb)
    if mode == "RGBA":
        img = Image.fromarray(np.dstack([rgb, rgb[..., 1]]), "RGBA")
    elif mode == "LA":
        img = Image.merge("LA", [img.convert("L"), Image.fromarray(rgb[..., 2])])
    elif mode.startswith("P"):
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=50)
    elif mode == "I;16":
        img = Image.fromarray(rgb[..., 0].astype(np.uint16) * 251 + rgb[..., 1])
    elif mode != "RGB":
        img = img.convert(mode)
    kw = {"transparency": 3} if mode == "P+transparency" else {}
    data = encode_image(img, "PNG", **kw)
    got = decode_image(data)
    assert got.size == (650, 550)  # factor 2
    np.testing.assert_array_equal(np.asarray(got), whole_then_reduced(data, 2))


@pytest.mark.parametrize("compression", ["tiff_deflate", "tiff_lzw", "packbits", "jpeg"])
@pytest.mark.parametrize("mode", ["RGB", "L", "I;16"])
def test_striped_tiff_decoded_in_groups_of_strips_equals_the_whole_image_reduced(compression, mode):
    from serving.decode import _tiff_strips

    a = scene(1100, 1300)
    img = Image.fromarray(a) if mode == "RGB" else Image.fromarray(a[..., 0]).convert(mode)
    if mode == "I;16":
        if compression == "jpeg":
            return
        img = Image.fromarray(a[..., 0].astype(np.uint16) * 251 + a[..., 1])
    data = encode_image(img, "TIFF", compression=compression)
    assert _tiff_strips(Image.open(io.BytesIO(data)), data, 2) is not None
    got = decode_image(data)
    assert got.size == (550, 650)
    np.testing.assert_array_equal(np.asarray(got), whole_then_reduced(data, 2))
    if compression == "tiff_deflate":  # a corrupt strip: libtiff's error is a 422
        third = len(data) // 3
        with pytest.raises(InputError) as e:
            decode_image(data[:third] + b"\xff" * third + data[2 * third:])
        assert e.value.status == 422 and e.value.error == "corrupt_image"


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "BMP"])
def test_other_formats_are_reduced_strip_by_strip_once_loaded(fmt):
    img = Image.fromarray(scene(1200, 1000))
    data = encode_image(img.convert("P") if fmt == "GIF" else img, fmt)
    got = decode_image(data)
    assert got.size == (600, 500) and got.mode in ("RGB", "RGBA")
    np.testing.assert_array_equal(np.asarray(got), whole_then_reduced(data, 2))


@pytest.mark.parametrize("alpha", [False, True])
def test_a_large_webp_is_scaled_by_libwebp_close_to_the_reduced_image(alpha):
    from serving.webp import decode_scaled

    a = scene(1200, 1000)
    img = Image.fromarray(np.dstack([a, a[..., 1]]), "RGBA") if alpha else Image.fromarray(a)
    data = encode_image(img, "WEBP", quality=90)
    scaled = decode_scaled(data, (1200, 1000), (600, 500))
    assert scaled is not None and scaled.mode == ("RGBA" if alpha else "RGB")
    got = decode_image(data)
    assert got.size == (600, 500) and got.mode == scaled.mode
    want = whole_then_reduced(data, 2).astype(np.int16)
    assert np.abs(np.asarray(got, dtype=np.int16) - want).mean() < 2.0
    assert decode_scaled(data, (1201, 1000), (600, 500)) is None  # header disagrees: Pillow decodes
    with pytest.raises(InputError) as e:
        decode_image(data[: len(data) // 2])
    assert e.value.status == 422


def test_a_large_jpeg_is_decoded_at_a_smaller_scale_close_to_the_reduced_image():
    data = encode_image(Image.fromarray(scene(4000, 3000)), "JPEG", quality=95)
    got = decode_image(data)
    assert got.size == (1000, 750)  # libjpeg at 1/4 (the long side stays >= WORK_SIDE = 512)
    want = whole_then_reduced(data, 4).astype(np.int16)
    assert np.abs(np.asarray(got, dtype=np.int16) - want).mean() < 2.0


def test_a_reduced_image_is_still_turned_upright_by_its_exif_orientation():
    a = scene(1600, 1200)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: turn 90 degrees clockwise to view
    for fmt in ("JPEG", "PNG"):
        got = decode_image(encode_image(Image.fromarray(a), fmt, exif=exif.tobytes()))
        stored = decode_image(encode_image(Image.fromarray(a), fmt))
        assert stored.width > stored.height and got.size == stored.size[::-1]
        np.testing.assert_array_equal(np.asarray(got), np.asarray(stored.transpose(Image.Transpose.ROTATE_270)))
        small = decode_image(encode_image(Image.fromarray(a[:300, :400]), fmt, exif=exif.tobytes()))
        assert small.size == (300, 400)  # the full-size path turns it the same way


def test_a_truncated_or_corrupt_large_png_is_a_422():
    data = encode_image(Image.fromarray(scene(1200, 1000)), "PNG")
    for broken in (data[: len(data) // 2], data[:200] + bytes(len(data) - 200)):
        with pytest.raises(InputError) as e:
            decode_image(broken)
        assert e.value.status == 422 and e.value.error == "corrupt_image"


def test_a_small_image_is_decoded_as_stored():
    img = Image.fromarray((np.arange(600 * 800) % 65536).astype(np.uint16).reshape(600, 800))
    got = decode_image(encode_image(img, "PNG"))
    assert got.mode == "I;16" and got.size == (800, 600)


def encode_image(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# The bound per request that deploy/ multiplies by the concurrency (docs/serving.md).
REQUEST_BOUND_MIB = DECODE_MEMORY_LIMIT // 2**20


def test_25_megapixel_upload_keeps_numpy_and_python_allocations_under_the_bound():
    """tracemalloc sees NumPy's and Python's allocations (not Pillow's own buffers, which the
    next test measures as RSS): no full-size float64, index grid or 16-bit copy is made. The old
    pipeline allocated over 1 GB here; a quarter of the request's bound is left to NumPy."""
    import tracemalloc

    white = encode_image(Image.new("RGB", (5000, 5000), (255, 255, 255)), "PNG")
    sixteen = encode_image(Image.fromarray(np.full((5000, 5000), 60000, np.uint16)), "PNG")
    for data in (white, sixteen):
        tracemalloc.start()
        try:
            px = cv.prepare_image(data, 1, 28, 28, [0.286], [0.353], convention=FASHION)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert px.shape == (1, 28, 28)
        assert peak < REQUEST_BOUND_MIB * 2**20 / 4, peak


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF"])
def test_25_megapixel_upload_peak_rss_is_under_the_bound(fmt, tmp_path):
    """Every allocation counted: peak RSS above idle of a fresh process preparing one 5000x5000
    image (benchmarks/upload_memory.py measures it the same way)."""
    from benchmarks.upload_memory import measure, photo

    img = Image.fromarray(photo(5000, 5000))
    img = img.convert("P") if fmt == "GIF" else img
    data = encode_image(img, fmt)
    warm = encode_image(img.resize((64, 64)), fmt)
    peak = measure("new", data, warm, None, repeats=0)["peak_bytes"]
    assert peak < REQUEST_BOUND_MIB * 2**20, peak


def test_decode_bytes_estimate_counts_what_the_format_holds_at_full_size():
    from serving.decode import WORK_BYTES, decode_bytes_estimate, open_image

    img = Image.fromarray(scene(1600, 1200))
    baseline = encode_image(img, "JPEG")
    assert decode_bytes_estimate(open_image(baseline), baseline) == WORK_BYTES
    progressive = encode_image(img, "JPEG", progressive=True)  # 4:2:0: Y 200x150 blocks, Cb, Cr 100x75
    assert decode_bytes_estimate(open_image(progressive), progressive) == WORK_BYTES + (30000 + 2 * 7500) * 128
    png = encode_image(img, "PNG")
    assert decode_bytes_estimate(open_image(png), png) == WORK_BYTES  # strip by strip
    tiff = encode_image(img, "TIFF", compression="tiff_deflate")
    assert decode_bytes_estimate(open_image(tiff), tiff) == WORK_BYTES + len(tiff)  # strip groups
    raw = encode_image(img, "TIFF")  # uncompressed: one strip, loaded whole
    assert decode_bytes_estimate(open_image(raw), raw) == WORK_BYTES + 1600 * 1200 * 4


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("fmt", ["JPEG-progressive", "TIFF", "WEBP-lossless"])
def test_formats_loaded_at_full_size_stay_under_their_estimate(fmt, tmp_path):
    from benchmarks.upload_memory import measure, photo
    from serving.decode import decode_bytes_estimate, open_image

    img = Image.fromarray(photo(3000, 3000))
    kw = {"JPEG-progressive": {"progressive": True}, "TIFF": {"compression": "tiff_deflate"},
          "WEBP-lossless": {"lossless": True, "method": 0}}[fmt]
    data = encode_image(img, fmt.split("-")[0], **kw)
    warm = encode_image(img.resize((64, 64)), fmt.split("-")[0], **kw)
    peak = measure("new", data, warm, None, repeats=0)["peak_bytes"]
    assert peak < decode_bytes_estimate(open_image(data), data), peak


def test_an_image_priced_over_the_bound_is_refused_before_decoding_naming_the_limit():
    from serving.decode import WORK_BYTES, check_decode_memory, decode_bytes_estimate, open_image

    img = Image.fromarray(scene(1600, 1200))
    progressive = encode_image(img, "JPEG", progressive=True)  # 45,000 blocks: 5.5 MiB of coefficients
    opened = open_image(progressive)
    estimate = decode_bytes_estimate(opened, progressive)
    check_decode_memory(opened, progressive, limit=estimate)  # at the limit: accepted
    with pytest.raises(InputError) as e:
        check_decode_memory(opened, progressive, limit=estimate - 1)
    assert e.value.status == 413 and e.value.error == "too_costly_to_decode"
    detail = e.value.detail
    assert "progressive JPEG" in detail and f"limit is {(estimate - 1) / 2**20:.0f} MiB" in detail
    assert "baseline (non-progressive) JPEG" in detail
    baseline = encode_image(img, "JPEG")  # decoded at 1/8 scale: nothing at full size
    check_decode_memory(open_image(baseline), baseline, limit=WORK_BYTES)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_progressive_jpeg_accepted_within_the_bound_or_refused_from_its_header():
    """Every allocation counted (peak RSS above idle of a fresh process, as
    benchmarks/upload_memory.py): a 12-megapixel progressive JPEG (4:2:0) is decoded under the
    bound; a 25-megapixel one, whose coefficients alone are 72 MiB, is refused with 413 before
    anything is decoded, and the refusal stays under the bound too."""
    from benchmarks.upload_memory import measure, photo
    from serving.decode import DECODE_MEMORY_LIMIT

    warm = encode_image(Image.fromarray(photo(64, 48)), "JPEG", progressive=True)
    for (w, h), refused in (((4000, 3000), False), ((5000, 5000), True)):
        data = encode_image(Image.fromarray(photo(w, h)), "JPEG", quality=90, progressive=True)
        got = measure("new", data, warm, None, repeats=0)
        assert got["peak_bytes"] < DECODE_MEMORY_LIMIT, (w, h, got)
        assert bool(got.get("refused")) == refused, got
        if refused:
            assert got["refused"].startswith("413 too_costly_to_decode") and "64 MiB" in got["refused"]
            with pytest.raises(InputError) as e:
                cv.prepare_image(data, 1, 28, 28, [0.286], [0.353], convention=FASHION)
            assert e.value.status == 413
