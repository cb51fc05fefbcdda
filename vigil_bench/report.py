"""How a bench prints what it measured: a table for people, JSON for scripts and for the committed results."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


def emit(report: dict[str, Any], as_json: bool, output: Path | None, table: Callable[[dict[str, Any]], str]) -> None:
    """Print a bench report (JSON or a table) and, with ``output``, also write its JSON there."""
    text = json.dumps(report, indent=2)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
    click.echo(text if as_json else table(report))
