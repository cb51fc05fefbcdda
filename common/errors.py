"""One exception tree. Every user-facing error names what is wrong and what to do about it."""

from __future__ import annotations


class VigilError(Exception):
    """Base of every error Vigil raises on purpose. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class ConfigError(VigilError):
    """Settings, flags or a config file are invalid."""

    exit_code = 2


class DataError(VigilError):
    """A dataset or input file is missing or malformed."""

    exit_code = 3


class BundleError(VigilError):
    """A model bundle is missing, corrupt or does not match what the caller expects."""

    exit_code = 4


class BrokerError(VigilError):
    """The Redis-protocol broker cannot be reached or started."""

    exit_code = 5


class DecodeError(VigilError):
    """A message on a stream does not decode to the schema it claims (poison frame)."""

    exit_code = 6


class SourceError(VigilError):
    """A video source (file, camera) cannot be opened or read."""

    exit_code = 7


class WorkerError(VigilError):
    """Worker processes keep failing: a burst pool gave up instead of respawning them for ever."""

    exit_code = 8


class Interrupted(VigilError):
    """Stopped by a signal (Ctrl-C, SIGTERM) after a clean stop: what was done is kept (a file producer's run
    resumes when run again)."""

    exit_code = 130
