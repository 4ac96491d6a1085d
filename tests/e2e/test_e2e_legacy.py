"""The iptables backend on iptables-legacy, the other xtables variant hosts run.

The machine's alternatives point at iptables-nft; for the plugin's runs only, a
private mount namespace binds a directory of legacy links over /etc/alternatives,
so /usr/sbin/iptables-restore is iptables-legacy-restore for the plugin alone.
"""

import json
import os
import subprocess

import pytest

from netlab import IP

pytestmark = pytest.mark.e2e
TOOLS = ["iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"]


@pytest.fixture
def legacy_alternatives(tmp_path):
    alt = tmp_path / "alternatives"
    alt.mkdir()
    for entry in os.listdir("/etc/alternatives"):  # keep every other alternative as it is
        if os.path.islink(f"/etc/alternatives/{entry}"):
            os.symlink(os.readlink(f"/etc/alternatives/{entry}"), alt / entry)
    for tool in TOOLS:
        family, _, verb = tool.partition("-")
        target = f"/usr/sbin/{family}-legacy" + (f"-{verb}" if verb else "")
        assert os.path.exists(target), f"{target} missing (Debian's iptables package ships it)"
        os.unlink(alt / tool)
        os.symlink(target, alt / tool)
    return alt


def run_legacy(lab, alt, command, conf, c):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": c.id, "CNI_NETNS": f"/run/netns/{c.name}",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
    script = f"mount --bind {alt} /etc/alternatives && exec {IP} netns exec {lab.host} {lab.isolation_bin}"
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          input=json.dumps(conf), capture_output=True, text=True, env=env)


def test_isolation_on_iptables_legacy(lab, legacy_alternatives):
    nets = [lab.network(["bridge"]) for _ in range(2)]
    a1, a2, b1 = lab.add(nets[0]), lab.add(nets[0]), lab.add(nets[1])
    for c in (a1, a2, b1):
        conf = {"cniVersion": "1.0.0", "name": c.network.name, "type": "isolation", "backend": "iptables",
                "prevResult": lab.cache[(c.network.name, c.id)]}
        for command in ("ADD", "CHECK"):
            proc = run_legacy(lab, legacy_alternatives, command, conf, c)
            assert proc.returncode == 0, proc.stdout + proc.stderr

    legacy = subprocess.run([IP, "netns", "exec", lab.host, "iptables-legacy-save", "-t", "filter"],
                            capture_output=True, text=True).stdout
    assert f"-A CNI-ISOLATION-STAGE-2 -o {nets[0].bridge} -m comment --comment isolation-plugin -j DROP" in legacy
    assert "CNI-ISOLATION" not in lab.save(), "nothing may land in the nft variant's tables"

    want = {(a1.name, a2.ipv4): True, (a1.name, a2.ipv6): True,
            (a1.name, b1.ipv4): False, (a1.name, b1.ipv6): False,
            (b1.name, a1.ipv4): False, (b1.name, a1.ipv6): False}
    got = lab.reach(list(want))
    wrong = [f"{k} {s} -> {d}" for (k, s, d), ok in got.items() if ok != want[(s, d)]]
    assert not wrong, wrong
