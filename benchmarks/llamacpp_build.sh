#!/usr/bin/env bash
# llama.cpp as a benchmark PEER (never a dependency of grilly_kv): pack its source, build its
# Vulkan llama-bench on the CPU machine, or build its CUDA llama-bench on the GPU machine.
#
#   benchmarks/llamacpp_build.sh --source OUT.tar.xz
#       Packs the llama.cpp source (ggml CPU/Vulkan/CUDA backends, common, tools, vendor; no
#       models, docs, tests, web UI or other backends) into OUT.tar.xz, top folder llama.cpp/.
#       The source comes from $LLAMACPP_SRC, or else from the PyPI sdist of llama-cpp-python
#       0.3.36 (vendors llama.cpp 0c1e570), fetched with pip into .cache/llamacpp/.
#
#   benchmarks/llamacpp_build.sh --vulkan OUT.tar.xz [SRC.tar.xz]
#       CPU machine (Debian bookworm). Fetches Debian trixie's Vulkan headers (1.4.309),
#       spirv-headers and glslc 2025.2 (with the trixie libc/libstdc++ it needs) with
#       `apt-get download` under a private apt state in .cache/llamacpp/apt (nothing is
#       installed system-wide; glslc runs through a wrapper using trixie's dynamic loader),
#       builds llama-bench, llama-perplexity and llama-completion from SRC.tar.xz (packed with
#       --source first when not given) with -DGGML_VULKAN=ON, static libstdc++/libgcc, no OpenMP,
#       portable CPU code (AVX2), and packs them as OUT.tar.xz (top folder llamacpp-vulkan/).
#       The binaries need only libvulkan.so.1 (any loader >= 1.3.239) at run time.
#
#   benchmarks/llamacpp_build.sh --cuda BUILD_DIR SRC.tar.xz
#       GPU machine (CUDA toolkit, cmake; ninja or make). Unpacks SRC.tar.xz into BUILD_DIR and
#       builds BUILD_DIR/build/bin/llama-bench with -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90
#       ($CUDA_ARCH overrides), $JOBS jobs (default 15). Prints the binary's path last.
#
# On the GPU machine (repository root, the two tarballs carried in .peers/, $GGUF a model file):
#   tar -xJf .peers/llamacpp-vulkan.tar.xz -C /tmp
#   /tmp/llamacpp-vulkan/llama-bench -m "$GGUF" -ngl 99 -p 512 -n 128 -d 0,1024,8064 -r 3 -o json
#   LLB=$(benchmarks/llamacpp_build.sh --cuda build/llamacpp-cuda .peers/llamacpp-src.tar.xz | tail -1)
#   "$LLB" -m "$GGUF" -ngl 99 -p 512 -n 128 -d 0,1024,8064 -r 3 -o json
#
# Environment: LLAMACPP_SRC (source folder), LLAMACPP_COMMIT (default 0c1e570), JOBS,
# NICE (prefix for build commands, e.g. "nice -n 10"), CUDA_ARCH.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/llamacpp"
LLAMACPP_COMMIT="${LLAMACPP_COMMIT:-0c1e570}"
SDIST="llama-cpp-python==0.3.36"
TRIXIE_PACKAGES=(glslc libshaderc1 libc6 libstdc++6 libgcc-s1 libvulkan-dev libvulkan1 spirv-headers)
VULKAN_TOOLS=(llama-bench llama-perplexity llama-completion)
COMMON_CMAKE_ARGS=(
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=OFF
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF
    -DLLAMA_BUILD_COMMIT="$LLAMACPP_COMMIT" -DLLAMA_BUILD_NUMBER=0
)
# Paths left out of the source tarball (relative to llama.cpp/): large and unused by the build.
# The sdist's stray .git file (a submodule link to nowhere) is kept on purpose: git then fails
# inside llama.cpp/ instead of reporting an enclosing repository's commit as ggml's.
PRUNE=(
    .github docs models media tests benches examples pocs gguf-py conversion app
    tools/ui tools/server
    ggml/examples ggml/tests
    ggml/src/ggml-cann ggml/src/ggml-openvino ggml/src/ggml-webgpu ggml/src/ggml-et
    ggml/src/ggml-metal ggml/src/ggml-hexagon ggml/src/ggml-sycl ggml/src/ggml-opencl
    ggml/src/ggml-virtgpu ggml/src/ggml-zdnn ggml/src/ggml-zendnn ggml/src/ggml-musa
    ggml/src/ggml-hip
)

