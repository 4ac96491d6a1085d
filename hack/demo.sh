#!/usr/bin/env bash
# Shows the installed plugin isolating networks live, in throwaway namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
exec /usr/bin/python3 hack/demo.py
