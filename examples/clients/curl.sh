#!/usr/bin/env bash
# wagate with nothing but curl: check the status, start pairing if the account is not
# linked, poll until the QR code was scanned, send a notification, and show how a
# refused send looks (extensions.code). Environment:
#   WAGATE_URL    the GraphQL endpoint (default http://127.0.0.1:8080/graphql)
#   WAGATE_TOKEN  an API token (not needed by `wagate serve --demo`)
#   WAGATE_TO     the recipient, with its country code (default +14155552671)
#   WAGATE_TEXT   the message (default "Your code is 123456")
#   WAGATE_POLL_SECONDS, WAGATE_LINK_TIMEOUT_SECONDS  status polling (2 s, 180 s)
set -euo pipefail

url=${WAGATE_URL:-http://127.0.0.1:8080/graphql}
to=${WAGATE_TO:-+14155552671}
text=${WAGATE_TEXT:-Your code is 123456}
poll=${WAGATE_POLL_SECONDS:-2}
link_timeout=${WAGATE_LINK_TIMEOUT_SECONDS:-180}

# POST one GraphQL request (a JSON body) and print the JSON answer. GraphQL errors
# come with HTTP 200; --fail-with-body turns a refused token (401/403) into a failure.
# The token and the body (the message) never go on curl's command line, which every
# user of the machine can read (ps): the header comes from a pipe (-H @file), the body
# from standard input (printf is a shell builtin, so it has no command line either).
# (The header file is opened in the curl command itself: one made in an assignment
# before it is closed by the time curl reads it.)
gql() {
  printf '%s' "$1" | curl -sS --fail-with-body --max-time 90 "$url" \
    -H 'Content-Type: application/json' --data-binary @- \
    -H @<(if [ -n "${WAGATE_TOKEN:-}" ]; then
            printf 'Authorization: Bearer %s\n' "$WAGATE_TOKEN"
          fi)
}

# A shell string as a JSON string: backslashes and quotes escaped, and every control
# character (JSON allows none raw: a CRLF text would be refused as invalid JSON).
json_string() {
  local s=${1//\\/\\\\} code char
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\t'/\\t}
  s=${s//$'\r'/\\r}
  for code in {1..31}; do
    printf -v char "\\x$(printf '%02x' "$code")"
    s=${s//"$char"/$(printf '\\u%04x' "$code")}
  done
  printf '"%s"' "$s"
}

status='{"query":"{ whatsAppStatus { connected state phoneNumber } }"}'
send='mutation ($phoneNumber: String!, $message: String!) { sendWhatsAppNotification(phoneNumber: $phoneNumber, message: $message) }'

answer=$(gql "$status")
if [[ $answer != *'"connected":true'* ]]; then
  gql '{"query":"mutation { whatsAppConnect }"}' >/dev/null
  # Right after whatsAppConnect the state may still be NEW or CONNECTING, without a QR
  # code: poll until it is QR_PENDING (show qrCodeSvg or qrCode) and then CONNECTED.
  deadline=$((SECONDS + ${link_timeout%.*}))
  shown=""
  while [[ $answer != *'"connected":true'* ]]; do
    if ((SECONDS >= deadline)); then
      echo "not linked in time: scan the QR code, then run this again"
      exit 1
    fi
    state=$(grep -o '"state":"[A-Z_]*"' <<<"$answer" | cut -d '"' -f 4 || true)
    if [ "$state" != "$shown" ]; then
      shown=$state
      echo "state: $state"
    fi
    sleep "$poll"
    answer=$(gql "$status")
  done
fi
echo "linked: $answer"

for number in "$to" "555 2671"; do  # the second lacks its country code: refused at once
  body="{\"query\":$(json_string "$send"),\"variables\":{\"phoneNumber\":$(json_string "$number"),\"message\":$(json_string "$text")}}"
  answer=$(gql "$body")
  if [[ $answer == *'"errors"'* ]]; then
    code=$(grep -o '"code":"[A-Z_]*"' <<<"$answer" | head -n 1 | cut -d '"' -f 4)
    echo "refused: $code: $answer"
  else
    echo "sent: $answer"
  fi
done
