"""Every exit code Vigil uses, named once: what ``vigil`` commands exit with (scripts branch on these; docs/cli.md
lists them), and what a worker process tells its pool when it stops on its own."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """A ``vigil`` command's exit status."""

    OK = 0  # done; also when the reader of the output stops early (`| head`)
    ERROR = 1  # unexpected: a bug, with the traceback in the log
    USAGE = 2  # flags, settings, a config file, a camera URL, a source the command cannot use
    DATA = 3  # a dataset or input file is missing or malformed
    BUNDLE = 4  # a model bundle is missing, corrupt or not what the command needs
    BROKER = 5  # the broker is unreachable, or refused a command (ACL)
    DECODE = 6  # a message does not decode
    SOURCE = 7  # a video or camera cannot be opened or read
    WORKERS = 8  # `vigil work --burst` gave up on failing workers
    INTERRUPTED = 130  # Ctrl-C or SIGTERM, after a clean stop (128 + SIGINT, as shells report it)


class ChildExit(IntEnum):
    """A worker process's exit status, read by the pool (sysexits.h names)."""

    OK = 0
    BUNDLE = 66  # EX_NOINPUT: the bundle cannot be loaded; not respawned, the pool stops (exit 4)
    UNREACHABLE = 75  # EX_TEMPFAIL: the broker is unreachable; respawned after a short backoff
    REFUSED = 78  # EX_CONFIG: the broker refuses the login or a command; not respawned, the pool stops (exit 5)
