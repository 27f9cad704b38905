-- Shared by every scenario of `just bench`: environment helpers, per-thread status counts, and done(),
-- which prints ONE line "BENCH_JSON {...}" that bench/wrk_runner.py parses.
-- Each wrk thread has its own Lua state; setup() runs in the main state and keeps the thread handles,
-- so done() can collect the per-thread globals (status counts, leftover tokens) with thread:get().
local M = {}
local threads = {}

function M.env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return v
end

function M.lines(path)
  local out = {}
  local f = assert(io.open(path, "r"), "cannot open " .. path)
  for line in f:lines() do
    if line ~= "" then out[#out + 1] = line end
  end
  f:close()
  return out
end

-- Globals of each thread's state (set before init()).
statuses = {}

function M.setup(thread)
  threads[#threads + 1] = thread
  thread:set("thread_id", #threads)
end

function M.count(status)
  statuses[status] = (statuses[status] or 0) + 1
end

function M.threads()
  return threads
end

function M.done(summary, latency, requests)
  local counts = {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("statuses") or {}) do counts[status] = (counts[status] or 0) + n end
  end
  local parts = {}
  for status, n in pairs(counts) do parts[#parts + 1] = string.format('"%d":%d', status, n) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_s":%.3f,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,' ..
    '"max_ms":%.3f,"mean_ms":%.3f,"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d},' ..
    '"statuses":{%s}}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, latency.mean / 1000,
    e.connect, e.read, e.write, e.timeout, e.status, table.concat(parts, ",")))
end

-- Count statuses and report. With RETRY_DELAY_MS > 0, a connection answered 503 or 429 waits that long before
-- its next request, like a client backing off for about one service time, instead of retrying at once in a
-- busy loop. wrk asks delay() before a connection's next request; responses and delays pair up in order,
-- which keeps the total back-off right even when connections interleave.
function M.install()
  setup = M.setup
  done = M.done
  local retry_delay = tonumber(M.env("RETRY_DELAY_MS", "0"))
  if retry_delay <= 0 then
    response = function(status, headers, body) M.count(status) end
    return
  end
  local waits, head, tail = {}, 1, 0
  response = function(status, headers, body)
    M.count(status)
    tail = tail + 1
    waits[tail] = (status == 503 or status == 429) and retry_delay or 0
  end
  delay = function()
    if head > tail then return 0 end
    local wait = waits[head]
    waits[head] = nil
    head = head + 1
    return wait
  end
end

return M
