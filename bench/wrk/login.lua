-- POST /api/v1/auth/login with the accounts of CREDS_FILE ("email<TAB>password" lines), round-robin.
-- RETRY_DELAY_MS: back-off after a 503/429 (see common.lua).
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local c = dofile(here .. "common.lua")
c.install()
local hdrs = { ["Content-Type"] = "application/json" }
local bodies, i
init = function(args)
  bodies = {}
  for _, line in ipairs(c.lines(assert(c.env("CREDS_FILE", nil), "set CREDS_FILE"))) do
    local email, password = line:match("^([^\t]+)\t(.*)$")
    bodies[#bodies + 1] = string.format('{"email":"%s","password":"%s"}', email, password)
  end
  i = thread_id
end
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "/api/v1/auth/login", hdrs, bodies[i])
end
