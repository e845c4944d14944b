-- GET /api/v1/users/{id} for a random seeded user.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

function request()
  return wrk.format("GET", "/api/v1/users/" .. random_id(), headers)
end
