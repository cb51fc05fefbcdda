import json
import re
import signal
import subprocess
import sys
import time

import fakeredis
import pytest

from common.broker import ensure_group
from common.cli import main
from common.schemas import Result
from common.streams import GROUP, SourceKeys, registry_key
from tests.helpers import TINY_BUNDLE
from vigil_results.reader import dead_frames, read_dead, read_results, segments
from workers.writer import Kind, Outcome, ResultWriter


def _res(seq: int, label: str, ts: float) -> Result:
    return Result("cam", f"cam:{seq}", seq, label, 0.9, ts, 1.0, 2.0, "v1", "w", [(label, 0.9)])


def test_segments_group_consecutive_labels_in_seq_order() -> None:
    results = [_res(2, "bag", 0.2), _res(0, "coat", 0.0), _res(1, "coat", 0.1), _res(3, "bag", 0.3)]
    segs = segments(results)
    assert [(s.label, s.start, s.end, s.frames) for s in segs] == [("coat", 0.0, 0.2, 2), ("bag", 0.2, 0.4, 2)]
    assert [(s.first_seq, s.last_seq) for s in segs] == [(0, 1), (2, 3)]


def test_segments_cover_time_and_end_at_frames_without_a_result() -> None:
    """A segment ends where the frame after its last one begins (a one-frame segment lasts a frame period, not
    0 s, and consecutive segments leave no time between them); a frame with no result ends a run, which is not
    merged across it, and so does a jump in capture time (a camera offline)."""
    results = [_res(0, "coat", 0.0), _res(1, "bag", 0.5), _res(2, "bag", 1.0), _res(5, "bag", 2.5)]
    segs = segments(results)
    assert [(s.label, s.start, s.end, s.first_seq, s.last_seq) for s in segs] == [
        ("coat", 0.0, 0.5, 0, 0), ("bag", 0.5, 1.5, 1, 2), ("bag", 2.5, 3.0, 5, 5)]
    offline = [_res(0, "bag", 0.0), _res(1, "bag", 0.5), _res(2, "bag", 1.0), _res(3, "bag", 9.0)]  # 8 s away
    assert [(s.start, s.end, s.frames) for s in segments(offline)] == [(0.0, 1.5, 3), (9.0, 9.5, 1)]


def test_readers_page_results_and_count_dead_frames_on_plain_redis_calls() -> None:
    """Reading back is plain XRANGE paging (fakeredis: no delivery semantics involved): every result in stream
    order past one page, the end-of-stream entry only when asked, and a dead letter for a pack counts its frames."""
    client = fakeredis.FakeRedis()
    keys = SourceKeys("ns", "cam")
    for seq in range(1205):  # more than one page of 1,000
        client.xadd(keys.results, _res(seq, "coat", seq / 25).encode())
    client.xadd(keys.results, Result("cam", "cam:1205", 1205, type="eos").encode())
    client.xadd(keys.dead, {"frame_id": "cam:7", "reason": "undecodable pack", "frames": "16"})
    client.xadd(keys.dead, {"frame_id": "cam:40", "reason": "max deliveries"})
    assert [r.seq for r in read_results(client, "ns", "cam")] == list(range(1205))
    assert read_results(client, "ns", "cam", include_eos=True)[-1].type == "eos"
    assert dead_frames(read_dead(client, "ns", "cam")) == 17


def _pending_entries(client, keys: SourceKeys, n: int, consumer: str = "a") -> None:
    ensure_group(client, keys.frames, GROUP)
    for i in range(n):
        client.xadd(keys.frames, {"f": b"x"}, id=f"1-{i}")
    client.xreadgroup(GROUP, consumer, {keys.frames: ">"})


def _outcome(i: int) -> Outcome:
    return Outcome("cam", f"1-{i}", Kind.RESULT, _res(i, "coat" if i < 3 else "bag", i / 10).encode())


@pytest.fixture
def published(client, namespace):
    keys = SourceKeys(namespace, "cam")
    client.sadd(registry_key(namespace), "cam")
    _pending_entries(client, keys, 5)
    assert ResultWriter(client, namespace).publish([_outcome(i) for i in range(5)])["cam"].results == 5
    return keys


@pytest.mark.integration
def test_redelivered_outcome_writes_no_second_result(client, namespace, published) -> None:
    assert ResultWriter(client, namespace).publish([_outcome(0)])["cam"].results == 0
    assert [r.seq for r in read_results(client, namespace, "cam")] == [0, 1, 2, 3, 4]
    assert client.xpending(published.frames, GROUP)["pending"] == 0


