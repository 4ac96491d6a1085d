#!/bin/bash
# Print (never run) the shell commands that remove the isolation plugin's rules from the
# current network namespace. Review them, then pipe them into `sh -e`:
#
#   bash hack/show-commands-to-delete-isolation-rules.sh            # review
#   bash hack/show-commands-to-delete-isolation-rules.sh | sh -e    # apply
#
# Covered (the compatible successor of the script of the same name in the old Go plugin,
# AkihiroSuda/cni-isolation):
#   - iptables and ip6tables, filter table: every rule whose comment is `isolation-plugin`
#     (this plugin) or `CNI isolation plugin rules` (the old Go plugin) is deleted with -D;
#     rules of the CNI firewall plugin (`CNI firewall plugin rules ...`) and of anybody
#     else are left alone. Then CNI-FORWARD, CNI-ISOLATION-STAGE-1 and -STAGE-2 are
#     deleted with -X, each only when it would then be empty and no remaining rule jumps
#     to it (the firewall plugin's ingressPolicy shares these chains).
#   - nftables: the tables `inet isolation` and `bridge isolation` (nftables backend) and
#     `bridge isolation-iptables` (the iptables backend's anti-spoofing).
#   Not covered: the bridge-port isolation flag that `isolated` sets on container ports
#   (`bridge link set dev VETH isolated off`); it goes with the port. `isolation cleanup`
#   clears it on the ports of registered attachments.
#
# Every argument is re-quoted for sh: iptables-save prints interface names raw (Linux
# allows $ ' " * ( ` \ and more in them) and comments in its own quoting, neither of
# which survives a shell. Plain bash + awk; no python needed.
set -eu -o pipefail

PROG=${0##*/}
PATH=$PATH:/usr/sbin:/sbin # `su` without `-` leaves the sbin directories out

usage() {
	cat <<EOF
Usage: $PROG [-h|--help]

Print the commands that delete the isolation plugin's rules (iptables, ip6tables filter
table; nftables tables inet/bridge "isolation", bridge "isolation-iptables") from the
current network namespace.
Nothing is executed. Review the output, then run it: $PROG | sh -e
EOF
}

case $# in
0) ;;
1)
	case $1 in
	-h | --help)
		usage
		exit 0
		;;
	*)
		usage >&2
		exit 2
		;;
	esac
	;;
*)
	usage >&2
	exit 2
	;;
esac

# Reads `iptables-save -t filter` output; prints `TOOL -w -t filter -D ...` for each rule of
# ours, then `TOOL -w -t filter -X CHAIN` for our chains left empty and unreferenced.
# shellcheck disable=SC2016 # the awk program is meant to be single-quoted
AWK_PROGRAM='
function shq(s,    out, i) {
	if (s == "!") return s
	if (s ~ /^[A-Za-z0-9_.,:\/=@%+-]+$/) return s
	out = "\047"
	while ((i = index(s, "\047")) > 0) {
		out = out substr(s, 1, i - 1) "\047\\\047\047"
		s = substr(s, i + 1)
	}
	return out s "\047"
}

# Splits an iptables-save rule line into T[1..n] the way iptables-restore would, except
# that interface names (after -i/-o, possibly after !) are taken raw, as iptables-save
# prints them: they may contain quotes and backslashes. A quoted string ("..." with \x
# escapes, as xtables_save_string prints comments) becomes one token.
function tokenize(line,    n, i, len, c, tok, raw) {
	n = 0; i = 1; len = length(line); raw = 0
	while (i <= len) {
		c = substr(line, i, 1)
		if (c == " " || c == "\t") { i++; continue }
		tok = ""
		if (c == "\"" && !raw) {
			i++
			while (i <= len) {
				c = substr(line, i, 1)
				if (c == "\\" && i < len) { tok = tok substr(line, i + 1, 1); i += 2; continue }
				i++
				if (c == "\"") break
				tok = tok c
			}
		}
		while (i <= len && (c = substr(line, i, 1)) != " " && c != "\t") { tok = tok c; i++ }
		T[++n] = tok
		if (tok != "!") raw = (tok in RAWOPT)
	}
	return n
}

