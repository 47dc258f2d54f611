"""Untrusted image bytes -> a PIL image, with every check of the input answered as an HTTP-coded
InputError (4xx), and with memory bounded per request: an image larger than twice ``work_side``
is decoded already reduced by an integer factor (JPEG at 1/2..1/8 scale inside the decoder, a
still WebP scaled by libwebp (serving/webp.py), PNG and striped TIFF strip by strip, other formats
reduced strip by strip once loaded), so no full-size float, RGBA
or index copy of a 25-megapixel upload ever exists.

Where a format's decoder must hold something at full size whatever the reduction (a
progressive JPEG's DCT coefficients, an interlaced PNG, a lossless WebP's frame, a TIFF that is
not striped), ``decode_bytes_estimate`` prices it from the header, and an image whose estimate is
over ``DECODE_MEMORY_LIMIT`` is refused (413 ``too_costly_to_decode``, naming the limit and what
to send instead) before anything is decoded: every accepted image stays within the bound."""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from collections.abc import Iterator

from PIL import Image, ImageOps, UnidentifiedImageError

from .geometry import STRIP_ROWS, reduce_image, reduce_strips, reduction_factor, strip_rows
from .webp import decode_scaled, libwebp_usable

# Formats we decode. Restricting Pillow's plugins keeps files that need external programs (EPS
# needs Ghostscript) or that have no magic number (TGA: random bytes may "identify" as TGA) out.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
DEFAULT_MAX_PIXELS = 25_000_000  # width * height of the first frame; ~75 MB decoded as RGB
# An image whose longest side is at least twice this is reduced by an integer factor while it
# is decoded, to a longest side in [WORK_SIDE, 2 WORK_SIDE): 18-36 times the 28 or 32 pixels of
# the model's input, so the dataset conversions and the final resize see the same picture, and
# photos up to 1023 pixels (every render of scripts/make_photos.py) are not touched at all.
WORK_SIDE = 512
# Memory (bytes above idle, decode_bytes_estimate) that decoding and converting one accepted
# image may take; an image priced above it is refused before decoding. deploy/ multiplies the
# bound per request by the concurrency (docs/serving.md).
DECODE_MEMORY_LIMIT = 64 * 2**20


