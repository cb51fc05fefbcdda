"""``vigil work``: the supervised worker pool."""

from __future__ import annotations

import sys

import click

from common.bundle import Bundle
from common.embedded import broker_url
from common.errors import ConfigError
from common.settings import Settings
from workers.pool import Pool
from workers.reader import ReadPolicy
from workers.worker import WorkerConfig


def worker_config(settings: Settings, url: str, burst: bool, burst_idle_s: float | None = None) -> WorkerConfig:
    policy = ReadPolicy(settings.max_batch, settings.max_wait_ms, settings.per_source_cap, settings.block_ms,
                        settings.claim_idle_ms)
    return WorkerConfig(url, settings.namespace, settings.bundle, policy, settings.threads_per_worker,
                        settings.max_deliveries, burst, settings.log_level, settings.log_json,
                        settings.max_age_ms, metrics=settings.metrics_port is not None, burst_idle_s=burst_idle_s,
                        runtime=settings.runtime)


@click.command("work")
@click.option("-n", "--workers", type=click.IntRange(1, 256), default=None, help="Processes (default: cores).")
@click.option("--threads", type=click.IntRange(1, 64), default=None, help="Inference threads per process.")
@click.option("--runtime", type=click.Choice(["litert", "savedmodel"]), default=None,
              help="litert (default): the bundle's INT8 model on the CPU, no TensorFlow. savedmodel: its float "
                   "SavedModel through TensorFlow, on a GPU when TensorFlow sees one (GPU workers; results carry "
                   "model_version <bundle version>.float). Also VIGIL_RUNTIME.")
@click.option("--max-batch", type=click.IntRange(1, 1024), default=None, help="Frames per micro-batch.")
@click.option("--max-wait-ms", type=click.IntRange(0, 10_000), default=None, help="Batch wait after 1st frame.")
@click.option("--claim-idle-ms", type=click.IntRange(100), default=None, help="Reclaim entries idle this long.")
@click.option("--burst", is_flag=True, help="Drain every ended source, then exit 0 (tests, demos, batch jobs); exit 8 "
              "when a worker fails 5 times in a row (the broker is gone).")
@click.option("--burst-idle", "burst_idle", type=click.FloatRange(0), default=None, metavar="SECONDS",
              help="With --burst: also exit once nothing was unread, pending or new for this long, even if a "
                   "source never sent its end-of-stream marker (its producer died) or none was ever registered; "
                   "the log says which.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus /metrics of all workers on this port (0: a free one). Also VIGIL_METRICS_PORT.")
@click.pass_obj
def work(settings: Settings, workers: int | None, threads: int | None, runtime: str | None, max_batch: int | None,
         max_wait_ms: int | None, claim_idle_ms: int | None, burst: bool, burst_idle: float | None,
         metrics_port: int | None) -> None:
    """Classify frames from every registered source: N processes, micro-batches, atomic result+ack.

    SIGTERM drains (finish the batch, ack, exit 0); a second SIGTERM exits at once. --burst exits once every
    registered source (at least one) has sent its end-of-stream marker and nothing is left unread or pending (add
    --burst-idle 30 so that a producer that died before its marker cannot keep the pool waiting).

    Live sources (cameras, meta mode=live): a frame older than the source's max_age_ms when a worker reaches
    it is acked without a result and counted as dropped_stale. Files are lossless and never dropped.
    With --metrics-port the pool serves vigil_worker_* counters, batch size, inference and capture-to-result
    latency histograms summed over its processes, plus lag and pending per source (docs/pipeline.md).
    """
    overrides = {"workers": workers, "threads_per_worker": threads, "runtime": runtime, "max_batch": max_batch,
                 "max_wait_ms": max_wait_ms, "claim_idle_ms": claim_idle_ms, "metrics_port": metrics_port}
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    if burst_idle is not None and not burst:
        raise ConfigError("--burst-idle only applies with --burst; add --burst or drop --burst-idle.")
    bundle = Bundle.load(settings.bundle)  # fail here, with the reason, rather than in N respawning children
    if settings.runtime == "savedmodel":
        from workers.float_model import check_available

        check_available(bundle)
    with broker_url(settings.redis_url) as url:
        config = worker_config(settings, url, burst, burst_idle)
        code = Pool(config, settings.workers, metrics_port=settings.metrics_port).run()
    sys.exit(code)
