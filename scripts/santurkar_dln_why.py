"""Why the DLN of Santurkar Fig. 3 shows large ICS without BN at the paper's setting (1,000
samples, summed loss, lr 1e-6): the ICS cosine at layers #9, #17 and lr x effective beta (Fig. 4's
measure at one lr; gradient descent oscillates once it reaches 2) at steps 0, 100, 1,000, for
the paper's setting and three others. Output: docs/figures/santurkar-dln-why.md.

    .venv/bin/python scripts/santurkar_dln_why.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.models import create_model  # noqa: E402
from training.santurkar.dln import LOSSES, dln_data  # noqa: E402
from training.santurkar.ics import ics  # noqa: E402
from training.santurkar.landscape import probe_model  # noqa: E402

SETTINGS = ((1000, "sum", 1e-6), (1000, "sum", 1e-7), (100, "sum", 1e-6), (1000, "mean", 1e-6))


def main() -> None:
    torch.set_num_threads(1)
    for n, loss_name, lr in SETTINGS:
        loss_fn = LOSSES[loss_name]
        for bn in (False, True):
            torch.manual_seed(0)
            model = create_model("dln25", bn=bn)
            x, y, _ = dln_data(n, 10, 0)
            opt = torch.optim.SGD(model.parameters(), lr=lr)
            cells = []
            for step in range(1001):
                if step in (0, 100, 1000):
                    c = ics(model, loss_fn, (x, y), lr, layers=[9, 17]).tolist()
                    p = probe_model(model, loss_fn, (x, y), lr, [1.0])
                    beta = float(p["grad_diff"][0] / p["distance"][0])
                    cells.append(f"step {step}: loss {float(p['loss0']):.3g} cos#9 {c[0][1]:+.3f} "
                                 f"cos#17 {c[1][1]:+.3f} lr*beta {lr * beta:.3g}")
                loss = loss_fn(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            print(f"n={n} loss={loss_name} lr={lr:g} {'BN ' if bn else 'std'}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
