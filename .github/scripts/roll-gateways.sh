#!/usr/bin/env bash
# Rolling gateway deploy (docs/operations.md, "Upgrades with drain"): replace every gateway whose launch
# template version is not the group's, BATCH at a time. Terminating an instance through the group (without
# lowering the desired capacity) deregisters it from the NLB target group (no new connections) and holds it
# in Terminating:Wait; the instance's storm-lifecycle-watch then stops STORM with SIGTERM, so the gateway
# drains: in-flight acks, close 1012 with a random retry_ms (0..STORM_DRAIN_RECONNECT_SPREAD_S) to every
# client, which reconnect to the other gateways. The group launches the replacement; the next batch starts
# when the group and the target group are healthy again and the Datadog SLO monitors (MONITOR_TAGS,
# the fast-burn pages) are quiet after SOAK_S. Any monitor in Alert stops the rollout (exit 1).
#
# Needs: aws (v2), jq, curl. Environment: ASG, TARGET_GROUP_ARN, MONITOR_TAGS (comma-separated),
# DD_API_KEY, DD_APP_KEY; optional DD_SITE (datadoghq.eu), BATCH (4), SOAK_S (120), POLL_S (10), TIMEOUT_S (900).
set -euo pipefail

: "${ASG:?group name}" "${TARGET_GROUP_ARN:?target group ARN}" "${MONITOR_TAGS:?Datadog monitor tags}"
: "${DD_API_KEY:?}" "${DD_APP_KEY:?}"
DD_SITE=${DD_SITE:-datadoghq.eu}
BATCH=${BATCH:-4}
SOAK_S=${SOAK_S:-120}
POLL_S=${POLL_S:-10}
TIMEOUT_S=${TIMEOUT_S:-900}

group() { aws autoscaling describe-auto-scaling-groups --auto-scaling-group-names "$ASG" --output json; }

alerting() {
  curl -fsS -G "https://api.${DD_SITE}/api/v1/monitor" --data-urlencode "monitor_tags=${MONITOR_TAGS}" \
    -H "DD-API-KEY: ${DD_API_KEY}" -H "DD-APPLICATION-KEY: ${DD_APP_KEY}" \
    | jq -r '[.[] | select(.overall_state == "Alert") | .name] | join("; ")'
}

gate() {
  local names
  names=$(alerting)
  if [ -n "$names" ]; then
    echo "::error::SLO monitors alerting (${MONITOR_TAGS}): ${names}. Rollout stopped; the group keeps what it has."
    exit 1
  fi
}

# Until the batch's instances have drained and left the group, and as many healthy replacements serve.
wait_healthy() {
  local deadline=$((SECONDS + TIMEOUT_S)) state desired inservice healthy leaving
  while :; do
    state=$(group)
    desired=$(jq '.AutoScalingGroups[0].DesiredCapacity' <<< "$state")
    inservice=$(jq '[.AutoScalingGroups[0].Instances[] | select(.LifecycleState == "InService" and .HealthStatus == "Healthy")] | length' <<< "$state")
    leaving=$(jq --arg ids "$*" '[.AutoScalingGroups[0].Instances[] | select(.InstanceId as $i | $ids | split(" ") | index($i))] | length' <<< "$state")
    healthy=$(aws elbv2 describe-target-health --target-group-arn "$TARGET_GROUP_ARN" --output json \
      | jq '[.TargetHealthDescriptions[] | select(.TargetHealth.State == "healthy")] | length')
    echo "draining ${leaving}, in service ${inservice}/${desired}, healthy targets ${healthy}"
    if [ "$leaving" -eq 0 ] && [ "$inservice" -ge "$desired" ] && [ "$healthy" -ge "$desired" ]; then
      return 0
    fi
    gate
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "::error::the group did not become healthy within ${TIMEOUT_S}s. Rollout stopped."
      exit 1
    fi
    sleep "$POLL_S"
  done
}

gate
batch_no=0
while :; do
  outdated=$(group | jq -r --argjson n "$BATCH" '.AutoScalingGroups[0] as $g
    | [$g.Instances[] | select(.LifecycleState == "InService" and .LaunchTemplate.Version != $g.LaunchTemplate.Version)
    | .InstanceId] | .[:$n] | .[]')
  if [ -z "$outdated" ]; then
    echo "every gateway runs the group's launch template version"
    break
  fi
  batch_no=$((batch_no + 1))
  for id in $outdated; do
    echo "batch ${batch_no}: draining ${id} (close 1012, clients reconnect with jitter)"
    aws autoscaling terminate-instance-in-auto-scaling-group --instance-id "$id" \
      --no-should-decrement-desired-capacity --output json > /dev/null
  done
  # shellcheck disable=SC2086  # instance ids never contain spaces
  wait_healthy $outdated
  sleep "$SOAK_S"
  gate
done
