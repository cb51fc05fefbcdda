"""The ``vigil`` console script. Subcommands load lazily, so ``vigil work`` never imports TensorFlow
and ``common`` imports no other package at import time."""

from __future__ import annotations

import atexit
import gc
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click
import redis

from common.broker import ACL_HINT, redact, refused
from common.errors import BrokerError, Interrupted, VigilError
from common.exitcodes import ExitCode
from common.log import setup_logging
from common.settings import load_settings

# name -> (module, attribute, one-line help). The module is imported only when the command runs.
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "model": ("model.cli", "model", "Train, prune, quantize, evaluate and bundle models (needs the [train] extra)."),
    "produce": ("producers.cli", "produce", "Push frames from files or cameras into Redis streams."),
    "work": ("workers.cli", "work", "Run the supervised worker pool that classifies frames."),
    "results": ("vigil_results.cli", "results", "Tail, export and summarise classification results."),
    "status": ("vigil_ops.status", "status", "Show streams, lag, pending, consumers and camera states."),
    "streams": ("vigil_ops.status", "streams", "Print the Redis key names of sources (for redis-cli, KEDA)."),
    "bench": ("vigil_bench.cli", "bench", "Benchmarks that print side-by-side ratios."),
    "demo": ("vigil_bench.demo", "demo", "Run the whole pipeline on a conveyor video of real test images."),
    "broker": ("vigil_ops.broker", "broker_command", "Run the embedded Redis-protocol broker in the foreground."),
}

log = logging.getLogger(__name__)


