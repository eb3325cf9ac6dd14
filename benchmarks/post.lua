-- POST one fixed body on every request and print a one-line JSON summary for benchmarks/wrk.py.
-- usage: wrk -s benchmarks/post.lua URL -- BODY_FILE [Header-Name:value ...]

function init(args)
  local file = assert(io.open(args[1], "rb"))
  wrk.body = file:read("*a")
  file:close()
  wrk.method = "POST"
  for i = 2, #args do
    local name, value = string.match(args[i], "^([^:]+):(.*)$")
    wrk.headers[name] = value
  end
end

-- wrk counts a response with status >= 400 in errors.status; latencies are in microseconds.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"duration_us": %d, "requests": %d, "bytes": %d, "status_errors": %d, "connect_errors": %d, '
      .. '"read_errors": %d, "write_errors": %d, "timeouts": %d, "mean_us": %.1f, "max_us": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "p999_us": %d}\n',
    summary.duration, summary.requests, summary.bytes, e.status, e.connect, e.read, e.write, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
