"""The test page served at GET /ui: pick or drop an image, or click one of the shipped samples,
see it as the model saw it (the converted input, enlarged), the top-5 classes as bars with their
calibrated probabilities, and whether the image looks like one of the classes at all
(``in_distribution``: the score the calibration serves, its value and threshold), with the
model's name, dataset, accuracy and provider from /model. One self-contained HTML
document: no external scripts, styles, fonts or images (the samples are inlined as data: URLs),
so it works offline and behind a firewall."""

from __future__ import annotations

import base64
import functools
import json
from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
# The one-click examples: the shipped samples (scripts/make_samples.py) of each dataset, by the
# dataset name /model reports; a missing file is left out (a Bento without samples/ shows none).
SAMPLES = {
    "fashion-mnist": ("fmnist-test-0000-ankle-boot-shop-photo.jpg", "fmnist-test-0001-pullover-shop-photo.jpg",
                      "fmnist-test-0008-sandal-shop-photo.jpg", "fmnist-test-0018-bag-photo.jpg",
                      "fmnist-test-0002-trouser.png", "fmnist-test-0013-dress.png",
                      "fmnist-test-0006-coat.png", "fmnist-test-0009-sneaker.png"),
    "mnist": ("mnist/mnist-test-0000-7-scan.jpg", "mnist/mnist-test-0001-2-scan.jpg",
              "mnist/mnist-test-0002-1-scan.jpg", "mnist/mnist-test-0003-0-scan.jpg"),
}
MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>bnserve: try the model</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 46em; color: #222; padding: 0 1em; }
  h1 { font-size: 1.4em; margin-bottom: .2em; }
  #model { color: #555; margin-bottom: 1em; }
  #drop { border: 2px dashed #999; border-radius: 8px; padding: 1.5em; text-align: center; cursor: pointer; }
  #drop.over { border-color: #2a6; background: #efe; }
  .row { display: flex; gap: 1.5em; margin-top: 1.2em; flex-wrap: wrap; align-items: flex-start; }
  figure { margin: 0; text-align: center; }
  figcaption { font-size: .85em; color: #555; }
  #upload { max-width: 224px; max-height: 224px; border: 1px solid #ccc; }
  #seen { width: 224px; height: 224px; image-rendering: pixelated; border: 1px solid #ccc; background: #000; }
  #bars { flex: 1; min-width: 16em; }
  .bar { display: flex; align-items: center; gap: .5em; margin: .25em 0; }
  .bar .name { width: 8em; text-align: right; }
  .bar .track { flex: 1; background: #eee; height: 1.1em; border-radius: 3px; }
  .bar .fill { background: #3a7; height: 100%; border-radius: 3px; }
  .bar .p { width: 4em; font-variant-numeric: tabular-nums; }
  #error { color: #b00; white-space: pre-wrap; }
  label { margin-right: 1em; }
  [hidden] { display: none !important; }
  #examples button { border: 1px solid #ccc; background: #fff; padding: 2px; margin: 0 .3em .3em 0; cursor: pointer; }
  #examples img { width: 56px; height: 56px; object-fit: contain; display: block; }
  #ood.out { color: #b00; font-weight: bold; }
</style>
</head>
<body>
<h1>bnserve: try the model</h1>
<div id="model">loading the model's description...</div>
<div id="drop">Drop an image here, or <input type="file" id="file" accept="image/*"></div>
<p>Conversion:
  <label><input type="radio" name="convert" value="auto" checked> auto</label>
  <label><input type="radio" name="convert" value="dataset"> as a photo</label>
  <label><input type="radio" name="convert" value="none"> none</label>
</p>
<div id="examples" hidden><div>No image at hand? Try one of these:</div></div>
<div id="error" role="alert"></div>
<div class="row" id="result" hidden>
  <figure><img id="upload" alt="your image"><figcaption>your image</figcaption></figure>
  <figure><img id="seen" alt="what the model saw"><figcaption>what the model saw
    (<span id="converted"></span>)</figcaption></figure>
  <div id="bars"><div>top class: <b id="top"></b> (calibrated probability <span id="prob"></span>)</div>
    <div id="ood"></div></div>
</div>
<p><a href="/docs.json">OpenAPI schema</a> &middot; <a href="/model">/model</a></p>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let lastFile = null;

function text(el, s) { el.textContent = s; }

const SAMPLES = __SAMPLES__;
const pct = (p) => (100 * p).toFixed(1) + "%";

function showExamples(dataset) {
  const list = SAMPLES[dataset] || [];
  for (const s of list) {
    const b = document.createElement("button");
    b.type = "button"; b.title = s.name; b.className = "example";
    const img = document.createElement("img"); img.src = s.url; img.alt = s.name;
    b.appendChild(img);
    b.addEventListener("click", async () => {
      const blob = await (await fetch(s.url)).blob();
      classify(new File([blob], s.name, {type: blob.type}));
    });
    $("examples").appendChild(b);
  }
  $("examples").hidden = list.length === 0;
}

fetch("/model").then((r) => r.json()).then((m) => {
  const acc = typeof m.test_accuracy === "number" ? (100 * m.test_accuracy).toFixed(2) + "%" : "n/a";
  const name = m.model && m.model.name ? m.model.name : "?";
  text($("model"), `model ${name} on ${m.dataset} (test accuracy ${acc}), running on ${m.provider}`);
  showExamples(m.dataset);
}).catch((e) => text($("model"), "cannot read /model: " + e));

async function classify(file) {
  lastFile = file;
  text($("error"), "");
  const convert = document.querySelector("input[name=convert]:checked").value;
  const form = new FormData();
  form.append("image", file, file.name || "image");
  let answer;
  try {
    const r = await fetch(`/classify?show_input=true&convert=${convert}`, {method: "POST", body: form});
    answer = await r.json();
    if (!r.ok) { text($("error"), `${r.status} ${answer.error}: ${answer.detail}`); return; }
  } catch (e) { text($("error"), "request failed: " + e); return; }
  $("upload").src = URL.createObjectURL(file);
  $("seen").src = answer.input_image;
  text($("converted"), answer.converted === "photo" ? "converted as a photo" : "not converted");
  text($("top"), answer.label);
  text($("prob"), pct(answer.probability));
  const ood = $("ood");
  // the score the model's calibration serves: the top probability (a percentage) or the energy
  const score = answer.ood_score === "energy"
    ? {name: "energy score T * logsumexp(logits / T)", fmt: (v) => v.toFixed(3)}
    : {name: "calibrated top probability", fmt: pct};
  const value = typeof answer.ood_value === "number" ? answer.ood_value : answer.probability;
  if (answer.in_distribution === false) {
    ood.className = "out";
    text(ood, `This looks like none of the classes: its ${score.name} ${score.fmt(value)} `
      + `is below the threshold ${score.fmt(answer.ood_threshold)} (in_distribution: false).`);
  } else if (answer.in_distribution === true) {
    ood.className = "in";
    text(ood, `Looks like one of the classes (in_distribution: true; ${score.name} ${score.fmt(value)}, `
      + `threshold ${score.fmt(answer.ood_threshold)}).`);
  } else { ood.className = ""; text(ood, "This model carries no calibration (in_distribution: null)."); }
  const bars = $("bars");
  bars.querySelectorAll(".bar").forEach((b) => b.remove());
  for (const c of answer.top) {
    const row = document.createElement("div");
    row.className = "bar";
    const name = document.createElement("span"); name.className = "name"; text(name, c.label);
    const track = document.createElement("span"); track.className = "track";
    const fill = document.createElement("span"); fill.className = "fill";
    fill.style.display = "block"; fill.style.width = (100 * c.probability).toFixed(1) + "%";
    track.appendChild(fill);
    const p = document.createElement("span"); p.className = "p"; text(p, (100 * c.probability).toFixed(1) + "%");
    row.append(name, track, p);
    bars.appendChild(row);
  }
  $("result").hidden = false;
}

$("file").addEventListener("change", (e) => { if (e.target.files[0]) classify(e.target.files[0]); });
document.querySelectorAll("input[name=convert]").forEach((r) =>
  r.addEventListener("change", () => { if (lastFile) classify(lastFile); }));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files[0]) classify(e.dataTransfer.files[0]);
});
</script>
</body>
</html>
"""


@functools.cache
def samples_json(directory: Path = SAMPLES_DIR) -> str:
    """The examples as a JSON object {dataset: [{name, url}]}, each file a data: URL."""
    out = {}
    for dataset, names in SAMPLES.items():
        items = []
        for name in names:
            path = directory / name
            if path.is_file() and path.suffix.lower() in MEDIA_TYPES:
                data = base64.b64encode(path.read_bytes()).decode("ascii")
                items.append({"name": path.name, "url": f"data:{MEDIA_TYPES[path.suffix.lower()]};base64,{data}"})
        out[dataset] = items
    return json.dumps(out)


def page_html() -> str:
    """The page's HTML (the same for every model: it reads /model and shows that dataset's
    examples)."""
    return PAGE.replace("__SAMPLES__", samples_json())
