"""`vigil broker`: the embedded Redis-protocol server in the foreground, found by other commands on its port."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import click

from common.embedded import SHARED_PORT, EmbeddedBroker
from common.errors import BrokerError

log = logging.getLogger(__name__)


@click.command("broker")
@click.option("--port", type=click.IntRange(0, 65535), default=SHARED_PORT, show_default=True,
              help="Loopback port (0: any free port). On the default port, other vigil commands find it without "
                   "REDIS_URL.")
@click.option("--dir", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the server's data in this directory, so a restarted broker has it: snapshots (the server's "
                   "default points, and one at stop), and with --appendonly every write. Default: a temp dir "
                   "deleted at stop.")
@click.option("--appendonly", is_flag=True, help="Turn on AOF persistence (fsync every second).")
def broker_command(port: int, data_dir: Path | None, appendonly: bool) -> None:
    """Run the embedded valkey-server in the foreground and print its URL (Ctrl-C or SIGTERM stops it).

    Producers, workers, `vigil results` and `vigil status` started without REDIS_URL use the broker on the
    default port when one answers there.

    \b
    Examples:
      vigil broker                                   # then, in other terminals: vigil work, vigil produce file ...
      vigil broker --dir ~/.vigil/broker --appendonly   # data kept across restarts
      vigil broker --port 0                          # any free port; prints the REDIS_URL to export
    """
    if appendonly and data_dir is None:
        log.warning("--appendonly without --dir: the append-only file lives in a temp dir deleted at stop, so "
                    "nothing survives a restart; pass --dir PATH to keep it")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with EmbeddedBroker(port or None, appendonly, data_dir) as broker:
        click.echo(f"export REDIS_URL={broker.url}")
        try:
            while not stop.is_set() and broker.proc is not None and broker.proc.poll() is None:
                stop.wait(0.5)
        except KeyboardInterrupt:
            stop.set()
        if not stop.is_set():  # the server went away on its own (killed, out of memory): not a clean stop
            code = broker.proc.returncode if broker.proc is not None else None
            tail = (broker.dir / "server.log").read_text()[-800:] if broker.dir is not None else ""
            raise BrokerError(f"the broker's server (valkey-server) exited on its own, code {code}; every command "
                              f"using it lost it. The end of its log:\n{tail}")
    kept = f"; its data is kept in {data_dir}" if data_dir is not None else ""
    log.info("broker on port %d stopped%s", broker.port, kept)
