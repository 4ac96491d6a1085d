"""Stands in for PyInstaller's bootstrap module pyimod03_ctypes in our bundle (build.spec).

The original imports ctypes at every start (loading _ctypes and libffi, ~3 ms per
container start) only to make ctypes.CDLL("libname") search the bundle. The plugin
loads its one shared library, libnftables, by absolute path (see
plugin.backends.libnft.library_path) and only in the verbs that need it, so there
is nothing to redirect.
"""


def install():
    """Nothing to install: no library is ever loaded by bare name."""
