"""Settings: one table in the docs, bad values warn once and fall back."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from recorder import _log, config


def test_every_variable_is_documented():
    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("gen_config_doc", root / "scripts" / "gen_config_doc.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    doc = (root / "docs" / "configuration.md").read_text()
    assert doc == gen.render(), "docs/configuration.md is stale: run python scripts/gen_config_doc.py"
    for name in config.ALL_VARIABLES:
        assert f"`{name}`" in doc


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_bad_values_warn_once_and_fall_back():
    _log._seen.clear()
    env = {
        "COMMTRACE_DIR": "/x",
        "COMMTRACE_FLUSH_S": "soon",
        "COMMTRACE_CLOCK_SYNC": "maybe",
        "COMMTRACE_MAX_BUFFERED": "-5",
    }
    collect = _Collect()
    _log.logger.addHandler(collect)
    try:
        first = config.from_env(env)
        second = config.from_env(env)
    finally:
        _log.logger.removeHandler(collect)
    assert first == second
    assert (first.flush_s, first.clock_sync, first.max_buffered) == (1.0, True, 32768)
    assert len(collect.messages) == 3, collect.messages
    assert any("COMMTRACE_FLUSH_S='soon'" in m for m in collect.messages)


def test_good_values_and_overrides():
    cfg = config.from_env(
        {"COMMTRACE_DIR": "/t", "COMMTRACE_FLUSH_S": "0.25", "COMMTRACE_CLOCK_SYNC": "off"}, flush_events=10
    )
    assert (cfg.dir, cfg.flush_s, cfg.clock_sync, cfg.flush_events) == ("/t", 0.25, False, 10)
