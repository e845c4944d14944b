-- GET /api/v1/users/{id} for a random seeded user, with the headers the seed's gateway sends
-- (axios 1.x from Node: it accepts every compression it can undo).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local axios_headers = {}
for name, value in pairs(headers) do
  axios_headers[name] = value
end
axios_headers["Accept"] = "application/json, text/plain, */*"
axios_headers["Accept-Encoding"] = "gzip, compress, deflate, br"
axios_headers["User-Agent"] = "axios/1.7.9"

function request()
  return wrk.format("GET", "/api/v1/users/" .. random_id(), axios_headers)
end
