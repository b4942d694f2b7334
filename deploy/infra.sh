#!/usr/bin/env bash
# deploy/infra.sh: what the components stand on. Run first; re-running changes nothing that
# is already there.
#
# - the APIs; one service account per component, each with only the roles it needs;
# - the GCS bucket of model artifacts (versioning on, no public access);
# - Memorystore for Redis: AUTH, in-transit encryption, noeviction, RDB persistence; its URL
#   (with the AUTH string) and CA certificate go to Secret Manager;
# - Cloud SQL Postgres for MLflow's metadata, on a private IP; its URL goes to Secret Manager;
# - the Serverless VPC Access connector the functions reach Redis and MLflow through;
# - Cloud NAT (the VMs have no public address) and the Artifact Registry repository of the
#   VM images.
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
usage: deploy/infra.sh [--dry-run] [--env-file PATH]
Creates what is missing of the project's infrastructure; DRY_RUN=1 works too.
EOF
}

SERVICES=(
  cloudresourcemanager.googleapis.com
  iam.googleapis.com
  iap.googleapis.com
  artifactregistry.googleapis.com
  cloudbuild.googleapis.com
  cloudfunctions.googleapis.com
  run.googleapis.com
  pubsub.googleapis.com
  redis.googleapis.com
  sqladmin.googleapis.com
  servicenetworking.googleapis.com
  vpcaccess.googleapis.com
  compute.googleapis.com
  secretmanager.googleapis.com
  apigateway.googleapis.com
  servicemanagement.googleapis.com
  servicecontrol.googleapis.com
  monitoring.googleapis.com
  logging.googleapis.com
)
COMPONENT_ACCOUNTS=(nimbus-predict nimbus-batch-submit nimbus-batch-status nimbus-vm nimbus-gateway)
# Where clients look for Memorystore's CA (the Redis URL says so): a secret mounted there.
REDIS_CA_PATH=/etc/nimbus/redis-ca.pem

enable_apis() {
  run gcloud services enable "${SERVICES[@]}" \
    --project="$PROJECT_ID"
}

service_accounts() {
  local account
  for account in "${COMPONENT_ACCOUNTS[@]}"; do
    if ! exists gcloud iam service-accounts describe "$(service_account "$account")" --project="$PROJECT_ID"; then
      run gcloud iam service-accounts create "$account" \
        --project="$PROJECT_ID" \
        --display-name="Nimbus ${account#nimbus-}"
    fi
  done
  # The VM writes its containers' logs and metrics; nothing else is project-wide.
  local role
  for role in roles/logging.logWriter roles/monitoring.metricWriter; do
    run gcloud projects add-iam-policy-binding "$PROJECT_ID" \
      --member="serviceAccount:$(service_account nimbus-vm)" \
      --role="$role" \
      --condition=None
  done
}

# private_bucket NAME: a bucket in REGION no one outside the project can read, made once.
private_bucket() {
  exists gcloud storage buckets describe "gs://$1" --project="$PROJECT_ID" && return 0
  run gcloud storage buckets create "gs://$1" \
    --project="$PROJECT_ID" \
    --location="$REGION" \
    --uniform-bucket-level-access \
    --public-access-prevention
}

bucket() {
  private_bucket "$BUCKET"
  run gcloud storage buckets update "gs://$BUCKET" \
    --project="$PROJECT_ID" \
    --versioning \
    --update-labels="$LABELS"
  # The functions and the worker load models; the trainer writes with its user's own rights.
  local account
  for account in nimbus-predict nimbus-batch-submit nimbus-vm; do
    run gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" \
      --project="$PROJECT_ID" \
      --member="serviceAccount:$(service_account "$account")" \
      --role=roles/storage.objectViewer
  done
}

# jobs_bucket: where large batch jobs' items and predictions go (optional: JOBS_BUCKET empty
# skips it; a job may name any bucket the accounts below can read and write).
jobs_bucket() {
  [[ -n ${JOBS_BUCKET:-} ]] || return 0
  private_bucket "$JOBS_BUCKET"
  # batch_submit checks a job's input exists; the worker reads it and writes predictions.
  run gcloud storage buckets add-iam-policy-binding "gs://$JOBS_BUCKET" \
    --project="$PROJECT_ID" \
    --member="serviceAccount:$(service_account nimbus-batch-submit)" \
    --role=roles/storage.objectViewer
  run gcloud storage buckets add-iam-policy-binding "gs://$JOBS_BUCKET" \
    --project="$PROJECT_ID" \
    --member="serviceAccount:$(service_account nimbus-vm)" \
    --role=roles/storage.objectUser
}

