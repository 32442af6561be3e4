#!/usr/bin/env bash
# Campaign control at scale, against a real `herald serve` (built-in simulator):
#   1. a dry run of an N-line NDJSON upload (default 1,000,000): time and the
#      server's peak RSS before and after (bounded memory: it streams);
#   2. the same upload for real, paused while it streams; once every message
#      is set aside, the server's CPU over 60 s with N messages paused, next
#      to 60 s of the same server idle before the upload (no re-leasing loop);
#   3. the cancel of the paused campaign: how long until every message is
#      canceled.
# Usage: bench/control.sh [N]   (prints a summary; leaves nothing behind)
set -euo pipefail
N=${1:-1000000}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null; rm -rf "$work"' EXIT
go build -o "$work/herald" "$root/cmd/herald"
port=$((20000 + RANDOM % 20000))
url=http://127.0.0.1:$port
"$work/herald" serve --data "$work/data" --listen 127.0.0.1:$port --admin-token admin-bench-token-0123 \
  --no-demo-business --log-level error --sim-users 1000000 >"$work/serve.log" 2>&1 &
pid=$!
until curl -sf $url/readyz >/dev/null; do kill -0 $pid 2>/dev/null || { cat "$work/serve.log"; exit 1; }; sleep 0.2; done
biz=$(curl -sf -H 'Authorization: Bearer admin-bench-token-0123' -d '{"name":"Bench","phone_numbers":["15550009999"],"tier":"unlimited","mps":1000}' $url/admin/v1/businesses)
tok=$(echo "$biz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
pn=$(echo "$biz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["phone_number_ids"][0])')
python3 - "$N" >"$work/up.ndjson" <<'EOF'
import sys
n = int(sys.argv[1])
out = sys.stdout
out.write('{"name":"control-bench","template":{"body":"Hello {{n}}, your code is {{c}}"}}\n')
for i in range(n):
    out.write('{"to":"1555%07d","vars":{"n":"u%d","c":"%06d"}}\n' % (i * 7919 % 1000000, i, i))
EOF
cpu() { awk '{print $14+$15}' /proc/$pid/stat; }   # utime+stime, clock ticks
hz=$(getconf CLK_TCK)
rss() { awk "/^$1:/{print \$2}" /proc/$pid/status; }
echo "lines: $N ($(du -h "$work/up.ndjson" | cut -f1)), machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
# 1. Dry run.
hwm0=$(rss VmHWM); rss0=$(rss VmRSS)
t0=$(date +%s.%N)
curl -sf -XPOST -H "Authorization: Bearer $tok" -H 'Content-Type: application/x-ndjson' --data-binary @"$work/up.ndjson" \
  "$url/v1/$pn/campaigns?dry_run=true" -o "$work/dry.json"
t1=$(date +%s.%N)
echo "dry run: $(python3 -c "import json; d=json.load(open('$work/dry.json')); print('accepted', d['accepted'], 'rejected', d['rejected_count'], 'integrity', d['integrity'])")"
echo "dry run: $(python3 -c "print('%.1f s, %.0f lines/s' % ($t1-$t0, $N/($t1-$t0)))"); server RSS before ${rss0} kB (peak ${hwm0} kB), peak after $(rss VmHWM) kB"
# 2. Idle CPU, then the paused upload.
c0=$(cpu); sleep 60; c1=$(cpu)
idle=$(python3 -c "print('%.2f' % (($c1-$c0)/$hz/60*100))")
curl -sf -XPOST -H "Authorization: Bearer $tok" -H 'Content-Type: application/x-ndjson' --data-binary @"$work/up.ndjson" \
  "$url/v1/$pn/campaigns" -o "$work/real.json" &
up=$!
cid=""
until [ -n "$cid" ]; do
  cid=$(curl -sf -H "Authorization: Bearer $tok" "$url/v1/$pn/campaigns" | python3 -c 'import json,sys; d=json.load(sys.stdin)["data"]; print(d[0]["campaign_id"] if d else "")')
done
curl -sf -XPOST -H "Authorization: Bearer $tok" "$url/v1/campaigns/$cid/pause" >/dev/null
wait $up
accepted=$(python3 -c "import json; print(json.load(open('$work/real.json'))['accepted'])")
metric() { curl -sf $url/metrics | awk -v m="$1" '$1==m{print $2}'; }
t0=$(date +%s.%N)
while :; do
  parked=$(metric herald_messages_parked_total); parked=${parked:-0}
  sent=$(curl -sf -H "Authorization: Bearer $tok" "$url/v1/campaigns/$cid" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["totals"]["sent"]+d["totals"]["failed"])')
  python3 -c "import sys; sys.exit(0 if float('$parked')+$sent >= $accepted else 1)" && break
  sleep 1
done
t1=$(date +%s.%N)
echo "paused: $accepted accepted, $sent sent before the pause took hold, ${parked%.*} parked in $(python3 -c "print('%.1f' % ($t1-$t0))") s after the upload's answer"
sleep 5
c0=$(cpu); p0=$(metric herald_messages_parked_total); sleep 60; c1=$(cpu); p1=$(metric herald_messages_parked_total)
held=$(python3 -c "print('%.2f' % (($c1-$c0)/$hz/60*100))")
echo "CPU over 60 s: idle and empty ${idle} % of a core; with ${parked%.*} messages paused ${held} % (parked counter moved by $(python3 -c "print(int(float('$p1')-float('$p0')))") meanwhile: nothing re-leased)"
# 3. Cancel.
t0=$(date +%s.%N)
curl -sf -XPOST -H "Authorization: Bearer $tok" "$url/v1/campaigns/$cid/cancel" >/dev/null
t1=$(date +%s.%N)
while :; do
  c=$(metric herald_messages_canceled_total); c=${c:-0}
  python3 -c "import sys; sys.exit(0 if float('$c')+$sent >= $accepted else 1)" && break
  sleep 0.5
done
t2=$(date +%s.%N)
echo "cancel: answered in $(python3 -c "print('%.3f' % ($t1-$t0))") s; every message canceled (status written) $(python3 -c "print('%.1f' % ($t2-$t0))") s after"
