"""Zero-code-change activation.

``commtrace.pth`` (installed into site-packages with the package) calls :func:`arm` at interpreter
start-up only when ``COMMTRACE_DIR`` is set. Arming imports nothing heavy: it adds a post-import hook
so that the recorder is installed the moment ``torch.distributed.distributed_c10d`` finishes
executing (``import torch`` imports it), before any process group can exist. Processes that never
import torch pay for one ``sys.meta_path`` entry and nothing else.
"""

from __future__ import annotations

import importlib.abc
import sys

TARGET = "torch.distributed.distributed_c10d"


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the real loader of TARGET to run the recorder's install after it."""

    def __init__(self) -> None:
        self._busy = False

    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET or self._busy:
            return None
        self._busy = True
        try:
            import importlib.util

            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        original_exec = loader.exec_module

        def exec_module(module):
            original_exec(module)
            _on_c10d_imported(module)

        spec.loader = _LoaderProxy(loader, exec_module)
        return spec


class _LoaderProxy:
    def __init__(self, loader, exec_module) -> None:
        self._loader = loader
        self.exec_module = exec_module

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def __getattr__(self, name):
        return getattr(self._loader, name)


_finder: _PostImportFinder | None = None


def _on_c10d_imported(module) -> None:
    _remove_finder()
    try:
        from recorder.config import from_env

        config = from_env()
        if config.disabled or not config.dir:
            return
        from recorder import _session

        _session.enable(config.dir)
    except Exception as exc:  # the recorder never breaks the import of torch
        from recorder._log import warn_once

        warn_once("bootstrap", "could not switch recording on, training continues unrecorded: %r", exc)


def _remove_finder() -> None:
    global _finder
    if _finder is not None:
        try:
            sys.meta_path.remove(_finder)
        except ValueError:
            pass
        _finder = None


def arm() -> None:
    """Install recording now if torch.distributed is loaded, else when it gets imported."""
    global _finder
    try:
        if TARGET in sys.modules:
            _on_c10d_imported(sys.modules[TARGET])
            return
        if _finder is None:
            _finder = _PostImportFinder()
            sys.meta_path.insert(0, _finder)
    except Exception:
        pass
