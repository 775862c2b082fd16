-- wrk script: every request asks for a different user id, so identical-request
-- coalescing cannot share upstream calls. Measures the fan-out work itself.
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/api/dashboard/" .. n)
end