class _ClosedPipe(Exception):
    """stdout's reader went away. Not an OSError: click turns a broken pipe into exit 1, as if the command failed."""


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*SUBCOMMANDS, *super().list_commands(ctx)])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUBCOMMANDS:
            return super().get_command(ctx, cmd_name)
        module_name, attr, _ = SUBCOMMANDS[cmd_name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            return _unavailable(cmd_name, exc)
        command: click.Command = getattr(module, attr)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help must not import every subcommand (TensorFlow would load for `vigil --help`).
        rows = [(name, SUBCOMMANDS[name][2]) for name in sorted(SUBCOMMANDS)]
        rows += [(n, c.get_short_help_str()) for n, c in sorted(self.commands.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except redis.RedisError as exc:  # redis-py's retries gave up; here the settings still name the broker
            log.debug("broker error", exc_info=True)
            raise _broker_failed(ctx.obj, exc) from exc
        except BrokenPipeError as exc:
            if _stdout_closed():  # another pipe that broke is a failure, not the reader's doing
                raise _ClosedPipe from exc
            raise


def _broker_failed(settings: Any, exc: redis.RedisError) -> BrokerError:
    url = getattr(settings, "redis_url", None)
    where = redact(url) if url else "(the embedded one)"
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        hint = "Is the server up and reachable? Check REDIS_URL or --redis-url."
    elif refused(exc):
        hint = f"The broker's ACL rule for this user lacks it: {ACL_HINT}"
    else:
        hint = "Check the server's log and limits (maxmemory, ACL rules)."
    return BrokerError(f"broker {where} failed: {type(exc).__name__}: {str(exc).rstrip('.')}. {hint} "
                       "(`vigil --log-level DEBUG ...` shows the traceback)")


def _unavailable(name: str, exc: ModuleNotFoundError) -> click.Command:
    @click.command(name=name, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def missing(args: tuple[str, ...]) -> None:
        hint = " Install the training extra: pip install 'vigil[train]'." if exc.name in (
            "tensorflow", "tf_keras", "tensorflow_model_optimization", "matplotlib") else ""
        raise click.ClickException(f"`vigil {name}` is unavailable: module {exc.name!r} is missing.{hint}")

    return missing


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="Settings file (.toml or .yaml). Also VIGIL_CONFIG.")
@click.option("--redis-url", default=None,
              help="Broker URL. Unset: a `vigil broker` on its default port, else an embedded server of the command's "
                   "own (status, results and streams exit 5 instead: an empty broker has nothing to show). Also "
                   "REDIS_URL.")
@click.option("--bundle", type=click.Path(path_type=Path), default=None,
              help="Model bundle directory (workers, producers, results). Also VIGIL_BUNDLE.")
@click.option("--log-level", default=None, type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.option("--log-json", is_flag=True, default=None, help="One JSON object per log line.")
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None, redis_url: str | None, bundle: Path | None,
        log_level: str | None, log_json: bool | None) -> None:
    """Vigil: streaming video classification on Redis streams.

    \b
    Frames flow producer -> Redis stream -> worker pool -> results stream:
      vigil demo                      the whole pipeline on a conveyor video (no setup)
      vigil produce file VIDEO        push a video file's frames (lossless, resumable)
      vigil work                      classify frames with the bundle's INT8 model
      vigil results tail              follow labels as they are published
      vigil model evaluate --json     accuracy, size and speed of the shipped bundle

    Settings come from VIGIL_* env vars, then --config FILE, then flags. `vigil config` prints them.
    """
    import os

    url = redis_url or os.environ.get("REDIS_URL") or None
    settings = load_settings(config_file, redis_url=url, bundle=bundle, log_level=log_level, log_json=log_json)
    setup_logging(settings.log_level, settings.log_json)
    ctx.obj = settings


@cli.command("config")
@click.pass_obj
def config_cmd(settings: Any) -> None:
    """Print the effective settings as JSON (env + file + flags resolved; the broker password redacted)."""
    values = settings.model_dump(mode="json")
    if values["redis_url"]:
        values["redis_url"] = redact(values["redis_url"])
    click.echo(json.dumps(values, indent=2))


def main(argv: list[str] | None = None) -> int:
    _quick_exit()
    _one_blas_thread()
    try:
        cli.main(args=argv, prog_name="vigil", standalone_mode=False)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit (exit 120)
    except (_ClosedPipe, BrokenPipeError) as exc:  # stdout's reader went away (`vigil results export | head`)
        if isinstance(exc, BrokenPipeError) and not _stdout_closed():  # from the flush above, or another pipe
            raise
        _discard_stdout()
        return ExitCode.OK
    except Interrupted as exc:
        click.echo(f"interrupted: {exc}", err=True)
        return exc.exit_code
    except VigilError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("interrupted", err=True)
        return ExitCode.INTERRUPTED
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    return ExitCode.OK


def _stdout_closed() -> bool:
    """stdout is a pipe whose reader went away (poll reports an error on its write end)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # not a real file (captured in tests)
        return False


def _discard_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered would fail again when the interpreter flushes it."""
    import os

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (captured in tests)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _one_blas_thread() -> None:
    """Unless the user chose otherwise, OpenBLAS (bundled twice: by numpy and by OpenCV) starts no threads of
    its own. Vigil does no BLAS work (LiteRT, FFmpeg and TensorFlow have their own threads), yet each library's
    thread spins ~0.1 s of CPU right after import, in every process: importing numpy and cv2 takes 0.20 s of CPU
    instead of 0.11 s. Set before any subcommand imports numpy; spawned workers inherit it."""
    import os

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _quick_exit() -> None:
    """At exit, move every object to the GC's permanent generation (``gc.freeze``), once per process: the
    interpreter's last collections then skip them instead of walking the whole heap of imported modules.
    ``vigil produce file`` exits in ~0.015 s instead of ~0.09 s, CPU otherwise taken from the workers still
    draining its frames. Nothing is lost: what is not collected is freed with the process, and atexit handlers
    (logging's flush among them) still run."""
    global _QUICK_EXIT
    if not _QUICK_EXIT:
        _QUICK_EXIT = True
        atexit.register(gc.freeze)  # registered first, so it runs after the handlers registered later


_QUICK_EXIT = False


if __name__ == "__main__":
    sys.exit(main())
