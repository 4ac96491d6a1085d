"""The few ctypes pieces the plugin uses, built on the _ctypes extension directly.

`import ctypes` runs ctypes/__init__.py: ~30 classes, its _endian module, struct, and a
callback made at import; ~4 ms of every ADD, CHECK and DEL on a slow 2-CPU machine
(bench/profile.py: most of the "backend" phase after libnftables itself). The plugin
needs four C scalar types, a byte buffer, addressof and a library's functions: these
are the same _ctypes classes and calls ctypes itself makes (its c_int is `class
c_int(_SimpleCData): _type_ = "i"`, its CDLL a dlopen handle and CFuncPtr subclasses
with FUNCFLAG_CDECL), so arguments and results convert exactly as with ctypes.

A library is opened as ctypes.CDLL opens it (RTLD_NOW | RTLD_LOCAL: every symbol of it and
of its dependencies resolved at load, so a missing one fails here, before any call), and
a function it lacks raises AttributeError when looked up, as with ctypes.
"""

import _ctypes
import os
from _ctypes import FUNCFLAG_CDECL, Array, CFuncPtr, _SimpleCData, addressof  # noqa: F401 (addressof: re-exported)


class c_int(_SimpleCData):
    _type_ = "i"


class c_uint(_SimpleCData):
    _type_ = "I"


class c_void_p(_SimpleCData):
    _type_ = "P"


class c_char_p(_SimpleCData):
    _type_ = "z"


class c_char(_SimpleCData):
    _type_ = "c"


def buffer(size: int):
    """A zeroed byte buffer of `size` bytes (ctypes.create_string_buffer(size)): `.raw` reads it."""
    return type("c_char_Array", (Array,), {"_type_": c_char, "_length_": size})()


class _Function(CFuncPtr):
    _flags_ = FUNCFLAG_CDECL
    _restype_ = c_int


class Library:
    """A shared library's C functions (ctypes.CDLL(path)): lib.function(name, restype, argtypes)."""

    def __init__(self, path: str):
        self._name = path
        self._handle = _ctypes.dlopen(path, os.RTLD_NOW | os.RTLD_LOCAL)

    def function(self, name: str, restype, argtypes: list):
        """The C function `name`, typed; AttributeError when the library has none."""
        fn = _Function((name, self))
        fn.restype, fn.argtypes = restype, argtypes
        return fn
