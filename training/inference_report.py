"""The report's sections on BN at inference (training/report.py): Algorithm 2's statistics
(``recalibrate --run-dir``), BN for one image at test time (``python -m studies bn-test-time``,
read from its ``results.json``), and the two
conceptual questions a reader asks, answered from the runs' own numbers.

Everything here reads ``config.json`` / ``results.json`` / metrics only: nothing is retrained.
"""

from __future__ import annotations

import json
from pathlib import Path

from .ioffe import report as ioffe_report
from .report_types import Claim, Question, RunInfo, Section
from .santurkar import report as santurkar_report


def _results(run_dir: Path):
    return json.loads((Path(run_dir) / "results.json").read_text())


def _network(model: dict) -> str:
    name = model.get("name", "?")
    return {"mlp3x100": "Ioffe's 3x100 sigmoid MLP"}.get(name, name.upper().replace("VGG", "VGG-")) + \
        (" + noisy BN" if model.get("noisy_bn") else " + BN" if model.get("bn") else "")


# --- Algorithm 2 ---------------------------------------------------------------------------------

def recalibrate_section(run_dir: Path) -> Section:
    run_dir = Path(run_dir)
    results = _results(run_dir)
    observed, claims = [], []
    for r in results:
        noise = "" if r["noise"] is None else (" (noise on during the passes, Algorithm 2 as written)" if r["noise"]
                                               else " (noise off: the network inference runs)")
        where = f"`{Path(r['checkpoint']).parent.name}` of {r['dataset']}"
        observed.append(f"{r['model']} {where}{noise}: test accuracy {r['ema_test_accuracy']:.4f} with the EMA, "
                        f"{r['population_test_accuracy']:.4f} with Algorithm 2's statistics "
                        f"({r['batches']} batches of {r['batch_size']}).")
        gain = r["population_test_accuracy"] - r["ema_test_accuracy"]
        claims.append(Claim(
            f"{r['model']} {where}{noise}: population statistics of the final weights serve inference at least "
            "as well as the moving average",
            "Algorithm 2, steps 8-11: E[x] = E_B[mu_B], Var[x] = m/(m-1) E_B[sigma_B^2] with the final weights",
            f"{r['population_test_accuracy']:.4f} vs {r['ema_test_accuracy']:.4f} ({gain:+.4f})",
            gain >= -0.002))  # within sampling noise of 200 batches
    noisy = [r for r in results if r["noise"] is not None]
    fixed = [r for r in noisy if r["noise"] is False]
    if fixed:
        f = fixed[0]
        interp = (f"For the noisy-BN network the EMA was gathered under the training-time noise, which inference "
                  f"does not apply: statistics gathered for the network inference runs (noise off) raise its test "
                  f"accuracy from {f['ema_test_accuracy']:.4f} to {f['population_test_accuracy']:.4f}. For ordinary "
                  "BN the two estimates are close: the moving average of a converged run is already near the "
                  "population statistics.")
    else:
        interp = ("The two estimates are close for these networks: a converged run's moving average is already "
                  "near the population statistics Algorithm 2 computes.")
    return Section(
        key=run_dir.name, title="Ioffe & Szegedy 2015, Algorithm 2: inference statistics, population vs moving average",
        context=("BN normalises with mini-batch statistics in training, but the inference network must not depend "
                 "on the batch: Algorithm 2 replaces them with population statistics computed with the *final* "
                 "weights over many training mini-batches. PyTorch instead keeps an exponential moving average "
                 "(momentum 0.1) gathered while the weights were still changing. `python -m training recalibrate` "
                 "computes Algorithm 2's statistics and stores them in a checkpoint the exporter folds."),
        plotted="No figure: test accuracy of each trained BN network with either estimate (table below).",
        observed=observed, interpretation=interp, claims=claims, figures=[], run=RunInfo.read(run_dir))


# --- BN for one image at test time ----------------------------------------------------------------

