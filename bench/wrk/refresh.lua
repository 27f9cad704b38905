-- POST /api/v1/auth/refresh with rotation: every token of TOKENS_FILE is used once, and each 2xx response's
-- new refresh_token goes to the back of the queue. A token is never sent twice (that would be reuse and
-- revoke the session). Give at least `connections` tokens more than the connections can hold in flight.
-- done() writes the tokens not yet used to TOKENS_OUT, so the next run (after a warm-up) can go on.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local c = dofile(here .. "common.lua")
c.install()
local hdrs = { ["Content-Type"] = "application/json" }
local bad = '{"refresh_token":"bench-pool-exhausted"}'
queue, qhead, qtail, starved = {}, 1, 0, 0
init = function(args)
  local nthreads = tonumber(c.env("WRK_THREADS", "1"))
  for n, line in ipairs(c.lines(assert(c.env("TOKENS_FILE", nil), "set TOKENS_FILE"))) do
    if (n - 1) % nthreads == thread_id - 1 then qtail = qtail + 1; queue[qtail] = line end
  end
end
request = function()
  if qhead > qtail then
    starved = starved + 1  -- an invalid token: a visible 401, never a reused one
    return wrk.format("POST", "/api/v1/auth/refresh", hdrs, bad)
  end
  local token = queue[qhead]
  queue[qhead] = nil
  qhead = qhead + 1
  return wrk.format("POST", "/api/v1/auth/refresh", hdrs, '{"refresh_token":"' .. token .. '"}')
end
response = function(status, headers, body)
  c.count(status)
  if status >= 200 and status < 300 then
    local token = body:match('"refresh_token"%s*:%s*"([^"]+)"')
    if token then qtail = qtail + 1; queue[qtail] = token end
  end
end
done = function(summary, latency, requests)
  c.done(summary, latency, requests)
  local out = c.env("TOKENS_OUT", nil)
  if out == nil then return end
  local f = assert(io.open(out, "w"))
  local total_starved = 0
  for _, t in ipairs(c.threads()) do
    local q, h, tl = t:get("queue"), t:get("qhead"), t:get("qtail")
    for n = h, tl do f:write(q[n], "\n") end
    total_starved = total_starved + t:get("starved")
  end
  f:close()
  io.write(string.format("BENCH_STARVED %d\n", total_starved))
end
