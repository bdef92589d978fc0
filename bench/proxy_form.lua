-- wrk script for the pushprox benchmark (bench/run.py).
--
-- Proxied case: PUSHPROX_BENCH_URI=http://FQDN:PORT/1k makes wrk send proxy-form
-- requests, like Prometheus with proxy_url set:
--     GET http://FQDN:PORT/1k HTTP/1.1
--     Host: FQDN:PORT
-- to the address given on wrk's command line (the proxy).  Several URIs separated by
-- spaces are asked in turn.  Direct case: leave PUSHPROX_BENCH_URI empty and wrk sends
-- its plain origin-form request.
--
-- done() prints one machine-readable line "BENCH-JSON {...}" (latencies in microseconds).

local uri = os.getenv("PUSHPROX_BENCH_URI") or ""

-- What Prometheus sends (same headers for the direct case, so both are alike).
wrk.headers["Accept"] = "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
wrk.headers["User-Agent"] = "Prometheus/bench (wrk)"
wrk.headers["X-Prometheus-Scrape-Timeout-Seconds"] = "10"

local uris = {}
for u in uri:gmatch("%S+") do
   uris[#uris + 1] = u
end

local function host_of(u)
   return u:match("^%a+://([^/?#]+)")
end

if #uris == 1 then
   wrk.path = uris[1]
   wrk.headers["Host"] = host_of(uris[1])
elseif #uris > 1 then
   -- Several targets (space-separated URIs): each connection takes them in turn, as
   -- Prometheus scraping several clients through one proxy_url.
   local requests = {}
   local next_one = 0
   function init(args)
      for i, u in ipairs(uris) do
         local headers = {}
         for k, v in pairs(wrk.headers) do
            headers[k] = v
         end
         headers["Host"] = host_of(u)
         requests[i] = wrk.format("GET", u, headers)
      end
   end
   function request()
      next_one = next_one % #requests + 1
      return requests[next_one]
   end
end

-- No stop-after-N-responses here: wrk.thread:stop() only stops the thread's loop,
-- wrk's main thread still sleeps for the whole -d.  run.py runs wrk in slices instead.

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH-JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean))
end
