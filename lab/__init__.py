"""commtrace's network lab: several "hosts" on one machine, each a network namespace with its own
hostname and address, joined by a bridge, with links that can be slowed or made lossy on purpose.

Used by the tests, the benchmarks and the demo; needs root, ``ip`` (iproute2), ``tc`` and ``unshare``.
"""

from lab.network import Lab, lab_available

__all__ = ["Lab", "lab_available"]
