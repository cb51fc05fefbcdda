import pytest
import redis

from common.broker import connect, ping, redact
from common.embedded import EmbeddedBroker, broker_url
from common.errors import BrokerError, ConfigError


@pytest.mark.integration  # starts a server of its own
def test_embedded_broker_starts_answers_and_stops() -> None:
    with EmbeddedBroker() as broker:
        assert connect(broker.url).ping()
        data_dir = broker.dir
    assert data_dir is not None and not data_dir.exists()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(broker.url, socket_connect_timeout=0.5).ping()


@pytest.mark.integration  # starts a server of its own
def test_broker_url_without_config_starts_embedded() -> None:
    with broker_url(None) as url:
        assert url.startswith("redis://127.0.0.1:")
        assert connect(url).ping()


def test_unreachable_broker_is_a_named_error() -> None:
    with pytest.raises(BrokerError, match="unreachable"):
        ping("redis://127.0.0.1:1/0")


def test_bad_scheme_is_a_named_error() -> None:
    with pytest.raises(ConfigError, match="invalid broker URL"):
        connect("http://example.com")


def test_a_bad_url_exits_as_a_configuration_error(monkeypatch, capsys) -> None:
    from common.cli import main

    monkeypatch.setenv("REDIS_URL", "foo")
    assert main(["results", "export"]) == 2
    assert "invalid broker URL 'foo'" in capsys.readouterr().err


def test_a_port_left_in_time_wait_is_free() -> None:
    """A stopped `vigil broker` leaves its closed connections in TIME_WAIT for a minute; its port still counts as
    free (the server, with SO_REUSEADDR, can listen there), so a restart on it is not refused as "in use"."""
    import socket

    from common.embedded import free_port, port_is_free

    port = free_port()
    with socket.create_server(("127.0.0.1", port)) as server:
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the server's side closes first: its end of the connection stays in TIME_WAIT
        client.close()
    assert port_is_free(port)
    with socket.create_server(("127.0.0.1", port)):
        assert not port_is_free(port)  # a listener is still refused


def test_password_is_redacted() -> None:
    assert redact("redis://user:secret@host:6379/0") == "redis://***@host:6379/0"
    assert redact("user:secret@host:6379") == "***@host:6379"
    assert redact("rediss://host:6379/0?password=secret&db=1") == "rediss://host:6379/0?password=***&db=1"


@pytest.mark.parametrize("url", ["http://vigil:s3cret@example.com", "vigil:s3cret@example.com:6379"])
def test_invalid_url_error_does_not_show_the_password(url: str) -> None:
    with pytest.raises(ConfigError, match="invalid broker URL") as err:
        connect(url)
    assert "s3cret" not in str(err.value) and "***@example.com" in str(err.value)


@pytest.mark.integration  # starts a server of its own
def test_embedded_server_dies_with_a_killed_parent() -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    code = "from common.embedded import EmbeddedBroker; b = EmbeddedBroker().start(); print(b.url, flush=True); " \
           "import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()


def test_acl_user_and_password_in_the_url(embedded_broker) -> None:
    admin = connect(embedded_broker.url)
    admin.acl_setuser("vigiltest", enabled=True, passwords=["+s3cret"], keys=["*"], commands=["+@all"])
    try:
        assert connect(f"redis://vigiltest:s3cret@127.0.0.1:{embedded_broker.port}/0").ping()
        with pytest.raises(BrokerError, match="unreachable"):
            ping(f"redis://vigiltest:wrong@127.0.0.1:{embedded_broker.port}/0")
    finally:
        admin.acl_deluser("vigiltest")


@pytest.mark.integration  # starts a server of its own
def test_broker_command_prints_url_and_stops_on_sigterm() -> None:
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "common.cli", "broker", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip().removeprefix("export REDIS_URL=")
    assert connect(url).ping()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()


@pytest.mark.integration  # starts a server of its own
def test_broker_command_whose_server_dies_exits_5_saying_so() -> None:
    """When the server goes away under it (killed, out of memory), `vigil broker` exits 5 and says so, without a
    traceback."""
    import signal
    import subprocess
    import sys

    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "common.cli", "broker", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()
    [server] = psutil.Process(proc.pid).children()
    server.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 5 and "exited on its own" in err and "Traceback" not in err


@pytest.mark.integration  # starts a server of its own
def test_without_a_url_commands_find_a_vigil_broker_on_its_port(monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """Without a URL, commands use the `vigil broker` on its port, so that they share one broker (with a private
    broker each, a producer's frames would be gone when it exits, and `vigil work` would wait on another, empty
    one). The demo and the benches keep their own; with no `vigil broker` running, a command warns that its
    private broker's content is gone when it exits."""
    import common.embedded

    with EmbeddedBroker() as shared:
        monkeypatch.setattr(common.embedded, "SHARED_PORT", shared.port)
        with broker_url(None) as url:
            assert url == shared.url
        with broker_url(None, private=True) as url:  # the demo and the benches keep their own
            assert url != shared.url
    with caplog.at_level("WARNING", logger="common.embedded"), broker_url(None) as url:
        assert url != shared.url and connect(url).ping()
    assert "runs a private broker, and what it holds is gone when the command exits" in caplog.text


def test_vigil_broker_refuses_a_port_in_use_and_keeps_data_in_dir(embedded_broker, tmp_path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "common.cli", "broker", "--port", str(embedded_broker.port)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 5 and f"port {embedded_broker.port} on 127.0.0.1 is in use" in out.stderr, out.stderr
    assert "export REDIS_URL" not in out.stdout  # nor does it print the other server's URL
    bad = subprocess.run([sys.executable, "-m", "common.cli", "broker", "--port", "99999"], capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode == 2 and "99999" in bad.stderr and "Traceback" not in bad.stderr
    for appendonly in (True, False):  # without AOF: the snapshot taken at stop
        data = tmp_path / f"data-{appendonly}"
        with EmbeddedBroker(appendonly=appendonly, data_dir=data) as broker:
            connect(broker.url).set("kept", "yes")
        assert data.is_dir()
        with EmbeddedBroker(appendonly=appendonly, data_dir=data) as broker:
            assert connect(broker.url).get("kept") == b"yes", appendonly


def test_a_database_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(ConfigError, match="must be a number"):
        connect("redis://127.0.0.1:6379/abc")
    assert connect("redis://127.0.0.1:6379/3").connection_pool.connection_kwargs["db"] == 3
    assert connect("redis://127.0.0.1:6379").connection_pool.connection_kwargs.get("db", 0) == 0
