# Shared by scripts/test.sh and scripts/demo.sh (sourced, not run).

# The Debian packages a build of ftune needs (compiler, CMake, header-only dependencies, test and
# benchmark frameworks).
FTUNE_DEBIAN_PACKAGES=(g++ make cmake pkg-config libeigen3-dev libxsimd-dev nlohmann-json3-dev libutf8proc-dev zlib1g-dev catch2 libbenchmark-dev libcpp-httplib-dev)

# ftune_require_packages PKG...: installs the missing packages with apt-get when run as root;
# otherwise prints the exact command to run and exits.
ftune_require_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ $(id -u) -eq 0 ]]; then
        echo "installing missing Debian packages: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    else
        echo "missing Debian packages; install them with:" >&2
        echo "  sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
}

# ftune_build BUILD_DIR [CMAKE_ARGS...]: configures (Release) and builds with all cores.
ftune_build() {
    local dir=$1
    shift
    cmake -S "$FTUNE_ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@"
    cmake --build "$dir" -j "$(nproc)"
}
