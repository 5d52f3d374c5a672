"""The benchmarks that reach into the recorder's hot path still find what they measure."""

from __future__ import annotations

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_profile_finds_every_part_of_the_hot_path():
    profile = _load("recorder_profile")
    from recorder import capture

    for name, part in profile.PARTS:
        variant = profile._without(part)
        assert variant.__code__.co_code != capture._record.__code__.co_code, name


def test_the_profile_fails_loudly_when_a_part_is_gone():
    profile = _load("recorder_profile")
    with pytest.raises(SystemExit, match="no longer finds"):
        profile._without([("this text is not in the hot path", "")])
