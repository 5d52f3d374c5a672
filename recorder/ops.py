"""The operations a recording group records, and how each one's size is read from its arguments.

One table (SPECS) names every ``ProcessGroup`` method that records, the op name written into the
trace, how it is sized (:class:`Sizing`) and where its arguments are; :func:`sizer` turns an entry
into the function that reads ``(n_in, n_out, tensor, peer, root, opts)`` from a call's arguments,
the values :func:`recorder.capture._record` packs into the issue record.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import torch
import torch.distributed as dist

from recorder.records import NULL32

_Tensor = torch.Tensor


class Sizing(enum.Enum):
    """How an operation's size (elements in and out), tensor, peer and root are read from its arguments."""

    SAME = "one tensor list; in = out"
    ROOTED = "one tensor list and a root in the options; in = out"
    PAIR = "one output and one input tensor (the hot path of FSDP and tensor parallelism)"
    BY_INPUTS = "output and input lists; the dtype is the inputs'"
    BY_OUTPUTS = "output and input lists; the dtype is the outputs'"
    ROOTED_BY_INPUTS = "gather: output and input lists and a root"
    ROOTED_BY_OUTPUTS = "scatter: output and input lists and a root"
    NOTHING = "no tensors (barrier)"
    NOTHING_BLOCKING = "no tensors, and the call always blocks (monitored_barrier)"
    POINT_TO_POINT = "one tensor list and a peer"


class OpSpec(NamedTuple):
    """One ``ProcessGroup`` method that records: the op name written into the trace, how it is sized,
    and where its arguments are (keyword names of the first two, position of the options or peer)."""

    method: str
    op: str
    sizing: Sizing
    first: str | None = None
    second: str | None = None
    opts_at: int = 1


SPECS = (
    OpSpec("allreduce", "all_reduce", Sizing.SAME, "tensors"),
    OpSpec("allreduce_coalesced", "all_reduce_coalesced", Sizing.SAME, "tensors"),
    OpSpec("broadcast", "broadcast", Sizing.ROOTED, "tensors"),
    OpSpec("reduce", "reduce", Sizing.ROOTED, "tensors"),
    OpSpec("allgather", "all_gather", Sizing.BY_INPUTS, "output_tensors", "input_tensors", 2),
    OpSpec("all_gather_single", "all_gather_into_tensor", Sizing.PAIR, "output", "input", 2),
    OpSpec("allgather_coalesced", "all_gather_coalesced", Sizing.BY_INPUTS, "output_lists", "input_list", 2),
    OpSpec("all_gather_single_coalesced", "all_gather_into_tensor_coalesced", Sizing.BY_INPUTS, "outputs", "inputs", 2),
    OpSpec("reduce_scatter", "reduce_scatter", Sizing.BY_OUTPUTS, "output_tensors", "input_tensors", 2),
    OpSpec("reduce_scatter_single", "reduce_scatter_tensor", Sizing.PAIR, "output", "input", 2),
    OpSpec(
        "reduce_scatter_single_coalesced", "reduce_scatter_tensor_coalesced", Sizing.BY_INPUTS, "outputs", "inputs", 2
    ),
    OpSpec("alltoall", "all_to_all", Sizing.BY_INPUTS, "output_tensors", "input_tensors", 2),
    OpSpec("all_to_all_single", "all_to_all_single", Sizing.PAIR, "output", "input", 4),
    OpSpec("gather", "gather", Sizing.ROOTED_BY_INPUTS, "output_tensors", "input_tensors", 2),
    OpSpec("scatter", "scatter", Sizing.ROOTED_BY_OUTPUTS, "output_tensors", "input_tensors", 2),
    OpSpec("barrier", "barrier", Sizing.NOTHING, opts_at=0),
    OpSpec("monitored_barrier", "monitored_barrier", Sizing.NOTHING_BLOCKING),
    OpSpec("send", "send", Sizing.POINT_TO_POINT, "tensors", "dstRank"),
    OpSpec("recv", "recv", Sizing.POINT_TO_POINT, "tensors", "srcRank"),
    OpSpec("recv_anysource", "recv_anysource", Sizing.POINT_TO_POINT, "tensors"),
)
"""Every operation a recording group records, named as the C++ virtuals (pybind's trampoline sends
C++ callers to the Python override of the same name)."""


