"""One worker process: read → decode → batch → infer → publish+ack, until told to stop.

Built inside the child after spawn (its own Redis client and LiteRT interpreter). Never imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from multiprocessing import parent_process
from pathlib import Path
from types import FrameType

import numpy as np
import prometheus_client as prom
import redis

from common.broker import ACL_HINT, connect, refused
from common.bundle import Bundle
from common.errors import BundleError, DecodeError
from common.exitcodes import ChildExit
from common.inference import Classifier, Model
from common.log import setup_logging
from common.metrics import metrics, observe_many
from common.process import die_with_parent
from common.schemas import Frame, Result, ResultJSON, decode_entry, pack_pixels
from workers.policy import SourcePolicies
from workers.reader import BatchReader, BurstState, Entry, ReadPolicy
from workers.writer import Kind, Outcome, ResultWriter, Tally

log = logging.getLogger(__name__)
FLOAT_VERSION_SUFFIX = ".float"  # results of the savedmodel runtime carry model_version "<bundle version>.float"
TOPK = 3
SAME_REQUEST_S = 1.0  # child_main: a second SIGTERM sooner than this is the same request
WAITING_SAY_EVERY_S = 30.0  # --burst: how often a worker says which end-of-stream markers it still waits for
# A child's exit codes the pool acts on (sysexits' values):


@dataclass(frozen=True)
class WorkerConfig:
    """Settings a child needs; plain values so they pickle across the spawn boundary."""

    redis_url: str
    namespace: str
    bundle: Path
    policy: ReadPolicy
    threads: int = 1
    max_deliveries: int = 3
    burst: bool = False
    log_level: str = "INFO"
    log_json: bool = False
    max_age_ms: int = 500  # stale threshold of a live source whose meta hash does not say (settings.max_age_ms)
    metrics: bool = False  # record Prometheus metrics (the pool serves them in multiprocess mode)
    burst_idle_s: float | None = None  # burst: also exit after this long with nothing to do, ended or not
    runtime: str = "litert"  # or "savedmodel": the bundle's float model through TensorFlow (workers/float_model.py)


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.client = connect(config.redis_url)
        self.bundle = Bundle.load(config.bundle, verify_hashes=False)
        self.classifier = load_classifier(self.bundle, config.runtime, config.threads)
        self.model_version = self.bundle.version + (FLOAT_VERSION_SUFFIX if config.runtime == "savedmodel" else "")
        with contextlib.suppress(redis.ResponseError):  # an ACL user may lack CLIENT; the name is only a label
            self.client.client_setname(f"{config.namespace}:worker:{os.getpid()}")  # seen in CLIENT LIST
        self.reader = BatchReader(self.client, config.namespace, self.name, config.policy)
        self.writer = ResultWriter(self.client, config.namespace)
        self.policies = SourcePolicies(self.client, config.namespace, config.max_age_ms)
        self.metrics = BatchMetrics() if config.metrics else None
        self.stopping = False
        self._looked = False  # burst_done has looked at the sources once
        self.processed = 0
        self._encoders: dict[str, ResultJSON] = {}

    def run(self) -> None:
        log.info("worker %s ready (model %s, %s, %d threads)", self.name, self.model_version, self.config.runtime,
                 self.config.threads)
        quiet = QuietClock()
        while not self.stopping:
            entries = self.reader.next_batch()
            if entries:
                self.process(entries)
                quiet.reset()
            elif self.config.burst and self.burst_done(quiet):
                break
        self.process(self.reader.release())
        self.reader.leave()
        log.info("worker %s stopping after %d frames answered (end-of-stream markers included)", self.name,
                 self.processed)

    def burst_done(self, quiet: QuietClock) -> bool:
        """Burst mode: every source ended and is drained; or, with ``burst_idle_s``, the streams stayed settled
        (nothing unread or pending, no new entry) for that long (a producer that died before its end-of-stream
        marker would otherwise hold the pool forever)."""
        state = self.reader.burst_state()
        if state.drained:
            return True
        quiet_s = quiet.observe(state)
        limit = self.config.burst_idle_s
        first_look = not self._looked
        self._looked = True
        due = quiet.due_to_say(WAITING_SAY_EVERY_S)
        if not state.any_source and (due or first_look):
            log.info("worker %s: no source is registered under namespace %r yet; waiting for a producer (is "
                     "VIGIL_NAMESPACE the producer's? Pass --burst-idle SECONDS to stop waiting)", self.name,
                     self.config.namespace)
        elif due and state.not_ended:
            log.info("worker %s: every frame is answered; waiting for the end-of-stream marker of %s (a producer "
                     "still running, or one that stopped early: run it again to finish, or pass --burst-idle "
                     "SECONDS to stop waiting)", self.name, ", ".join(state.not_ended))
        if limit is None or quiet_s < limit:
            return False
        if state.any_source:
            log.warning("worker %s: nothing unread, pending or new for %.0f s; exiting although %s never sent an "
                        "end-of-stream marker (--burst-idle)", self.name, quiet_s, ", ".join(state.not_ended))
        else:
            log.warning("worker %s: no source was registered within %.0f s; exiting (--burst-idle)", self.name,
                        quiet_s)
        return True

    def process(self, entries: list[Entry]) -> None:
        """decode -> infer -> publish results and ack, atomically."""
        if not entries:
            return
        todo, outcomes = self.decode(entries)
        started = time.perf_counter()
        outcomes += self.infer(todo)
        infer_s = time.perf_counter() - started
        tallies = self.writer.publish(outcomes)
        # what this call acked: not an entry left pending for another try, nor one another worker already did
        self.processed += sum(t.results + t.dead + t.stale + t.eos for t in tallies.values())
        if self.metrics is not None:
            self.metrics.record(entries, tallies, infer_s, self.origins(todo))

    def decode(self, entries: list[Entry]) -> tuple[ToClassify, list[Outcome]]:
        """Split a batch into frames to classify and outcomes decided without the model (every frame of every
        entry gets exactly one of the two, except an entry left pending for another try). Nothing an entry holds
        can crash the batch: an error no check foresaw leaves the entry pending once (the janitor hands it out
        again), then dead-letters it, logged with its traceback."""
        todo = ToClassify()
        outcomes: list[Outcome] = []
        policies = {source: self.policies.get(source) for source in {e.source for e in entries}}
        now = time.time()
        for entry in entries:
            poison = entry.deliveries > self.config.max_deliveries
            reason = f"delivered {entry.deliveries} times (max_deliveries={self.config.max_deliveries})"
            decoded = self._frames_of(entry)
            if decoded is None:  # left pending: the janitor hands it out again after claim_idle_ms
                continue
            if isinstance(decoded, str):
                outcomes.append(self.dead(entry, reason if poison else decoded, frames=entry.frames))
                continue
            if poison:  # one dead letter per frame, each naming its frame
                outcomes += [self.dead(entry, reason, frame) for frame in decoded]
                continue
            policy = policies[entry.source]
            if not policy.live and decoded[0].shape == self.classifier.input_shape:
                pixels = pack_pixels(decoded)  # the usual file pack: all its pixels as one array
                if pixels is not None:
                    todo.add(entry, decoded, pixels)
                    continue
            for frame in decoded:
                if frame.eos:
                    outcomes.append(self.eos(entry, frame))
                elif policy.is_stale(frame.captured_at, now):
                    outcomes.append(Outcome(entry.source, entry.entry_id, Kind.STALE, {}))
                elif isinstance(one := self._pixels_of(entry, frame), str):
                    outcomes.append(self.dead(entry, one, frame))
                else:
                    todo.add(entry, [frame], one[None])
        return todo, outcomes

    def _frames_of(self, entry: Entry) -> list[Frame] | str | None:
        """The entry's frames, why it cannot be decoded, or None: left pending for another try."""
        try:
            decoded = decode_entry(entry.fields)
            if decoded[0].source != entry.source:
                raise DecodeError(f"frame of source {decoded[0].source!r} on the stream of {entry.source!r}")
        except DecodeError as exc:
            return str(exc)
        except Exception as exc:  # a check missed it, or a passing failure (MemoryError): never crash the batch
            if entry.deliveries < 2:
                log.exception("entry %s %s failed to decode; left pending for one more try", entry.source,
                              entry.entry_id)
                return None
            log.exception("entry %s %s failed to decode again: dead-lettering it", entry.source, entry.entry_id)
            return _unexpected(exc)
        return decoded

    def _pixels_of(self, entry: Entry, frame: Frame) -> np.ndarray | str:
        """One frame's (H, W, C) pixels in the model's input shape, or why not."""
        try:
            one = frame.pixels()
            if one.shape != self.classifier.input_shape:
                raise DecodeError(f"frame shape {one.shape} != model input {self.classifier.input_shape}")
        except DecodeError as exc:
            return str(exc)
        except Exception as exc:
            log.exception("frame %s of entry %s failed to decode", frame.frame_id, entry.entry_id)
            return _unexpected(exc)
        return one

    def infer(self, todo: ToClassify) -> list[Outcome]:
        if not todo.frames:
            return []
        batch = todo.blocks[0] if len(todo.blocks) == 1 else np.concatenate(todo.blocks)
        probs = self.classifier.predict_bucketed(batch)  # power-of-two chunks: no compute spent on padding
        now = time.time()
        top = np.argsort(-probs, axis=1, kind="stable")[:, :TOPK]  # top-k for the whole batch at once
        top_p = np.take_along_axis(probs, top, axis=1)
        out = []
        for (entry, frame), idx, ps in zip(todo.frames, top.tolist(), top_p.tolist(), strict=True):
            fields = self._encoder(entry.source).fields(frame.seq, idx, ps, frame.captured_at, frame.produced_at, now)
            out.append(Outcome(entry.source, entry.entry_id, Kind.RESULT, {}, 1, fields))
        return out

    def _encoder(self, source: str) -> ResultJSON:
        encoder = self._encoders.get(source)
        if encoder is None:
            encoder = self._encoders[source] = ResultJSON(source, self.model_version, self.name, self.bundle.labels)
        return encoder

    def origins(self, todo: ToClassify) -> dict[str, np.ndarray]:
        """Per source, when each classified frame was captured (live) or produced (file)."""
        out: dict[str, list[float]] = defaultdict(list)
        policies = {source: self.policies.get(source) for source in {e.source for e, _ in todo.frames}}
        for entry, frame in todo.frames:
            out[entry.source].append(policies[entry.source].origin(frame.captured_at, frame.produced_at))
        return {source: np.array(starts) for source, starts in out.items()}

    def eos(self, entry: Entry, frame: Frame) -> Outcome:
        res = Result(frame.source, frame.frame_id, frame.seq, produced_at=frame.produced_at,
                     inferred_at=time.time(), model_version=self.model_version, worker=self.name, type="eos")
        return Outcome(entry.source, entry.entry_id, Kind.EOS, res.encode())

    def dead(self, entry: Entry, reason: str, frame: Frame | None = None, frames: int = 1) -> Outcome:
        """A dead letter for one frame of ``entry``, or (no ``frame``) for the whole entry and its ``frames``."""
        frame_id = frame.frame_id if frame is not None else ""
        log.warning("dead-lettering %s %s %s: %s", entry.source, entry.entry_id, frame_id, reason)
        fields = {"source": entry.source, "entry_id": entry.entry_id, "frame_id": frame_id,
                  "frames": str(frames), "reason": reason, "deliveries": str(entry.deliveries),
                  "worker": self.name, "at": f"{time.time():.6f}"}
        return Outcome(entry.source, entry.entry_id, Kind.DEAD, fields, frames)


