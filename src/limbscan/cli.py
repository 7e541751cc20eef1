"""Command line: each verb parses its arguments and calls the library."""
import typer

app = typer.Typer(no_args_is_help=True)


def main() -> None:
    app()