die() { echo "llamacpp_build.sh: $*" >&2; exit 1; }
log() { echo "[llamacpp_build $(date +%H:%M:%S)] $*" >&2; }

pick_generator() {
    # Ninja when installed, else Unix Makefiles (both ship with a bare Debian/Ubuntu + cmake).
    if command -v ninja >/dev/null 2>&1; then echo "Ninja"; else echo "Unix Makefiles"; fi
}

source_dir() {
    # The llama.cpp folder to pack: $LLAMACPP_SRC, else the sdist's vendor/llama.cpp in .cache.
    if [[ -n "${LLAMACPP_SRC:-}" ]]; then
        [[ -f "$LLAMACPP_SRC/CMakeLists.txt" && -d "$LLAMACPP_SRC/ggml" ]] \
            || die "LLAMACPP_SRC=$LLAMACPP_SRC is not a llama.cpp source folder"
        echo "$LLAMACPP_SRC"; return
    fi
    local dir="$CACHE/llama_cpp_python-0.3.36/vendor/llama.cpp"
    if [[ ! -f "$dir/CMakeLists.txt" ]]; then
        mkdir -p "$CACHE"
        log "fetching the $SDIST sdist with pip"
        python3 -m pip download --no-deps --no-binary :all: "$SDIST" -d "$CACHE" >&2
        tar -xzf "$CACHE/llama_cpp_python-0.3.36.tar.gz" -C "$CACHE"
    fi
    [[ -f "$dir/CMakeLists.txt" ]] || die "no llama.cpp source at $dir"
    echo "$dir"
}

pack_source() {
    local out="$1" src staging excludes=()
    src="$(source_dir)"
    for p in "${PRUNE[@]}"; do excludes+=(--exclude="llama.cpp/$p"); done
    staging="$(mktemp -d)"
    ln -s "$src" "$staging/llama.cpp"
    echo "$LLAMACPP_COMMIT" > "$staging/LLAMACPP_COMMIT"
    mkdir -p "$(dirname "$out")"
    # -h follows the llama.cpp link; LLAMACPP_COMMIT stamps which upstream commit this is.
    tar -C "$staging" -h "${excludes[@]}" --exclude='__pycache__' --exclude='*.pyc' \
        --owner=0 --group=0 -cf - llama.cpp LLAMACPP_COMMIT | xz -T2 -9 > "$out.tmp"
    mv "$out.tmp" "$out"
    rm -rf "$staging"
    log "source: $out ($(du -h "$out" | cut -f1)) from $src"
}

unpack_source() {
    # unpack_source SRC.tar.xz DEST: DEST/llama.cpp ready for cmake.
    local tarball="$1" dest="$2"
    [[ -f "$tarball" ]] || die "no source tarball $tarball"
    rm -rf "$dest/llama.cpp"
    mkdir -p "$dest"
    tar -xJf "$tarball" -C "$dest"
    [[ -f "$dest/llama.cpp/CMakeLists.txt" ]] || die "$tarball holds no llama.cpp/CMakeLists.txt"
}

