-- Shared by every wrk script of `make bench` (loaded with dofile): the seeded user ids,
-- the service key, a thread number for seeds and unique values, and the request headers.
-- Environment: BENCH_IDS (one user id per line), BENCH_SERVICE_KEY.

local ids_file = assert(os.getenv("BENCH_IDS"), "BENCH_IDS is not set")
ids = {}
for line in io.lines(ids_file) do
  if line ~= "" then
    ids[#ids + 1] = line
  end
end
assert(#ids > 0, "no user ids in " .. ids_file)

headers = {
  ["X-Service-Key"] = assert(os.getenv("BENCH_SERVICE_KEY"), "BENCH_SERVICE_KEY is not set"),
  ["Content-Type"] = "application/json",
}

-- setup() runs in wrk's main Lua state, once per thread: number the threads.
local threads_started = 0
function setup(thread)
  threads_started = threads_started + 1
  thread:set("thread_number", threads_started)
end

-- init() runs in each thread's own Lua state, after setup().
function init(args)
  math.randomseed(os.time() + 7919 * (thread_number or 0))
end

function random_id()
  return ids[math.random(#ids)]
end