def _unexpected(exc: Exception) -> str:
    return f"cannot decode: {type(exc).__name__}: {exc}"[:500]


class ToClassify:
    """The frames of a batch that go to the model: ``frames[i]`` has its pixels at row i of the blocks, stacked."""

    def __init__(self) -> None:
        self.frames: list[tuple[Entry, Frame]] = []
        self.blocks: list[np.ndarray] = []  # (n, H, W, C) each: a whole pack at once, or one frame

    def add(self, entry: Entry, frames: list[Frame], pixels: np.ndarray) -> None:
        self.frames += [(entry, frame) for frame in frames]
        self.blocks.append(pixels)


class QuietClock:
    """How long the streams have been settled: nothing unread or pending anywhere and no stream grown since the
    last look. Any change (or a batch this worker processed) starts it again."""

    def __init__(self) -> None:
        self._since: float | None = None
        self._lengths: tuple[int, ...] | None = None
        self._said = 0.0  # settled seconds when due_to_say last answered True

    def reset(self) -> None:
        self._since = None
        self._said = 0.0

    def due_to_say(self, every_s: float) -> bool:
        """True once per ``every_s`` of one settled stretch (the first time after ``every_s``)."""
        quiet_s = 0.0 if self._since is None else time.monotonic() - self._since
        if quiet_s < self._said + every_s:
            return False
        self._said = quiet_s
        return True

    def observe(self, state: BurstState) -> float:
        now = time.monotonic()
        if not state.settled or state.lengths != self._lengths:
            self._since, self._lengths, self._said = None, state.lengths, 0.0
            if not state.settled:
                return 0.0
        if self._since is None:
            self._since = now
        return now - self._since


