"""Reading a pickle from someone else's machine without running any of it: plain values only.

PyTorch's Flight Recorder dumps its ring buffer as a pickle (``_dump_fr_trace``, and the files it
writes on a watchdog timeout); its own reader loads them with ``pickle.load``, which runs whatever
code the file names. A dump holds nothing but dicts, lists, tuples, strings, numbers, booleans and
None, so this reader allows exactly that. Before a byte is unpickled, every opcode of the stream is
checked against an allow-list: anything that names a global, calls, builds an object or asks for a
persistent id (GLOBAL, STACK_GLOBAL, REDUCE, BUILD, INST, OBJ, NEWOBJ, NEWOBJ_EX, PERSID,
BINPERSID, EXT1/2/4) is refused with its name and position, and so is anything unknown. The
unpickler that then reads the stream refuses globals and persistent ids too, should the two ever
disagree.

The opcode check runs at Python speed (~1 µs an opcode: ~40 s for a dump of a million entries), the
unpickler at C speed (~3 s for the same dump). So a file over PRESCAN_BYTES (far beyond the 2,000
entries Flight Recorder keeps by default: ~0.5 MB) is read by the refusing unpickler alone. That is
as safe: code can only run through a callable, and the only opcodes that produce one from a stream
of plain values name a global (GLOBAL, STACK_GLOBAL, INST, OBJ, EXT1/2/4, which all go through
``find_class``) or a persistent id (``persistent_load``), and both refuse; REDUCE, NEWOBJ and BUILD
on plain values fail. The scan only names the refused opcode and its position more precisely.
"""

from __future__ import annotations

import gc
import io
import os
import pickle
import pickletools

MAX_BYTES = 1 << 30  # a dump larger than this is not read
PRESCAN_BYTES = 4 << 20  # up to this size (~17k entries), every opcode is checked before the stream is read

# Opcodes that only build plain values (containers, text, numbers, bytes, booleans, None) or
# manage the memo and the stack; every other opcode is refused.
ALLOWED = frozenset(
    {
        "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP",
        "NONE", "NEWTRUE", "NEWFALSE",
        "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
        "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
        "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
        "EMPTY_LIST", "APPEND", "APPENDS", "LIST",
        "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
        "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS",
        "EMPTY_SET", "ADDITEMS", "FROZENSET",
        "GET", "BINGET", "LONG_BINGET", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE",
    }
)  # fmt: skip


class UnsafePickle(ValueError):
    """A pickle that asks for more than plain values, or that cannot be read; one line for the user."""


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        raise UnsafePickle(f"it names {module}.{name}, and only plain values are read")

    def persistent_load(self, pid):
        raise UnsafePickle("it asks for a persistent id, and only plain values are read")


def check(data: bytes) -> None:
    """Raise UnsafePickle unless every opcode of ``data`` builds plain values."""
    if len(data) > MAX_BYTES:
        raise UnsafePickle(f"larger than {MAX_BYTES >> 20} MiB")
    try:
        for opcode, _, position in pickletools.genops(data):
            if opcode.name not in ALLOWED:
                raise UnsafePickle(f"opcode {opcode.name} at byte {position}: only plain values are read")
    except UnsafePickle:
        raise
    except Exception as exc:  # cut short, or not a pickle at all
        raise UnsafePickle(f"not a readable pickle ({exc.__class__.__name__}: {str(exc)[:100]})") from None


def loads(data: bytes):
    """The plain value a pickle holds; UnsafePickle if it holds anything else or cannot be read."""
    check(data)
    return _unpickle(io.BytesIO(data))


def load(fh):
    """The plain value the pickle in binary file ``fh`` holds (read from its position to its end)."""
    size = os.fstat(fh.fileno()).st_size - fh.tell()
    if size > MAX_BYTES:
        raise UnsafePickle(f"larger than {MAX_BYTES >> 20} MiB")
    if size <= PRESCAN_BYTES:
        return loads(fh.read())
    return _unpickle(fh)


def _unpickle(stream):
    # A dump is millions of small containers, none of them cyclic: the collector's passes over them
    # while they are built would double the time.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _PlainUnpickler(stream).load()
    except UnsafePickle:
        raise
    except RecursionError:
        raise UnsafePickle("nested too deep") from None
    except Exception as exc:
        raise UnsafePickle(f"not a readable pickle ({exc.__class__.__name__})") from None
    finally:
        if collecting:
            gc.enable()
