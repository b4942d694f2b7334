#!/usr/bin/env bash
# deploy/functions.sh [predict|batch_submit|batch_status|all]: deploy the Cloud Run functions.
#
# Each function is staged into build/<fn>/ (deploy/stage.sh) and deployed with
# `gcloud functions deploy --gen2` under its own service account, reaching Memorystore and the
# MLflow server through the VPC connector. Its environment is what its code reads
# (nimbus/config.py), written to build/<fn>.env.yaml; the Redis URL (with its AUTH string) and
# Memorystore's CA come from Secret Manager. Run after infra.sh, pubsub.sh and vm.sh.
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
usage: deploy/functions.sh [--dry-run] [--env-file PATH] [predict|batch_submit|batch_status|all]
Deploys the named functions (default: all) from build/<fn>/; DRY_RUN=1 works too.
EOF
}

# What each function's code reads (tests/deploy checks these against the code); read by name.
# shellcheck disable=SC2034
PREDICT_ENV=(
  MLFLOW_TRACKING_URI
  NIMBUS_MODEL_URI
  NIMBUS_MODEL_CACHE_DIR
  NIMBUS_MODEL_REFRESH_SECONDS
  NIMBUS_MAX_BODY_BYTES
  NIMBUS_MAX_PREDICT_ROWS
  NIMBUS_MAX_JSON_DEPTH
  NIMBUS_RATE_LIMIT
  NIMBUS_LOG_LEVEL
  GOOGLE_CLOUD_PROJECT
  MLFLOW_HTTP_REQUEST_MAX_RETRIES
  MLFLOW_HTTP_REQUEST_TIMEOUT
)
# shellcheck disable=SC2034
BATCH_SUBMIT_ENV=(
  MLFLOW_TRACKING_URI
  NIMBUS_MODEL_URI
  NIMBUS_MODEL_CACHE_DIR
  NIMBUS_MODEL_REFRESH_SECONDS
  NIMBUS_MAX_BODY_BYTES
  NIMBUS_MAX_BATCH_ITEMS
  NIMBUS_MAX_JSON_DEPTH
  NIMBUS_RATE_LIMIT
  NIMBUS_FINISHED_TTL
  NIMBUS_JOBS_TOPIC
  NIMBUS_PUBLISH_TIMEOUT
  NIMBUS_LOG_LEVEL
  GOOGLE_CLOUD_PROJECT
  MLFLOW_HTTP_REQUEST_MAX_RETRIES
  MLFLOW_HTTP_REQUEST_TIMEOUT
)
# shellcheck disable=SC2034
BATCH_STATUS_ENV=(
  NIMBUS_MAX_BODY_BYTES
  NIMBUS_RATE_LIMIT
  NIMBUS_FINISHED_TTL
  NIMBUS_RESULT_PAGE_ITEMS
  NIMBUS_LOG_LEVEL
  GOOGLE_CLOUD_PROJECT
)
# Secrets, as `gcloud --set-secrets` takes them: an env var, or a file path, = secret:version.
REDIS_SECRETS=NIMBUS_REDIS_URL=nimbus-redis-url:latest,/etc/nimbus/redis-ca.pem=nimbus-redis-ca:latest

# env_yaml FILE NAME...: the variables as gcloud's --env-vars-file wants them.
env_yaml() {
  local file=$1 name value
  shift
  mkdir -p "$(dirname "$file")"
  : >"$file"
  for name in "$@"; do
    value=${!name}
    printf "%s: '%s'\n" "$name" "${value//\'/\'\'}" >>"$file"
  done
}

deploy_function() {
  local name=$1 upper
  upper=$(tr '[:lower:]' '[:upper:]' <<<"$name")
  local env_names="${upper}_ENV[@]" memory="${upper}_MEMORY" cpu="${upper}_CPU"
  local concurrency="${upper}_CONCURRENCY" min="${upper}_MIN_INSTANCES" max="${upper}_MAX_INSTANCES"
  require "$memory" "$cpu" "$concurrency" "$min" "$max"

  # functions-framework serves THREADS requests at once: as many as Cloud Run sends.
  # shellcheck disable=SC2034  # read by name, like every variable env_yaml writes
  THREADS=${!concurrency}
  local names=("${!env_names}" THREADS)
  require "${names[@]}"
  BUILD_DIR=$BUILD_DIR "$DEPLOY_DIR/stage.sh" "$name" >/dev/null
  env_yaml "$BUILD_DIR/$name.env.yaml" "${names[@]}"

  # Every function reaches Redis: the job store, and the rate limit (NIMBUS_RATE_LIMIT).
  local secrets=(--set-secrets="$REDIS_SECRETS")
  run gcloud functions deploy "$name" \
    --project="$PROJECT_ID" \
    --region="$REGION" \
    --gen2 \
    --runtime=python312 \
    --trigger-http \
    --entry-point="$name" \
    --source="$BUILD_DIR/$name" \
    --env-vars-file="$BUILD_DIR/$name.env.yaml" \
    "${secrets[@]}" \
    --service-account="$(service_account "nimbus-${name//_/-}")" \
    --vpc-connector="projects/$PROJECT_ID/locations/$REGION/connectors/$VPC_CONNECTOR" \
    --egress-settings=private-ranges-only \
    --ingress-settings=all \
    --no-allow-unauthenticated \
    --memory="${!memory}" \
    --cpu="${!cpu}" \
    --concurrency="${!concurrency}" \
    --min-instances="${!min}" \
    --max-instances="${!max}" \
    --timeout=60s \
    --update-labels="$LABELS"
  # Only the gateway calls the functions: it signs each request as its service account.
  run gcloud functions add-invoker-policy-binding "$name" \
    --project="$PROJECT_ID" \
    --region="$REGION" \
    --member="serviceAccount:$(service_account nimbus-gateway)"
}

main() {
  parse_args "$@"
  load_env
  require VPC_CONNECTOR MLFLOW_INTERNAL_IP
  # Derived, not configured: the project, and the MLflow server's internal load balancer.
  # shellcheck disable=SC2034  # read by name
  GOOGLE_CLOUD_PROJECT=$PROJECT_ID
  # shellcheck disable=SC2034
  MLFLOW_TRACKING_URI=http://$MLFLOW_INTERNAL_IP:5000
  local names=("${ARGS[@]}")
  if ((${#names[@]} == 0)) || [[ ${names[0]} == all ]]; then
    names=(predict batch_submit batch_status)
  fi
  local name
  for name in "${names[@]}"; do
    case $name in
      predict | batch_submit | batch_status) deploy_function "$name" ;;
      *) die "unknown function $name (predict, batch_submit, batch_status or all)" ;;
    esac
  done
}

main "$@"
