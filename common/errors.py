"""One exception tree. Every user-facing error names what is wrong and what to do about it."""

from __future__ import annotations

from common.exitcodes import ExitCode


class VigilError(Exception):
    """Base of every error Vigil raises on purpose. ``exit_code`` is what the CLI exits with."""

    exit_code: int = ExitCode.ERROR


class ConfigError(VigilError):
    """Settings, flags or a config file are invalid."""

    exit_code: int = ExitCode.USAGE


class DataError(VigilError):
    """A dataset or input file is missing or malformed."""

    exit_code: int = ExitCode.DATA


class BundleError(VigilError):
    """A model bundle is missing, corrupt or does not match what the caller expects."""

    exit_code: int = ExitCode.BUNDLE


class BrokerError(VigilError):
    """The Redis-protocol broker cannot be reached or started."""

    exit_code: int = ExitCode.BROKER


class DecodeError(VigilError):
    """A message on a stream does not decode to the schema it claims (poison frame)."""

    exit_code: int = ExitCode.DECODE


class SourceError(VigilError):
    """A video source (file, camera) cannot be opened or read."""

    exit_code: int = ExitCode.SOURCE


class WorkerError(VigilError):
    """Worker processes keep failing: a burst pool gave up instead of respawning them for ever."""

    exit_code: int = ExitCode.WORKERS


class Interrupted(VigilError):
    """Stopped by a signal (Ctrl-C, SIGTERM) after a clean stop: what was done is kept (a file producer's run
    resumes when run again)."""

    exit_code: int = ExitCode.INTERRUPTED