class _Blocking:
    """Options stand-in for calls that always block (monitored_barrier)."""

    asyncOp = False


BLOCKING = _Blocking()
P2P = object()
"""The options _record is given for a send or recv: sequence numbers count per (direction, peer),
and completion follows the owner's wait."""


def numel(x) -> int:
    if isinstance(x, _Tensor):
        return x.numel()
    if len(x) == 1 and isinstance(x[0], _Tensor):
        return x[0].numel()
    total = 0
    for y in x:
        total += numel(y)
    return total


def first_tensor(x):
    if isinstance(x, _Tensor):
        return x
    if x and isinstance(x[0], _Tensor):
        return x[0]
    for y in x:
        t = first_tensor(y)
        if t is not None:
            return t
    return None


def _one(t):
    """(first tensor, total elements) of a tensor or a list of tensors; the common case is one tensor."""
    if type(t) is list and len(t) == 1:
        x = t[0]
        if isinstance(x, _Tensor):
            return x, x.numel()
    return first_tensor(t), numel(t)


def _two(args, kwargs, first: str, second: str):
    if len(args) >= 2:
        return args[0], args[1]
    return (args[0] if args else kwargs[first]), kwargs[second]


def _opts(args, index: int, kwargs):
    return args[index] if len(args) > index else kwargs.get("opts")


def _root(opts) -> int:
    if isinstance(opts, int):
        return opts
    return getattr(opts, "rootRank", 0) if opts is not None else 0


def sizer(spec: OpSpec):
    """The function that sizes one kind of collective: ``(args, kwargs) -> _record's sizing
    arguments`` (n_in, n_out, tensor, peer, root, opts). Point-to-point calls are read inline by
    their override (recorder.capture._override)."""
    sizing, first, second, at = spec.sizing, spec.first, spec.second, spec.opts_at
    if sizing is Sizing.PAIR:

        def size_pair(args, kwargs):
            if len(args) > at:
                output, input, opts = args[0], args[1], args[at]
            else:
                output, input = _two(args, kwargs, first, second)
                opts = kwargs.get("opts")
            return input.numel(), output.numel(), input, NULL32, NULL32, opts

        return size_pair
    if sizing is Sizing.NOTHING:

        def size_nothing(args, kwargs):
            opts = _opts(args, at, kwargs)
            return 0, 0, None, NULL32, NULL32, opts if isinstance(opts, dist.BarrierOptions) else None

        return size_nothing
    if sizing is Sizing.NOTHING_BLOCKING:
        return lambda args, kwargs: (0, 0, None, NULL32, NULL32, BLOCKING)
    rooted = sizing in (Sizing.ROOTED, Sizing.ROOTED_BY_INPUTS, Sizing.ROOTED_BY_OUTPUTS)
    by_outputs = sizing in (Sizing.BY_OUTPUTS, Sizing.ROOTED_BY_OUTPUTS)

    def size(args, kwargs):
        opts = _opts(args, at, kwargs)
        if sizing is Sizing.SAME or sizing is Sizing.ROOTED:
            x, n = _one(args[0] if args else kwargs.get(first, kwargs.get("tensor")))
            n_in = n_out = n
        else:
            outputs, inputs = _two(args, kwargs, first, second)
            n_in, n_out = numel(inputs), numel(outputs)
            x = first_tensor(outputs if by_outputs else inputs)
        if rooted:
            return n_in, n_out, x, NULL32, _root(opts), None if isinstance(opts, int) else opts
        return n_in, n_out, x, NULL32, NULL32, opts

    return size