redis() {
  if ! exists gcloud redis instances describe "$REDIS_INSTANCE" \
    --project="$PROJECT_ID" \
    --region="$REGION"; then
    run gcloud redis instances create "$REDIS_INSTANCE" \
      --project="$PROJECT_ID" \
      --region="$REGION" \
      --zone="$ZONE" \
      --network="projects/$PROJECT_ID/global/networks/$NETWORK" \
      --tier="$REDIS_TIER" \
      --size="$REDIS_SIZE_GB" \
      --redis-version=redis_7_2 \
      --enable-auth \
      --transit-encryption-mode=server-authentication \
      --redis-config=maxmemory-policy=noeviction \
      --persistence-mode=rdb \
      --rdb-snapshot-period=1h \
      --labels="$LABELS"
  fi
  local host port auth ca
  host=$(lookup REDIS_HOST gcloud redis instances describe "$REDIS_INSTANCE" \
    --project="$PROJECT_ID" \
    --region="$REGION" \
    --format='value(host)')
  port=$(lookup 6378 gcloud redis instances describe "$REDIS_INSTANCE" \
    --project="$PROJECT_ID" \
    --region="$REGION" \
    --format='value(port)')
  auth=$(lookup REDIS_AUTH_STRING gcloud redis instances get-auth-string "$REDIS_INSTANCE" \
    --project="$PROJECT_ID" \
    --region="$REGION" \
    --format='value(authString)')
  ca=$(lookup REDIS_SERVER_CA gcloud redis instances describe "$REDIS_INSTANCE" \
    --project="$PROJECT_ID" \
    --region="$REGION" \
    --format='value(serverCaCerts[0].cert)')
  # The CA is this instance's own, so trusting it is the check; the server's certificate does
  # not name the IP the clients dial, hence no hostname check.
  put_secret nimbus-redis-url \
    "rediss://:$auth@$host:$port/0?ssl_ca_certs=$REDIS_CA_PATH&ssl_check_hostname=false"
  put_secret nimbus-redis-ca "$ca"
  grant_secret nimbus-redis-url nimbus-predict nimbus-batch-submit nimbus-batch-status nimbus-vm
  grant_secret nimbus-redis-ca nimbus-predict nimbus-batch-submit nimbus-batch-status nimbus-vm
}

cloud_sql() {
  # Cloud SQL's private IP comes from a range peered with Google's service network.
  if ! exists gcloud compute addresses describe "$PSA_RANGE" \
    --project="$PROJECT_ID" \
    --global; then
    run gcloud compute addresses create "$PSA_RANGE" \
      --project="$PROJECT_ID" \
      --global \
      --purpose=VPC_PEERING \
      --prefix-length=20 \
      --network="$NETWORK"
  fi
  local ranges
  ranges=$(lookup "" gcloud services vpc-peerings list \
    --project="$PROJECT_ID" \
    --network="$NETWORK" \
    --service=servicenetworking.googleapis.com \
    --format='value(reservedPeeringRanges)')
  if [[ -z $ranges ]]; then
    run gcloud services vpc-peerings connect \
      --project="$PROJECT_ID" \
      --service=servicenetworking.googleapis.com \
      --network="$NETWORK" \
      --ranges="$PSA_RANGE"
  elif [[ ";$ranges;" != *";$PSA_RANGE;"* ]]; then
    run gcloud services vpc-peerings update \
      --project="$PROJECT_ID" \
      --service=servicenetworking.googleapis.com \
      --network="$NETWORK" \
      --ranges="${ranges//;/,},$PSA_RANGE"
  fi

  if ! exists gcloud sql instances describe "$SQL_INSTANCE" --project="$PROJECT_ID"; then
    run gcloud sql instances create "$SQL_INSTANCE" \
      --project="$PROJECT_ID" \
      --region="$REGION" \
      --database-version=POSTGRES_16 \
      --edition=enterprise \
      --tier="$SQL_TIER" \
      --availability-type=zonal \
      --storage-type=SSD \
      --storage-size=10 \
      --storage-auto-increase \
      --backup-start-time=03:00 \
      --network="projects/$PROJECT_ID/global/networks/$NETWORK" \
      --no-assign-ip \
      --ssl-mode=ENCRYPTED_ONLY \
      --deletion-protection
  fi
  if ! exists gcloud sql databases describe "$SQL_DATABASE" \
    --project="$PROJECT_ID" \
    --instance="$SQL_INSTANCE"; then
    run gcloud sql databases create "$SQL_DATABASE" \
      --project="$PROJECT_ID" \
      --instance="$SQL_INSTANCE"
  fi
  # The password exists only in the secret: made once, reused on every later run.
  if exists gcloud secrets describe nimbus-mlflow-db-url --project="$PROJECT_ID"; then
    say "nimbus-mlflow-db-url exists: the MLflow database user keeps its password"
  else
    local password ip
    password=$(new_password)
    ip=$(lookup SQL_PRIVATE_IP gcloud sql instances describe "$SQL_INSTANCE" \
      --project="$PROJECT_ID" \
      --format='value(ipAddresses[0].ipAddress)')
    run gcloud sql users create "$SQL_USER" \
      --project="$PROJECT_ID" \
      --instance="$SQL_INSTANCE" \
      --password="$password"
    # The driver named: SQLAlchemy 2.1 takes a bare postgresql:// for psycopg 3, which the
    # server image does not have; psycopg2 is the one MLflow's `server` extra brings.
    put_secret nimbus-mlflow-db-url \
      "postgresql+psycopg2://$SQL_USER:$password@$ip:5432/$SQL_DATABASE?sslmode=require"
  fi
  grant_secret nimbus-mlflow-db-url nimbus-vm
}

