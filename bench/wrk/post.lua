-- POST one JSON body to every request and report the run as one JSON line.
--
--   wrk -t1 -c4 -d10s -s bench/wrk/post.lua http://127.0.0.1:PORT/v1/predict -- body.json
--
-- The body is read once per thread in init() and the request is built once (wrk's fast
-- path). response() counts answers outside 2xx: wrk's own status counter only sees > 399.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local file = assert(io.open(args[1], "rb"), "usage: -- <body file>")
  wrk.method = "POST"
  wrk.body = file:read("*a")
  file:close()
  wrk.headers["Content-Type"] = "application/json"
  non2xx = 0
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local non2xx_total = 0
  for _, thread in ipairs(threads) do
    non2xx_total = non2xx_total + (thread:get("non2xx") or 0)
  end
  local errors = summary.errors
  io.write(string.format(
    "WRK_JSON {\"requests\": %d, \"duration_us\": %d, \"bytes\": %d, \"non2xx\": %d, " ..
    "\"connect_errors\": %d, \"read_errors\": %d, \"write_errors\": %d, " ..
    "\"timeout_errors\": %d, \"status_errors\": %d, " ..
    "\"latency_us\": {\"min\": %d, \"mean\": %.1f, \"max\": %d, " ..
    "\"p50\": %d, \"p90\": %d, \"p99\": %d, \"p999\": %d}}\n",
    summary.requests, summary.duration, summary.bytes, non2xx_total,
    errors.connect, errors.read, errors.write, errors.timeout, errors.status,
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