def test_time_section(run_dir: Path) -> Section:
    run_dir = Path(run_dir)
    r = _results(run_dir)
    bs = r["batch_sizes"]
    train = {int(b): a for b, a in r["train_mode_accuracy"].items()}
    ev = [r["eval_mode_accuracy"][str(b)] for b in bs]
    one = r["batch_of_one"]
    net = _network(r["model"])
    observed = [
        "BN with the test batch's own statistics, test accuracy by batch size: "
        + ", ".join(f"{b}: {train[b]:.4f}" for b in bs) + f" ({r['images']:,} test images of {r['dataset']}).",
        f"Eval mode (stored {r['bn_statistics']} statistics): {min(ev):.4f} at every batch size"
        if len(set(ev)) == 1 else f"Eval mode varies with the batch size: {min(ev):.4f} - {max(ev):.4f}.",
        f"Batch of one: BN layer(s) {one['collapsed_layers'] or 'none'} see a single value per channel; "
        f"{one['distinct_predictions']} distinct answer(s) over all images ('{one['predicted_class']}' for "
        f"{one['share_of_images']:.1%}), accuracy {train[1]:.4f} = that class's share of the test set "
        f"({one['chance_level_of_that_class']:.4f}).",
    ]
    claims = [
        Claim("BN cannot normalise one image with its own statistics: a batch of one is at chance level",
              "Sec. 3.1: the normalisation over the mini-batch is 'neither necessary nor desirable during "
              "inference'; the output should depend only on the input",
              f"accuracy {train[1]:.4f} at batch 1 vs that class's share {one['chance_level_of_that_class']:.4f}; "
              f"{one['distinct_predictions']} distinct answer(s)",
              train[1] <= one["chance_level_of_that_class"] + 0.01),
        Claim("With stored (population) statistics the answer does not depend on the batch",
              "Sec. 3.1: at inference BN is a fixed linear transform of each activation",
              f"eval-mode accuracy {min(ev):.4f} - {max(ev):.4f} over batch sizes {bs[0]}-{bs[-1]}",
              len(set(ev)) == 1),
    ]
    if "onnx" in r:
        bi = r["onnx"]["bit_identity"]
        observed.append(f"The exported ONNX file (BN folded): test accuracy {r['onnx']['accuracy']:.4f}; "
                        f"{bi['identical_alone_vs_batch']} of {bi['images']} images bit-identical alone and inside a "
                        f"batch of {bi['batch']}, {bi['identical_alone_vs_shifted_batch']} of {bi['shifted_images']} "
                        f"in a shifted batch (ONNX Runtime {bi['provider']}, {bi['threads']} threads).")
        claims.append(Claim(
            "The folded, exported model gives an image the same logits alone as inside any batch",
            "Sec. 3.1: BN at inference can be composed with the preceding linear layer",
            f"{bi['identical_alone_vs_batch']}/{bi['images']} and {bi['identical_alone_vs_shifted_batch']}/"
            f"{bi['shifted_images']} bit-identical; max |diff| {bi['max_abs_diff']:.3g}",
            bool(bi["all_identical"])))
    big = max(bs)
    return Section(
        key=run_dir.name, title=f"BN at test time for one image: {net}, {r['dataset']}",
        context=(f"The variance of one value is undefined, so what does BN do for a single image? On the trained "
                 f"{net}, test accuracy is measured when BN normalises with the stored statistics (eval mode, and "
                 "the exported ONNX file with BN folded into the weights) and with the test mini-batch's own "
                 f"statistics, for batch sizes {bs[0]} to {big}."),
        plotted=("Test accuracy against the test batch size (log scale): BN with the batch's own statistics (red), "
                 "eval mode (blue), the exported file (green), and the share of the one class every image gets at "
                 "batch size 1."),
        observed=observed,
        interpretation=(f"With its own statistics BN needs a batch: at size 1 every normalised value is 0 and the "
                        f"layer outputs beta, so every image gets the same answer; by size {big} the batch's "
                        f"statistics are as good as the stored ones ({train[big]:.4f} vs {ev[-1]:.4f}). At test "
                        "time BN therefore uses fixed statistics: an affine map per channel, folded into the "
                        "layer before it in the served model, so one image's answer never depends on the batch."),
        claims=claims, figures=[run_dir / "figure.png"] if (run_dir / "figure.png").exists() else [],
        run=RunInfo.read(run_dir))


# --- the conceptual questions -----------------------------------------------------------------------

def single_image_question(runs: dict[str, list[Path]]) -> Question | None:
    found = runs.get("bn-test-time", [])
    if not found:
        return None
    evidence = []
    for run in found:
        r = _results(run)
        one, net = r["batch_of_one"], _network(r["model"])
        ev = r["eval_mode_accuracy"][str(r["batch_sizes"][-1])]
        line = (f"{net} ({r['dataset']}): with the batch's own statistics, batch of 1 -> {one['distinct_predictions']} "
                f"distinct answer(s), accuracy {r['train_mode_accuracy']['1']:.4f} (chance for that class "
                f"{one['chance_level_of_that_class']:.4f}); batch of 2 -> {r['train_mode_accuracy']['2']:.4f}; "
                f"eval mode {ev:.4f} at every batch size")
        if "onnx" in r:
            bi = r["onnx"]["bit_identity"]
            line += (f"; exported file {r['onnx']['accuracy']:.4f}, bit-identical alone and in a batch for "
                     f"{bi['identical_alone_vs_batch']} of {bi['images']} images")
        evidence.append(line + f" (`{run.name}`).")
    for run in runs.get("recalibrate", []):
        for r in _results(run):
            noise = "" if r["noise"] is None else (", noise on" if r["noise"] else ", noise off")
            evidence.append(f"Which statistics: {r['model']} ({r['dataset']}{noise}) {r['ema_test_accuracy']:.4f} "
                            f"with the moving average, {r['population_test_accuracy']:.4f} with Algorithm 2's "
                            f"population statistics (`{run.name}`).")
    answer = ("It does not normalise the image with its own statistics: one value per channel has mean itself and "
              "variance 0, so x - mu_B = 0, the layer outputs beta for every input and every image gets the same "
              "answer (measured below: chance level). In training BN uses the mini-batch's statistics; at test time "
              "it uses fixed statistics of the training data (PyTorch's moving average, or Algorithm 2's population "
              "estimate with the final weights), which makes it a per-channel affine map y = gamma (x - E[x]) / "
              "sqrt(Var[x] + eps) + beta. That map is folded into the preceding convolution or linear layer when "
              "the model is exported, so the served model has no BN at all and an image gets bit-identical logits "
              "alone or inside any batch.")
    return Question("How does BatchNorm deal with a single image at test time?", answer, evidence)


