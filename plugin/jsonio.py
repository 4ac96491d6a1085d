"""JSON through CPython's C accelerator (`_json`) alone, without importing `json`.

`import json` costs a plugin run more than any other import on its path (~15 ms on a
slow 2-CPU machine, two thirds of `python3 -I -S -c pass`): json.decoder and
json.encoder compile regular expressions at import, which pulls in `re`, `enum`,
`functools` and `collections`. Yet `json.loads` and `json.dumps` hand the actual work
to `_json`'s scanner and encoder, which need none of that. These two functions call
them exactly as json does, so their results are json's; anything the fast path does
not take (other encodings, a BOM, errors of any kind) is handed to `json` itself, so
every error, message and corner case stays json's too.
"""

import _json

_WS = " \t\n\r"  # what json.decoder's WHITESPACE matches


class _Decoding:
    """The attributes `_json.make_scanner` reads from a json.JSONDecoder (its defaults)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(float)  # NaN, Infinity, -Infinity, as json.decoder's _CONSTANTS


_scan = _json.make_scanner(_Decoding())


def loads(data):
    """json.loads(data) for str, bytes or bytearray."""
    try:
        if isinstance(data, (bytes, bytearray)):
            if b"\0" in data[:4] or data[:3] == b"\xef\xbb\xbf" or data[:2] in (b"\xff\xfe", b"\xfe\xff"):
                raise ValueError  # UTF-16/32 or a BOM: json's detect_encoding decides
            text = data.decode("utf-8", "surrogatepass")
        elif isinstance(data, str) and not data.startswith("\ufeff"):
            text = data
        else:
            raise ValueError
        start = len(text) - len(text.lstrip(_WS))
        value, end = _scan(text, start)
        if text[end:].strip(_WS):
            raise ValueError  # extra data
        return value
    except (ValueError, StopIteration, SystemError):  # SystemError: _json raises JSONDecodeError only
        import json  # once json.decoder is imported (it looks it up in sys.modules)

        return json.loads(data)  # raises what json raises (or returns what it returns)


def dumps(obj, *, sort_keys: bool = False, separators: tuple[str, str] | None = None) -> str:
    """json.dumps(obj, sort_keys=..., separators=...) with json's other defaults."""
    item_sep, key_sep = separators or (", ", ": ")
    if isinstance(obj, str):
        return _json.encode_basestring_ascii(obj)
    try:
        encode = _json.make_encoder({}, _refuse, _json.encode_basestring_ascii, None, key_sep, item_sep, sort_keys,
                                    False, True)
        return "".join(encode(obj, 0))
    except (TypeError, ValueError, SystemError):
        import json

        return json.dumps(obj, sort_keys=sort_keys, separators=separators)  # json's own error


def _refuse(obj):
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")
