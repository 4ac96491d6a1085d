"""Which modules each verb may import: the start-up work must not creep back.

A plugin run is mostly start-up (README, Performance): one stray `import json`, `re`
or `socket` costs a run more than its kernel transaction. Each verb runs here in a
fresh interpreter on the unfrozen code, as the frozen binary runs it (plugin.main.main,
which leaves through os._exit: that is where the modules are counted), and what it
imported beyond the bare interpreter must lie within the verb's allow-list below.
No timing is asserted: bench/ measures time.

ADD, CHECK, DEL and STATUS run for real, in a network namespace of their own
(`unshare --net`, gone with its last process) holding a bridge and a veth, with the
nftables backend; the state directory is a temporary one (hoststate.STATE_ROOT set in
the child). The agent client runs in this process's namespace against a fake agent on
a unix socket in a temporary state directory: nothing touches the kernel there.
"""

import json
import os
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import threading

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SITE = os.path.dirname(os.path.dirname(__import__("pydantic").__file__))  # where pydantic lives

# The child: the plugin's entry point, with the state root moved and the module list
# written where os._exit (plugin.main._exit) is called.
CHILD = r"""
import os, sys
sys.path.insert(0, {repo!r})
sys.path.append({site!r})
_exit, out = os._exit, os.environ.pop("BUDGET_OUT")
def counted(code):
    with open(out, "w") as f:
        f.write("\n".join(sorted(sys.modules)))
    _exit(code)
os._exit = counted
if os.environ.get("BUDGET_STATE_ROOT"):
    import plugin.hoststate
    plugin.hoststate.STATE_ROOT = os.environ.pop("BUDGET_STATE_ROOT")
    # plugin.hoststate is imported by every verb but VERSION: set aside here, it is no extra
from plugin.main import main
main()
"""
BARE = "import os, sys\nwith open(os.environ['BUDGET_OUT'], 'w') as f: f.write('\\n'.join(sorted(sys.modules)))\n"

# What each verb may import beyond the bare interpreter (python3 -I -S). Lean on purpose:
# json (re, enum), socket, functools, collections, dataclasses, hashlib, ipaddress, typing,
# pydantic (but on a network's first validation), the nftables binding and pyroute2 stay out.
PLUGIN_CORE = {"plugin", "plugin.main", "plugin.trace", "plugin.agent", "plugin.jsonio", "plugin.hoststate",
               "plugin.errors", "plugin.cni", "plugin.result", "plugin.links", "plugin.config", "plugin.log",
               "_json", "struct", "_struct", "fcntl", "_socket", "errno", "_sha256", "plugin.native", "_ctypes",
               "types", "time", "gc", "stat", "_stat"}
ENGINE = {"plugin.backends", "plugin.backends.base", "plugin.backends.nftables", "plugin.backends.libnft",
          "plugin.backends.ports", "plugin.reasons",
          "plugin.policy", "plugin.record", "plugin.registry", "plugin.lifecycle", "plugin.tenant", "operator", "_operator",
          "_thread"}
ALLOWED = {
    "VERSION": {"plugin", "plugin.main"},
    "ADD": PLUGIN_CORE | ENGINE,
    "CHECK": PLUGIN_CORE | ENGINE,
    "DEL": PLUGIN_CORE | ENGINE,
    "STATUS": PLUGIN_CORE | ENGINE,
    "forwarded": {"plugin", "plugin.main", "plugin.trace", "plugin.agent", "plugin.jsonio", "plugin.hoststate",
                  "plugin.errors", "_json", "struct", "_struct", "fcntl", "_socket", "errno", "time", "stat",
                  "_stat"},
}
NEVER = {"pyroute2", "nftables", "json", "re", "enum", "socket", "selectors", "functools", "collections",
         "dataclasses", "hashlib", "_hashlib", "ipaddress", "typing", "pydantic", "pydantic_core", "array",
         "subprocess", "threading", "ctypes"}


def need_root():
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.fail("the import budget runs verbs in a namespace of their own: needs root, unshare and ip",
                    pytrace=False)


def conf(network: str, **extra) -> dict:
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "ibr0"}, {"name": "iv0"}, {"name": "eth0", "sandbox": "/x"}],
            "ips": [{"address": "10.99.0.2/24", "gateway": "10.99.0.1", "interface": 2}]}
    return {"cniVersion": "1.1.0", "name": network, "type": "isolation", "backend": "nftables", **extra,
            "prevResult": prev}


def tenant_conf(network: str, group: str) -> dict:
    """A tenant's attachment (args.cni.isolationGroup; anti-spoofing, which tenants need, wants
    the container's MAC)."""
    body = conf(network, antiSpoofing=True, args={"cni": {"isolationGroup": group}})
    body["prevResult"]["interfaces"][2]["mac"] = "02:00:00:00:00:07"
    return body


def env(verb: str, container: str = "c1") -> dict:
    return {"CNI_COMMAND": verb, "CNI_CONTAINERID": container, "CNI_NETNS": "/proc/self/ns/net",
            "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni", "ISOLATION_AGENT": "off"}


