#!/usr/bin/env bash
# The startup script of every Nimbus VM (Debian 12), run as root at each boot. deploy/vm.sh
# puts it in the instance template with three more metadata values:
#   nimbus-compose  docker-compose.yml (the worker and the MLflow server)
#   nimbus-env      the settings and image names, KEY='value' lines
#   nimbus-secrets  NAME=secret lines: an env var, or a file path, taken from Secret Manager
# It installs Docker once, writes /etc/nimbus/, pulls the images and starts both containers.
set -euo pipefail

METADATA=http://metadata.google.internal/computeMetadata/v1/instance/attributes
CONFIG_DIR=/etc/nimbus
# Startup scripts may run without HOME; gcloud and docker keep their config under it.
export HOME=${HOME:-/root}

metadata() {
  curl "$METADATA/$1" \
    --header 'Metadata-Flavor: Google' \
    --fail \
    --silent \
    --show-error \
    --retry 5 \
    --retry-connrefused
}

# Every call here may meet a network still coming up, or a service's brief hiccup.
retry() {
  local attempt
  for attempt in 1 2 3 4 5 6; do
    if "$@"; then
      return 0
    fi
    echo "nimbus-startup: attempt $attempt of '$*' failed; retrying" >&2
    sleep $((attempt * 5))
  done
  return 1
}

install_docker() {
  if docker compose version >/dev/null 2>&1; then
    return 0
  fi
  # Docker's own packages: Debian 12's docker-compose is the old Python v1.
  export DEBIAN_FRONTEND=noninteractive
  retry apt-get update -qq
  retry apt-get install -y -qq ca-certificates curl
  install -m 0755 -d /etc/apt/keyrings
  retry curl -fsSL https://download.docker.com/linux/debian/gpg -o /etc/apt/keyrings/docker.asc
  chmod a+r /etc/apt/keyrings/docker.asc
  echo "deb [arch=$(dpkg --print-architecture) signed-by=/etc/apt/keyrings/docker.asc]" \
    "https://download.docker.com/linux/debian bookworm stable" >/etc/apt/sources.list.d/docker.list
  retry apt-get update -qq
  retry apt-get install -y -qq docker-ce docker-ce-cli containerd.io docker-compose-plugin
  systemctl enable --now docker
}

write_config() {
  install -m 0755 -d "$CONFIG_DIR"
  metadata nimbus-compose >"$CONFIG_DIR/docker-compose.yml"
  (umask 077 && metadata nimbus-env >"$CONFIG_DIR/nimbus.env")
  local name secret value secrets
  secrets=$(metadata nimbus-secrets)
  while IFS='=' read -r name secret; do
    [[ -n $name && $name != \#* ]] || continue
    value=$(retry gcloud secrets versions access latest \
      --secret="$secret" \
      --quiet)
    if [[ $name == /* ]]; then
      # A file the containers mount read-only; a CA certificate is not secret.
      install -m 0755 -d "$(dirname "$name")"
      printf '%s\n' "$value" >"$name"
      chmod 0644 "$name"
    else
      # KEY='value' reads the same in docker compose and systemd; no value here has a quote.
      [[ $value != *\'* ]] || { echo "nimbus-startup: secret $secret has a quote" >&2; exit 1; }
      printf "%s='%s'\n" "$name" "$value" >>"$CONFIG_DIR/nimbus.env"
    fi
  done <<<"$secrets"
}

start() {
  local compose=(
    docker compose
    --project-directory="$CONFIG_DIR"
    --env-file="$CONFIG_DIR/nimbus.env"
    --file="$CONFIG_DIR/docker-compose.yml"
  )
  local registry
  registry=$(sed -n "s/^NIMBUS_WORKER_IMAGE='\{0,1\}\([^/']*\)\/.*/\1/p" "$CONFIG_DIR/nimbus.env")
  gcloud auth configure-docker "$registry" \
    --quiet
  retry "${compose[@]}" pull \
    --quiet
  "${compose[@]}" up \
    --detach \
    --remove-orphans
}

main() {
  install_docker
  write_config
  start
  echo "nimbus-startup: worker and MLflow server started"
}

main "$@"
