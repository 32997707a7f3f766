#!/usr/bin/env bash
# Build LAMMPS with ML-IAP + Python (for `pair_style mliap unified`) once, into a cache.
#
#   scripts/build_lammps.sh            build (or reuse) and install the `lammps` module into $VENV
#
# Environment:
#   CLEBSCH_LAMMPS_CACHE  where the build lives   (default ~/.cache/clebsch/lammps)
#   VENV                  virtual environment that gets the `lammps` module (default /work/main/.venv)
#   LAMMPS_SUITE          Debian suite whose source package is used (default unstable)
#   JOBS                  parallel compile jobs (default 2; the compile runs under nice -n 19)
#
# Source: Debian's `lammps` source package (upstream orig tarball), fetched with apt-get source
# after adding a deb-src line for $LAMMPS_SUITE. MPI compilers come from PyPI's `mpich`, Cython
# from PyPI, cmake and python3-dev from Debian. The result is reused when its stamp file exists:
# a second run only (re)installs the Python module and prints how to run LAMMPS. One upstream
# bug is patched before compiling (scripts/patch_lammps_mliap.py: ML-IAP's per-atom neighbour table
# was sized by the total pair count, memory quadratic in the atoms); a cached build without the
# patch gets it and recompiles the one file.
# Exit status 3 means the source could not be fetched (CI treats that as "LAMMPS absent").
set -euo pipefail

CACHE=${CLEBSCH_LAMMPS_CACHE:-$HOME/.cache/clebsch/lammps}
VENV=${VENV:-$(cd "$(dirname "$0")/.." && pwd)/.venv}
SUITE=${LAMMPS_SUITE:-unstable}
JOBS=${JOBS:-2}
STAMP="$CACHE/.built"
TOOLS="$CACHE/tools"          # venv holding mpich (compilers, mpiexec, libmpi) and cython
BUILD="$CACHE/build"
PYPKG="$CACHE/python"         # the `lammps` Python package, next to liblammps.so

say() { printf '[build_lammps] %s\n' "$*" >&2; }

if [[ ! -x "$VENV/bin/python" ]]; then
    say "no Python at $VENV/bin/python: set VENV to the virtual environment that should import lammps"
    exit 2
fi

install_python_module() {
    local site
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    printf '%s\n' "$PYPKG" > "$site/clebsch-lammps.pth"
    say "lammps Python module linked into $VENV ($site/clebsch-lammps.pth -> $PYPKG)"
}

print_usage() {
    cat <<EOF
LAMMPS (ML-IAP unified, Python) is ready in $CACHE
  executable : $BUILD/lmp
  mpiexec    : $TOOLS/bin/mpiexec
  Python     : $VENV/bin/python -c 'import lammps'   (module from $PYPKG)
Run a model exported with 'clebsch export MODEL --lammps model':
  PYTHONPATH=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \\
    $TOOLS/bin/mpiexec -n 2 $BUILD/lmp -in in.lammps
with, in in.lammps:
  units metal
  newton on
  comm_modify cutoff <what the exported model prints>
  pair_style mliap unified model.pkl 0
  pair_coeff * * Cu
Tests: CLEBSCH_LAMMPS_CACHE=$CACHE $VENV/bin/python -m pytest tests/calculators/test_lammps.py
EOF
}

HERE=$(cd "$(dirname "$0")" && pwd)
PATCHED="$CACHE/.patched-mliap"   # scripts/patch_lammps_mliap.py applied (ML-IAP's neighbour table memory)

if [[ -f "$STAMP" && -e "$BUILD/liblammps.so" && -d "$PYPKG/lammps" ]]; then
    if [[ ! -f "$PATCHED" ]]; then
        say "patching ML-IAP's neighbour table (scripts/patch_lammps_mliap.py) and rebuilding what it touches"
        "$VENV/bin/python" "$HERE/patch_lammps_mliap.py" "$CACHE/src/lammps" >&2
        (cd "$BUILD" && PATH="$TOOLS/bin:$PATH" nice -n 19 make -j"$JOBS") >> "$CACHE/make.log" 2>&1 \
            || { say "make failed: see $CACHE/make.log"; tail -n 30 "$CACHE/make.log" >&2; exit 1; }
        touch "$PATCHED"
    fi
    say "reusing the build in $CACHE ($(cat "$STAMP"))"
    install_python_module
    print_usage
    exit 0
fi

start=$(date +%s)
mkdir -p "$CACHE"

