"""hack/show-commands-to-delete-isolation-rules.sh against real rules in a lab's host namespace.

The script prints commands; these tests run what it prints with `sh -e` and compare the
firewall before and after: our rules (both backends), the old Go plugin's rules (also for a
bridge whose name is full of shell metacharacters) and our chains must go, everybody
else's rules must stay exactly as they were.
"""

import os
import subprocess

import pytest

from conftest import REPO
from netlab import IP, firewall_shared_networks, sh

pytestmark = pytest.mark.e2e

SCRIPT = os.path.join(REPO, "hack", "show-commands-to-delete-isolation-rules.sh")
STAGE1, STAGE2 = "CNI-ISOLATION-STAGE-1", "CNI-ISOLATION-STAGE-2"
OLD_COMMENT = "CNI isolation plugin rules"  # AkihiroSuda/cni-isolation's comment
TOOLS = ("iptables", "ip6tables")
ENV = {**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def rules(lab) -> str:
    return lab.ruleset()  # counters zeroed there


def xt(lab, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(tool, "-w", "-t", "filter", *args, netns=lab.host, check=check)


def add_old_go_plugin_rules(lab, bridge: str) -> None:
    """The rules cni-isolation's setupChain leaves for `bridge`, with its insertUnique
    (an existing identical rule is not added again; jumps and bridge rules go on top)."""
    c = ["-m", "comment", "--comment", OLD_COMMENT]
    specs = [
        (True, "FORWARD", [*c, "-j", STAGE1]),
        (True, STAGE1, ["-i", bridge, "!", "-o", bridge, *c, "-j", STAGE2]),
        (False, STAGE1, [*c, "-j", "RETURN"]),
        (True, STAGE2, ["-o", bridge, *c, "-j", "DROP"]),
        (False, STAGE2, [*c, "-j", "RETURN"]),
    ]
    for tool in TOOLS:
        for chain in (STAGE1, STAGE2):
            if xt(lab, tool, "-S", chain, check=False).returncode != 0:
                xt(lab, tool, "-N", chain)
        for prepend, chain, spec in specs:
            if xt(lab, tool, "-C", chain, *spec, check=False).returncode != 0:
                xt(lab, tool, *(("-I", chain, "1") if prepend else ("-A", chain)), *spec)


def show_commands(lab) -> tuple[str, list[str]]:
    """The script's output inside the host namespace, and its command (non-comment) lines."""
    proc = subprocess.run([IP, "netns", "exec", lab.host, "bash", SCRIPT], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert all(line.startswith(("#", "iptables ", "ip6tables ", "nft ")) for line in lines), proc.stdout
    return proc.stdout, [line for line in lines if not line.startswith("#")]


def run_commands(lab, script: str) -> None:
    proc = subprocess.run([IP, "netns", "exec", lab.host, "sh", "-e"], input=script, capture_output=True, text=True,
                          env=ENV)
    assert proc.returncode == 0, f"sh -e failed: {proc.stderr}\n--- script:\n{script}"


def test_help():
    for flag in ("-h", "--help"):
        proc = subprocess.run(["bash", SCRIPT, flag], capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout.startswith("Usage: ") and "sh -e" in proc.stdout
    proc = subprocess.run(["bash", SCRIPT, "--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Usage: " in proc.stderr and proc.stdout == ""


def test_output_run_with_sh_restores_the_baseline(lab):
    # Bridge names made of shell metacharacters: Linux and iptables accept them, and
    # iptables-save prints them raw, so every command naming one must be re-quoted to
    # survive `sh -e`. The old plugin's rules naming them are in place before our ADDs,
    # which must read such rules (quotes and a backslash, printed raw) without tripping.
    odd, hostile = f"{lab.prefix}$(*;|&", f"{lab.prefix}$'\"(*`\\"
    assert len(odd) <= 15 and len(hostile) <= 15
    for name in (odd, hostile):
        sh(IP, "link", "add", name, "type", "bridge", netns=lab.host)

    # Somebody else's rules, part of the baseline, that must survive: a comment that merely
    # contains our tag (quoted and escaped by iptables-save), and (IPv6) a foreign chain
    # jumping to STAGE-1, which must therefore stay once emptied.
    for tool in TOOLS:
        xt(lab, tool, "-P", "FORWARD", "ACCEPT")  # iptables-nft creates the table on first use
        xt(lab, tool, "-A", "FORWARD", "-i", odd, "-m", "comment", "--comment",
           "isolation-plugin, \"not\" ours: $x 'y'", "-j", "ACCEPT")
    xt(lab, "ip6tables", "-N", STAGE1)
    xt(lab, "ip6tables", "-N", "FOREIGN")
    xt(lab, "ip6tables", "-A", "FOREIGN", "-j", STAGE1)
    baseline = rules(lab)

    net1 = lab.network(["bridge", "isolation"], isolation={"backend": "iptables"})
    net2 = lab.network(["bridge", "isolation"], isolation={"backend": "nftables", "ingressPolicy": "isolated"})
    for bridge in (odd, hostile, net2.bridge):
        add_old_go_plugin_rules(lab, bridge)
    lab.add(net1), lab.add(net1), lab.add(net2)

    for fam in ("ipv4", "ipv6"):
        saved = lab.save(fam)
        assert f"-o {hostile} -m comment --comment \"{OLD_COMMENT}\" -j DROP" in saved, saved
        assert f"-o {net1.bridge} -m comment --comment isolation-plugin -j DROP" in saved, saved
    tables = lab.nft("list", "tables").splitlines()
    assert "table inet isolation" in tables and "table bridge isolation" in tables

    out, commands = show_commands(lab)
    print(out)
    assert commands, out
    assert "nft delete table inet isolation" in commands and "nft delete table bridge isolation" in commands
    chains_deleted = sorted(c for c in commands if " -X " in c)
    assert chains_deleted == sorted([
        "iptables -w -t filter -X CNI-FORWARD",
        f"iptables -w -t filter -X {STAGE1}",
        f"iptables -w -t filter -X {STAGE2}",
        "ip6tables -w -t filter -X CNI-FORWARD",
        f"ip6tables -w -t filter -X {STAGE2}",  # STAGE-1 stays: FOREIGN jumps to it
    ]), out
    for tool in TOOLS:
        last_delete = max(i for i, c in enumerate(commands) if c.startswith(f"{tool} -w -t filter -D "))
        assert all(i > last_delete for i, c in enumerate(commands) if c.startswith(f"{tool} -w -t filter -X ")), \
            "each family's rules go before its chains"
    assert f"--comment '{OLD_COMMENT}'" in out

    run_commands(lab, out)
    assert rules(lab) == baseline
    assert "isolation" not in lab.nft("list", "tables")

    _, again = show_commands(lab)
    assert again == [], "a second run after cleanup must print no commands"


@pytest.mark.parametrize("order", ["firewall-first", "isolation-first"])
def test_firewall_ingress_policy_rules_are_left_alone(lab, order):
    a, b = firewall_shared_networks(lab, order)

    def ours(line: str) -> bool:
        return line.startswith("-A ") and " --comment isolation-plugin " in line

    before = {fam: lab.save(fam).splitlines() for fam in ("ipv4", "ipv6")}
    for fam, lines in before.items():
        assert any(ours(line) for line in lines), f"precondition: rules of ours in {fam}"
        theirs = [line for line in lines if line.startswith(f"-A {STAGE1}") or line.startswith(f"-A {STAGE2}")]
        assert sum("CNI firewall plugin rules" in line for line in theirs) == 6, theirs  # 2 bridges x 2 + 2 tails

    out, commands = show_commands(lab)
    print(out)
    assert commands and all(" -D " in c for c in commands), "no chain may be deleted: the firewall still uses them"
    run_commands(lab, out)

    for fam, lines in before.items():
        after = lab.save(fam).splitlines()
        # Exactly our rules are gone; every chain and every other rule, in order, stays.
        assert after == [line for line in lines if not ours(line)], fam
        assert any("CNI firewall plugin rules" in line for line in after if line.startswith("-A FORWARD"))
        assert f":{STAGE1} " in "\n".join(after) and f":{STAGE2} " in "\n".join(after)

    # The firewall plugin's own ingressPolicy still keeps the two bridges apart.
    probes = [(a.name, addr) for addr in (b.ipv4, b.ipv6)] + [(b.name, addr) for addr in (a.ipv4, a.ipv6)]
    assert [k for k, ok in lab.reach(probes).items() if ok] == []

    _, again = show_commands(lab)
    assert again == [], "a second run after cleanup must print no commands"
