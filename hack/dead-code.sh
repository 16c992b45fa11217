#!/usr/bin/env bash
# Dead code in the library, as the compiler sees it from the `hookline` binary.
#
# The library exports its modules to the binary, the bench and the tests, so rustc treats every
# `pub` item as used and never reports one that nothing calls. This script checks a copy of the
# crate in which the library's modules belong to the binary itself (`extern crate self as
# hookline` keeps the binary's `hookline::…` paths working): what neither the binary nor the
# library's own code uses is then reported, and the script fails naming it. Code that only tests
# use belongs under `#[cfg(test)]`. The copy lives in target/dead-code; nothing in src/ changes.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COPY="$ROOT/target/dead-code/crate"
rm -rf "$COPY" && mkdir -p "$COPY"
cp -r "$ROOT/src" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" "$COPY/"

python3 - "$COPY" <<'PY'
import pathlib, re, shutil, sys
crate = pathlib.Path(sys.argv[1])
src = crate / "src"
lib = (src / "lib.rs").read_text()
# Private modules: nothing is exported any more.
lib = re.sub(r"^pub mod ", "mod ", lib, flags=re.M).replace("#![warn(missing_docs)]", "")
binary = src / "bin" / "hookline"
main = (binary / "main.rs").read_text()
main = re.sub(r"^//!.*\n", "", main, flags=re.M)
(src / "main.rs").write_text("#![deny(dead_code)]\n" + lib + "\nextern crate self as hookline;\n" + main)
for part in binary.iterdir():
    if part.name != "main.rs":
        shutil.copy(part, src / part.name)
shutil.rmtree(src / "bin")
(src / "lib.rs").unlink()
manifest = (crate / "Cargo.toml").read_text()
manifest = manifest.replace('[lib]\npath = "src/lib.rs"\n', "")
manifest = re.sub(r'path = "src/bin/hookline/main.rs"', 'path = "src/main.rs"', manifest)
(crate / "Cargo.toml").write_text(manifest)
PY

cd "$COPY"
# Only dead code fails: re-exports for the library's users (e.g. the CRD types) are no finding.
# The project's target directory: the dependencies are checked there already (clippy).
if ! CARGO_TARGET_DIR="$ROOT/target" cargo check --locked --quiet --message-format short 2>"$ROOT/target/dead-code/check.log"; then
  grep -E '^src/.*: error' "$ROOT/target/dead-code/check.log" >&2 || cat "$ROOT/target/dead-code/check.log" >&2
  echo "dead code above: remove it, or put what only tests use under #[cfg(test)]" >&2
  exit 1
fi
echo "no dead code"
