#!/usr/bin/env bash
# deploy/teardown.sh: delete what the other scripts created, newest first.
#
# The model bucket, the MLflow database and the secrets hold data: they go only with
# --delete-data. Anything already gone is skipped, so a half-finished teardown can be re-run.
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
usage: deploy/teardown.sh [--dry-run] [--env-file PATH] --yes [--delete-data]
Deletes the gateway, functions, VM group, Pub/Sub, connector, Redis and (with --delete-data)
the bucket, Cloud SQL and the secrets. --yes is required outside a dry run.
EOF
}

# gone DESCRIBE... -- DELETE...: run DELETE when DESCRIBE finds the resource.
gone() {
  local describe=()
  while [[ $1 != -- ]]; do
    describe+=("$1")
    shift
  done
  shift
  if exists "${describe[@]}"; then
    run "$@"
  fi
}

main() {
  local confirmed=0 delete_data=0 arg rest=()
  for arg in "$@"; do
    case $arg in
      --yes) confirmed=1 ;;
      --delete-data) delete_data=1 ;;
      *) rest+=("$arg") ;;
    esac
  done
  parse_args "${rest[@]}"
  load_env
  if ! is_dry_run && ((confirmed == 0)); then
    die "this deletes the Nimbus deployment of $PROJECT_ID: pass --yes (see --dry-run first)"
  fi
  # In a dry run, show every delete.
  DRY_RUN_ASSUME_EXISTING=1
  local p=--project=$PROJECT_ID

  gone gcloud api-gateway gateways describe "$GATEWAY_ID" "$p" --location="$GATEWAY_REGION" -- \
    gcloud api-gateway gateways delete "$GATEWAY_ID" "$p" \
    --location="$GATEWAY_REGION" \
    --quiet
  local config
  for config in $(lookup "$API_ID-CONFIG" gcloud api-gateway api-configs list "$p" \
    --api="$API_ID" \
    --format='value(name.basename())'); do
    run gcloud api-gateway api-configs delete "$config" "$p" \
      --api="$API_ID" \
      --quiet
  done
  gone gcloud api-gateway apis describe "$API_ID" "$p" -- \
    gcloud api-gateway apis delete "$API_ID" "$p" \
    --quiet

  local fn
  for fn in predict batch_submit batch_status; do
    gone gcloud functions describe "$fn" "$p" --region="$REGION" -- \
      gcloud functions delete "$fn" "$p" \
      --region="$REGION" \
      --gen2 \
      --quiet
  done

  gone gcloud compute forwarding-rules describe nimbus-mlflow "$p" --region="$REGION" -- \
    gcloud compute forwarding-rules delete nimbus-mlflow "$p" \
    --region="$REGION" \
    --quiet
  gone gcloud compute backend-services describe nimbus-mlflow "$p" --region="$REGION" -- \
    gcloud compute backend-services delete nimbus-mlflow "$p" \
    --region="$REGION" \
    --quiet
  gone gcloud compute addresses describe nimbus-mlflow "$p" --region="$REGION" -- \
    gcloud compute addresses delete nimbus-mlflow "$p" \
    --region="$REGION" \
    --quiet
  gone gcloud compute instance-groups managed describe "$VM_GROUP" "$p" --zone="$ZONE" -- \
    gcloud compute instance-groups managed delete "$VM_GROUP" "$p" \
    --zone="$ZONE" \
    --quiet
  local template
  for template in $(lookup "$VM_GROUP-TEMPLATE" gcloud compute instance-templates list "$p" \
    --filter="name~^$VM_GROUP-" \
    --format='value(name)'); do
    run gcloud compute instance-templates delete "$template" "$p" \
      --quiet
  done
  gone gcloud compute health-checks describe nimbus-mlflow "$p" --global -- \
    gcloud compute health-checks delete nimbus-mlflow "$p" \
    --global \
    --quiet
  local rule
  for rule in nimbus-allow-health-checks nimbus-allow-mlflow-from-functions nimbus-allow-iap; do
    gone gcloud compute firewall-rules describe "$rule" "$p" -- \
      gcloud compute firewall-rules delete "$rule" "$p" \
      --quiet
  done

  local subscription topic
  for subscription in "$NIMBUS_JOBS_SUBSCRIPTION" "$NIMBUS_DEAD_LETTER_SUBSCRIPTION"; do
    gone gcloud pubsub subscriptions describe "$subscription" "$p" -- \
      gcloud pubsub subscriptions delete "$subscription" "$p" \
      --quiet
  done
  for topic in "$NIMBUS_JOBS_TOPIC" "$NIMBUS_DEAD_LETTER_TOPIC"; do
    gone gcloud pubsub topics describe "$topic" "$p" -- \
      gcloud pubsub topics delete "$topic" "$p" \
      --quiet
  done

  gone gcloud compute networks vpc-access connectors describe "$VPC_CONNECTOR" "$p" --region="$REGION" -- \
    gcloud compute networks vpc-access connectors delete "$VPC_CONNECTOR" "$p" \
    --region="$REGION" \
    --quiet
  gone gcloud compute routers describe nimbus-router "$p" --region="$REGION" -- \
    gcloud compute routers delete nimbus-router "$p" \
    --region="$REGION" \
    --quiet
  gone gcloud redis instances describe "$REDIS_INSTANCE" "$p" --region="$REGION" -- \
    gcloud redis instances delete "$REDIS_INSTANCE" "$p" \
    --region="$REGION" \
    --quiet
  gone gcloud artifacts repositories describe "$ARTIFACT_REPO" "$p" --location="$REGION" -- \
    gcloud artifacts repositories delete "$ARTIFACT_REPO" "$p" \
    --location="$REGION" \
    --quiet

  if ((delete_data == 0)); then
    say "kept (pass --delete-data to delete them too): gs://$BUCKET, Cloud SQL $SQL_INSTANCE, the secrets, the service accounts"
    return 0
  fi
  gone gcloud sql instances describe "$SQL_INSTANCE" "$p" -- \
    gcloud sql instances patch "$SQL_INSTANCE" "$p" \
    --no-deletion-protection \
    --quiet
  gone gcloud sql instances describe "$SQL_INSTANCE" "$p" -- \
    gcloud sql instances delete "$SQL_INSTANCE" "$p" \
    --quiet
  local bucket
  for bucket in "$BUCKET" ${JOBS_BUCKET:+"$JOBS_BUCKET"}; do
    gone gcloud storage buckets describe "gs://$bucket" "$p" -- \
      gcloud storage rm "gs://$bucket" "$p" \
      --recursive \
      --all-versions \
      --quiet
  done
  local secret
  for secret in nimbus-redis-url nimbus-redis-ca nimbus-mlflow-db-url; do
    gone gcloud secrets describe "$secret" "$p" -- \
      gcloud secrets delete "$secret" "$p" \
      --quiet
  done
  local account
  for account in nimbus-predict nimbus-batch-submit nimbus-batch-status nimbus-vm nimbus-gateway; do
    gone gcloud iam service-accounts describe "$(service_account "$account")" "$p" -- \
      gcloud iam service-accounts delete "$(service_account "$account")" "$p" \
      --quiet
  done
}

main "$@"
