-- POST /api/v1/users with a unique email per request: run tag (BENCH_RUN), thread number,
-- a per-thread counter and a random number.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local run = os.getenv("BENCH_RUN") or "run"
local counter = 0
function request()
  counter = counter + 1
  local email = string.format("r%s-%d-%d-%d@bench.example.com", run, thread_number or 0, counter, math.random(1, 999999999))
  local body = '{"name":"Bench Registrant","email":"' .. email .. '","password":"StrongPass123!"}'
  return wrk.format("POST", "/api/v1/users", headers, body)
end
