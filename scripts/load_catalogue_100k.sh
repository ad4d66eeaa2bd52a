#!/usr/bin/env bash
# The 100k-document synthetic catalogue that scripts/bench_service.py measures the service on:
# generated, loaded under its own alias (synthetic_100k; synthetic_music is left alone), the plans
# stored, and an LTR model trained on its judged queries and made its active model.
# Embedding 100k documents takes minutes on first run (vectors are cached on disk by text).
#
#   scripts/load_catalogue_100k.sh [DIR]        # default DIR: /tmp/syn100k
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-/tmp/syn100k}"
INDEX="${LTRR_BENCH_INDEX:-synthetic_100k}"
LTRR=.venv/bin/ltrr
# The model card goes beside the dataset, not into the checkout's ltr_models/cards.
export LTRR_MODEL_CARDS="${LTRR_MODEL_CARDS:-$DIR/model_cards}"
"$LTRR" dataset synth "$DIR" --docs 100000 --queries 500 --seed 1
"$LTRR" load "$DIR" --index "$INDEX"
"$LTRR" plans sync
"$LTRR" ltr train "$DIR" --index "$INDEX"
