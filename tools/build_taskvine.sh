#!/usr/bin/env bash
# Make TaskVine (vine_worker and the ndcctools.taskvine Python bindings) available in a venv.
#
#   tools/build_taskvine.sh [VENV]        (VENV defaults to .venv)
#
# Nothing to do when the venv already has a vine_worker and can import ndcctools.taskvine.
# Otherwise cctools 7.17.1 is built ONCE from the vendored tarball into a cache outside the
# clone, shared by every venv of the same Python major.minor:
#   ${FLOWDC_TASKVINE_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/flowdc/cctools-7.17.1-pyX.Y}
# and the venv is pointed at it: a .pth file in its site-packages and symlinks of the vine_*
# programs in its bin/. The tarball: $FLOWDC_CCTOOLS_TARBALL, else
# ../shared/vendor/cctools-7.17.1-src.tar.gz beside the clone.
#
# No tarball or no C compiler: one line says so and the script exits 0 (the TaskVine tests skip).
# A failed build exits non-zero with the tail of its log.
set -euo pipefail

CCTOOLS_VERSION=7.17.1
CCTOOLS_SHA256=1f641779252f41839d52e54a8fee843d49c2b17a2463d53c100ee8bccb7ed0f5
# What a build is made of; written last into $prefix/$STAMP: a prefix whose stamp is missing
# (a killed build) or differs (an older recipe) is built again.
CONFIGURE_FLAGS=(--without-system-chirp --without-system-doc --without-system-ftp-lite
    --without-system-grow --without-system-makeflow --without-system-parrot
    --without-system-work_queue)   # poncho stays: serverless libraries need ndcctools.poncho
STAMP=.flowdc-build-done
RECIPE="cctools $CCTOOLS_VERSION ${CONFIGURE_FLAGS[*]}"
# What the bindings import at run time: cloudpickle and packaging (PythonTask), threadpoolctl
# (a serverless library on a worker), conda-pack (create_library_from_functions imports it
# even when it packs no environment). Names as pip knows them; imported with - as _.
RUNTIME_PKGS=(cloudpickle packaging threadpoolctl conda-pack)

say() { echo "build_taskvine: $*"; }

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(cd "${1:-.venv}" 2>/dev/null && pwd) || { say "no venv at ${1:-.venv}" >&2; exit 2; }
py=$venv/bin/python
[ -x "$py" ] || { say "no $py" >&2; exit 2; }

# One interpreter start answers everything asked of the venv: its Python version, its
# site-packages, and whether it imports ndcctools.taskvine and what the bindings need already.
read -r pyver purelib have_bindings < <("$py" - "${RUNTIME_PKGS[@]}" <<'EOF'
import importlib.util, sys, sysconfig
try:
    import ndcctools.taskvine  # noqa: F401
    found = [importlib.util.find_spec(m.replace("-", "_")) for m in sys.argv[1:]]
    ok = "yes" if all(found) else "no"
except Exception:
    ok = "no"
print("%d.%d" % sys.version_info[:2], sysconfig.get_paths()["purelib"], ok)
EOF
)

cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/flowdc
prefix=${FLOWDC_TASKVINE_PREFIX:-$cache_root/cctools-$CCTOOLS_VERSION-py$pyver}
prefix_site=$prefix/lib/python$pyver/site-packages
pth=$purelib/flowdc-cctools.pth
built() { [ "$(cat "$prefix/$STAMP" 2>/dev/null)" = "$RECIPE" ]; }

if [ "$have_bindings" = yes ] && { [ -x "$venv/bin/vine_worker" ] || command -v vine_worker >/dev/null; }; then
    # a TaskVine of the venv's own (conda, pip), or ours, current and at this prefix
    if [ ! -f "$pth" ] || { [ "$(cat "$pth")" = "$prefix_site" ] && built; }; then
        exit 0
    fi
fi

# Point the venv at a finished build in $prefix.
link_venv() {
    echo "$prefix_site" >"$pth"
    local prog name
    for prog in "$prefix"/bin/vine_*; do
        name=$(basename "$prog")
        # a program of the venv's own (not one of our links) is left alone
        if [ -e "$venv/bin/$name" ] && [ ! -L "$venv/bin/$name" ]; then continue; fi
        ln -sfn "$prog" "$venv/bin/$name"
    done
    local mods="${RUNTIME_PKGS[*]//-/_}"
    if ! "$py" -c "import ${mods// /, }" 2>/dev/null; then
        "$py" -m pip install --quiet "${RUNTIME_PKGS[@]}"
    fi
    if ! "$py" -c 'import ndcctools.taskvine' 2>/dev/null; then
        say "built in $prefix, but $py cannot import ndcctools.taskvine:" >&2
        "$py" -c 'import ndcctools.taskvine' >&2 || true
        exit 1
    fi
}