# --- system packages: cmake, python3-dev -----------------------------------------------------
need=()
command -v cmake >/dev/null || need+=(cmake)
dpkg -s python3-dev >/dev/null 2>&1 || need+=(python3-dev)
command -v dpkg-source >/dev/null || need+=(dpkg-dev)
if ((${#need[@]})); then
    say "apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

# --- source: Debian's lammps source package --------------------------------------------------
SRC_LIST=/etc/apt/sources.list.d/clebsch-lammps-src.sources
if [[ ! -f "$SRC_LIST" ]]; then
    cat > "$SRC_LIST" <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi
mkdir -p "$CACHE/src"
if ! ls "$CACHE"/src/lammps_*.orig.tar.* >/dev/null 2>&1; then
    say "fetching the lammps source package from Debian $SUITE"
    apt-get update -qq || true
    version=$(apt-cache showsrc lammps 2>/dev/null | awk '/^Version:/ {print $2}' | sort -V | tail -n1)
    # Only the upstream orig tarball is used: the Debian packaging files may be missing on a mirror.
    (cd "$CACHE/src" && apt-get source --download-only -qq "lammps=$version") || true
    if ! ls "$CACHE"/src/lammps_*.orig.tar.* >/dev/null 2>&1; then
        say "could not fetch the lammps source package (version '${version}', deb-src for $SUITE in $SRC_LIST)"
        exit 3
    fi
fi
tarball=$(ls "$CACHE"/src/lammps_*.orig.tar.* | head -n1)
say "source: $tarball"
if [[ ! -d "$CACHE/src/lammps" ]]; then
    rm -rf "$CACHE/src/unpack"
    mkdir -p "$CACHE/src/unpack"
    tar -xf "$tarball" -C "$CACHE/src/unpack"
    if [[ -d "$CACHE/src/unpack/cmake" ]]; then      # a flat tarball
        mv "$CACHE/src/unpack" "$CACHE/src/lammps"
    else                                            # one top-level folder
        mv "$CACHE"/src/unpack/*/ "$CACHE/src/lammps"
        rm -rf "$CACHE/src/unpack"
    fi
fi
SRC="$CACHE/src/lammps"
"$VENV/bin/python" "$HERE/patch_lammps_mliap.py" "$SRC" >&2

# --- build tools from PyPI: mpich (compilers, mpiexec, libmpi) and Cython --------------------
if [[ ! -x "$TOOLS/bin/mpicxx" ]]; then
    "$VENV/bin/python" -m venv "$TOOLS"
    "$TOOLS/bin/python" -m pip install -q --disable-pip-version-check mpich cython
fi
export PATH="$TOOLS/bin:$PATH"

# --- configure and build -----------------------------------------------------------------------
mkdir -p "$BUILD"
cmake -S "$SRC/cmake" -B "$BUILD" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_COMPILER="$TOOLS/bin/mpicc" \
    -DCMAKE_CXX_COMPILER="$TOOLS/bin/mpicxx" \
    -DMPI_C_COMPILER="$TOOLS/bin/mpicc" \
    -DMPI_CXX_COMPILER="$TOOLS/bin/mpicxx" \
    -DPython_EXECUTABLE="$VENV/bin/python" \
    -DCython_EXECUTABLE="$TOOLS/bin/cython" \
    -DBUILD_SHARED_LIBS=ON -DLAMMPS_EXCEPTIONS=ON -DBUILD_MPI=ON -DBUILD_OMP=OFF \
    -DPKG_ML-IAP=ON -DPKG_ML-SNAP=ON -DPKG_PYTHON=ON -DMLIAP_ENABLE_PYTHON=ON \
    -DWITH_JPEG=OFF -DWITH_PNG=OFF -DWITH_FFMPEG=OFF -DWITH_GZIP=OFF -DBUILD_TOOLS=OFF \
    > "$CACHE/configure.log" 2>&1 || { say "cmake failed: see $CACHE/configure.log"; tail -n 30 "$CACHE/configure.log" >&2; exit 1; }
say "compiling with nice -n 19 make -j$JOBS (log: $CACHE/make.log)"
(cd "$BUILD" && nice -n 19 make -j"$JOBS") > "$CACHE/make.log" 2>&1 \
    || { say "make failed: see $CACHE/make.log"; tail -n 30 "$CACHE/make.log" >&2; exit 1; }

# --- the Python package, next to the library -------------------------------------------------
rm -rf "$PYPKG"
mkdir -p "$PYPKG"
cp -r "$SRC/python/lammps" "$PYPKG/lammps"
ln -sf "$BUILD/liblammps.so" "$PYPKG/lammps/liblammps.so"
install_python_module

"$VENV/bin/python" -c 'import lammps; lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none"]); assert lmp.has_package("ML-IAP") and lmp.has_package("PYTHON"), "LAMMPS lacks ML-IAP or PYTHON"; lmp.close()'
printf 'lammps %s, %s, built in %ss\n' "$(basename "$tarball")" "$(date -u +%FT%TZ)" "$(($(date +%s) - start))" > "$STAMP"
touch "$PATCHED"
say "built in $(($(date +%s) - start)) s"
print_usage
