#!/usr/bin/env bash
# Create .venv, install ltrr with its test extras, and start the local OpenSearch node.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -U pip
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/ltrr node start
