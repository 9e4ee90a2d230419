"""classifier.accesslog writes the very line gunicorn's own access log would, only cheaper."""

from __future__ import annotations

import datetime
from types import SimpleNamespace

import pytest
from gunicorn import glogging
from gunicorn.config import Config

from classifier import accesslog

ENVIRON = {
    "REMOTE_ADDR": "127.0.0.1",
    "REQUEST_METHOD": "POST",
    "RAW_URI": "/score?x=%22a b%22",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "PATH_INFO": "/score",
    "QUERY_STRING": "x=%22a b%22",
}


def config(fmt: str = accesslog.FORMAT) -> Config:
    cfg = Config()
    cfg.set("accesslog", "-")
    cfg.set("access_log_format", fmt)
    return cfg


@pytest.mark.parametrize(
    ("status", "sent", "elapsed"),
    [("200 OK", 153, datetime.timedelta(microseconds=4321)), ("413 REQUEST ENTITY TOO LARGE", 0,
     datetime.timedelta(seconds=2, microseconds=999)), (404, None, datetime.timedelta(0))],
)  # fmt: skip
def test_lines_are_gunicorns_own(capfd, status, sent, elapsed):
    response = SimpleNamespace(status=status, sent=sent, headers=[("Content-Type", "application/json")])
    request = SimpleNamespace(headers=[("HOST", "127.0.0.1:8000")])
    glogging.Logger(config()).access(response, request, ENVIRON, elapsed)
    theirs = capfd.readouterr().out
    ours = accesslog.Logger(config())
    ours.access(response, request, ENVIRON, elapsed)
    assert capfd.readouterr().out == ""  # buffered...
    ours.flush_access()
    assert capfd.readouterr().out == theirs  # ...and then exactly gunicorn's line
    assert theirs.count("\n") == 1 and "<" in theirs


def test_buffer_is_written_in_whole_lines_of_at_most_pipe_buf_bytes(capfd, monkeypatch):
    # A pipe write of at most PIPE_BUF bytes is atomic: two workers' batches never split each other's lines.
    chunks: list[bytes] = []
    write = accesslog.os.write
    monkeypatch.setattr(accesslog.os, "write", lambda fd, data: chunks.append(bytes(data)) or write(fd, data))
    logger = accesslog.Logger(config())
    response = SimpleNamespace(status="200 OK", sent=153, headers=[])
    for _ in range(200):  # about 3 pipe buffers of lines
        logger.access(response, SimpleNamespace(headers=[]), ENVIRON, datetime.timedelta(0))
    assert len(chunks) >= 2  # full batches went out while logging, not one write per line
    logger.flush_access()
    assert all(len(chunk) <= accesslog.FLUSH_BYTES and chunk.endswith(b"\n") for chunk in chunks)
    assert capfd.readouterr().out.count("\n") == 200 == sum(chunk.count(b"\n") for chunk in chunks)


def test_other_formats_fall_back_to_gunicorns_logging(capfd):
    logger = accesslog.Logger(config('%(h)s %(s)s "%({user-agent}i)s"'))
    response = SimpleNamespace(status="200 OK", sent=1, headers=[])
    logger.access(response, SimpleNamespace(headers=[("USER-AGENT", "curl")]), ENVIRON, datetime.timedelta(0))
    assert capfd.readouterr().out == '127.0.0.1 200 "curl"\n'  # unbuffered, gunicorn's own formatting
