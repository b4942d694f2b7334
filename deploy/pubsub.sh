#!/usr/bin/env bash
# deploy/pubsub.sh: the job queue, as the code relies on it (nimbus.bus.worker_subscription).
#
# - the jobs topic (batch_submit publishes, the worker's reconciler republishes);
# - the worker's pull subscription: ack deadline, exponential retry, dead-lettering after
#   NIMBUS_MAX_DELIVERY_ATTEMPTS, acked messages retained 7 days for replays (seek);
# - the dead-letter topic and the worker's subscription to it (it records FAILURE);
# - the IAM bindings: the Pub/Sub service agent may move messages to the dead-letter topic,
#   and each component may do exactly its part.
# Run after infra.sh (the service accounts). Re-running updates the subscriptions in place.
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
usage: deploy/pubsub.sh [--dry-run] [--env-file PATH]
Creates or updates the topics, subscriptions and their IAM bindings; DRY_RUN=1 works too.
EOF
}

# nimbus.bus.ACK_DEADLINE_SECONDS: the worker's client extends leases from there.
ACK_DEADLINE_SECONDS=60
# nimbus.bus.RETAIN_ACKED_SECONDS: how far back a replay can reach.
RETENTION=7d

topic() {
  local name=$1
  if exists gcloud pubsub topics describe "$name" --project="$PROJECT_ID"; then
    return 0
  fi
  run gcloud pubsub topics create "$name" \
    --project="$PROJECT_ID" \
    --labels="$LABELS"
}

# subscription NAME FLAG...: create it, or bring an existing one to the same settings.
subscription() {
  local name=$1 topic_flag=$2
  shift 2
  if exists gcloud pubsub subscriptions describe "$name" --project="$PROJECT_ID"; then
    run gcloud pubsub subscriptions update "$name" \
      --project="$PROJECT_ID" \
      "$@" \
      --update-labels="$LABELS"
  else
    run gcloud pubsub subscriptions create "$name" \
      --project="$PROJECT_ID" \
      "$topic_flag" \
      "$@" \
      --labels="$LABELS"
  fi
}

# bind KIND NAME MEMBER ROLE: a role on one topic or subscription (add-iam-policy-binding is
# idempotent).
bind() {
  run gcloud pubsub "$1" add-iam-policy-binding "$2" \
    --project="$PROJECT_ID" \
    --member="$3" \
    --role="$4"
}

main() {
  parse_args "$@"
  load_env
  require NIMBUS_JOBS_TOPIC NIMBUS_JOBS_SUBSCRIPTION NIMBUS_DEAD_LETTER_TOPIC \
    NIMBUS_DEAD_LETTER_SUBSCRIPTION NIMBUS_MAX_DELIVERY_ATTEMPTS NIMBUS_RETRY_MIN_BACKOFF \
    NIMBUS_RETRY_MAX_BACKOFF

  topic "$NIMBUS_JOBS_TOPIC"
  topic "$NIMBUS_DEAD_LETTER_TOPIC"
  subscription "$NIMBUS_JOBS_SUBSCRIPTION" --topic="$NIMBUS_JOBS_TOPIC" \
    --ack-deadline="$ACK_DEADLINE_SECONDS" \
    --min-retry-delay="${NIMBUS_RETRY_MIN_BACKOFF}s" \
    --max-retry-delay="${NIMBUS_RETRY_MAX_BACKOFF}s" \
    --dead-letter-topic="projects/$PROJECT_ID/topics/$NIMBUS_DEAD_LETTER_TOPIC" \
    --max-delivery-attempts="$NIMBUS_MAX_DELIVERY_ATTEMPTS" \
    --retain-acked-messages \
    --message-retention-duration="$RETENTION" \
    --expiration-period=never
  subscription "$NIMBUS_DEAD_LETTER_SUBSCRIPTION" --topic="$NIMBUS_DEAD_LETTER_TOPIC" \
    --ack-deadline="$ACK_DEADLINE_SECONDS" \
    --retain-acked-messages \
    --message-retention-duration="$RETENTION" \
    --expiration-period=never

  # Dead-lettering is done by Pub/Sub's own service agent: it publishes to the dead-letter
  # topic and acks the message on the subscription it gave up on.
  local agent
  agent="serviceAccount:service-$(project_number)@gcp-sa-pubsub.iam.gserviceaccount.com"
  bind topics "$NIMBUS_DEAD_LETTER_TOPIC" "$agent" roles/pubsub.publisher
  bind subscriptions "$NIMBUS_JOBS_SUBSCRIPTION" "$agent" roles/pubsub.subscriber

  # batch_submit publishes and checks the topic for /ready; the worker consumes both
  # subscriptions and republishes jobs left PENDING.
  local submit worker
  submit="serviceAccount:$(service_account nimbus-batch-submit)"
  worker="serviceAccount:$(service_account nimbus-vm)"
  bind topics "$NIMBUS_JOBS_TOPIC" "$submit" roles/pubsub.publisher
  bind topics "$NIMBUS_JOBS_TOPIC" "$submit" roles/pubsub.viewer
  bind topics "$NIMBUS_JOBS_TOPIC" "$worker" roles/pubsub.publisher
  bind subscriptions "$NIMBUS_JOBS_SUBSCRIPTION" "$worker" roles/pubsub.subscriber
  bind subscriptions "$NIMBUS_DEAD_LETTER_SUBSCRIPTION" "$worker" roles/pubsub.subscriber
}

main "$@"
