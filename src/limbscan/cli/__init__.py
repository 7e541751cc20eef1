"""The ``limbscan`` command line: each verb parses its arguments, calls the library and hands
what it got to :mod:`limbscan.cli.render`. Shared options live in :mod:`limbscan.cli.options`.

Heavy modules are imported inside the commands so ``limbscan --help`` answers at once.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Optional

import typer

from limbscan.cli import data, deploy, evaluate, gate, render, train
from limbscan.errors import LimbscanError

app = typer.Typer(
    name="limbscan",
    help="Find and triage lesions in lower-limb radiographs (DICOM, PNG, JPEG).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# The verbs in the order `limbscan --help` lists them, then the groups.
for verbs in (train.verbs, evaluate.verbs, data.verbs, deploy.verbs):
    app.add_typer(verbs)
app.add_typer(data.app, name="data")
app.add_typer(gate.app, name="gate")


def _version_callback(value: bool) -> None:
    if value:
        from limbscan import __version__

        render.version(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    pass


def main() -> None:
    # pydicom's own warnings can quote element values; limbscan reports problems itself.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    try:
        app()
    except LimbscanError as err:
        render.error(err)
        sys.exit(1)
    except KeyboardInterrupt:
        render.interrupted()
        sys.exit(130)