fetch_trixie() {
    # Downloads the trixie packages into $CACHE/apt/debs and unpacks them into $CACHE/sysroot.
    local apt="$CACHE/apt"
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/etc" "$apt/debs"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
        > "$apt/etc/sources.list"
    : > "$apt/status"
    local opts=(
        -o Dir::Etc::SourceList="$apt/etc/sources.list" -o Dir::Etc::SourceParts=/nonexistent
        -o Dir::State::Lists="$apt/lists" -o Dir::State::Status="$apt/status"
        -o Dir::Cache="$apt/cache" -o Dir::Cache::archives="$apt/cache/archives"
        -o APT::Architecture=amd64 -o APT::Sandbox::User=root -o Debug::NoLocking=1
    )
    local missing=0
    for p in "${TRIXIE_PACKAGES[@]}"; do compgen -G "$apt/debs/${p}_*.deb" >/dev/null || missing=1; done
    if (( missing )); then
        log "apt-get update (private trixie list) and download: ${TRIXIE_PACKAGES[*]}"
        apt-get "${opts[@]}" update >&2
        (cd "$apt/debs" && apt-get "${opts[@]}" download "${TRIXIE_PACKAGES[@]}" >&2)
    fi
    rm -rf "$CACHE/sysroot"
    mkdir -p "$CACHE/sysroot"
    for deb in "$apt/debs"/*.deb; do dpkg-deb -x "$deb" "$CACHE/sysroot"; done
    local sys="$CACHE/sysroot" lib="$CACHE/sysroot/usr/lib/x86_64-linux-gnu"
    mkdir -p "$CACHE/bin"
    cat > "$CACHE/bin/glslc" <<EOF
#!/bin/sh
# trixie's glslc run with trixie's own loader and libraries (bookworm's libc is too old for it)
exec "$lib/ld-linux-x86-64.so.2" --library-path "$lib" "$sys/usr/bin/glslc" "\$@"
EOF
    chmod +x "$CACHE/bin/glslc"
    "$CACHE/bin/glslc" --version >&2 || die "the trixie glslc wrapper does not run"
    [[ -f "$sys/usr/include/vulkan/vulkan.hpp" ]] || die "no vulkan.hpp in the trixie libvulkan-dev"
    [[ -f "$sys/usr/share/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake" ]] || die "no SPIRV-Headers cmake config"
}

build_vulkan() {
    local out="$1" src_tarball="${2:-}" work="$CACHE/vulkan"
    [[ "$(uname -m)" == x86_64 ]] || die "--vulkan fetches amd64 packages; run it on x86_64"
    fetch_trixie
    if [[ -z "$src_tarball" ]]; then
        src_tarball="$CACHE/llamacpp-src.tar.xz"
        pack_source "$src_tarball"
    fi
    unpack_source "$src_tarball" "$work"
    local sys="$CACHE/sysroot" loader
    loader="$(ls /usr/lib/x86_64-linux-gnu/libvulkan.so.1 2>/dev/null || true)"
    # Link against the system loader (older than trixie's): ggml-vulkan loads every entry point
    # through vkGetInstanceProcAddr, so any loader >= that one runs the binary.
    [[ -n "$loader" ]] || loader="$sys/usr/lib/x86_64-linux-gnu/libvulkan.so.1"
    local nice=(${NICE:-})
    "${nice[@]}" cmake -S "$work/llama.cpp" -B "$work/build" -G "$(pick_generator)" "${COMMON_CMAKE_ARGS[@]}" \
        -DGGML_VULKAN=ON -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF \
        -DVulkan_INCLUDE_DIR="$sys/usr/include" -DVulkan_LIBRARY="$loader" \
        -DVulkan_GLSLC_EXECUTABLE="$CACHE/bin/glslc" \
        -DSPIRV-Headers_DIR="$sys/usr/share/cmake/SPIRV-Headers" \
        -DCMAKE_EXE_LINKER_FLAGS="-static-libstdc++ -static-libgcc" >&2
    "${nice[@]}" cmake --build "$work/build" --target "${VULKAN_TOOLS[@]}" -j "${JOBS:-2}" >&2
    local pack="$work/pack/llamacpp-vulkan"
    rm -rf "$work/pack"; mkdir -p "$pack"
    for t in "${VULKAN_TOOLS[@]}"; do
        cp "$work/build/bin/$t" "$pack/"
        strip "$pack/$t"
    done
    {
        echo "llama.cpp $LLAMACPP_COMMIT (from $SDIST), GGML_VULKAN=ON, built $(date -u +%FT%TZ) on $(. /etc/os-release; echo "$PRETTY_NAME")"
        echo "glslc: $("$CACHE/bin/glslc" --version | head -1); Vulkan headers: trixie libvulkan-dev $(ls "$CACHE/apt/debs" | grep -o 'libvulkan-dev_[^_]*' | cut -d_ -f2)"
        echo "runtime needs: $(ldd "$pack/llama-bench" | awk '{print $1}' | tr '\n' ' ')"
        echo "on CPU-type Vulkan devices (lavapipe) set GGML_VK_VISIBLE_DEVICES=0"
    } > "$pack/BUILDINFO"
    mkdir -p "$(dirname "$out")"
    tar -C "$work/pack" --owner=0 --group=0 -cf - llamacpp-vulkan | xz -T2 -9 > "$out.tmp"
    mv "$out.tmp" "$out"
    cat "$pack/BUILDINFO" >&2
    log "vulkan: $out ($(du -h "$out" | cut -f1))"
}

find_nvcc() {
    if [[ -n "${CUDACXX:-}" && -x "${CUDACXX}" ]]; then echo "$CUDACXX"; return; fi
    if command -v nvcc >/dev/null 2>&1; then command -v nvcc; return; fi
    local c
    for c in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc /usr/bin/nvcc; do
        [[ -x "$c" ]] && { echo "$c"; return; }
    done
    die "no nvcc (looked on PATH, in \$CUDACXX and /usr/local/cuda*/bin)"
}

