-- wrk script: POST the ~1 KB Delivered event in $BODY_FILE (default tests/bench/event.json)
-- as application/json, on every connection, as fast as answers come.
local f = assert(io.open(os.getenv("BODY_FILE") or "tests/bench/event.json", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local non2xx = summary.errors.status
  io.write(string.format("WRK-RESULT {\"requests\": %d, \"seconds\": %.3f, \"non2xx\": %d, " ..
    "\"socket_errors\": %d, \"p50_ms\": %.3f, \"p90_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f}\n",
    summary.requests, summary.duration / 1e6, non2xx,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
