-- GET /api/v1/users/me with the access tokens of TOKENS_FILE (one per line), round-robin.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local c = dofile(here .. "common.lua")
c.install()
local path = c.env("ME_PATH", "/api/v1/users/me")
local tokens, i
init = function(args)
  tokens = c.lines(assert(c.env("TOKENS_FILE", nil), "set TOKENS_FILE"))
  i = thread_id
end
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", path, { ["Authorization"] = "Bearer " .. tokens[i] })
end
