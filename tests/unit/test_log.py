"""The optional one-line-per-invocation log."""


def test_log_to_syslog_socket(tmp_path, monkeypatch):
    """logFile "syslog": one datagram in syslog format to the local socket, error severity for
    failures."""
    import socket
    import time

    from plugin import log

    path = str(tmp_path / "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    monkeypatch.setattr(log, "SYSLOG_SOCKET", path)
    log.record("syslog", "info", "ADD", {"container": "c1", "result": "ok"}, time.monotonic())
    log.record("syslog", "info", "DEL", {"container": "c1", "result": "error", "code": 11}, time.monotonic())
    first, second = server.recv(4096).decode(), server.recv(4096).decode()
    assert first.startswith("<30>isolation[") and ": ADD container=c1 result=ok duration_ms=" in first
    assert second.startswith("<27>isolation[") and "result=error code=11" in second
    server.close()