build_cuda() {
    local dir="$1" src_tarball="$2"
    command -v cmake >/dev/null 2>&1 || die "cmake not found on PATH"
    local nvcc commit
    nvcc="$(find_nvcc)"
    log "nvcc: $nvcc ($("$nvcc" --version | tail -1))"
    unpack_source "$src_tarball" "$dir"
    commit="$(cat "$dir/LLAMACPP_COMMIT" 2>/dev/null || echo "$LLAMACPP_COMMIT")"
    # The toolkit's bin must be on PATH for CMake's CUDAToolkit lookup when nvcc is not there.
    export PATH="$(dirname "$nvcc"):$PATH"
    local nice=(${NICE:-})
    "${nice[@]}" cmake -S "$dir/llama.cpp" -B "$dir/build" -G "$(pick_generator)" "${COMMON_CMAKE_ARGS[@]}" \
        -DLLAMA_BUILD_COMMIT="$commit" \
        -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" -DCMAKE_CUDA_COMPILER="$nvcc" \
        -DGGML_NATIVE=ON -DGGML_CUDA_NCCL=OFF >&2
    "${nice[@]}" cmake --build "$dir/build" --target llama-bench -j "${JOBS:-15}" >&2
    [[ -x "$dir/build/bin/llama-bench" ]] || die "no $dir/build/bin/llama-bench after the build"
    echo "$dir/build/bin/llama-bench"
}

case "${1:-}" in
    --source) [[ $# -eq 2 ]] || die "usage: --source OUT.tar.xz"; pack_source "$(realpath -m "$2")" ;;
    --vulkan) [[ $# -eq 2 || $# -eq 3 ]] || die "usage: --vulkan OUT.tar.xz [SRC.tar.xz]"
              build_vulkan "$(realpath -m "$2")" "${3:+$(realpath "$3")}" ;;
    --cuda)   [[ $# -eq 3 ]] || die "usage: --cuda BUILD_DIR SRC.tar.xz"
              build_cuda "$(realpath -m "$2")" "$(realpath "$3")" ;;
    *) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
