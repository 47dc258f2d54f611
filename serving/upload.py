"""Reading an upload and turning it into the model's input: usable without BentoML.

``read_image_upload`` reads one ``/classify`` request from a Starlette ``Request`` (multipart
field ``image``, or the image itself as a ``image/*`` body; options ``convert`` and
``show_input`` as query parameters or form fields) with a byte limit and a deadline for the
whole body, and answers every problem with an ``InputError`` (4xx). ``model_input`` turns the
image file's bytes into the model's input row with the service's own preprocessing
(serving/decode.py, serving/conversions.py, serving/geometry.py) and the model's metadata. The service, the benchmark peers and the
tests all use these two.
"""

from __future__ import annotations

import asyncio
import typing as t
from dataclasses import dataclass

import numpy as np
from starlette.requests import Request

from .conversions import convert_image, parse_convert
from .deadlines import CallLater, Deadline
from .decode import InputError, decode_image
from .geometry import normalize_uint8

if t.TYPE_CHECKING:
    from .model import ModelInfo

RAW_TYPES = ("image/", "application/octet-stream")
HOW_TO_SEND = ("send multipart/form-data with one file field 'image' (curl -F image=@photo.png) "
               "or the image itself as the body with Content-Type image/* "
               "(curl --data-binary @photo.png -H 'Content-Type: image/png')")
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
# Images this small are decoded on the event loop (well under 0.1 ms for a 28x28 or 32x32 PNG):
# a hop to a worker thread and back costs more than that. Larger ones go to decode threads.
INLINE_BYTES = 64 * 1024
INLINE_PIXELS = 128 * 128


async def read_body(request: Request, limit: int, timeout_s: float,
                    call_later: CallLater | None = None) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes, before or while reading, and
    (408) a body not wholly arrived ``timeout_s`` after it started (BNSERVE_BODY_TIMEOUT; one
    deadline for the whole body, not restarted per chunk); ``call_later`` is the deadline's
    clock (the event loop's by default)."""
    declared = request.headers.get("content-length")
    too_big = InputError(413, "too_many_bytes",
                         f"the request body is over the limit of {limit} bytes (BNSERVE_MAX_BYTES)")
    if declared is not None:
        try:
            declared_size = int(declared)
        except ValueError:
            raise InputError(400, "bad_request", f"invalid Content-Length {declared!r}") from None
        if declared_size > limit:
            raise too_big
    chunks, size = [], 0
    deadline = Deadline(timeout_s, call_later)  # a slow upload gets 408, not a held slot
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
    except asyncio.CancelledError:
        if not deadline.fired():
            raise
        raise InputError(408, "body_timeout", f"the upload was not complete {deadline.seconds:g} s after it started "
                                              f"({size} bytes came; BNSERVE_BODY_TIMEOUT); send the whole image at "
                                              "once") from None
    finally:
        deadline.stop()
    return b"".join(chunks)


@dataclass(frozen=True)
class Upload:
    """One /classify request as read by read_image_upload: the image file's bytes and the options
    (query parameters or form fields ``convert`` and ``show_input``)."""

    image: bytes
    convert: str = "auto"  # one of conversions.CONVERT_MODES
    show_input: bool = False  # also answer with the model's input as a PNG data URL


def parse_options(values: t.Mapping[str, str]) -> dict:
    """``convert`` and ``show_input`` from query parameters or form fields, checked (400)."""
    options = {}
    if "convert" in values:
        options["convert"] = parse_convert(values["convert"])
    if "show_input" in values:
        word = str(values["show_input"]).strip().lower()
        if word not in TRUE_WORDS + FALSE_WORDS:
            raise InputError(400, "bad_show_input", f"show_input must be true or false, got {values['show_input']!r}")
        options["show_input"] = word in TRUE_WORDS
    return options


async def read_image_upload(request: Request, limit: int, timeout_s: float,
                            call_later: CallLater | None = None) -> Upload:
    """A /classify request: the image (multipart field ``image`` or a raw body) and its options
    (query parameters; in a form, fields of the same names win)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "multipart/form-data" and not media_type.startswith(RAW_TYPES):
        got = f"Content-Type {media_type!r}" if media_type else "no Content-Type"
        raise InputError(415, "unsupported_media_type", f"got {got}; {HOW_TO_SEND}")
    options = parse_options(request.query_params)
    body = await read_body(request, limit, timeout_s, call_later)
    if media_type != "multipart/form-data":
        if not body:
            raise InputError(400, "empty_image", f"the request body is empty; {HOW_TO_SEND}")
        return Upload(body, **options)

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
    except Exception as e:  # noqa: BLE001 - starlette / python-multipart parse errors
        raise InputError(400, "bad_multipart", f"cannot parse the multipart body ({e}); {HOW_TO_SEND}") from e
    try:
        values = form.getlist("image")
        if not values:
            fields = sorted(form.keys())
            raise InputError(400, "missing_field",
                             f"no field 'image' in the form (fields sent: {fields or 'none'}); {HOW_TO_SEND}")
        if len(values) > 1:
            raise InputError(400, "too_many_images",
                             f"{len(values)} 'image' fields; /classify takes one image per request")
        value = values[0]
        if isinstance(value, str):
            raise InputError(400, "not_a_file",
                             f"field 'image' is a text value, not a file upload; {HOW_TO_SEND}")
        data = await value.read()
        if not data:
            raise InputError(400, "empty_image", "the uploaded file 'image' is empty (0 bytes)")
        fields = {k: v for k in ("convert", "show_input") if isinstance(v := form.get(k), str)}
        return Upload(data, **{**options, **parse_options(fields)})
    finally:
        await form.close()


@dataclass(frozen=True)
class ModelInput:
    """An upload prepared for the model: the input row (1, C, H, W), the uint8 pixels (C, H, W)
    it was normalised from, and how it was converted ("photo" or "none")."""

    x: np.ndarray
    pixels: np.ndarray
    converted: str


def model_input(image: bytes, info: ModelInfo, max_pixels: int, convert: str = "auto") -> ModelInput:
    """Image file bytes -> the model's input, as the service prepares it: decode (at most
    ``max_pixels``), the dataset's conversion for a photo or scan (``convert``), resize,
    normalise with the metadata's mean/std. Raises InputError for an image it cannot use."""
    img = decode_image(image, max_pixels)
    pixels, converted = convert_image(img, info.channels, info.height, info.width, info.input_convention, convert)
    x = normalize_uint8(pixels, info.mean, info.std)[None].astype(info.dtype, copy=False)
    return ModelInput(x, pixels, converted)


def model_input_inline(upload: Upload, info: ModelInfo, max_pixels: int) -> ModelInput | None:
    """A small image prepared right here (on the event loop), or None when it is over
    INLINE_BYTES or INLINE_PIXELS (then it goes to a decode thread)."""
    if len(upload.image) > INLINE_BYTES:
        return None
    try:
        return model_input(upload.image, info, min(INLINE_PIXELS, max_pixels), upload.convert)
    except InputError as e:
        if e.error == "too_many_pixels" and INLINE_PIXELS < max_pixels:
            return None  # within the real limit: decode it in a worker thread
        raise
