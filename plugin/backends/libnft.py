"""A libnftables context through ctypes: what plugin.backends.nftables uses of the `nftables`
Python binding (cmd, json_cmd, set_terse_output), without importing the binding.

The binding imports `json` (and with it `re`, `enum`, `functools`, `collections`: ~15 ms
of every ADD, CHECK and DEL on a slow machine) only to call json.dumps and json.loads,
and declares thirty library functions of which these seven are used. Same calls, same
behaviour: a context made with nft_ctx_new(0), output and errors buffered, JSON output
switched on around a JSON command only, a listing decoded as the binding does (a
ValueError when libnftables prints something that is not JSON, as 1.0.6 can).
"""

import ctypes

from plugin import jsonio

JSON, TERSE = 1 << 4, 1 << 11  # NFT_CTX_OUTPUT_JSON, NFT_CTX_OUTPUT_TERSE


class Nftables:
    def __init__(self, sofile: str = "libnftables.so.1"):
        lib = ctypes.CDLL(sofile)
        p, c_uint, c_int, c_char_p = ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_char_p
        for name, restype, argtypes in (
            ("nft_ctx_new", p, [c_int]),
            ("nft_ctx_free", None, [p]),
            ("nft_ctx_output_get_flags", c_uint, [p]),
            ("nft_ctx_output_set_flags", None, [p, c_uint]),
            ("nft_ctx_buffer_output", c_int, [p]),
            ("nft_ctx_buffer_error", c_int, [p]),
            ("nft_ctx_get_output_buffer", c_char_p, [p]),
            ("nft_ctx_get_error_buffer", c_char_p, [p]),
            ("nft_run_cmd_from_buffer", c_int, [p, c_char_p]),
        ):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
            setattr(self, name, fn)
        self.ctx = self.nft_ctx_new(0)
        self.nft_ctx_buffer_output(self.ctx)
        self.nft_ctx_buffer_error(self.ctx)

    def __del__(self):
        if getattr(self, "ctx", None):
            self.nft_ctx_free(self.ctx)

    def _flag(self, flag: int, on: bool) -> bool:
        """Set or clear one output flag; returns whether it was set."""
        flags = self.nft_ctx_output_get_flags(self.ctx)
        self.nft_ctx_output_set_flags(self.ctx, flags | flag if on else flags & ~flag)
        return bool(flags & flag)

    def set_terse_output(self, on: bool) -> bool:
        return self._flag(TERSE, on)

    def cmd(self, text: str) -> tuple[int, str, str]:
        """(rc, stdout, stderr) of one command line or JSON document."""
        rc = self.nft_run_cmd_from_buffer(self.ctx, text.encode())
        out = self.nft_ctx_get_output_buffer(self.ctx) or b""
        err = self.nft_ctx_get_error_buffer(self.ctx) or b""
        return rc, out.decode(), err.decode()

    def json_cmd(self, root: dict) -> tuple[int, object, str]:
        """(rc, decoded output or "" when there is none, stderr); ValueError when the output is
        not JSON."""
        was = self._flag(JSON, True)
        try:
            rc, out, err = self.cmd(jsonio.dumps(root))
        finally:
            if not was:
                self._flag(JSON, False)
        return rc, jsonio.loads(out) if out else out, err
