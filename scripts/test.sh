#!/usr/bin/env bash
# Runs all of ftune's tests: installs missing Debian packages (as root), checks that the single
# header is fresh, builds (Release) and runs CTest. Extra arguments go to ctest, e.g.
#   scripts/test.sh -L primitives
# Environment: BUILD_DIR (default build), FTUNE_DATA_DIR (default ../shared/data).
set -euo pipefail
FTUNE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$FTUNE_ROOT/scripts/lib.sh"
cd "$FTUNE_ROOT"

ftune_require_packages "${FTUNE_DEBIAN_PACKAGES[@]}"
scripts/amalgamate.sh --check
build=${BUILD_DIR:-build}
ftune_build "$build" -DFTUNE_BUILD_TESTS=ON
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" "$@"
