-- POST /api/v1/users/{id}/devices re-registering a token the user already has (an upsert of
-- a known token: 200). The seed gives user {id} the tokens bench-token-{id}-1 and -2.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

function request()
  local id = random_id()
  local body = '{"token":"bench-token-' .. id .. '-1","platform":"android","active":true}'
  return wrk.format("POST", "/api/v1/users/" .. id .. "/devices", headers, body)
end
