"""Write a model directory's MODEL_CARD.md from a training run directory and the exported model.

    .venv/bin/python -m scripts.model_card runs/default-model models/default
    .venv/bin/python -m scripts.model_card runs/mnist-model models/mnist

Everything in the card is read from files (the run's config.json, summary.md, metrics.jsonl and
export.txt, the ONNX file's own metadata): nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
from pathlib import Path

import onnx

from serving.contract import read_metadata
from training.records import RunRecord, read_metrics


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def intended_use(meta: dict) -> str:
    """What the model takes, from its input_convention (serving/conversions.py converts photos)."""
    pipeline = (meta.get("input_convention") or {}).get("pipeline")
    if pipeline == "fashion-mnist":
        return ("One garment per image. Dataset-form images (light on black, 28x28) are used as they are;\n"
                "a product photo on a light background is converted the way Fashion-MNIST was made\n"
                "(Xiao et al. 2017, Sec. 2: trim, fit, sharpen, centre, negate; serving/conversions.py).")
    if pipeline == "mnist":
        return ("One handwritten digit per image. Dataset-form images (white on black, 28x28) are used as\n"
                "they are; a scan or photo of dark ink on light paper is converted the way MNIST was made\n"
                "(negate, 20x20 box, centre of mass at the centre; serving/conversions.py).")
    return "Images like the training set's; see serving/conversions.py for how uploads are converted."


def calibration_section(meta: dict) -> str:
    """Temperature, OOD threshold and their measured effect, from the file's ``calibration``."""
    c = meta.get("calibration")
    if not c:
        return ""
    m = c.get("measured", {})
    score = c.get("ood_score", "max_probability")
    held_flagged_key = "held_flagged" if score == "max_probability" else f"{score}_held_flagged"
    worse = m.get("ece_test_after", 0.0) > m.get("ece_test_before", float("inf"))
    ece_note = ("\n  (higher after: the temperature is fitted for held-out images and their augmented copies, the mix"
                "\n  users send, and the clean test split has no augmented images; compare the mean top probability"
                "\n  with the accuracy on real images below)") if worse else ""
    return f"""
## Calibration and "none of my classes" (stored in the file's metadata, key `calibration`)
- temperature **{c['temperature']:.4f}**: every answer's probabilities are softmax(logits / T) (the answer
  itself never changes); fitted on {c['fitted_on']} by minimising the negative log-likelihood
  (held-out NLL {m.get('nll_held_before', float('nan')):.4f} -> {m.get('nll_held_after', float('nan')):.4f})
- expected calibration error on the test split (15 bins): **{m.get('ece_test_before', float('nan')):.4f} before, {m.get('ece_test_after', float('nan')):.4f} after**{ece_note}
- `in_distribution: false` when the {SCORE_WORDS[score]} is below **{c['ood_threshold']:.4f}**: the
  {c['ood_quantile']:.0%} quantile of that score on the held-out images (augmented copies), so
  {m.get(held_flagged_key, float('nan')):.1%} of them are flagged by design
- served score: **`{score}`** (why: {c.get('ood_score_reason') or 'the only score when this file was made'})
{outlier_lines(c)}"""


# how the card names each out-of-distribution score (serving/contract.py's OOD_SCORES)
SCORE_WORDS = {"max_probability": "calibrated top probability",
               "energy": "energy score T * logsumexp(logits / T)"}


def outlier_lines(c: dict) -> str:
    """The held-out outliers' flagged shares under the served score and under energy (training/
    outliers.py; measured by the trainer on outliers no training step saw), when measured."""
    m = c.get("measured", {})
    if "held_outliers_flagged" not in m:
        return ""
    sources = [k[len("held_"):-len("_flagged")] for k in m
               if k.startswith("held_") and k.endswith("_flagged") and k not in ("held_flagged", "held_outliers_flagged")]
    per = ", ".join(f"{s.replace('_', ' ')} {m[f'held_{s}_flagged']:.1%} / {m.get(f'energy_held_{s}_flagged', float('nan')):.1%}"
                    for s in sources)
    served = c.get("ood_score", "max_probability")
    mark = {k: "**" if k == served else "" for k in SCORE_WORDS}
    return (f"- held-out outliers (none of the classes; {c.get('outliers_measured_on', 'held out')}), each score "
            f"at its {c['ood_quantile']:.0%} quantile: flagged {mark['max_probability']}"
            f"{m['held_outliers_flagged']:.1%}{mark['max_probability']} by the top probability (AUROC "
            f"{m['auroc_max_probability']:.3f}) vs {mark['energy']}{m['energy_held_outliers_flagged']:.1%}"
            f"{mark['energy']} by the energy score T * logsumexp(logits / T) (AUROC {m['auroc_energy']:.3f}); "
            f"per source, top probability / energy: {per}\n")