if built; then
    link_venv
    say "linked $venv to TaskVine in $prefix"
    exit 0
fi

# ---- building: first what it needs ----
tarball=${FLOWDC_CCTOOLS_TARBALL:-$repo_root/../shared/vendor/cctools-$CCTOOLS_VERSION-src.tar.gz}
if [ ! -f "$tarball" ]; then
    say "no cctools tarball at $tarball (set FLOWDC_CCTOOLS_TARBALL): TaskVine not built, its tests will skip"
    exit 0
fi
cc=${CC:-gcc}   # what cctools' configure uses
if ! command -v make >/dev/null; then
    say "no make on PATH: TaskVine not built, its tests will skip"
    exit 0
fi
if ! printf 'int main(void) { return 0; }\n' | "$cc" -x c - -o /dev/null >/dev/null 2>&1; then
    say "no working C compiler ($cc): TaskVine not built, its tests will skip"
    exit 0
fi
sum=$(sha256sum "$tarball" | cut -d' ' -f1)
if [ "$sum" != "$CCTOOLS_SHA256" ]; then
    say "$tarball has sha256 $sum, expected $CCTOOLS_SHA256" >&2
    exit 1
fi

# Headers: zlib (required by cctools), OpenSSL (the manager's and workers' SSL), Python's
# (the bindings). Debian: zlib1g-dev libssl-dev python3-dev, installed here when we can.
py_include=$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("CONFINCLUDEPY"))')
missing_headers() {
    local lacks=() h
    for h in zlib.h:zlib1g-dev openssl/ssl.h:libssl-dev; do
        printf '#include <%s>\n' "${h%%:*}" | "$cc" -E -x c - >/dev/null 2>&1 || lacks+=("${h##*:}")
    done
    if ! printf '#include <Python.h>\n' | "$cc" -E -x c -I"$py_include" - >/dev/null 2>&1; then
        # only Debian's own Pythons get their headers from apt
        case $py_include in /usr/include/*) lacks+=("python$pyver-dev") ;; *) lacks+=("Python.h of $py") ;; esac
    fi
    echo "${lacks[*]}"
}
missing=$(missing_headers)
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    pkgs=$(echo "$missing" | tr ' ' '\n' | grep -- '-dev$' | tr '\n' ' ' || true)
    if [ -n "$pkgs" ]; then
        say "installing $pkgs with apt-get ..."
        # shellcheck disable=SC2086
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null) ||
            say "apt-get could not install $pkgs"
        missing=$(missing_headers)
    fi
fi
if [ -n "$missing" ]; then
    say "missing headers ($missing): TaskVine not built, its tests will skip"
    exit 0
fi

# ---- one build at a time per prefix ----
mkdir -p "$(dirname "$prefix")"
exec 9>"$prefix.lock"
if ! flock -w 1800 9; then
    say "another build of $prefix held its lock for 30 minutes" >&2
    exit 1
fi
if built; then   # by the build we waited for
    link_venv
    say "linked $venv to TaskVine in $prefix"
    exit 0
fi

rm -rf "$prefix".build.??????   # left by a build that was killed (we hold the lock)
"$py" -m pip install --quiet swig "${RUNTIME_PKGS[@]}"

work=$(mktemp -d "$prefix.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
log=$prefix.build.log
staging=$work/prefix
say "building cctools $CCTOOLS_VERSION for Python $pyver into $prefix (log: $log) ..."
start=$SECONDS
# (set -e does not act inside an 'if !' test: each step is chained with &&)
if ! (
    tar xzf "$tarball" -C "$work" &&
    cd "$work/cctools-$CCTOOLS_VERSION" &&
    # The final prefix goes to configure: cctools compiles it into its programs (INSTALL_PATH).
    ./configure --prefix "$prefix" --with-python3-path "$venv" --with-swig-path "$venv" \
        "${CONFIGURE_FLAGS[@]}" &&
    { grep -qx 'CCTOOLS_PYTHON3_AVAILABLE=yes' config.mk || { echo "configure: no python3 bindings"; false; }; } &&
    { grep -qx 'CCTOOLS_OPENSSL_AVAILABLE=yes' config.mk || { echo "configure: no openssl"; false; }; } &&
    make -j2 &&
    # installed into a staging directory, renamed into place only once complete
    make install CCTOOLS_INSTALL_DIR="$staging"
) >"$log" 2>&1; then
    say "building cctools failed; the end of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
fi
echo "$RECIPE" >"$staging/$STAMP"
rm -rf "$prefix"        # a killed or older build, if any
mv "$staging" "$prefix"
say "built in $((SECONDS - start)) s"
link_venv
say "linked $venv to TaskVine in $prefix"