BEGIN {
	RAWOPT["-i"]; RAWOPT["-o"]; RAWOPT["--in-interface"]; RAWOPT["--out-interface"]
	RAWOPT["--physdev-in"]; RAWOPT["--physdev-out"]
	OURS["isolation-plugin"]; OURS["CNI isolation plugin rules"]
	NCHAINS = split("CNI-FORWARD CNI-ISOLATION-STAGE-1 CNI-ISOLATION-STAGE-2", CHAIN, " ")
	for (k = 1; k <= NCHAINS; k++) { IS_CHAIN[CHAIN[k]]; left[CHAIN[k]] = 0; refs[CHAIN[k]] = 0 }
	ndel = 0; table = ""
}

/^\*/ { table = substr($0, 2); next }
table != "filter" { next }
/^:/ { name = substr($1, 2); if (name in IS_CHAIN) exists[name] = 1; next }
/^-A / {
	# Lines that name none of our chains or comments cannot concern us: skip the tokenizer.
	if (!index($0, "CNI-") && !index($0, "isolation-plugin") && !index($0, "CNI isolation plugin rules")) next
	n = tokenize($0)
	ours = 0
	for (k = 3; k < n; k++) if (T[k] == "--comment" && (T[k + 1] in OURS)) ours = 1
	if (ours) {
		cmd = TOOL " -w -t filter -D " shq(T[2])
		for (k = 3; k <= n; k++) cmd = cmd " " shq(T[k])
		del[++ndel] = cmd
		next
	}
	if (T[2] in IS_CHAIN) left[T[2]]++
	for (k = 3; k < n; k++) if ((T[k] == "-j" || T[k] == "-g") && (T[k + 1] in IS_CHAIN)) refs[T[k + 1]]++
}

END {
	for (k = 1; k <= ndel; k++) print del[k]
	# Only empty chains are deleted, so deleting one never removes a jump to another; the
	# order still lists referrers first (CNI-FORWARD -> STAGE-1 -> STAGE-2).
	for (k = 1; k <= NCHAINS; k++) {
		c = CHAIN[k]
		if ((c in exists) && left[c] == 0 && refs[c] == 0) print TOOL " -w -t filter -X " shq(c)
	}
}
'

failed=0
found=0

emit() { # the commands for one family: $1 = iptables|ip6tables
	local tool=$1 save=$1-save out err status cmds
	if ! command -v "$save" >/dev/null 2>&1 || ! command -v "$tool" >/dev/null 2>&1; then
		echo "# $tool: $save or $tool not found, skipped"
		return 0
	fi
	err=$(mktemp)
	status=0
	out=$("$save" -t filter 2>"$err") || status=$?
	if [ "$status" -ne 0 ]; then
		echo "# WARNING: $save -t filter failed (exit $status), $tool rules not examined: $(tr '\n' ' ' <"$err")"
		echo "$PROG: $save -t filter failed: $(cat "$err")" >&2
		rm -f "$err"
		failed=1
		return 0
	fi
	if grep -q 'iptables-legacy tables present' "$err"; then
		echo "# NOTE: $tool-legacy tables are present too and are not covered; see $tool-legacy-save -t filter"
	fi
	rm -f "$err"
	cmds=$(printf '%s\n' "$out" | awk -v TOOL="$tool" "$AWK_PROGRAM")
	if [ -n "$cmds" ]; then
		printf '%s\n' "$cmds"
		found=1
	fi
}

emit iptables
emit ip6tables

if command -v nft >/dev/null 2>&1; then
	status=0
	tables=$(nft list tables 2>&1) || status=$?
	if [ "$status" -ne 0 ]; then
		echo "# WARNING: nft list tables failed (exit $status), nftables not examined: $(printf '%s' "$tables" | tr '\n' ' ')"
		echo "$PROG: nft list tables failed: $tables" >&2
		failed=1
	else
		for table in "inet isolation" "bridge isolation" "bridge isolation-iptables"; do
			if printf '%s\n' "$tables" | grep -qx "table $table"; then
				echo "nft delete table $table"
				found=1
			fi
		done
	fi
else
	echo "# nft: not found, nftables skipped"
fi

if [ "$found" = 1 ]; then
	echo "# The commands above were NOT executed. Review them, then run: bash ${0//$'\n'/ } | sh -e"
else
	echo "# No isolation plugin rules, chains or tables found in this network namespace."
fi
exit "$failed"
