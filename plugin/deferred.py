"""pydantic without importlib.metadata, unless something really asks it for metadata.

pydantic's plugin loader (pydantic.plugin._loader) does `from importlib.metadata import
entry_points` when it is imported, which happens while the first model class is built;
the function is only called to look for plugins, and plugin.model turns that search off
(PYDANTIC_DISABLE_PLUGINS). Importing importlib.metadata pulls in email, zipfile, csv,
pathlib and importlib.resources: ~6 MiB of a first validation's peak RSS (which the
README holds to 30 MiB for one exec) and ~25 ms on a slow machine, for nothing.

metadata_deferred() puts a stand-in for importlib.metadata in sys.modules while pydantic
and its loader are imported: what they take from it is a function that imports the real
module when called, and anything else read from the stand-in is read from the real
module. So behaviour is unchanged (a plugin search, if ever enabled, gets the real
entry_points); only the import waits until something calls it. The stand-in leaves
sys.modules when the block ends, so everyone else gets the real module, imported the
usual way.
"""

import sys
from contextlib import contextmanager

NAME = "importlib.metadata"


def _real():
    """The real importlib.metadata, imported now if it was not."""
    module = sys.modules.get(NAME)
    if module is None or getattr(module, "__deferred__", False):
        sys.modules.pop(NAME, None)
        __import__(NAME)
        module = sys.modules[NAME]
    return module


def entry_points(**params):
    return _real().entry_points(**params)


def _forward(attr: str):
    """An attribute the stand-in lacks, read from the real module; but the import system's own
    questions (`__path__`: is it a package?) are answered by the stand-in: no."""
    if attr.startswith("__") and attr.endswith("__"):
        raise AttributeError(attr)
    return getattr(_real(), attr)


@contextmanager
def metadata_deferred():
    """While the block runs, `from importlib.metadata import entry_points` imports nothing."""
    if NAME in sys.modules:  # already paid for (the agent, the admin CLI): nothing to save
        yield
        return
    stand_in = type(sys)(NAME, __doc__)
    stand_in.__deferred__ = True
    stand_in.entry_points = entry_points
    stand_in.__getattr__ = _forward  # PEP 562: anything else, from the real one
    sys.modules[NAME] = stand_in
    try:
        yield
    finally:
        if sys.modules.get(NAME) is stand_in:
            del sys.modules[NAME]
