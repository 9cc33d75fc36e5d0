-- wrk script: print latency percentiles (microseconds) and error counts in one
-- machine-readable line after the run.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH p50=%d p99=%d p999=%d requests=%d non2xx=%d connect=%d read=%d write=%d timeout=%d\n",
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    summary.requests, e.status, e.connect, e.read, e.write, e.timeout))
end
