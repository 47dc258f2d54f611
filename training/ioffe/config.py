"""The Figure 1 experiment's knobs, presets and evaluation schedule."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import RunOptions, require_positive, require_variants

VARIANTS = ("standard", "bn")
# Section 4.1: "a 28x28 binary image as input". Pixels >= this uint8 value become 255 (then
# normalised as usual), the rest 0: half of the 0..255 range.
BINARIZE_THRESHOLD = 128


@dataclass
class IoffeFig1Config(RunOptions):
    dataset: str = field(default="mnist", metadata={"help": "mnist (the paper's) or fashion-mnist",
                                                    "choices": ["mnist", "fashion-mnist"]})
    steps: int = field(default=50_000, metadata={"help": "training steps per variant"})
    batch_size: int = field(default=60, metadata={"help": "examples per mini-batch"})
    lr: float = field(default=0.1, metadata={"help": "plain SGD learning rate (paper: unstated)"})
    lrs: tuple[float, ...] = field(default=(), metadata={
        "help": "several learning rates in one run, one panel (a) each (overrides --lr)"})
    binarize: bool = field(default=False, metadata={
        "help": f"binary input as in the paper's Sec. 4.1: pixel >= {BINARIZE_THRESHOLD} -> 1, else 0"})
    eval_every: int = field(default=500, metadata={"help": "steps between full test-set evaluations"})
    probe_unit: int = field(default=0, metadata={"help": "which last-hidden-layer unit panels (b), (c) follow"})
    variants: tuple[str, ...] = field(default=VARIANTS, metadata={"help": "standard and/or bn"})
    out: str = field(default="runs/ioffe-fig1", metadata={"help": "run directory"})
    parallel: bool = field(default=True, metadata={"help": "on CPU, train the variants side by side, one process each"})

    def validate(self) -> None:
        self.validate_run_options()
        require_variants(self.variants, VARIANTS)
        require_positive(self, "steps", "batch_size", "eval_every", "lr")
        if any(lr <= 0 for lr in self.lrs):
            raise ValueError("--lrs must be positive")
        if not 0 <= self.probe_unit < 100:
            raise ValueError("--probe-unit must be in [0, 100)")

    @property
    def lr_list(self) -> list[float]:
        """The learning rates this run trains: ``--lrs`` when given, else ``--lr``."""
        return list(self.lrs) if self.lrs else [self.lr]


PRESETS = {
    # The default (first): greyscale MNIST, the setting of most re-implementations and of the
    # published numbers printed beside ours (their inputs are greyscale), so they compare
    # point by point; one seed unless --seeds.
    "cpu": IoffeFig1Config(),
    # The paper's settings: MNIST, binary input (Sec. 4.1), batch 60, 50k steps; 5 seeds. The
    # optimiser (plain SGD) and its lr (0.1) are ours in both presets: the paper states neither.
    "paper": IoffeFig1Config(binarize=True, seeds=5),
}


def eval_steps(cfg: IoffeFig1Config) -> list[int]:
    """Steps after which the test set is evaluated: 0, every ``eval_every``, and the last."""
    steps = list(range(0, cfg.steps + 1, cfg.eval_every))
    if steps[-1] != cfg.steps:
        steps.append(cfg.steps)
    return steps


def job_name(variant: str, lr: float, cfg: IoffeFig1Config) -> str:
    """A job's directory: the variant alone for a one-lr run (as before ``--lrs``), else
    ``<variant>_lr<lr>``."""
    return variant if len(cfg.lr_list) == 1 else f"{variant}_lr{lr:g}"
