-- wrk script: POST /v1/{pn}/messages with a random recipient per request.
-- Environment: HERALD_TOKEN, HERALD_PN.
local token = os.getenv("HERALD_TOKEN")
local pn = os.getenv("HERALD_PN")
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. token
wrk.headers["Content-Type"] = "application/json"
local counts = {}
request = function()
  local to = string.format("1555%07d", math.random(0, 9999999))
  local body = '{"messaging_product":"whatsapp","to":"' .. to .. '","type":"text","text":{"body":"wrk load test"}}'
  return wrk.format(nil, "/v1/" .. pn .. "/messages", nil, body)
end
response = function(status)
  counts[status] = (counts[status] or 0) + 1
end
done = function(summary, latency, requests)
  io.write(string.format("requests %d, errors %d, p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms\n",
    summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
