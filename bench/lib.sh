# Shared by the bench scripts (source it from the repository root).
# build_herald: builds bin=$(temp)/herald.
# start_serve FLAGS...: starts `herald serve FLAGS` on a free loopback port with
#   a fresh data directory; sets data, pid, url once it listens.
# stop_serve: stops it and removes its data directory.
# create_business NAME TIER MPS: creates a business; sets token and pn.

build_herald() {
  bin=$(mktemp -d)/herald
  go build -o "$bin" ./cmd/herald
}

start_serve() {
  data=$(mktemp -d)
  local port=$((20000 + RANDOM % 20000))
  "$bin" serve "$@" --data "$data" --listen 127.0.0.1:$port --no-demo-business >"$data/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$data/serve.log" && break; sleep 0.1; done
  url=http://127.0.0.1:$port
}

stop_serve() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$data"
}

create_business() {
  local biz
  biz=$(curl -s -H "Authorization: Bearer $(cat "$data/admin-token")" \
    -d "{\"name\":\"$1\",\"phone_numbers\":[\"15550177777\"],\"tier\":\"$2\",\"mps\":$3}" "$url/admin/v1/businesses")
  token=$(echo "$biz" | sed -E 's/.*"token":"([^"]+)".*/\1/')
  pn=$(echo "$biz" | sed -E 's/.*"phone_number_ids":\["([^"]+)".*/\1/')
}
