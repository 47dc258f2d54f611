"""Write models/default/MODEL_CARD.md from a training run directory and the exported model.

    .venv/bin/python -m scripts.model_card runs/default-model models/default

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


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("model_dir", type=Path)
    args = p.parse_args(argv)
    run, out = args.run_dir, args.model_dir
    cfg = json.loads((run / "config.json").read_text())
    onnx_path = out / "model.onnx"
    meta = json.loads({q.key: q.value for q in onnx.load(str(onnx_path)).metadata_props}["bnserve"])
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    summary = (run / "summary.md").read_text().strip() if (run / "summary.md").exists() else ""
    summary = summary.replace("# ", "### Training run: ", 1) if summary.startswith("# ") else summary
    export_txt = (run / "export.txt").read_text().strip() if (run / "export.txt").exists() else ""
    parity = meta["parity"]
    env = cfg.get("environment", {})
    curve = "\n".join(f"| {m['step']} | {m.get('test_accuracy')} | {m.get('elapsed_s')} |" for m in metrics)
    card = f"""# Default model: {meta['model']['name']} + BN (width {meta['model']['config']['width']}) on {meta['dataset']}

The model `make serve` serves when `BNSERVE_MODEL` is not set. Regenerate with `make default-model`
(train, export, this card). Written by `python -m scripts.model_card`; every number below is read
from the run's files and the ONNX file's metadata.

## How it was made
- training: `{shlex.join(cfg['command'])}`
- seed {cfg['seed']}, git revision `{cfg['git_revision']}`, started {cfg['started_at']}
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

## Intended use and limits
Images like Fashion-MNIST's: one garment, light on a black background, centred. The service
converts any image to 28x28 grayscale (alpha onto black, letterboxed, bilinear), but a photo of a
dark object on a white background is the negative of what this model saw and will be misread.
"""
    if export_txt:
        card += f"\n## Exporter report\n```\n{export_txt}\n```\n"
    (out / "MODEL_CARD.md").write_text(card)
    print(f"wrote {out / 'MODEL_CARD.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
