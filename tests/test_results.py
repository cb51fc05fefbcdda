import json

import pytest

from common.broker import ensure_group
from common.cli import main
from common.schemas import Result
from common.streams import GROUP, SourceKeys, registry_key
from workers.publish import Outcome, ResultWriter
from workers.results import read_results, segments


def _res(seq: int, label: str, ts: float) -> Result:
    return Result("cam", f"cam:{seq}", seq, label, 0.9, ts, 1.0, 2.0, "v1", "w", [(label, 0.9)])


def test_segments_group_consecutive_labels_in_seq_order() -> None:
    results = [_res(2, "bag", 0.2), _res(0, "coat", 0.0), _res(1, "coat", 0.1), _res(3, "bag", 0.3)]
    segs = segments(results)
    assert [(s.label, s.start, s.end, s.frames) for s in segs] == [("coat", 0.0, 0.1, 2), ("bag", 0.2, 0.3, 2)]


def _pending_entries(client, keys: SourceKeys, n: int, consumer: str = "a") -> None:
    ensure_group(client, keys.frames, GROUP)
    for i in range(n):
        client.xadd(keys.frames, {"f": b"x"}, id=f"1-{i}")
    client.xreadgroup(GROUP, consumer, {keys.frames: ">"})


def _outcome(i: int) -> Outcome:
    return Outcome("cam", f"1-{i}", "r", _res(i, "coat" if i < 3 else "bag", i / 10).encode())


@pytest.fixture
def published(client, namespace):
    keys = SourceKeys(namespace, "cam")
    client.sadd(registry_key(namespace), "cam")
    _pending_entries(client, keys, 5)
    assert ResultWriter(client, namespace).write_batch([_outcome(i) for i in range(5)]) == 5
    return keys


@pytest.mark.integration
def test_redelivered_outcome_writes_no_second_result(client, namespace, published) -> None:
    assert ResultWriter(client, namespace).write_batch([_outcome(0)]) == 0
    assert [r.seq for r in read_results(client, namespace, "cam")] == [0, 1, 2, 3, 4]
    assert client.xpending(published.frames, GROUP)["pending"] == 0


@pytest.mark.integration
def test_slow_worker_and_claimer_yield_one_result(client, namespace) -> None:
    keys = SourceKeys(namespace, "cam")
    _pending_entries(client, keys, 1, consumer="slow")
    client.xclaim(keys.frames, GROUP, "janitor", 0, ["1-0"])
    writer = ResultWriter(client, namespace)
    assert writer.write_batch([_outcome(0)]) == 1  # the claimer finishes first
    assert writer.write_batch([_outcome(0)]) == 0  # the slow worker's late write is dropped
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


@pytest.mark.integration
def test_status_counts(monkeypatch, capsys, redis_url, namespace, published) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("VIGIL_NAMESPACE", namespace)
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["results"] == 5


def test_streams_prints_key_names(capsys) -> None:
    assert main(["streams", "cam1"]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == "vigil:{cam1}:frames"
