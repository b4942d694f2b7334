# shellcheck shell=bash
# Sourced by every deploy script, never run: the config file, dry run, retries, idempotence.
#
# Every script takes --dry-run (or DRY_RUN=1) to print the gcloud commands it would run, one
# flag per line, without calling gcloud; --env-file PATH to read another config than
# deploy/.env. A dry run without deploy/.env reads deploy/env.example.

DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$DEPLOY_DIR/.." && pwd)
CALLER_DIR=$PWD
# Commands name paths relative to the repository root (--source=build/predict), as you would.
cd "$REPO_ROOT" || exit 1
DEPLOY_DIR=deploy
BUILD_DIR=${BUILD_DIR:-build}
DRY_RUN=${DRY_RUN:-0}
# A dry run cannot ask gcloud what exists; 1 plays the re-run, where everything does.
DRY_RUN_ASSUME_EXISTING=${DRY_RUN_ASSUME_EXISTING:-0}
GCLOUD_ATTEMPTS=${GCLOUD_ATTEMPTS:-5}
GCLOUD_RETRY_DELAY=${GCLOUD_RETRY_DELAY:-5}
ENV_FILE=${ENV_FILE:-}
ARGS=()

# Never wait on a prompt: every command carries the answers it needs.
export CLOUDSDK_CORE_DISABLE_PROMPTS=1

die() {
  echo "${0##*/}: $*" >&2
  exit 1
}

say() {
  echo "# $*" >&2
}

is_dry_run() {
  [[ $DRY_RUN == 1 ]]
}

# parse_args "$@": the common flags; everything else lands in ARGS. `usage` must be defined.
parse_args() {
  while (($#)); do
    case $1 in
      --dry-run) DRY_RUN=1 ;;
      --env-file)
        (($# >= 2)) || die "--env-file needs a path"
        ENV_FILE=$2
        shift
        ;;
      --env-file=*) ENV_FILE=${1#*=} ;;
      -h | --help)
        usage
        exit 0
        ;;
      -*) die "unknown flag $1 (see --help)" ;;
      *) ARGS+=("$1") ;;
    esac
    shift
  done
}

# load_env: export every variable of the config file, then check the ones all scripts need.
load_env() {
  if [[ -n $ENV_FILE && $ENV_FILE != /* ]]; then
    ENV_FILE=$CALLER_DIR/$ENV_FILE
  fi
  if [[ -z $ENV_FILE ]]; then
    ENV_FILE=$DEPLOY_DIR/.env
    if [[ ! -f $ENV_FILE ]] && is_dry_run; then
      say "no deploy/.env: this dry run reads deploy/env.example"
      ENV_FILE=$DEPLOY_DIR/env.example
    fi
  fi
  [[ -f $ENV_FILE ]] || die "$ENV_FILE is missing: copy deploy/env.example to deploy/.env and set your project"
  set -a
  # shellcheck source=deploy/env.example
  source "$ENV_FILE"
  set +a
  require PROJECT_ID REGION ZONE NETWORK
}

# require NAME...: fail naming every variable the config file leaves empty.
require() {
  local name missing=()
  for name in "$@"; do
    [[ -n ${!name:-} ]] || missing+=("$name")
  done
  ((${#missing[@]} == 0)) || die "set ${missing[*]} in $ENV_FILE (see deploy/env.example)"
}

# quote WORD: WORD as the shell reads it back, quoted only when it has to be (a flag's value
# alone: --name='a b').
quote() {
  local word=$1 prefix=""
  if [[ $word =~ ^(--[a-z0-9-]+=)(.*)$ ]]; then
    prefix=${BASH_REMATCH[1]}
    word=${BASH_REMATCH[2]}
  fi
  if [[ $word =~ ^[A-Za-z0-9_./:=,@%+^-]*$ ]]; then
    printf '%s%s' "$prefix" "$word"
  else
    printf "%s'%s'" "$prefix" "${word//\'/\'\\\'\'}"
  fi
}

# show CMD...: the command, copy-pasteable, the words before the first flag on one line and
# then one flag per line. The values of --password flags are masked.
show() {
  local word line="" flags=()
  for word in "$@"; do
    if [[ $word == --password=* ]]; then
      word="--password=<hidden>"
    fi
    if ((${#flags[@]} == 0)) && [[ $word != -* ]]; then
      line+="${line:+ }$(quote "$word")"
    else
      flags+=("$(quote "$word")")
    fi
  done
  for word in "${flags[@]}"; do
    line+=$' \\\n    '"$word"
  done
  printf '%s\n' "$line"
}

# run CMD...: in a dry run print it; otherwise run it with retries.
run() {
  if is_dry_run; then
    show "$@"
    return 0
  fi
  show "$@" >&2
  retry "$@"
}

# retry CMD...: run CMD until it succeeds, up to GCLOUD_ATTEMPTS times with a doubling delay.
# An ALREADY_EXISTS answer counts as success (an earlier attempt may have gone through);
# errors that no retry can fix (bad flags, permissions, quota) fail at once.
retry() {
  local attempt=1 delay=$GCLOUD_RETRY_DELAY errors status
  errors=$(mktemp)
  while true; do
    status=0
    "$@" 2> >(tee "$errors" >&2) || status=$?
    wait $! 2>/dev/null || true
    if ((status == 0)); then
      rm -f "$errors"
      return 0
    fi
    if grep -qiE 'ALREADY_EXISTS|already exists' "$errors"; then
      rm -f "$errors"
      say "already there: ${*:1:4}"
      return 0
    fi
    if grep -qE 'unrecognized arguments|Invalid value|INVALID_ARGUMENT|PERMISSION_DENIED|does not have permission|QUOTA_EXCEEDED|FAILED_PRECONDITION' "$errors" ||
      ((attempt >= GCLOUD_ATTEMPTS)); then
      rm -f "$errors"
      echo "${0##*/}: failed (exit $status) after $attempt attempt(s): ${*:1:4}" >&2
      return "$status"
    fi
    say "attempt $attempt failed (exit $status); retrying in ${delay}s"
    sleep "$delay"
    attempt=$((attempt + 1))
    delay=$((delay * 2))
  done
}

# exists CMD...: true when the describe command CMD finds its resource. A dry run prints the
# check as a comment and answers DRY_RUN_ASSUME_EXISTING.
exists() {
  if is_dry_run; then
    printf '# exists? %s\n' "$(show "$@" | tr -d '\\\n' | tr -s ' ')"
    [[ $DRY_RUN_ASSUME_EXISTING == 1 ]]
    return
  fi
  "$@" --format='value(name)' >/dev/null 2>&1
}

# lookup PLACEHOLDER CMD...: print what CMD (a gcloud read) answers, retried. A dry run prints
# the command as a comment and answers PLACEHOLDER instead.
lookup() {
  local placeholder=$1
  shift
  if is_dry_run; then
    printf '# lookup: %s\n' "$(show "$@" | tr -d '\\\n' | tr -s ' ')" >&2
    printf '%s\n' "$placeholder"
    return 0
  fi
  retry "$@"
}

# project_number: the number in the Pub/Sub service agent's and the connector's names.
project_number() {
  lookup "PROJECT_NUMBER" gcloud projects describe "$PROJECT_ID" --format='value(projectNumber)'
}

service_account() {
  printf '%s@%s.iam.gserviceaccount.com' "$1" "$PROJECT_ID"
}

# The one label every resource carries, so `gcloud ... list --filter=labels.app=nimbus` finds them.
# shellcheck disable=SC2034  # the scripts that source this file use it
LABELS=app=nimbus
