-- PUT /api/v1/users/{id}/preferences for a random seeded user, toggling email on and off.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local email = false
function request()
  email = not email
  local body = '{"email":' .. tostring(email) .. "}"
  return wrk.format("PUT", "/api/v1/users/" .. random_id() .. "/preferences", headers, body)
end
