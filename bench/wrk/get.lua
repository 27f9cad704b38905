-- GET one path, optionally paced: the bare-framework reference and the /health probe of the overload check.
-- Env: GET_PATH (default /), PACE_MS (default 0: closed loop; N: wait N ms before each next request).
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local c = dofile(here .. "common.lua")
c.install()
wrk.method = "GET"
wrk.path = c.env("GET_PATH", "/")
local pace = tonumber(c.env("PACE_MS", "0"))
if pace > 0 then
  delay = function() return pace end
end
