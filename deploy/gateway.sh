#!/usr/bin/env bash
# deploy/gateway.sh: one base URL for the three functions, from the project's OpenAPI spec.
#
# Renders openapi.yaml (OpenAPI 3, the one spec) with the functions' URLs into
# build/openapi.gateway.yaml (deploy/render_openapi.py), creates an API
# config named after its content (configs are immutable), and points the gateway at it. The
# gateway calls the functions as nimbus-gateway, their only allowed invoker. Run last.
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
usage: deploy/gateway.sh [--dry-run] [--env-file PATH]
Creates or updates the API Gateway in front of the functions; DRY_RUN=1 works too.
EOF
}

function_url() {
  lookup "https://$1-DRY-RUN-$REGION.a.run.app" gcloud functions describe "$1" \
    \
      --project="$PROJECT_ID" \
      --region="$REGION" \
      --format='value(serviceConfig.uri)'
}

# render: the spec with each ${..._URL} placeholder replaced; sets CONFIG_ID from its content.
render() {
  local predict submit status
  predict=$(function_url predict)
  submit=$(function_url batch_submit)
  status=$(function_url batch_status)
  [[ -n $predict && -n $submit && -n $status ]] || die "a function has no URL: run deploy/functions.sh first"
  mkdir -p "$BUILD_DIR"
  SPEC=$BUILD_DIR/openapi.gateway.yaml
  # The one spec (OpenAPI 3) with the functions' URLs filled in and Nimbus's own key schemes
  # left out (API Gateway would take them for Google Cloud API keys): deploy/render_openapi.py.
  local python=${PYTHON:-.venv/bin/python}
  [[ -x $python ]] || python=python3
  "$python" deploy/render_openapi.py openapi.yaml "$SPEC" \
    predict="$predict" batch_submit="$submit" batch_status="$status" ||
    die "could not render openapi.yaml for API Gateway (run make install for the venv)"
  CONFIG_ID=$API_ID-$(sha256sum "$SPEC" | cut -c1-10)
}

main() {
  parse_args "$@"
  load_env
  require API_ID GATEWAY_ID GATEWAY_REGION
  render
  if ! exists gcloud api-gateway apis describe "$API_ID" --project="$PROJECT_ID"; then
    run gcloud api-gateway apis create "$API_ID" \
      --project="$PROJECT_ID" \
      --labels="$LABELS"
  fi
  if ! exists gcloud api-gateway api-configs describe "$CONFIG_ID" \
    --project="$PROJECT_ID" \
    --api="$API_ID"; then
    run gcloud api-gateway api-configs create "$CONFIG_ID" \
      --project="$PROJECT_ID" \
      --api="$API_ID" \
      --openapi-spec="$SPEC" \
      --backend-auth-service-account="$(service_account nimbus-gateway)" \
      --labels="$LABELS"
  fi
  if exists gcloud api-gateway gateways describe "$GATEWAY_ID" \
    --project="$PROJECT_ID" \
    --location="$GATEWAY_REGION"; then
    run gcloud api-gateway gateways update "$GATEWAY_ID" \
      --project="$PROJECT_ID" \
      --location="$GATEWAY_REGION" \
      --api="$API_ID" \
      --api-config="$CONFIG_ID"
  else
    run gcloud api-gateway gateways create "$GATEWAY_ID" \
      --project="$PROJECT_ID" \
      --location="$GATEWAY_REGION" \
      --api="$API_ID" \
      --api-config="$CONFIG_ID" \
      --labels="$LABELS"
  fi
  local host
  host=$(lookup "$GATEWAY_ID-DRY-RUN.uc.gateway.dev" gcloud api-gateway gateways describe "$GATEWAY_ID" \
    \
      --project="$PROJECT_ID" \
      --location="$GATEWAY_REGION" \
      --format='value(defaultHostname)')
  say "the base URL: https://$host  (try: curl https://$host/)"
}

main "$@"