# real_images*.json files a run directory may hold, and what each measured
REAL_IMAGE_TITLES = {
    "real_images": "this model: garments and non-garments",
    "real_images-digits": "this model: digit scans that are not MNIST",
    "real_images-before": "before: the model this one replaced, same set, same service",
    "real_images-digits-before": "before: the model this one replaced, digit scans",
}


def icons_section(run: Path) -> str:
    """The real third-party icons the run trained on (training/icons.py; the run's icons.json):
    per class, and per set with its licence and author (the attribution CC BY asks for)."""
    path = run / "icons.json"
    if not path.exists():
        return ""
    r = json.loads(path.read_text())
    per_class = ", ".join(f"{c} {n}" for c, n in r["per_class"].items())
    rows = "\n".join(f"| {name} | {src['version']} | {src['license']} | {src['author']} | {src['icons']} | {src['images']} |"
                     for name, src in sorted(r["sources"].items()))
    return f"""
## Real icons trained on (`icons.json`; training/icons.py)
{r['added_per_batch']} renders added to every batch, drawn from {r['images']:,} renders (each icon on a
white and a transparent background, monochrome ones in black and in blue, converted as the service
converts an upload) of Iconify icon and emoji sets on npm, labelled by name; none of these sets is
a source of the real-image evaluation below. Per class: {per_class}.

| set (@iconify-json/..., or the file json/<set>.json of the bundle named as version) | version | licence | author | icons | renders |
|---|---|---|---|---|---|
{rows}
"""


def drawings_section(run: Path) -> str:
    """The procedural drawings the run trained on (training/drawings.py; the run's drawings.json)."""
    path = run / "drawings.json"
    if not path.exists():
        return ""
    r = json.loads(path.read_text())
    per_class = ", ".join(f"{c} {n}" for c, n in r["per_class"].items() if n)
    made = r["sources"]["drawings"]["version"]
    return f"""
## Procedural drawings trained on (`drawings.json`; training/drawings.py)
{r['added_per_batch']} drawings added to every batch, drawn from {r['images']:,} made once ({made}) from the
features that make each upper-body class (body length, a front opening, collar and placket, ribbed
bands, hood, lapels) in outline, cut-out and emoji styles, converted as the service converts an
upload; labelled by construction. Per class: {per_class}.
"""


