"""Errors a user sees. Every message names the file and what is wrong with it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class LimbscanError(Exception):
    """Base class: the CLI prints these as one line, without a traceback."""


class BadInputError(LimbscanError):
    """One input (file, annotation, box) cannot be used.

    ``str(err)`` is ``"<path>: <problem>"`` so a batch job can list it as one line.
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True)
class Skipped:
    """An entry a batch job left out, and why (the problem never carries patient data)."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"

    @classmethod
    def from_error(cls, err: BadInputError) -> Skipped:
        return cls(err.path, err.problem)
