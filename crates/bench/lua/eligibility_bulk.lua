-- POST /api/v1/eligibility for 1000 random seeded users (in the category BENCH_CATEGORY
-- names, if set). The bodies are built once per thread (16 of them, used in turn) so that
-- wrk spends its time sending, not concatenating.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local BATCH = 1000
local category = os.getenv("BENCH_CATEGORY")
local category_field = (category and category ~= "") and ('"category":"' .. category .. '",') or ""
local bodies = {}
local next_body = 0

local base_init = init
function init(args)
  base_init(args)
  for b = 1, 16 do
    local quoted = {}
    for i = 1, BATCH do
      quoted[i] = '"' .. random_id() .. '"'
    end
    bodies[b] = '{"channel":"push",' .. category_field .. '"user_ids":[' .. table.concat(quoted, ",") .. "]}"
  end
end

function request()
  next_body = next_body % #bodies + 1
  return wrk.format("POST", "/api/v1/eligibility", headers, bodies[next_body])
end