def real_images_section(run: Path) -> str:
    """The real-image evaluation (scripts/real_images.py eval --json) saved beside the run."""
    out = []
    for path in sorted(run.glob("real_images*.json")):
        s = json.loads(path.read_text())
        what = REAL_IMAGE_TITLES.get(path.stem, path.stem)
        rows = "\n".join(f"| {g} | {a}/{n} | {a / n:.3f} |" for key in ("per_class", "per_style", "per_background")
                         for g, a, n in s[key])
        flags = "" if s.get("flagged_garments") is None else (
            f"; `in_distribution: false` for {s['flagged_garments']:.1%} of them"
            + ("" if s.get("flagged_other") is None else
               f" and for {s['flagged_other']:.1%} of {s['n_other']} images that are none of the classes"
               + ("" if not s.get("flagged_other_by_kind") else " (" + ", ".join(
                   f"{kind} {share:.1%}" for kind, share in sorted(s["flagged_other_by_kind"].items())) + ")")))
        out.append(f"""
### {what} (`{path.name}`)
{s['n_garments']} labelled images through HTTP: accuracy **{s['accuracy']:.3f}**, class-balanced
{s['class_balanced_accuracy']:.3f}, mean top probability {s['mean_probability_garments']:.3f}{flags}.

| class / style / background | right | accuracy |
|---|---|---|
{rows}
""")
    if not out:
        return ""
    return ("\n## Real images (scripts/real_images.py: third-party emoji, icons, drawings, digit scans; "
            "white and transparent backgrounds)\n" + "".join(out))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("model_dir", type=Path)
    args = p.parse_args(argv)
    run, out = args.run_dir, args.model_dir
    cfg = RunRecord.read(run)
    onnx_path = out / "model.onnx"
    meta = read_metadata(onnx.load(str(onnx_path), load_external_data=False))
    metrics = read_metrics(run / "metrics.jsonl")
    summary = (run / "summary.md").read_text().strip() if (run / "summary.md").exists() else ""
    summary = summary.replace("# ", "### Training run: ", 1) if summary.startswith("# ") else summary
    export_txt = (run / "export.txt").read_text().strip() if (run / "export.txt").exists() else ""
    parity = meta["parity"]
    env = cfg.environment
    curve = "\n".join(f"| {m['step']} | {m.get('test_accuracy')} | {m.get('elapsed_s')} |" for m in metrics)
    default = out.resolve() == (Path(__file__).resolve().parent.parent / "models" / "default")
    intro = ("The model `make serve` serves when `BNSERVE_MODEL` is not set. Regenerate with "
             "`make default-model`\n(train, export, this card).") if default else (
             f"Serve it with `BNSERVE_MODEL={onnx_path} make serve`.")
    card = f"""# {'Default model' if default else 'Model'}: {meta['model']['name']} + BN (width {meta['model']['config']['width']}) on {meta['dataset']}

{intro} Written by `python -m scripts.model_card`; every number below is read
from the run's files and the ONNX file's metadata.

## How it was made
- training: `{shlex.join(cfg.command)}`
- seed {', '.join(map(str, cfg.seeds))}, git revision `{cfg.git_revision}`, started {cfg.started_at}
- environment: python {env.get('python')}, torch {env.get('torch')}, {env.get('cpu_count')} CPU cores, device {env.get('device')}
- export: `python -m export {run}/checkpoint.pt -o {onnx_path}` (BatchNorm folded, opset {meta['opset']}, {meta['precision']}), exported {meta['exported_at']}

{summary}

| step | test accuracy | elapsed s |
|---|---|---|
{curve}

## The served file
- `model.onnx`: {onnx_path.stat().st_size} bytes, sha256 `{sha256(onnx_path)}`
- `checkpoint.pt` (the PyTorch eval-mode reference the tests compare with): sha256 `{meta['source_checkpoint']['sha256']}`
- input `{meta['input']['name']}` {meta['input']['shape']} {meta['input']['dtype']}, normalised with mean {meta['normalization']['mean']}, std {meta['normalization']['std']}; output `logits` {meta['output']['shape']}
- classes: {', '.join(meta['classes'])}

## Accuracy and parity (from the exporter's check, stored in the file)
- test accuracy (PyTorch, full test split): **{meta['test_accuracy']}**
- parity on {parity['inputs']}: passed = {parity['passed']}; argmax agreement {parity['argmax_agreement']}/{parity['n']};
  max |logit diff| {parity['max_abs_diff']:.3g} (tolerance atol {parity['tolerance']['atol']}, rtol {parity['tolerance']['rtol']});
  ONNX accuracy {parity.get('onnx_accuracy')}, PyTorch accuracy {parity.get('torch_accuracy')};
  ONNX Runtime {parity['ort_graph_optimization']} on {parity.get('ort_provider')}, batch sizes {parity['batch_sizes']}

{calibration_section(meta)}{icons_section(run)}{drawings_section(run)}{real_images_section(run)}
## Intended use and limits
{intended_use(meta)}
"""
    if export_txt:
        card += f"\n## Exporter report\n```\n{export_txt}\n```\n"
    (out / "MODEL_CARD.md").write_text(card)
    print(f"wrote {out / 'MODEL_CARD.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
