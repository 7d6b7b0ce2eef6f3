# Sourced by the bench scripts: the release binaries they run, built by
# cargo only when one is missing or older than the sources; with the etcd
# store when protoc is there to build it (bench/cluster.sh needs it). Fresh binaries
# are used as they are, even when built with other flags (for a profile),
# which a cargo run with the scripts' own flags would rebuild.
release=${CARGO_TARGET_DIR:-target}/release

# Builds the named binaries unless each is there and newer than every source.
ensure_release() {
  local bin stale=
  for bin in "$@"; do
    if [ ! -x "$release/$bin" ] || [ -n "$(find Cargo.toml Cargo.lock build.rs proto src core etcd \
      server/Cargo.toml server/build.rs server/src bench/Cargo.toml bench/src \
      -newer "$release/$bin" -print -quit)" ]; then
      stale=1
    fi
  done
  local features=
  command -v protoc >/dev/null 2>&1 && features="--features seaport-server/etcd"
  # shellcheck disable=SC2086
  [ -z "$stale" ] || cargo build --release --quiet $features $(printf -- '--bin %s ' "$@")
}
