#!/usr/bin/env bash
# ftune's main job. Until fine-tuning of pretrained encoders lands, the most complete working
# example: a sentiment classifier trained on SST-2 with ftune's primitives (forward and backward
# by hand, AdamW), evaluated on the dev set. Installs missing Debian packages (as root), builds
# (Release) and runs. Arguments go to the example (e.g. --epochs 5).
# Environment: BUILD_DIR (default build), FTUNE_DATA_DIR (default ../shared/data).
set -euo pipefail
FTUNE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$FTUNE_ROOT/scripts/lib.sh"
cd "$FTUNE_ROOT"

ftune_require_packages "${FTUNE_DEBIAN_PACKAGES[@]}"
build=${BUILD_DIR:-build}
ftune_build "$build"
data=${FTUNE_DATA_DIR:-$FTUNE_ROOT/../shared/data}
if [[ ! -f $data/sst2/train.tsv ]]; then
    echo "SST-2 not found in $data: set FTUNE_DATA_DIR to the directory holding sst2/train.tsv" >&2
    exit 1
fi
"$build/bin/sst2_bag_of_embeddings" --data "$data" "$@"
