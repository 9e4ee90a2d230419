"""The access log: the line classifier/asgi.py writes is the one gunicorn's own access log wrote for the same
request, and classifier.accesslog writes it cheaper."""

from __future__ import annotations

import datetime
import re
import time
from types import SimpleNamespace

import pytest
from gunicorn import glogging
from gunicorn.config import Config

from classifier import accesslog, asgi

SCOPE = {
    "type": "http", "http_version": "1.1", "method": "POST", "path": '/score', "raw_path": b"/score",
    "query_string": b"x=%22a b%22", "headers": [], "client": ("127.0.0.1", 50000),
}  # fmt: skip
ENVIRON = {  # what gunicorn's sync worker gave its access log for the same request
    "REMOTE_ADDR": "127.0.0.1",
    "REQUEST_METHOD": "POST",
    "RAW_URI": "/score?x=%22a b%22",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "PATH_INFO": "/score",
    "QUERY_STRING": "x=%22a b%22",
}
LINE = '127.0.0.1 "POST /score HTTP/1.1" 200 153 0ms <1>\n'


def config(target: str | None = "-") -> Config:
    cfg = Config()
    cfg.set("accesslog", target)
    cfg.set("access_log_format", accesslog.FORMAT)
    return cfg


@pytest.mark.parametrize(("status", "sent"), [(200, 153), (413, 0), (404, 0)])
def test_lines_are_the_ones_gunicorn_wrote(capfd, status, sent):
    elapsed = datetime.timedelta(microseconds=4321)
    response = SimpleNamespace(status=f"{status} X", sent=sent, headers=[("Content-Type", "application/json")])
    glogging.Logger(config()).access(response, SimpleNamespace(headers=[]), ENVIRON, elapsed)
    theirs = re.sub(r"<\d+>", "<pid>", capfd.readouterr().out)
    ours = asgi._access_line(SCOPE, status, sent, time.perf_counter() - 0.0043)
    assert re.sub(r"<\d+>", "<pid>", ours) == theirs
    assert theirs.count("\n") == 1


def test_stdout_lines_are_buffered_and_written_in_whole_lines_of_at_most_pipe_buf_bytes(capfd, monkeypatch):
    # A pipe write of at most PIPE_BUF bytes is atomic: two workers' batches never split each other's lines.
    chunks: list[bytes] = []
    write = accesslog.os.write
    monkeypatch.setattr(accesslog.os, "write", lambda fd, data: chunks.append(bytes(data)) or write(fd, data))
    writer = accesslog.Logger(config()).access_writer()
    writer(LINE)
    assert capfd.readouterr().out == "" and not chunks  # buffered...
    for _ in range(199):  # about 3 pipe buffers of lines
        writer(LINE)
    assert len(chunks) >= 2  # full batches went out while logging, not one write per line
    accesslog.Logger.flush_access(writer.__self__)
    assert all(len(chunk) <= accesslog.FLUSH_BYTES and chunk.endswith(b"\n") for chunk in chunks)
    assert capfd.readouterr().out == LINE * 200 and sum(chunk.count(b"\n") for chunk in chunks) == 200


def test_a_stale_line_is_written_within_about_a_second(capfd):
    writer = accesslog.Logger(config()).access_writer()
    writer(LINE)
    deadline = time.monotonic() + 5
    out = ""
    while not out and time.monotonic() < deadline:
        time.sleep(0.1)
        out = capfd.readouterr().out
    assert out == LINE


def test_other_targets_get_the_lines_through_gunicorns_access_logger(tmp_path):
    target = tmp_path / "access.log"
    logger = accesslog.Logger(config(str(target)))
    logger.access_writer()(LINE)
    assert target.read_text() == LINE  # unbuffered, one line at a time
    assert accesslog.Logger(config(None)).access_writer() is None  # no access log: nothing to write
