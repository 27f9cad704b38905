-- POST /api/v1/auth/register with a new email each time: bench-<RUN_ID>-<thread>-<n>@example.com.
-- Env: RUN_ID (required: unique per wrk run), PASSWORD, RETRY_DELAY_MS (back-off after a 503/429, common.lua).
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local c = dofile(here .. "common.lua")
c.install()
local run_id = assert(c.env("RUN_ID", nil), "set RUN_ID")
local password = c.env("PASSWORD", "correct-horse-battery-42")
local hdrs = { ["Content-Type"] = "application/json" }
local n = 0
request = function()
  n = n + 1
  local body = string.format(
    '{"email":"bench-%s-%d-%d@example.com","password":"%s","first_name":"Bench","last_name":"Register"}',
    run_id, thread_id, n, password)
  return wrk.format("POST", "/api/v1/auth/register", hdrs, body)
end