def _verdicts(claims: list[Claim]) -> str:
    from .verdicts import count
    return f"{len(claims)} claims: {count([c.verdict for c in claims])}"


def smoothness_question(runs: dict[str, list[Path]]) -> Question | None:
    from .verdicts import DIFFERS, INCONCLUSIVE, PASS
    parts = {}
    for fig in ("santurkar-fig2", "santurkar-fig3", "santurkar-fig4", "santurkar-fig5"):
        if runs.get(fig):
            parts[fig] = santurkar_report.section(runs[fig][0]).claims
    if not parts:
        return None
    what = {"santurkar-fig2": "Fig. 2, noisy BN (distributions made unstable on purpose)",
            "santurkar-fig3": "Fig. 3, ICS as the paper defines it (gradient change caused by earlier layers' updates)",
            "santurkar-fig4": "Fig. 4, the loss landscape along the gradient",
            "santurkar-fig5": "Fig. 5, l_p normalisation instead of BN"}
    evidence = []
    for fig, claims in parts.items():
        line = f"**{what[fig]}**: {_verdicts(claims)}"
        for v in (DIFFERS, INCONCLUSIVE):
            named = [c for c in claims if c.verdict == v]
            if named:
                line += f". {v}: " + "; ".join(f"{c.statement} ({c.ours})" for c in named)
        evidence.append(line + ".")
    if "ioffe-fig1" in runs:
        stable = [c for c in ioffe_report.section(runs["ioffe-fig1"][0]).claims if "distribution" in c.statement]
        evidence += [f"**Ioffe Fig. 1**, the original ICS picture: {c.verdict}: {c.statement} ({c.ours})." for c in stable]

    paper = {"santurkar-fig2": "BN with noise that destroys distributional stability still trains about as well as BN",
             "santurkar-fig3": "BN does not reduce ICS as the paper defines it (often the shift is larger with BN)",
             "santurkar-fig4": "the landscape along the gradient is smoother with BN (smaller loss range, more "
                               "predictive gradients, smaller effective beta)",
             "santurkar-fig5": "l_p normalisations, which control no distribution, train like BN"}

    def verdicts(fig: str) -> list[str]:
        return [c.verdict for c in parts[fig]]

    sentences = []
    for fig in parts:
        v = verdicts(fig)
        if v.count(PASS) == len(v):
            sentences.append(f"{paper[fig]} (all {len(v)} claims PASS)")
        else:
            sentences.append(f"the paper says {paper[fig]}; here {v.count(PASS)} of {len(v)} claims PASS, "
                             f"{v.count(DIFFERS)} DIFFER and {v.count(INCONCLUSIVE)} are INCONCLUSIVE")
    every = all(c.verdict == PASS for claims in parts.values() for c in claims)
    answer = ("Why it matters: if BN worked by stabilising each layer's input distribution (reducing internal "
              "covariate shift), the cure for slow training would be more stability; if it works by making the "
              "optimisation landscape smoother, what matters is the normalisation's effect on the loss and its "
              "gradients, and other normalisations (or none, with the right landscape) can do the same. In this "
              "reproduction: " + "; ".join(sentences) + ". "
              + ("Together that is evidence for the smoothness view and against ICS reduction as the mechanism, "
                 "within the limits of the departures table (dataset, network size, steps)."
                 if every else
                 "So the evidence is mixed: only the claims that PASS support the paper's account, the ones that "
                 "DIFFER go against it in these runs, and the INCONCLUSIVE ones are within the spread of 3 seeds "
                 "(the evidence below names each); the departures table says what the preset changes."))
    return Question("ICS or a smoother landscape: what does this reproduction say about why BatchNorm works?",
                    answer, evidence)


def questions() -> list:
    return [single_image_question, smoothness_question]
