#!/usr/bin/env bash
# deploy/stage.sh FUNCTION...: build/<fn>/ = what `gcloud functions deploy --source` uploads.
#
# A function deploys from its own folder only, so the shared core goes with it: the folder's
# main.py, requirements.txt (exact pins: Cloud Build installs this file and nothing else) and
# .gcloudignore, plus a copy of nimbus/. No sys.path tricks: `from nimbus import api` works
# because nimbus/ sits beside main.py. BUILD_DIR (default build/) says where.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT" || exit 1
# Relative to the repository root.
BUILD_DIR=${BUILD_DIR:-build}
FUNCTIONS=(predict batch_submit batch_status)

usage() {
  echo "usage: deploy/stage.sh FUNCTION... | all   (FUNCTION: ${FUNCTIONS[*]})"
}

stage() {
  local source=functions/$1 target=$BUILD_DIR/$1
  [[ -f $source/main.py && -f $source/requirements.txt ]] ||
    { echo "stage.sh: $source has no main.py and requirements.txt" >&2; exit 1; }
  rm -rf "$target"
  mkdir -p "$target"
  cp "$source/main.py" "$source/requirements.txt" "$target/"
  if [[ -f $source/.gcloudignore ]]; then
    cp "$source/.gcloudignore" "$target/"
  fi
  # The package without caches or editor leftovers: only what the function imports.
  find nimbus -name '*.py' -print0 |
    while IFS= read -r -d '' file; do
      mkdir -p "$target/$(dirname "$file")"
      cp "$file" "$target/$file"
    done
  echo "$target"
}

main() {
  (($# > 0)) || { usage >&2; exit 2; }
  local name names=()
  for name in "$@"; do
    case $name in
      -h | --help) usage; exit 0 ;;
      all) names+=("${FUNCTIONS[@]}") ;;
      predict | batch_submit | batch_status) names+=("$name") ;;
      *) echo "stage.sh: unknown function $name" >&2; usage >&2; exit 2 ;;
    esac
  done
  for name in "${names[@]}"; do
    stage "$name"
  done
}

main "$@"