def modules(path: str) -> set[str]:
    with open(path) as f:
        return set(f.read().split())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, set[str]]:
    """Every step's imports beyond the bare interpreter: the steps run one after the other in one
    throwaway namespace, so CHECK and DEL find what ADD made."""
    need_root()
    tmp = tmp_path_factory.mktemp("budget")
    os.chmod(tmp, 0o700)
    state = tmp / "run"
    steps = [  # (name, verb, container, configuration)
        ("VERSION", "VERSION", "c1", {"cniVersion": "1.0.0"}),
        ("ADD first", "ADD", "c1", conf("n1")),  # validates: pydantic
        ("ADD", "ADD", "c2", conf("n1")),  # the verdict is cached
        ("ADD sibling", "ADD", "c3", conf("n2")),  # another network, the same entry: the cached verdict
        ("ADD tenant first", "ADD", "c4", tenant_conf("n3", "tq")),  # a new entry: validates
        ("ADD tenant", "ADD", "c5", tenant_conf("n3", "tr")),  # another tenant: the entry's cached verdict
        ("CHECK", "CHECK", "c2", conf("n1")),
        ("STATUS", "STATUS", "c2", conf("n1")),
        ("DEL", "DEL", "c2", conf("n1")),
    ]
    script = ["set -e", "ip link set lo up", "ip link add ibr0 type bridge",
              "ip link add iv0 type veth peer name iv1", "ip link set iv0 master ibr0", "ip link set ibr0 up"]
    python = [sys.executable, "-I", "-S", "-c"]
    child = CHILD.format(repo=REPO, site=SITE)
    for i, (name, verb, container, body) in enumerate(steps):
        stdin = tmp / f"{i}.json"
        stdin.write_text(json.dumps(body))
        e = env(verb, container) | {"BUDGET_OUT": str(tmp / f"{i}.mods")}
        if verb != "VERSION":
            e["BUDGET_STATE_ROOT"] = str(state)
        assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in e.items())
        argv = " ".join(shlex.quote(a) for a in [*python, child])
        script.append(f"env -i {assigns} {argv} < {stdin} > {tmp / f'{i}.out'} || "
                      f"{{ echo \"{name} failed: $(cat {tmp / f'{i}.out'})\"; exit 1; }}")
    script.append(f"env -i BUDGET_OUT={tmp / 'bare.mods'} {' '.join(shlex.quote(a) for a in [*python, BARE])}")
    proc = subprocess.run(["unshare", "--net", "sh", "-c", "\n".join(script)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bare = modules(str(tmp / "bare.mods"))
    return {name: modules(str(tmp / f"{i}.mods")) - bare for i, (name, *_rest) in enumerate(steps)}


@pytest.mark.parametrize("step,verb", [("VERSION", "VERSION"), ("ADD", "ADD"), ("ADD sibling", "ADD"),
                                       ("ADD tenant", "ADD"),
                                       ("CHECK", "CHECK"), ("STATUS", "STATUS"), ("DEL", "DEL")])
def test_a_verb_imports_only_its_budget(runs, step, verb):
    extra = runs[step] - ALLOWED[verb]
    assert not extra, f"{step} imported {sorted(extra)} beyond its budget"
    assert not runs[step] & NEVER


def test_a_networks_first_validation_may_import_pydantic_but_never_pyroute2(runs):
    assert "pydantic" in runs["ADD first"], "the first ADD of a configuration validates it with the model"
    assert not {m for m in runs["ADD first"] if m.split(".")[0] in ("pyroute2", "nftables")}
    # pydantic's plugin loader takes entry_points from it, never called (plugin.deferred): ~6 MiB of peak RSS
    assert not runs["ADD first"] & {"importlib.metadata", "email", "zipfile", "csv"}


def test_the_agent_client_imports_only_what_forwarding_needs(tmp_path):
    """An answered forward: the client imports the agent's wire format and the state directory
    checks, and nothing of the engine."""
    need_root()
    os.chmod(tmp_path, 0o700)
    state = tmp_path / "run"
    out = tmp_path / "mods"
    child = CHILD.format(repo=REPO, site=SITE)
    key = subprocess.run([sys.executable, "-I", "-S", "-c",
                          f"import sys; sys.path.insert(0, {REPO!r}); from plugin.hoststate import netns_key; "
                          "print(netns_key())"], capture_output=True, text=True, check=True).stdout.strip()
    folder = state / key
    folder.mkdir(parents=True, mode=0o700)
    os.chmod(state, 0o700)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(folder / "agent.sock"))
    server.listen(1)

    def answer():
        conn, _ = server.accept()
        with conn:
            size = struct.unpack(">I", conn.recv(4))[0]
            while size > 0:
                size -= len(conn.recv(size))
            reply = json.dumps({"stdout": '{"cniVersion": "1.1.0"}\n', "rc": 0}).encode()
            conn.sendall(struct.pack(">I", len(reply)) + reply)

    agent = threading.Thread(target=answer, daemon=True)
    agent.start()
    e = env("ADD") | {"BUDGET_OUT": str(out), "BUDGET_STATE_ROOT": str(state)}
    del e["ISOLATION_AGENT"]
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-I", "-S", "-c", BARE], env={"BUDGET_OUT": str(bare)}, check=True)
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", child], env=e, input=json.dumps(conf("n1")),
                          capture_output=True, text=True, timeout=60)
    agent.join(10)
    server.close()
    assert proc.returncode == 0 and proc.stdout == '{"cniVersion": "1.1.0"}\n', proc.stdout + proc.stderr
    imported = modules(str(out)) - modules(str(bare))
    assert not imported - ALLOWED["forwarded"], f"forwarding imported {sorted(imported - ALLOWED['forwarded'])}"
    assert not imported & NEVER
