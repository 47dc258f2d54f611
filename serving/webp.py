"""A still WebP decoded at a reduced size by libwebp itself (its scaling option, through
ctypes): Pillow decodes a WebP only at full size, three full-size RGBA copies for a moment
(libwebp's frame, a bytes object, the image), about 380 MB for 25 megapixels. With scaling,
libwebp's lossy decoder rescales each row band as it goes and writes only the small result.

The library is the one Pillow already loaded for its WebP plugin (found in /proc/self/maps),
else the system's ``libwebp``; when neither answers to the decoder ABI we know (major version 2
of ``WEBP_DECODER_ABI_VERSION``), ``decode_scaled`` returns None and the caller decodes with
Pillow as before."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from ctypes import c_int, c_size_t, c_uint32, c_void_p

from PIL import Image

DECODER_ABI_VERSION = 0x0209  # decode.h of libwebp 1.x; the library checks the major byte
MODE_RGB, MODE_RGBA = 0, 1  # WEBP_CSP_MODE
VP8_STATUS_OK = 0


class _Features(ctypes.Structure):
    _fields_ = [("width", c_int), ("height", c_int), ("has_alpha", c_int),
                ("has_animation", c_int), ("format", c_int), ("pad", c_uint32 * 5)]


class _RGBABuffer(ctypes.Structure):
    _fields_ = [("rgba", c_void_p), ("stride", c_int), ("size", c_size_t)]


class _YUVABuffer(ctypes.Structure):
    _fields_ = [("y", c_void_p), ("u", c_void_p), ("v", c_void_p), ("a", c_void_p),
                ("y_stride", c_int), ("u_stride", c_int), ("v_stride", c_int), ("a_stride", c_int),
                ("y_size", c_size_t), ("u_size", c_size_t), ("v_size", c_size_t), ("a_size", c_size_t)]


class _Buffers(ctypes.Union):
    _fields_ = [("RGBA", _RGBABuffer), ("YUVA", _YUVABuffer)]


class _DecBuffer(ctypes.Structure):
    _fields_ = [("colorspace", c_int), ("width", c_int), ("height", c_int),
                ("is_external_memory", c_int), ("u", _Buffers), ("pad", c_uint32 * 4),
                ("private_memory", c_void_p)]


class _Options(ctypes.Structure):
    _fields_ = [("bypass_filtering", c_int), ("no_fancy_upsampling", c_int), ("use_cropping", c_int),
                ("crop_left", c_int), ("crop_top", c_int), ("crop_width", c_int), ("crop_height", c_int),
                ("use_scaling", c_int), ("scaled_width", c_int), ("scaled_height", c_int),
                ("use_threads", c_int), ("dithering_strength", c_int), ("flip", c_int),
                ("alpha_dithering_strength", c_int), ("pad", c_uint32 * 5)]


class _Config(ctypes.Structure):
    _fields_ = [("input", _Features), ("output", _DecBuffer), ("options", _Options)]


def _candidates() -> list[str]:
    found = []
    try:
        from PIL import _webp  # noqa: F401 - maps Pillow's own libwebp into this process
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1] if line.count("/") else ""
                name = path.rsplit("/", 1)[-1]
                if name.startswith("libwebp") and not name.startswith(("libwebpdemux", "libwebpmux")):
                    found.append(path)
    except (ImportError, OSError):
        pass
    system = ctypes.util.find_library("webp")
    return list(dict.fromkeys(found + ([system] if system else [])))


@functools.cache
def _library() -> ctypes.CDLL | None:
    """libwebp with the decoder functions typed, or None."""
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
            lib.WebPInitDecoderConfigInternal.argtypes = [ctypes.POINTER(_Config), c_int]
            lib.WebPInitDecoderConfigInternal.restype = c_int
            lib.WebPGetFeaturesInternal.argtypes = [c_void_p, c_size_t, ctypes.POINTER(_Features), c_int]
            lib.WebPGetFeaturesInternal.restype = c_int
            lib.WebPDecode.argtypes = [c_void_p, c_size_t, ctypes.POINTER(_Config)]
            lib.WebPDecode.restype = c_int
            config = _Config()
            if lib.WebPInitDecoderConfigInternal(ctypes.byref(config), DECODER_ABI_VERSION):
                return lib
        except (OSError, AttributeError):
            continue
    return None


def libwebp_usable() -> bool:
    """Whether decode_scaled can work here (a libwebp with the decoder ABI we know)."""
    return _library() is not None


def decode_scaled(data: bytes, full: tuple[int, int], size: tuple[int, int]) -> Image.Image | None:
    """A still WebP of ``full`` (width, height) decoded straight to ``size``: RGB, or RGBA when
    the file has alpha. None when libwebp is not usable here, the file is animated, or its
    header disagrees with ``full`` (what Pillow read): the caller then decodes with Pillow.
    Raises OSError when libwebp refuses the data (corrupt or truncated)."""
    lib = _library()
    if lib is None:
        return None
    config = _Config()
    if not lib.WebPInitDecoderConfigInternal(ctypes.byref(config), DECODER_ABI_VERSION):
        return None
    if lib.WebPGetFeaturesInternal(data, len(data), ctypes.byref(config.input),
                                   DECODER_ABI_VERSION) != VP8_STATUS_OK:
        raise OSError("libwebp cannot read the WebP header")
    if config.input.has_animation or (config.input.width, config.input.height) != tuple(full):
        return None
    mode, channels = ("RGBA", 4) if config.input.has_alpha else ("RGB", 3)
    width, height = size
    out = ctypes.create_string_buffer(width * height * channels)
    config.options.use_scaling, config.options.scaled_width, config.options.scaled_height = 1, width, height
    config.output.colorspace = MODE_RGBA if channels == 4 else MODE_RGB
    config.output.is_external_memory = 1
    config.output.u.RGBA.rgba = ctypes.cast(out, c_void_p)
    config.output.u.RGBA.stride = width * channels
    config.output.u.RGBA.size = len(out)
    status = lib.WebPDecode(data, len(data), ctypes.byref(config))
    if status != VP8_STATUS_OK:
        raise OSError(f"libwebp could not decode the image (VP8 status {status})")
    return Image.frombytes(mode, size, out.raw)