class InputError(ValueError):
    """Bad client input. ``status`` is the HTTP status the service answers with (4xx), ``error``
    a short stable code, ``detail`` what was wrong and what to send instead."""

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(f"{error}: {detail}")
        self.status, self.error, self.detail = status, error, detail

    def to_json(self) -> dict:
        return {"error": self.error, "detail": self.detail}


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Untrusted bytes -> an opened, not yet decoded PIL image whose header passed the checks.

    Raises InputError: 400 empty, 415 not an image in ALLOWED_FORMATS, 413 more than
    ``max_pixels`` pixels (checked from the header, before decoding: decompression bombs),
    422 a corrupt header."""
    if not data:
        raise InputError(400, "empty_image", "the image is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as e:
        raise _too_many_pixels(None, max_pixels) from e
    except UnidentifiedImageError as e:
        raise InputError(415, "unsupported_image",
                         "not an image in a supported format (" + ", ".join(ALLOWED_FORMATS)
                         + f"); got {len(data)} bytes starting with {data[:8]!r}") from e
    except Exception as e:  # noqa: BLE001 - a plugin choking on a corrupt header
        raise InputError(422, "corrupt_image", f"cannot read the image header: {e}") from e
    width, height = img.size
    if width < 1 or height < 1:
        raise InputError(422, "corrupt_image", f"image has size {width}x{height}")
    if width * height > max_pixels:
        raise _too_many_pixels(img, max_pixels)
    return img


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                 work_side: int | None = WORK_SIDE) -> Image.Image:
    """Decode untrusted bytes into a fully loaded, EXIF-upright PIL image (first frame only).

    An image under 2 ``work_side`` on its longest side (or ``work_side`` None) comes back as
    stored, in its own mode. A larger one comes back reduced by reduction_factor (box average,
    alpha premultiplied), in 8 bits (geometry.to_8bit: L, LA, RGB or RGBA), decoded so that memory
    stays bounded (module docstring).

    Raises InputError: 400 empty, 415 not an image in ALLOWED_FORMATS, 413 more than
    ``max_pixels`` pixels (checked from the header, before decoding: decompression bombs) or
    more than DECODE_MEMORY_LIMIT to decode (``check_decode_memory``; with ``work_side``),
    422 truncated or corrupt."""
    img = open_image(data, max_pixels)
    if work_side is not None:
        check_decode_memory(img, data, DECODE_MEMORY_LIMIT, work_side)
    factor = reduction_factor(img.size, work_side)
    fmt = img.format
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit rules
            if factor == 1:
                img.load()
            else:
                img, orientation = _decode_reduced(img, data, factor, work_side)
    except Image.DecompressionBombError as e:
        raise _too_many_pixels(img, max_pixels) from e
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated data: OSError, SyntaxError, zlib, ...
        raise InputError(422, "corrupt_image",
                         f"the {fmt} image is truncated or corrupt: {e}") from e
    if factor == 1:
        try:
            return ImageOps.exif_transpose(img)
        except Exception:  # noqa: BLE001 - malformed EXIF: keep the pixels as stored
            return img
    method = _TRANSPOSE.get(orientation)
    return img.transpose(method) if method is not None else img


# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def _orientation(exif: Image.Exif | bytes | None) -> int | None:
    """The EXIF orientation tag (1-8), or None (none, or malformed EXIF: keep the pixels)."""
    try:
        if isinstance(exif, bytes | memoryview):
            loaded = Image.Exif()
            loaded.load(bytes(exif))
            exif = loaded
        return exif.get(0x0112) if exif is not None else None
    except Exception:  # noqa: BLE001 - malformed EXIF: keep the pixels as stored
        return None


def _decode_reduced(img: Image.Image, data: bytes, factor: int,
                    work_side: int) -> tuple[Image.Image, int | None]:
    """(the opened image loaded and reduced by ``factor``, its EXIF orientation), never held at
    full size in more than its own stored mode (and not at all for JPEG and non-interlaced PNG)."""
    if img.format == "JPEG":
        # libjpeg scales while decoding (1/2, 1/4, 1/8): the largest scale not below 1/factor
        w, h = img.size
        img.draft(None, (max(1, w // factor), max(1, h // factor)))
        img.load()
        return reduce_image(img, reduction_factor(img.size, work_side)), _orientation(img.getexif())
    if img.format == "WEBP":
        w, h = img.size
        scaled = decode_scaled(data, img.size, (-(-w // factor), -(-h // factor)))
        if scaled is not None:
            return scaled, _orientation(img.getexif())
    if img.format == "PNG":  # (PNG's getexif() would load the whole image: read eXIf here)
        strips = _png_strips(img, data, strip_rows(factor))
        if strips is not None:
            exif = next((body for kind, body in _png_chunks(data) if kind == b"eXIf"), None)
            return reduce_strips(strips, img.size, factor), _orientation(exif)
    if img.format == "TIFF":
        strips = _tiff_strips(img, data, factor)
        if strips is not None:
            return reduce_strips(strips, img.size, factor), _orientation(img.getexif())
    img.load()
    return reduce_image(img, factor), _orientation(img.getexif())


def _too_many_pixels(img: Image.Image | None, max_pixels: int) -> InputError:
    size = (f"{img.size[0]}x{img.size[1]} = {img.size[0] * img.size[1]} pixels" if img
            else "beyond Pillow's decompression-bomb limit")
    return InputError(413, "too_many_pixels",
                      f"image is {size}; the limit is {max_pixels} pixels (BNSERVE_MAX_PIXELS)")


# --- PNG strip by strip ---------------------------------------------------------------------------
# A PNG's pixels are one zlib stream of scanlines, each a filter byte and the filtered bytes; a
# filter may refer to the row above. We inflate ``rows`` scanlines at a time and hand them to
# Pillow's own PNG decoder (the "zip" codec) behind one extra scanline: the previous strip's last
# row, unfiltered (filter 0), re-packed by Pillow in the file's raw layout. Pillow then unfilters
# and unpacks the strip exactly as it would the whole image. Raw layouts Pillow can re-pack
# losslessly only; interlaced (Adam7) files and the rest are loaded whole (geometry.reduce_image).

_PNG_REPACKABLE = ("1", "L", "LA", "RGB", "RGBA", "P", "P;1", "P;2", "P;4", "I;16B")
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


def _png_strips(img: Image.Image, data: bytes, rows: int) -> Iterator[tuple[int, Image.Image]] | None:
    """(top row, strip image) of a non-interlaced PNG, ``rows`` rows at a time, or None when
    this file is not one we decode in strips."""
    if len(img.tile) != 1 or img.tile[0][0] != "zip":
        return None
    rawmode = img.tile[0][3]
    if not isinstance(rawmode, str) or rawmode not in _PNG_REPACKABLE:
        return None
    chunks = _png_chunks(data)
    header = next(chunks, None)
    if header is None or header[0] != b"IHDR" or len(header[1]) < 13:
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", bytes(header[1][:13]))
    if interlace or (width, height) != img.size or colour not in _PNG_CHANNELS:
        return None
    row_bytes = (width * depth * _PNG_CHANNELS[colour] + 7) // 8
    idat = (body for kind, body in chunks if kind == b"IDAT")
    return _png_strip_images(img, _Inflater(idat), rawmode, row_bytes, rows)


def _png_strip_images(img: Image.Image, inflater: _Inflater, rawmode: str, row_bytes: int,
                      rows: int) -> Iterator[tuple[int, Image.Image]]:
    width, height = img.size
    previous = None  # the last row of the strip before, unfiltered, in the raw layout
    for top in range(0, height, rows):
        n = min(rows, height - top)
        lead = b"" if previous is None else b"\x00" + previous
        extra = 0 if previous is None else 1
        scanlines = inflater.read(n * (row_bytes + 1), lead)
        if len(scanlines) < n * (row_bytes + 1) + len(lead):
            done = (len(scanlines) - len(lead)) // (row_bytes + 1)
            raise InputError(422, "corrupt_image", f"the PNG image is truncated or corrupt: its "
                                                   f"pixel data ends in row {top + done} of {height}")
        packed = zlib.compress(scanlines, 0)
        del scanlines
        strip = Image.frombytes(img.mode, (width, n + extra), packed, "zip", rawmode)
        del packed
        if img.mode == "P":
            strip.putpalette(img.palette.tobytes(), img.palette.mode)
        strip.info.update({k: v for k, v in img.info.items() if k == "transparency"})
        previous = strip.crop((0, n + extra - 1, width, n + extra)).tobytes("raw", rawmode)
        if extra:
            strip = strip.crop((0, 1, width, n + 1))
        yield top, strip


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, memoryview]]:
    """(type, body) of each chunk after the signature; stops at IEND or where the data ends."""
    view, pos = memoryview(data), 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = view[pos + 8:pos + 8 + length]
        yield kind, body
        if kind == b"IEND":
            return
        pos += 12 + length


class _Inflater:
    """Reads a zlib stream split over chunks, ``n`` decompressed bytes at a time (never more)."""

    def __init__(self, chunks: Iterator[memoryview]):
        self.chunks, self.tail, self.z = chunks, b"", zlib.decompressobj()

    def read(self, n: int, prefix: bytes = b"") -> bytearray:
        """``prefix`` followed by the next ``n`` bytes of the stream (fewer where it ends)."""
        out = bytearray(prefix)
        n += len(prefix)
        while len(out) < n and not self.z.eof:
            if not self.tail:
                self.tail = next(self.chunks, None)
                if self.tail is None:  # input ended: what zlib still holds, then stop
                    out += self.z.decompress(b"", n - len(out))
                    break
            out += self.z.decompress(self.tail, n - len(out))
            self.tail = self.z.unconsumed_tail
        return out


# --- TIFF strip by strip ---------------------------------------------------------------------------
# A striped TIFF stores rows in independently compressed strips. For each group of strips we
# append to a copy of the file a new image directory (IFD): the original's entries, byte for byte
# (their out-of-line values still point into the unchanged file), except ImageLength, StripOffsets
# and StripByteCounts, which name only that group. libtiff, through Pillow's own decoder, decodes
# that "image" as it would the whole one. Classic TIFF, one plane, strips (not tiles) only.

_IMAGE_LENGTH, _ROWS_PER_STRIP, _STRIP_OFFSETS, _STRIP_BYTE_COUNTS = 257, 278, 273, 279
_TILE_WIDTH, _PLANAR_CONFIGURATION, _COMPRESSION = 322, 284, 259
_LONG = 4


def _tiff_plan(img: Image.Image, data: bytes, factor: int) -> tuple | None:
    """(rawmode, IFD offset, rows per strip, rows per group, offsets, byte counts) of a
    striped TIFF we can decode in groups of strips, or None (the caller loads it whole)."""
    if len(img.tile) != 1 or img.tile[0][0] != "libtiff" or data[:4] not in (b"II*\0", b"MM\0*"):
        return None
    rawmode, _, ifd = img.tile[0][3]
    tags = img.tag_v2
    height = img.size[1]
    offsets, counts = tags.get(_STRIP_OFFSETS), tags.get(_STRIP_BYTE_COUNTS)
    per = min(int(tags.get(_ROWS_PER_STRIP, height) or height), height)
    if (_TILE_WIDTH in tags or tags.get(_PLANAR_CONFIGURATION, 1) != 1 or tags.get(_COMPRESSION) == 6
            or not offsets or not counts or len(offsets) != -(-height // per) or len(counts) != len(offsets)):
        return None
    group = math.lcm(per, factor)
    group *= max(1, STRIP_ROWS // group)
    return None if group >= height else (rawmode, ifd, per, group, offsets, counts)


def _tiff_strips(img: Image.Image, data: bytes, factor: int) -> Iterator[tuple[int, Image.Image]] | None:
    """(top row, strip image) groups of a striped TIFF, or None (see _tiff_plan)."""
    plan = _tiff_plan(img, data, factor)
    if plan is None:
        return None
    rawmode, ifd, per, group, offsets, counts = plan
    height = img.size[1]
    endian = "<" if data[:2] == b"II" else ">"
    (n_entries,) = struct.unpack(endian + "H", data[ifd:ifd + 2])
    entries = [data[ifd + 2 + 12 * i: ifd + 14 + 12 * i] for i in range(n_entries)]
    buf = bytearray(data)
    directories = []
    for top in range(0, height, group):
        rows = min(group, height - top)
        first, last = top // per, -(-(top + rows) // per)
        buf += b"\0" * (len(buf) % 2)  # an IFD starts on a word boundary
        at = len(buf)
        extra = at + 2 + 12 * n_entries + 4  # out-of-line strip arrays follow the directory
        k = last - first
        out = bytearray(struct.pack(endian + "H", n_entries))
        for entry in entries:
            (tag,) = struct.unpack(endian + "H", entry[:2])
            if tag == _IMAGE_LENGTH:
                entry = struct.pack(endian + "HHII", tag, _LONG, 1, rows)
            elif tag in (_STRIP_OFFSETS, _STRIP_BYTE_COUNTS):
                values = (offsets if tag == _STRIP_OFFSETS else counts)[first:last]
                where = extra if tag == _STRIP_OFFSETS else extra + 4 * k
                entry = struct.pack(endian + "HHII", tag, _LONG, k, values[0] if k == 1 else where)
            out += entry
        out += struct.pack(endian + "I", 0)
        out += struct.pack(endian + f"{k}I", *offsets[first:last])
        out += struct.pack(endian + f"{k}I", *counts[first:last])
        buf += out
        directories.append((top, rows, at))
    return _tiff_strip_images(img, bytes(buf), rawmode, directories)


def _tiff_strip_images(img: Image.Image, data: bytes, rawmode: str,
                       directories: list[tuple[int, int, int]]) -> Iterator[tuple[int, Image.Image]]:
    for top, rows, at in directories:
        yield top, Image.frombytes(img.mode, (img.size[0], rows), data, "libtiff", (rawmode, False, at))


# --- the memory one upload needs, from its header --------------------------------------------------
# decode_image + the conversion at the working size, as measured by benchmarks/upload_memory.py
# (peak RSS above idle): what a per-worker memory budget can charge a request before decoding it.

# The conversion's arrays at the working size (under 2 WORK_SIDE on the long side) and the
# libraries' own buffers: the measured peak of a 4000x3000 baseline JPEG, rounded up.
WORK_BYTES = 24 * 2**20
# Bytes per pixel of a fully loaded Pillow image, by mode (RGB is stored in 4 bytes).
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def decode_bytes_estimate(img: Image.Image, data: bytes, work_side: int | None = WORK_SIDE) -> int:
    """Upper estimate of the memory (bytes above idle) decode_image and the conversion need for
    the opened image ``img`` of ``data`` (open_image: header only, nothing decoded yet):
    WORK_BYTES plus what the format's decoder holds at full size, which the reduced decoding
    cannot avoid: a progressive JPEG's DCT coefficients (2 bytes per coefficient, every
    component at its own sampling), a lossless or animated WebP's frame, an interlaced PNG, a
    TIFF that is not striped or a BMP loaded whole."""
    w, h = img.size
    factor = reduction_factor(img.size, work_side)
    if factor == 1:
        return WORK_BYTES + w * h * 4 * 3  # decoded, 8-bit copy, converted: small images only
    fmt = img.format
    if fmt == "JPEG":
        layers = getattr(img, "layer", None) or [(0, 1, 1, 0)] * max(1, getattr(img, "layers", 1))
        if not img.info.get("progressive") and not img.info.get("progression"):
            return WORK_BYTES
        hmax = max(layer[1] for layer in layers)
        vmax = max(layer[2] for layer in layers)
        blocks = sum(-(-w * layer[1] // (8 * hmax)) * -(-h * layer[2] // (8 * vmax)) for layer in layers)
        return WORK_BYTES + blocks * 64 * 2
    if fmt == "PNG" and _png_strips(img, data, 1) is not None:
        return WORK_BYTES
    if fmt == "WEBP":
        chunk, animated = data[12:16], _webp_animated(data)
        if libwebp_usable() and not animated:  # scaled while decoding (serving/webp.py)
            # lossy: row bands only; lossless (VP8L) or with alpha (VP8X): a full-size plane
            return WORK_BYTES if chunk == b"VP8 " else WORK_BYTES + w * h * 4
        return WORK_BYTES + w * h * 4 * 3  # Pillow: libwebp's frame, a bytes copy, the image
    if fmt == "TIFF" and _tiff_plan(img, data, factor) is not None:
        return WORK_BYTES + len(data)  # groups of strips; a copy of the file with their IFDs
    return WORK_BYTES + w * h * _PIXEL_BYTES.get(img.mode, 4)



def check_decode_memory(img: Image.Image, data: bytes, limit: int = DECODE_MEMORY_LIMIT,
                        work_side: int = WORK_SIDE) -> None:
    """Refuse (InputError 413 ``too_costly_to_decode``) an opened image whose decoding would take
    more than ``limit`` bytes by decode_bytes_estimate, naming the limit, why, and what to send
    instead (the same picture in a format decoded in strips, or fewer pixels)."""
    estimate = decode_bytes_estimate(img, data, work_side)
    if estimate <= limit:
        return
    w, h = img.size
    fmt = img.format or "image"
    progressive = fmt == "JPEG" and (img.info.get("progressive") or img.info.get("progression"))
    what = "progressive JPEG" if progressive else fmt
    why = (" (a progressive JPEG's decoder holds every DCT coefficient of the whole image at once)"
           if progressive else " (this file's decoder holds the whole image at full size)")
    fits = max(0, int(w * h * (limit - WORK_BYTES) / max(1, estimate - WORK_BYTES)))
    raise InputError(413, "too_costly_to_decode",
                     f"decoding this {w}x{h} {what} would take about {estimate / 2**20:.0f} MiB{why}; the "
                     f"limit is {limit / 2**20:.0f} MiB per image. Send it as a baseline (non-progressive) JPEG "
                     f"or a non-interlaced PNG, or at most about {fits / 1e6:.1f} megapixels")


def _webp_animated(data: bytes) -> bool:
    """Whether a WebP file's extended header (VP8X) sets the animation flag."""
    return data[12:16] == b"VP8X" and len(data) > 20 and bool(data[20] & 0x02)
