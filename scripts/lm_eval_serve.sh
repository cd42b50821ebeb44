#!/usr/bin/env bash
# A whole lm-eval run recorded by llmri serve: one session per question, in one store.
#
#   pip install 'lm-eval[api]==0.4.13'     # not one of llmri's dependencies (it pulls datasets, evaluate...)
#   scripts/lm_eval_serve.sh [STORE] [PORT]
#
# Writes a tiny generate_until task from a local JSONL file (no download), starts `llmri serve` on
# loopback, runs `lm_eval --model local-chat-completions` against it, stops the server, and lists
# the sessions recorded. Every request lm-eval sends is a session with its activations; open
# `llmri view STORE` (or keep the server and open http://127.0.0.1:PORT/) to look at them.
set -euo pipefail
STORE=${1:-lm-eval-sessions.zarr}
PORT=${2:-8011}
WORK=$(mktemp -d)
trap 'kill "$SERVER" 2>/dev/null || true; rm -rf "$WORK"' EXIT

cat > "$WORK/arith.jsonl" <<'JSONL'
{"question": "What is 2 + 3?", "answer": "5"}
{"question": "What is 10 - 4?", "answer": "6"}
{"question": "What is 3 * 3?", "answer": "9"}
{"question": "What is 8 / 2?", "answer": "4"}
JSONL
cat > "$WORK/arith_local.yaml" <<YAML
task: arith_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: $WORK/arith.jsonl
test_split: test
output_type: generate_until
doc_to_text: "{{question}} Answer with a number only."
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\n"]
  max_gen_toks: 8
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
filter_list:
  - name: last-number
    filter:
      - function: regex
        regex_pattern: "(-?[0-9]+)"
        group_select: -1
      - function: take_first
YAML

llmri serve -o "$STORE" --port "$PORT" --name smollm2 > "$WORK/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 240); do
  curl -sf "http://127.0.0.1:$PORT/v1/models" > /dev/null && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/serve.log"; exit 1; }
  sleep 0.5
done

lm_eval --model local-chat-completions \
  --model_args "model=smollm2,base_url=http://127.0.0.1:$PORT/v1/chat/completions,num_concurrent=4,max_retries=1,tokenized_requests=False" \
  --apply_chat_template --include_path "$WORK" --tasks arith_local --output_path "$WORK/out"

kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
llmri info "$STORE"
