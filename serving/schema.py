"""``POST /classify`` as the OpenAPI schema and BentoML clients see it: the request's fields and
the answer's JSON (``Prediction``), with ``png_data_url`` for its ``input_image``."""

from __future__ import annotations

import base64
import io
import typing as t
from pathlib import Path

import bentoml
import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from .contract import OOD_SCORES
from .conversions import CONVERT_HELP, ConvertMode

# /classify's request as the OpenAPI schema and BentoML clients see it (ClassifyRoute parses it).
ImageFile = t.Annotated[Path, bentoml.validators.ContentType("image/*"), Field(
    description="one image file (PNG, JPEG, GIF, BMP, TIFF, WebP, PPM); over HTTP also the raw "
                "body with Content-Type image/*")]
ConvertOption = t.Annotated[ConvertMode, Field(description=(
    CONVERT_HELP + ". Also accepted as the query parameter ?convert="))]
ShowInputOption = t.Annotated[bool, Field(description=(
    "also answer with the model's input after conversion (input_image). Also accepted as the "
    "query parameter ?show_input=true"))]


# /classify's answer, as JSON; the OpenAPI schema shows these models.
class Choice(BaseModel):
    label: str
    index: int
    probability: float


class Prediction(Choice):
    """The top class (label, index, probability), the top 5, and how the upload was converted."""

    top: list[Choice] = Field(description="the 5 most probable classes, most probable first")
    converted: t.Literal["photo", "none"] = Field(
        description="'photo': the dataset's own conversion was applied (a light-background photo "
                    "or scan: trimmed, fitted, centred, negated; serving/conversions.py); 'none': "
                    "the image was only resized to the model's input, as a dataset image is")
    in_distribution: bool | None = Field(
        None, description="false: the image looks like none of the classes (its ood_value is below "
                          "ood_threshold); null: the model carries no calibration")
    ood_score: t.Literal[OOD_SCORES] | None = Field(
        None, description="the out-of-distribution score the model's calibration chose on held-out "
                          "data: 'max_probability' (the calibrated top probability) or 'energy' "
                          "(T * logsumexp(logits / T)); higher is more like the classes")
    ood_value: float | None = Field(None, description="this image's ood_score")
    ood_threshold: float | None = Field(None, description="the threshold, in ood_score's units, chosen on held-out data")
    input_image: str | None = Field(
        None, description="with show_input=true: the model's input (after conversion) as a "
                          "data:image/png;base64 URL")


def png_data_url(pixels: np.ndarray) -> str:
    """uint8 (C, H, W) -> a data:image/png;base64 URL (gray for 1 channel, RGB for 3)."""
    img = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
