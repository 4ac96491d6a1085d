"""The bundle starts on every glibc from the stated floor up (README, "Requirements"): no
ELF file in it may require a newer GLIBC_ symbol version, as objdump reports both the
versioned symbols (-T) and the version references the dynamic loader checks at start (-p).
Debian 12's libexpat alone needed 2.36; build.spec replaces it by a stub (nothing uses
pyexpat), so the floor is libpython3.11's and libgcc_s's own: 2.35 (Ubuntu 22.04)."""

import os
import re
import subprocess

from conftest import REPO

GLIBC_FLOOR = "2.35"  # hack/build-deb.sh reads it for the package's libc6 dependency
VERSION = re.compile(r"GLIBC_(\d+(?:\.\d+)+)")


def as_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


def elf_files(top: str) -> list[str]:
    found = []
    for folder, _, files in os.walk(top):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    found.append(path)
    return found


def required(path: str) -> set[str]:
    out = ""
    for flag in ("-T", "-p"):
        proc = subprocess.run(["objdump", flag, path], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        out += proc.stdout
    return set(VERSION.findall(out))


def test_no_file_in_the_bundle_needs_a_glibc_above_the_floor(isolation_bin):
    bundle = os.path.dirname(isolation_bin)
    files = elf_files(bundle)
    needs = {os.path.relpath(p, bundle): required(p) for p in files}
    assert len(files) > 20 and any(n.startswith("_internal/libpython3") for n in needs), sorted(needs)
    highest = max((v for vs in needs.values() for v in vs), key=as_tuple)
    assert as_tuple(highest) >= (2, 34), f"the scan found only GLIBC_{highest}: it does not see what it should"
    above = {n: sorted(v for v in vs if as_tuple(v) > as_tuple(GLIBC_FLOOR)) for n, vs in needs.items()}
    above = {n: vs for n, vs in above.items() if vs}
    assert not above, f"these need a glibc above the stated floor {GLIBC_FLOOR}: {above}"


def test_the_floor_is_stated_in_the_readme():
    with open(os.path.join(REPO, "README.md")) as f:
        assert f"glibc {GLIBC_FLOOR}" in f.read()


def test_the_expat_stub_fails_loudly_if_ever_called(isolation_bin):
    """What replaced libexpat: every entry point an illegal instruction, no glibc needed."""
    stub = os.path.join(os.path.dirname(isolation_bin), "_internal", "libexpat.so.1")
    assert required(stub) == set()
    disasm = subprocess.run(["objdump", "-d", stub], capture_output=True, text=True, check=True).stdout
    entries = re.findall(r"<(XML_\w+)>:\n\s*[0-9a-f]+:\s+0f 0b\s+ud2", disasm)
    assert len(entries) > 30 and "XML_ParserCreate_MM" in entries, disasm[:2000]
