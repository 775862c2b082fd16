-- wrk script: the URL's path with a different number appended on every request
-- (`wrk -s distinct-path.lua http://host/api/fan4/` asks /api/fan4/1, /api/fan4/2, ...),
-- so identical-request coalescing cannot share upstream calls.
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", wrk.path .. n)
end
