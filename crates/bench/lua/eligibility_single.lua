-- GET /api/v1/users/{id}/eligibility?channel=push for a random seeded user.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

function request()
  return wrk.format("GET", "/api/v1/users/" .. random_id() .. "/eligibility?channel=push", headers)
end