class BatchMetrics:
    """Prometheus recording per batch: a few counter increments per source, never one call per frame."""

    def __init__(self) -> None:
        self.m = metrics()
        self._children: dict[str, SourceMetrics] = {}  # .labels() takes a lock and builds a key on each call

    def record(self, entries: list[Entry], tallies: dict[str, Tally], infer_s: float,
               origins: dict[str, np.ndarray]) -> None:
        frames_in: Counter[str] = Counter()
        for entry in entries:
            frames_in[entry.source] += entry.frames
        for source, n in frames_in.items():
            self._of(source).frames_in.inc(n)
        for source, t in tallies.items():
            child = self._of(source)
            if t.results:
                child.results_out.inc(t.results)
            if t.dead:
                child.dead_letters.inc(t.dead)
            if t.stale:
                child.stale.inc(t.stale)
        classified = sum(len(v) for v in origins.values())
        if classified:
            self.m.batch_size.observe(classified)
            self.m.inference_seconds.observe(infer_s)
        done = time.time()  # after the publish script returned: the result is visible to readers
        for source, starts in origins.items():
            observe_many(self._of(source).latency, done - starts)

    def _of(self, source: str) -> SourceMetrics:
        child = self._children.get(source)
        if child is None:
            m = self.m
            child = self._children[source] = SourceMetrics(
                m.frames_in.labels(source), m.results_out.labels(source), m.dead_letters.labels(source),
                m.frames_dropped.labels(source, "stale"), m.capture_to_result_seconds.labels(source))
        return child


