#!/bin/sh
# The gateway's OpenAI API with curl: the catalogue, one answer, one streamed answer.
#   sh examples/clients/curl.sh                      # against cortex serve on 127.0.0.1:31313
#   CORTEX_URL=http://gw:31313 MODEL=qwen sh examples/clients/curl.sh
# The first request for a model that is loaded nowhere loads it (the gateway waits).
set -eu
url="${CORTEX_URL:-http://127.0.0.1:31313}"
model="${MODEL:-gemma3-270m}"
# With [auth] api_keys set on the gateway, export CORTEX_API_KEY.
auth="Authorization: Bearer ${CORTEX_API_KEY:-unused}"

echo "# models"
curl -fsS "$url/v1/models" -H "$auth"
echo

echo "# chat completion"
curl -fsS "$url/v1/chat/completions" -H "$auth" -H 'content-type: application/json' -d '{
  "model": "'"$model"'", "max_tokens": 16, "temperature": 0,
  "messages": [{"role": "user", "content": "Name three colours."}]}'
echo

echo "# streamed (server-sent events, one chunk per token)"
curl -fsSN "$url/v1/chat/completions" -H "$auth" -H 'content-type: application/json' -d '{
  "model": "'"$model"'", "max_tokens": 16, "temperature": 0, "stream": true,
  "messages": [{"role": "user", "content": "Count to five."}]}'
