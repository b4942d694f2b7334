#!/usr/bin/env bash
# deploy/vm.sh: the worker and the MLflow server on a managed instance group.
#
# - builds both images with Cloud Build (vm_worker/Dockerfile, mlflow_server/Dockerfile) into
#   Artifact Registry, tagged with the git commit (SKIP_IMAGE_BUILD=1 reuses IMAGE_TAG's);
# - an instance template (Debian 12, no public address, the nimbus-vm service account) whose
#   startup script (deploy/vm-startup.sh) runs docker-compose.yml with the rendered settings;
# - the managed instance group, autohealed on MLflow's /health and autoscaled on the jobs
#   subscription's undelivered messages; a new template rolls out one VM at a time;
# - an internal load balancer giving MLflow one address (MLFLOW_INTERNAL_IP) for the
#   functions, and the firewall rules for it, the health checks and IAP tunnels.
# Run after infra.sh and pubsub.sh, before functions.sh.
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
usage: deploy/vm.sh [--dry-run] [--env-file PATH]
Builds the images and creates or updates the VM group; DRY_RUN=1 works too.
SKIP_IMAGE_BUILD=1 deploys the images already tagged IMAGE_TAG.
EOF
}

# What the worker reads (tests/deploy checks these against the code and docker-compose.yml).
VM_ENV=(
  GOOGLE_CLOUD_PROJECT
  NIMBUS_JOBS_TOPIC
  NIMBUS_JOBS_SUBSCRIPTION
  NIMBUS_DEAD_LETTER_SUBSCRIPTION
  NIMBUS_DEAD_LETTER_TOPIC
  NIMBUS_MAX_DELIVERY_ATTEMPTS
  NIMBUS_RETRY_MIN_BACKOFF
  NIMBUS_RETRY_MAX_BACKOFF
  NIMBUS_WORKER_METRICS_PORT
  NIMBUS_MODEL_URI
  NIMBUS_MODEL_CACHE_DIR
  NIMBUS_MODEL_REFRESH_SECONDS
  NIMBUS_WORKER_MAX_MESSAGES
  NIMBUS_LEASE_SECONDS
  NIMBUS_CHUNK_ROWS
  NIMBUS_RECONCILE_AFTER
  NIMBUS_PUBLISH_TIMEOUT
  NIMBUS_FINISHED_TTL
  NIMBUS_LOG_LEVEL
  MLFLOW_HTTP_REQUEST_MAX_RETRIES
  MLFLOW_HTTP_REQUEST_TIMEOUT
  NIMBUS_ARTIFACT_ROOT
  NIMBUS_WORKER_IMAGE
  NIMBUS_MLFLOW_IMAGE
  NIMBUS_DOCKER_LOG_DRIVER
)
# Read on the VM at boot from Secret Manager: NAME=secret (an env var, or a file path).
VM_SECRETS=(
  NIMBUS_REDIS_URL=nimbus-redis-url
  NIMBUS_MLFLOW_BACKEND_URI=nimbus-mlflow-db-url
  /etc/nimbus/redis-ca.pem=nimbus-redis-ca
)
VM_TAG=nimbus-vm
HEALTH_CHECK=nimbus-mlflow
# Google's health checkers and IAP's TCP forwarding come from these.
HEALTH_CHECK_RANGES=130.211.0.0/22,35.191.0.0/16
IAP_RANGE=35.235.240.0/20

images() {
  if [[ -z ${IMAGE_TAG:-} ]]; then
    IMAGE_TAG=$(git describe \
      --always \
      --dirty 2>/dev/null || echo latest)
  fi
  local registry=$REGION-docker.pkg.dev/$PROJECT_ID/$ARTIFACT_REPO
  NIMBUS_WORKER_IMAGE=$registry/worker:$IMAGE_TAG
  NIMBUS_MLFLOW_IMAGE=$registry/mlflow:$IMAGE_TAG
  if [[ ${SKIP_IMAGE_BUILD:-0} == 1 ]]; then
    say "SKIP_IMAGE_BUILD=1: deploying $NIMBUS_WORKER_IMAGE and $NIMBUS_MLFLOW_IMAGE as they are"
    return 0
  fi
  run gcloud builds submit . \
    --project="$PROJECT_ID" \
    --region="$REGION" \
    --config="$DEPLOY_DIR/cloudbuild.yaml" \
    --substitutions="_WORKER_IMAGE=$NIMBUS_WORKER_IMAGE,_MLFLOW_IMAGE=$NIMBUS_MLFLOW_IMAGE"
}