@dataclass(frozen=True)
class SourceMetrics:
    frames_in: prom.Counter
    results_out: prom.Counter
    dead_letters: prom.Counter
    stale: prom.Counter
    latency: prom.Histogram


def load_classifier(bundle: Bundle, runtime: str, threads: int) -> Model:
    """The INT8 LiteRT classifier, or with ``runtime="savedmodel"`` the float one (the only import of TensorFlow
    a worker can make)."""
    if runtime == "savedmodel":
        from workers.float_model import SavedModelClassifier

        return SavedModelClassifier(bundle, threads)
    return Classifier.from_bundle(bundle, threads)


def child_main(config: WorkerConfig) -> None:
    """Entry point of a spawned worker process. SIGTERM: drain (finish the batch, ack, exit); another SIGTERM more
    than ``SAME_REQUEST_S`` later: exit now.

    SIGINT is ignored: Ctrl-C reaches the whole process group and the supervisor turns it into a SIGTERM per
    child, so acting on both would count as two requests and skip the drain. For the same reason a second
    SIGTERM soon after the first is the same request (systemd's KillMode=control-group signals every process of
    the unit, then the supervisor forwards its own)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()  # a pool killed by SIGKILL or the OOM killer must not leave its workers reading on
    setup_logging(config.log_level, config.log_json)
    parent = parent_process()
    if parent is not None and not parent.is_alive():  # it died before the line above
        sys.exit(ChildExit.OK)
    try:
        _serve(config)
    except BundleError as exc:  # it loaded when the pool started: moved, deleted or replaced since
        log.error("worker %d: %s", os.getpid(), exc)
        sys.exit(ChildExit.BUNDLE)
    except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError) as exc:  # no retry fixes
        log.error("worker %d: the broker refuses the login (%s). Check the user and password in REDIS_URL.",
                  os.getpid(), exc)
        sys.exit(ChildExit.REFUSED)
    except (redis.ConnectionError, redis.TimeoutError) as exc:  # redis-py's retries are spent: one line, no trace
        log.error("worker %d: the broker is unreachable (%s)", os.getpid(), exc)
        sys.exit(ChildExit.UNREACHABLE)
    except redis.RedisError as exc:
        if not refused(exc):
            raise  # a reply no check foresaw: the traceback, and the supervisor respawns this process with backoff
        log.error("worker %d: the broker refuses a command the workers need (%s). %s", os.getpid(), exc, ACL_HINT)
        sys.exit(ChildExit.REFUSED)


def _serve(config: WorkerConfig) -> None:
    worker = Worker(config)
    first: list[float] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if first and time.monotonic() - first[0] > SAME_REQUEST_S:
            os._exit(128 + signum)
        if not first:
            first.append(time.monotonic())
        worker.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    worker.run()
    worker.client.close()
