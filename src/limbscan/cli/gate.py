"""``limbscan gate ...``: fit the input gate, which keeps images that are no lower-limb
radiograph 'not analysed'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from limbscan.cli import render
from limbscan.cli.options import Quiet

app = typer.Typer(help="The input gate: which images limbscan reads (lower-limb radiographs) and which it "
                       "leaves 'not analysed'.", no_args_is_help=True)


@app.command("train")
def gate_train_cmd(
    dataset: Annotated[Path, typer.Argument(help="The lower-limb dataset (split): its train split is in scope.")],
    other: Annotated[list[Path], typer.Option(
        "--other", help="A dataset of radiographs of other body parts (e.g. FracAtlas hand / shoulder, split): its "
                        "train and val splits are out of scope, its test split measured; repeatable.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The gate file to write (gate.npz).")],
    refuse: Annotated[float, typer.Option(
        help="Share of the --other radiographs the body-region classifier must refuse, on out-of-fold scores.")
    ] = 0.97,
    accept_distance: Annotated[float, typer.Option(
        help="Share of lower-limb radiographs the distance check must keep, on out-of-fold distances.")] = 0.995,
    drawn: Annotated[int, typer.Option(help="Pictures that are no radiograph to draw as out-of-scope examples.")] = 240,
    seed: Annotated[int, typer.Option(help="Seed of the drawn pictures and folds.")] = 0,
    quiet: Quiet = False,
) -> None:
    """Fit the input gate's pixel check (frozen ImageNet features, a body-region classifier, a distance) and
    measure it on held-out images; `limbscan export --gate GATE` puts it in a bundle."""
    from limbscan.gate.fit import fit_gate

    gate = fit_gate(dataset, other, n_drawn=drawn, seed=seed, refuse=refuse, accept_distance=accept_distance,
                    progress=not quiet)
    gate.save(out)
    render.gate_fitted(out, gate.meta)
