-- GET admin paths (PATHS_FILE, one path with its query per line, round-robin) with one admin TOKEN.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local c = dofile(here .. "common.lua")
c.install()
local token = assert(c.env("TOKEN", nil), "set TOKEN")
local paths, i
init = function(args)
  paths = c.lines(assert(c.env("PATHS_FILE", nil), "set PATHS_FILE"))
  i = thread_id
end
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i], { ["Authorization"] = "Bearer " .. token })
end