# render: build/vm/nimbus.env and build/vm/secrets, the metadata the startup script reads.
render() {
  local dir=$BUILD_DIR/vm name value
  mkdir -p "$dir"
  require "${VM_ENV[@]}"
  (
    umask 077
    : >"$dir/nimbus.env"
    for name in "${VM_ENV[@]}"; do
      value=${!name}
      [[ $value != *\'* ]] || die "$name has a quote; the VM's env file cannot carry it"
      printf "%s='%s'\n" "$name" "$value" >>"$dir/nimbus.env"
    done
  )
  printf '%s\n' "${VM_SECRETS[@]}" >"$dir/secrets"
  # A template is immutable: its name says what it runs, so a change makes a new one.
  TEMPLATE=$VM_GROUP-$(cat "$dir/nimbus.env" "$dir/secrets" "docker-compose.yml" \
    "$DEPLOY_DIR/vm-startup.sh" | sha256sum | cut -c1-10)
}

firewall() {
  local name=$1 rules=$2 sources=$3
  if exists gcloud compute firewall-rules describe "$name" --project="$PROJECT_ID"; then
    return 0
  fi
  run gcloud compute firewall-rules create "$name" \
    --project="$PROJECT_ID" \
    --network="$NETWORK" \
    --direction=INGRESS \
    --action=ALLOW \
    --rules="$rules" \
    --source-ranges="$sources" \
    --target-tags="$VM_TAG"
}

health_check() {
  if exists gcloud compute health-checks describe "$HEALTH_CHECK" \
    --project="$PROJECT_ID" \
    --global; then
    return 0
  fi
  run gcloud compute health-checks create http "$HEALTH_CHECK" \
    --project="$PROJECT_ID" \
    --global \
    --port=5000 \
    --request-path=/health \
    --check-interval=10s \
    --timeout=5s \
    --healthy-threshold=2 \
    --unhealthy-threshold=3
}

template() {
  if exists gcloud compute instance-templates describe "$TEMPLATE" --project="$PROJECT_ID"; then
    return 0
  fi
  run gcloud compute instance-templates create "$TEMPLATE" \
    --project="$PROJECT_ID" \
    --machine-type="$VM_MACHINE_TYPE" \
    --image-family=debian-12 \
    --image-project=debian-cloud \
    --boot-disk-size=20GB \
    --boot-disk-type=pd-balanced \
    --network="$NETWORK" \
    --subnet="projects/$PROJECT_ID/regions/$REGION/subnetworks/$SUBNET" \
    --no-address \
    --tags="$VM_TAG" \
    --service-account="$(service_account nimbus-vm)" \
    --scopes=cloud-platform \
    --shielded-secure-boot \
    --shielded-vtpm \
    --shielded-integrity-monitoring \
    --metadata=enable-oslogin=TRUE \
    --metadata-from-file="startup-script=$DEPLOY_DIR/vm-startup.sh,nimbus-compose=docker-compose.yml,nimbus-env=$BUILD_DIR/vm/nimbus.env,nimbus-secrets=$BUILD_DIR/vm/secrets" \
    --labels="$LABELS"
}

group() {
  if exists gcloud compute instance-groups managed describe "$VM_GROUP" \
    --project="$PROJECT_ID" \
    --zone="$ZONE"; then
    run gcloud compute instance-groups managed rolling-action start-update "$VM_GROUP" \
      --project="$PROJECT_ID" \
      --zone="$ZONE" \
      --version="template=$TEMPLATE" \
      --max-surge=1 \
      --max-unavailable=0
  else
    run gcloud compute instance-groups managed create "$VM_GROUP" \
      --project="$PROJECT_ID" \
      --zone="$ZONE" \
      --template="$TEMPLATE" \
      --size="$VM_MIN_INSTANCES" \
      --base-instance-name="$VM_GROUP" \
      --health-check="$HEALTH_CHECK" \
      --initial-delay=300
  fi
  # One more VM for every VM_JOBS_PER_INSTANCE jobs waiting in the subscription.
  run gcloud compute instance-groups managed set-autoscaling "$VM_GROUP" \
    --project="$PROJECT_ID" \
    --zone="$ZONE" \
    --mode=on \
    --min-num-replicas="$VM_MIN_INSTANCES" \
    --max-num-replicas="$VM_MAX_INSTANCES" \
    --cool-down-period=240 \
    --update-stackdriver-metric=pubsub.googleapis.com/subscription/num_undelivered_messages \
    --stackdriver-metric-filter="resource.type = \"pubsub_subscription\" AND resource.labels.subscription_id = \"$NIMBUS_JOBS_SUBSCRIPTION\"" \
    --stackdriver-metric-single-instance-assignment="$VM_JOBS_PER_INSTANCE"
}

internal_load_balancer() {
  if ! exists gcloud compute addresses describe nimbus-mlflow \
    --project="$PROJECT_ID" \
    --region="$REGION"; then
    run gcloud compute addresses create nimbus-mlflow \
      --project="$PROJECT_ID" \
      --region="$REGION" \
      --subnet="$SUBNET" \
      --addresses="$MLFLOW_INTERNAL_IP"
  fi
  if ! exists gcloud compute backend-services describe nimbus-mlflow \
    --project="$PROJECT_ID" \
    --region="$REGION"; then
    run gcloud compute backend-services create nimbus-mlflow \
      --project="$PROJECT_ID" \
      --region="$REGION" \
      --load-balancing-scheme=internal \
      --protocol=tcp \
      --health-checks="$HEALTH_CHECK"
  fi
  local backends
  backends=$(lookup "" gcloud compute backend-services describe nimbus-mlflow \
    --project="$PROJECT_ID" \
    --region="$REGION" \
    --format='value(backends[].group)')
  if [[ $backends != *"/instanceGroups/$VM_GROUP"* ]]; then
    run gcloud compute backend-services add-backend nimbus-mlflow \
      --project="$PROJECT_ID" \
      --region="$REGION" \
      --instance-group="$VM_GROUP" \
      --instance-group-zone="$ZONE"
  fi
  if ! exists gcloud compute forwarding-rules describe nimbus-mlflow \
    --project="$PROJECT_ID" \
    --region="$REGION"; then
    run gcloud compute forwarding-rules create nimbus-mlflow \
      --project="$PROJECT_ID" \
      --region="$REGION" \
      --load-balancing-scheme=internal \
      --network="$NETWORK" \
      --subnet="$SUBNET" \
      --address=nimbus-mlflow \
      --ip-protocol=TCP \
      --ports=5000 \
      --backend-service=nimbus-mlflow
  fi
}

main() {
  parse_args "$@"
  load_env
  require ARTIFACT_REPO BUCKET VM_GROUP VM_MACHINE_TYPE VM_MIN_INSTANCES VM_MAX_INSTANCES \
    VM_JOBS_PER_INSTANCE MLFLOW_INTERNAL_IP SUBNET VPC_CONNECTOR_RANGE NIMBUS_JOBS_SUBSCRIPTION
  # Derived, not configured; render reads them by name.
  # shellcheck disable=SC2034
  GOOGLE_CLOUD_PROJECT=$PROJECT_ID
  # shellcheck disable=SC2034
  NIMBUS_ARTIFACT_ROOT=gs://$BUCKET/mlflow
  # Container logs go to Cloud Logging.
  # shellcheck disable=SC2034
  NIMBUS_DOCKER_LOG_DRIVER=gcplogs
  images
  render
  firewall nimbus-allow-health-checks tcp:5000 "$HEALTH_CHECK_RANGES"
  firewall nimbus-allow-mlflow-from-functions tcp:5000 "$VPC_CONNECTOR_RANGE"
  # IAP tunnels: SSH, and MLflow for the trainer and `nimbus model` (deploy/README.md).
  firewall nimbus-allow-iap tcp:22,tcp:5000 "$IAP_RANGE"
  health_check
  template
  group
  internal_load_balancer
  say "MLflow for the functions: http://$MLFLOW_INTERNAL_IP:5000; next: deploy/functions.sh"
}

main "$@"
