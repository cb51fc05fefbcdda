"""``vigil bench``: the benchmarks, each printing ratios measured side by side in one run."""

from __future__ import annotations

import click

from vigil_bench.conveyor_bench import conveyor
from vigil_bench.live import live, live_plot
from vigil_bench.pipeline import pipeline


@click.group("bench")
def bench() -> None:
    """Benchmarks that print side-by-side ratios (results and method: benchmarks/README.md)."""


bench.add_command(pipeline)
bench.add_command(live)
bench.add_command(live_plot)
bench.add_command(conveyor)
