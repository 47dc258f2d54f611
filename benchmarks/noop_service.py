"""BentoML's own floor for the serving benchmark: an API that takes the same multipart upload
and does nothing with it. ``bentoml serve benchmarks.noop_service:Noop``."""

from __future__ import annotations

from pathlib import Path

import bentoml


@bentoml.service(name="noop", workers=1)
class Noop:
    @bentoml.api(route="/classify")
    def classify(self, image: Path) -> dict:
        return {"label": "none", "index": 0, "probability": 1.0}