new_password() {
  if is_dry_run; then
    echo "GENERATED_PASSWORD"
    return
  fi
  # URL-safe: it goes into the postgresql:// URL as it is.
  od -An -N24 -tx1 /dev/urandom | tr -d ' \n'
}

# put_secret NAME VALUE: create the secret, or add a version when the value changed. The
# value travels on stdin, never on a command line.
put_secret() {
  local name=$1 value=$2
  if exists gcloud secrets describe "$name" --project="$PROJECT_ID"; then
    if ! is_dry_run && [[ $(gcloud secrets versions access latest \
      --secret="$name" \
      --project="$PROJECT_ID") == "$value" ]]; then
      return 0
    fi
    run_with_stdin "$value" gcloud secrets versions add "$name" \
      --project="$PROJECT_ID" \
      --data-file=-
  else
    run_with_stdin "$value" gcloud secrets create "$name" \
      --project="$PROJECT_ID" \
      --replication-policy=automatic \
      --labels="$LABELS" \
      --data-file=-
  fi
}

run_with_stdin() {
  local value=$1
  shift
  if is_dry_run; then
    show "$@"
    return 0
  fi
  show "$@" >&2
  retry "$@" < <(printf '%s' "$value")
}

grant_secret() {
  local name=$1 account
  shift
  for account in "$@"; do
    run gcloud secrets add-iam-policy-binding "$name" \
      --project="$PROJECT_ID" \
      --member="serviceAccount:$(service_account "$account")" \
      --role=roles/secretmanager.secretAccessor
  done
}

connector() {
  if ! exists gcloud compute networks vpc-access connectors describe "$VPC_CONNECTOR" \
    --project="$PROJECT_ID" \
    --region="$REGION"; then
    run gcloud compute networks vpc-access connectors create "$VPC_CONNECTOR" \
      --project="$PROJECT_ID" \
      --region="$REGION" \
      --network="$NETWORK" \
      --range="$VPC_CONNECTOR_RANGE" \
      --machine-type=e2-micro \
      --min-instances=2 \
      --max-instances=3
  fi
}

nat_and_registry() {
  # The VMs install Docker and pull images without a public address of their own.
  if ! exists gcloud compute routers describe nimbus-router \
    --project="$PROJECT_ID" \
    --region="$REGION"; then
    run gcloud compute routers create nimbus-router \
      --project="$PROJECT_ID" \
      --region="$REGION" \
      --network="$NETWORK"
  fi
  if ! exists gcloud compute routers nats describe nimbus-nat \
    --project="$PROJECT_ID" \
    --region="$REGION" \
    --router=nimbus-router; then
    run gcloud compute routers nats create nimbus-nat \
      --project="$PROJECT_ID" \
      --region="$REGION" \
      --router=nimbus-router \
      --auto-allocate-nat-external-ips \
      --nat-all-subnet-ip-ranges
  fi
  if ! exists gcloud artifacts repositories describe "$ARTIFACT_REPO" \
    --project="$PROJECT_ID" \
    --location="$REGION"; then
    run gcloud artifacts repositories create "$ARTIFACT_REPO" \
      --project="$PROJECT_ID" \
      --location="$REGION" \
      --repository-format=docker \
      --labels="$LABELS"
  fi
  run gcloud artifacts repositories add-iam-policy-binding "$ARTIFACT_REPO" \
    --project="$PROJECT_ID" \
    --location="$REGION" \
    --member="serviceAccount:$(service_account nimbus-vm)" \
    --role=roles/artifactregistry.reader
}

main() {
  parse_args "$@"
  load_env
  require BUCKET REDIS_INSTANCE REDIS_TIER REDIS_SIZE_GB SQL_INSTANCE SQL_TIER SQL_DATABASE \
    SQL_USER PSA_RANGE VPC_CONNECTOR VPC_CONNECTOR_RANGE ARTIFACT_REPO
  enable_apis
  service_accounts
  bucket
  jobs_bucket
  connector
  nat_and_registry
  redis
  cloud_sql
  say "infrastructure ready; next: deploy/pubsub.sh"
}

main "$@"
