"""plugin.deferred: pydantic imported without importlib.metadata, its behaviour unchanged.

Each case runs in a fresh interpreter: whether importlib.metadata is imported is a fact
about the whole process.
"""

import subprocess
import sys
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {REPO!r})\n{code}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_the_model_validates_without_importing_importlib_metadata():
    out = run("from plugin.model import parse\n"
              "parse({'cniVersion': '1.0.0', 'name': 'n', 'type': 'isolation', 'isolationGroup': 'g'})\n"
              "print(sorted(m for m in sys.modules if m in ('importlib.metadata', 'email', 'zipfile')))")
    assert out == "[]"


def test_the_stand_in_leaves_and_the_real_module_is_imported_as_usual():
    out = run("import plugin.model, importlib.metadata\n"
              "print(importlib.metadata.version('pydantic') == __import__('pydantic').VERSION,\n"
              "      getattr(sys.modules['importlib.metadata'], '__deferred__', False))")
    assert out == "True False"


def test_pydantics_plugin_search_still_gets_the_real_entry_points():
    out = run("import os\n"
              "import plugin.model\n"
              "from pydantic.plugin import _loader\n"
              "import importlib.metadata as real\n"
              "print(list(_loader.entry_points(group='pydantic')) == list(real.entry_points(group='pydantic')),\n"
              "      _loader.entry_points(group='console_scripts') == real.entry_points(group='console_scripts'))")
    assert out == "True True"


def test_anything_else_read_from_the_stand_in_comes_from_the_real_module():
    out = run("from plugin.deferred import metadata_deferred\n"
              "with metadata_deferred():\n"
              "    from importlib.metadata import entry_points, version\n"
              "print(callable(entry_points), version('pydantic') == __import__('pydantic').VERSION,\n"
              "      'importlib.metadata' in sys.modules)")
    assert out == "True True True"
