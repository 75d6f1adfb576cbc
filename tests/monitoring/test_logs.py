"""Structured logs: node, session and push ids on the lines that concern them."""

from __future__ import annotations

import io
import json
import logging

import pytest

from gateway_core import logs
from gateway_core.env import ConfigError


@pytest.fixture
def capture():
    """A logger wired like the gateway's, writing JSON into a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.ContextFilter(node_id="n-logs"))
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("gateway.test-logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False

    def lines() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    try:
        yield logger, lines
    finally:
        logger.removeHandler(handler)


def test_json_lines_carry_node_and_context(capture) -> None:
    logger, lines = capture
    logger.info("plain %s", "line")
    with logs.log_context(session_id="s1"):
        logger.info("in a session")
        with logs.log_context(push_id="p1"):
            logger.warning("delivering")
    logger.info("by extra", extra={"push_id": "p2", "alert": "GatewayNodeDown"})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed")
    first, session, push, extra, failed = lines()
    assert first["node"] == "n-logs" and first["message"] == "plain line"
    assert first["level"] == "INFO" and first["logger"] == "gateway.test-logs"
    assert "session_id" not in first and "push_id" not in first
    assert session["session_id"] == "s1" and "push_id" not in session
    assert (push["session_id"], push["push_id"]) == ("s1", "p1")
    assert extra["push_id"] == "p2" and extra["alert"] == "GatewayNodeDown"
    assert "session_id" not in extra  # the context was left
    assert "RuntimeError: boom" in failed["exc"]
    assert first["ts"].endswith("+00:00")


def test_plain_format_appends_the_context() -> None:
    stream = io.StringIO()
    config = logs.logging_config(node_id="n-plain", level="INFO", log_format="plain")
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.ContextFilter(node_id="n-plain"))
    handler.setFormatter(logging.Formatter(config["formatters"]["plain"]["format"]))
    logger = logging.getLogger("gateway.test-plain")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with logs.log_context(session_id="s9", push_id="p9"):
            logger.warning("hello")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().rstrip().endswith(
        "gateway.test-plain [n-plain] hello session=s9 push=p9"
    )


def test_log_format_is_checked() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_LOG_FORMAT"):
        logs.logging_config(node_id="n", level="INFO", log_format="xml")
    config = logs.logging_config(node_id="n", level="INFO", log_format="json")
    assert config["handlers"]["console"]["formatter"] == "json"
    assert config["handlers"]["console"]["filters"] == ["context"]