@pytest.mark.integration
def test_slow_worker_and_claimer_yield_one_result(client, namespace) -> None:
    keys = SourceKeys(namespace, "cam")
    _pending_entries(client, keys, 1, consumer="slow")
    client.xclaim(keys.frames, GROUP, "janitor", 0, ["1-0"])
    writer = ResultWriter(client, namespace)
    assert writer.publish([_outcome(0)])["cam"].results == 1  # the claimer finishes first
    assert writer.publish([_outcome(0)])["cam"].results == 0  # the slow worker's late write is dropped
    assert len(read_results(client, namespace, "cam")) == 1


@pytest.mark.integration
def test_export_jsonl_and_csv(monkeypatch, capsys, redis_url, namespace, published) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("VIGIL_NAMESPACE", namespace)
    assert main(["results", "export"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["seq"] for x in lines] == [0, 1, 2, 3, 4]
    assert main(["results", "export", "--format", "csv"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].startswith("source,frame_id,seq,label") and len(rows) == 6


@pytest.mark.integration
def test_summary_and_tail(monkeypatch, capsys, redis_url, namespace, published) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("VIGIL_NAMESPACE", namespace)
    assert main(["results", "summary", "--json"]) == 0
    assert [s["label"] for s in json.loads(capsys.readouterr().out)["cam"]] == ["coat", "bag"]
    assert main(["results", "tail", "--from-start", "--label", "bag", "--max", "2", "--json"]) == 0
    assert [json.loads(x)["seq"] for x in capsys.readouterr().out.splitlines()] == [3, 4]


@pytest.fixture
def cli_env(monkeypatch, redis_url, namespace) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("VIGIL_NAMESPACE", namespace)
    monkeypatch.setenv("VIGIL_BUNDLE", str(TINY_BUNDLE))


@pytest.mark.integration
def test_export_to_a_missing_directory_is_a_clear_error(cli_env, capsys, tmp_path, published) -> None:
    target = tmp_path / "no" / "such" / "x.csv"
    assert main(["results", "export", "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"directory {target.parent} does not exist" in err and "mkdir -p" in err and "Traceback" not in err
    assert main(["results", "export", "-o", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["results", "export", "-o", str(tmp_path / "x.jsonl")]) == 0
    assert len((tmp_path / "x.jsonl").read_text().splitlines()) == 5


@pytest.mark.integration
@pytest.mark.parametrize("command", ["export", "summary"])
def test_unknown_source_is_an_error_naming_the_known_ones(cli_env, capsys, tmp_path, published, command) -> None:
    out = tmp_path / "keep.jsonl"
    out.write_text("old\n")
    extra = ["-o", str(out)] if command == "export" else []
    assert main(["results", command, "--source", "nosuch", *extra]) == 2
    captured = capsys.readouterr()
    assert "source 'nosuch' is not registered" in captured.err and "known sources: cam" in captured.err
    assert captured.out == "" and out.read_text() == "old\n"  # the error came before the file was truncated


@pytest.mark.integration
def test_tail_warns_about_an_unknown_source_and_waits_for_it(client, namespace, pipeline_env) -> None:
    client.sadd(registry_key(namespace), "cam")
    tail = subprocess.Popen([sys.executable, "-m", "common.cli", "results", "tail", "--source", "later", "--max",
                             "1", "--json"], env=pipeline_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert tail.stderr is not None
        warning = tail.stderr.readline()
        assert "source 'later' is not registered" in warning and "known sources: cam" in warning
        assert "waiting for it to appear" in warning
        client.sadd(registry_key(namespace), "later")
        client.xadd(SourceKeys(namespace, "later").results, {**_res(0, "class1", 0.0).encode(), "source": "later"})
        out, _ = tail.communicate(timeout=20)
    finally:
        tail.kill()
        tail.wait()
    assert tail.returncode == 0 and json.loads(out)["source"] == "later"


def test_tail_unknown_label_is_an_error_naming_the_valid_ones(monkeypatch, capsys) -> None:
    monkeypatch.setenv("VIGIL_BUNDLE", str(TINY_BUNDLE))
    assert main(["results", "tail", "--label", "nosuchlabel"]) == 2
    err = capsys.readouterr().err
    assert "--label 'nosuchlabel' is not a label" in err and "valid labels: class0, class1," in err


@pytest.mark.parametrize(("args", "bad"), [(["--min-score", "2"], "--min-score"),
                                           (["--min-score", "-0.1"], "--min-score"),
                                           (["--max", "0"], "--max"), (["--max", "-1"], "--max")])
def test_tail_rejects_out_of_range_options(capsys, args, bad) -> None:
    assert main(["results", "tail", *args]) == 2
    err = capsys.readouterr().err
    assert f"Invalid value for '{bad}'" in err and "range" in err


def test_results_help_shows_examples() -> None:
    for command in ("tail", "export", "summary"):
        out = subprocess.run([sys.executable, "-m", "common.cli", "results", command, "--help"], capture_output=True,
                             text=True, check=True).stdout
        assert re.search(rf"Examples:\n +vigil results {command}\b", out), out


def _blocked_readers(client) -> int:
    return sum(1 for c in client.client_list() if c["cmd"] == "xread" and "b" in c["flags"])


def _start_tail(client, env: dict[str, str]) -> subprocess.Popen[str]:
    """`vigil results tail --max 2 --json` in a subprocess, once it is blocked in XREAD."""
    before = _blocked_readers(client)
    tail = subprocess.Popen([sys.executable, "-m", "common.cli", "results", "tail", "--max", "2", "--json"],
                            env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while _blocked_readers(client) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    return tail


def _printed(tail: subprocess.Popen[str]) -> list[tuple[str, str]]:
    try:
        out, _ = tail.communicate(timeout=10)
    finally:
        tail.kill()
        tail.wait()
    return sorted((x["source"], x["label"]) for x in map(json.loads, out.splitlines()))


@pytest.fixture
def two_sources(client, namespace) -> tuple[str, str]:
    """Sources a and b; a has a result from before tail starts, b's results stream does not exist yet."""
    client.sadd(registry_key(namespace), "a", "b")
    a, b = SourceKeys(namespace, "a").results, SourceKeys(namespace, "b").results
    client.xadd(a, {**_res(0, "old", 0.0).encode(), "source": "a"})
    return a, b


@pytest.mark.integration
def test_tail_prints_results_of_two_sources_written_in_one_transaction(client, pipeline_env, two_sources) -> None:
    # Redis before 7.2 wakes a client blocked on several streams with the entries of one stream only.
    tail = _start_tail(client, pipeline_env)
    with client.pipeline(transaction=True) as multi:
        multi.xadd(two_sources[0], {**_res(1, "coat", 0.1).encode(), "source": "a"})
        multi.xadd(two_sources[1], {**_res(1, "bag", 0.1).encode(), "source": "b"})
        multi.execute()
    assert _printed(tail) == [("a", "coat"), ("b", "bag")]


@pytest.mark.integration
def test_tail_prints_results_written_between_two_reads(client, pipeline_env, two_sources) -> None:
    tail = _start_tail(client, pipeline_env)
    tail.send_signal(signal.SIGSTOP)  # a's entry wakes tail, b's arrives before tail reads again
    try:
        client.xadd(two_sources[0], {**_res(1, "coat", 0.1).encode(), "source": "a"})
        client.xadd(two_sources[1], {**_res(1, "bag", 0.1).encode(), "source": "b"})
    finally:
        tail.send_signal(signal.SIGCONT)
    assert _printed(tail) == [("a", "coat"), ("b", "bag")]


@pytest.mark.integration
def test_readers_skip_unknown_result_versions_with_one_warning(monkeypatch, capsys, redis_url, namespace,
                                                                client, published) -> None:
    for seq in (5, 6):
        client.xadd(published.results, {**_res(seq, "coat", 0.5).encode(), "v": "2", "new": "x"})
    client.xadd(published.results, _res(7, "bag", 0.7).encode())
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("VIGIL_NAMESPACE", namespace)
    assert main(["results", "export"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(x)["seq"] for x in out.splitlines()] == [0, 1, 2, 3, 4, 7]
    assert err.count("WARNING") == 1 and "skipped 2 results of an unknown schema version (v='2': 2)" in err
    assert main(["results", "summary", "--json"]) == 0
    assert sum(s["frames"] for s in json.loads(capsys.readouterr().out)["cam"]) == 6
    assert main(["results", "tail", "--from-start", "--max", "6", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.splitlines()[-1])["seq"] == 7
    assert err.count("WARNING") == 1 and "skipped 2 results" in err


@pytest.mark.integration
def test_status_counts(monkeypatch, capsys, redis_url, namespace, published) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("VIGIL_NAMESPACE", namespace)
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["results"] == 5


def test_streams_prints_key_names(capsys) -> None:
    assert main(["streams", "cam1"]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == "vigil:{cam1}:frames"


@pytest.mark.integration
def test_a_malformed_result_entry_is_skipped_and_named(cli_env, capsys, client, published) -> None:
    """One entry of another writer, version 1 but without topk (or not UTF-8): export, summary and tail skip it,
    naming it, and print the rest with exit 0 (rather than nothing, with exit 6)."""
    bad = client.xadd(published.results, {"v": "1", "type": "result", "source": "cam", "frame_id": "cam:9",
                                           "seq": "9", "label": "coat", "score": "0.5"}).decode()
    assert main(["results", "export"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(x)["seq"] for x in out.splitlines()] == [0, 1, 2, 3, 4]
    assert f"{published.results} entry {bad}: skipped, not a valid result" in err and "topk" in err
    assert main(["results", "summary", "--json"]) == 0
    assert sum(s["frames"] for s in json.loads(capsys.readouterr().out)["cam"]) == 5
    assert main(["results", "tail", "--from-start", "--max", "5"]) == 0
    assert f"entry {bad}: skipped" in capsys.readouterr().err
    binary = client.xadd(published.results, {**_res(10, "coat", 1.0).encode(), "label": b"\xff"}).decode()
    assert main(["results", "export"]) == 0
    assert f"entry {binary}: skipped, not a valid result (result fields are not UTF-8" in capsys.readouterr().err


@pytest.mark.integration
def test_export_lines_carry_the_schema_version(cli_env, capsys, published) -> None:
    assert main(["results", "export"]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert first["v"] == "1" and first["frame_id"] == "cam:0" and first["topk"] == [["coat", 0.9]]
    assert main(["results", "tail", "--from-start", "--max", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["v"] == "1"


@pytest.mark.integration
def test_a_reader_that_stops_reading_is_not_an_error(client, namespace, pipeline_env) -> None:
    """`vigil results export | head -1`: the reader going away ends export with exit 0, no traceback."""
    keys = SourceKeys(namespace, "cam")
    client.sadd(registry_key(namespace), "cam")
    for seq in range(2000):  # more than a pipe and stdout's buffer hold
        client.xadd(keys.results, _res(seq, "coat", seq / 10).encode())
    export = subprocess.Popen([sys.executable, "-m", "common.cli", "results", "export"], env=pipeline_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert export.stdout is not None and export.stderr is not None
    assert json.loads(export.stdout.readline())["seq"] == 0
    export.stdout.close()  # as `head -1` does
    err = export.stderr.read().decode()
    assert export.wait(30) == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err


@pytest.mark.integration
def test_sigterm_stops_tail_as_ctrl_c_does(namespace, pipeline_env) -> None:
    tail = subprocess.Popen([sys.executable, "-m", "common.cli", "results", "tail"], env=pipeline_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert tail.stderr is not None
        said = tail.stderr.readline()  # written once it is following: the handler is in place
        assert f"no source is registered under namespace '{namespace}' yet" in said
        tail.send_signal(signal.SIGTERM)
        assert tail.wait(20) == 130
    finally:
        tail.kill()
        tail.wait()


@pytest.mark.integration
def test_summary_text_names_frames_and_a_cameras_clock_and_cap(cli_env, capsys, client, namespace, published) -> None:
    assert main(["results", "summary"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "cam: 5 frames with a result, 2 segments"
    assert "    0.00s -     0.30s  frames      0-2      coat" in out[1]
    keys = SourceKeys(namespace, "gate")
    client.sadd(registry_key(namespace), "gate")
    client.hset(keys.meta, mapping={"mode": "live", "results_maxlen": 3, "processed": 12})
    for seq in range(9, 12):  # a camera's capture times are Unix times; its oldest results were trimmed
        client.xadd(keys.results, {**_res(seq, "bag", 1_800_000_000 + seq / 10).encode(), "source": "gate"})
    assert main(["results", "summary", "--source", "gate"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("gate: 3 frames with a result, 1 segments (of 12 processed: its results stream keeps about the "
                      "newest 3)")
    start = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_800_000_000.9)) + ".90"
    assert out[1].startswith(f"  {start} - ") and "frames      9-11" in out[1]
