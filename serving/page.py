"""The test page served at GET /ui: pick or drop an image, see it as the model saw it (the
converted input, enlarged) and the top-5 classes as bars, with the model's name, dataset,
accuracy and provider from /model. One self-contained HTML document: no external scripts,
styles, fonts or images, so it works offline and behind a firewall."""

from __future__ import annotations

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
<div id="error" role="alert"></div>
<div class="row" id="result" hidden>
  <figure><img id="upload" alt="your image"><figcaption>your image</figcaption></figure>
  <figure><img id="seen" alt="what the model saw"><figcaption>what the model saw
    (<span id="converted"></span>)</figcaption></figure>
  <div id="bars"><div>top class: <b id="top"></b></div></div>
</div>
<p><a href="/docs.json">OpenAPI schema</a> &middot; <a href="/model">/model</a></p>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let lastFile = null;

function text(el, s) { el.textContent = s; }

fetch("/model").then((r) => r.json()).then((m) => {
  const acc = typeof m.test_accuracy === "number" ? (100 * m.test_accuracy).toFixed(2) + "%" : "n/a";
  const name = m.model && m.model.name ? m.model.name : "?";
  text($("model"), `model ${name} on ${m.dataset} (test accuracy ${acc}), running on ${m.provider}`);
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


def page_html() -> str:
    """The page's HTML (the same for every model: it reads /model)."""
    return PAGE
