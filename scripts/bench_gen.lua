-- bench_gen.lua: writes N contact records as NDJSON for scripts/bench.
--
--   lua5.4 scripts/bench_gen.lua N OUT [CHANGED_OUT CHANGE_EVERY]
--
-- Record i is a pure function of i, so two runs write the same file.
-- CHANGED_OUT, when given, receives the same N records in one pass except
-- every CHANGE_EVERY-th (i % CHANGE_EVERY == 1), which comes out modified:
-- a newer updated_at (in 2027, later than every unmodified record) and
-- another city, as if the remote had edited it since the first import.

local USAGE = "usage: bench_gen.lua N OUT [CHANGED_OUT CHANGE_EVERY]"
local N = math.tointeger(tonumber(arg[1] or "")) or error(USAGE)
local out = assert(arg[2], USAGE)
local changed_out = arg[3]
local change_every = changed_out and (math.tointeger(tonumber(arg[4] or "")) or error(USAGE)) or 0
if changed_out and change_every < 1 then error(USAGE) end

local first = { "Ada", "Alan", "Barbara", "Brian", "Clarice", "Dennis", "Donald", "Edsger", "Frances", "Grace",
  "Guido", "Hedy", "John", "Ken", "Katherine", "Leslie", "Linus", "Margaret", "Niklaus", "Radia", "Rob",
  "Shafi", "Sophie", "Tim", "Tony", "Whitfield", "Yukihiro", "Zhang" }
local last = { "Lovelace", "Turing", "Liskov", "Kernighan", "Shannon", "Ritchie", "Knuth", "Dijkstra",
  "Allen", "Hopper", "van Rossum", "Lamarr", "Backus", "Thompson", "Johnson", "Lamport", "Torvalds",
  "Hamilton", "Wirth", "Perlman", "Pike", "Goldwasser", "Wilson", "Berners-Lee", "Hoare", "Diffie",
  "Matsumoto", "O'Neil" }
local companies = { "Acme", "Initech", "Globex", "Umbrella", "Hooli", "Wonka", "Stark", "Wayne", "Cyberdyne",
  "Soylent", "Tyrell", "Aperture", "Vandelay", "Massive Dynamic", "Pied Piper", "Gringotts" }
local cities = { "Brussels", "Phoenix", "Lisbon", "Osaka", "Nairobi", "Oslo", "Lima", "Austin", "Kraków",
  "Montréal", "Hanoi", "Porto", "Quito", "Tallinn", "Zürich", "Perth", "Seoul", "Accra" }
local kinds = { "work", "home", "mobile" }

local format, concat = string.format, table.concat
local lower, gsub = string.lower, string.gsub

-- splitmix64: one call gives 64 well-mixed bits; each record draws its
-- choices from two such words, a few bits at a time.
local function mix(x)
  x = x * 0x9E3779B97F4A7C15
  x = (x ~ (x >> 30)) * -4658895280553007687 -- 0xBF58476D1CE4E5B9
  x = (x ~ (x >> 27)) * -7723592293110705685 -- 0x94D049BB133111EB
  return (x ~ (x >> 31)) & 0x7FFFFFFFFFFFFFFF
end

local function slug(s)
  return (gsub(lower(s), "[^a-z]", ""))
end

-- JSON strings of the word lists, escaped once.
local function quoted(list)
  local t = {}
  for i, s in ipairs(list) do t[i] = '"' .. s:gsub('["\\]', "\\%0") .. '"' end
  return t
end

local first_q, last_q = quoted(first), quoted(last)
local first_s, last_s = {}, {}
for i, s in ipairs(first) do first_s[i] = slug(s) end
for i, s in ipairs(last) do last_s[i] = slug(s) end
local companies_q, cities_q = quoted(companies), quoted(cities)

local BASE = 1735689600 -- 2025-01-01T00:00:00Z
local CHANGED_BASE = 1798761600 -- 2027-01-01T00:00:00Z
local date = os.date

local f = assert(io.open(out, "wb"))
local g = changed_out and assert(io.open(changed_out, "wb"))
local buf, gbuf, n = {}, {}, 0
local nf, nl, nc, ny, nk = #first, #last, #companies, #cities, #kinds
local day_cache = {}
local function stamp_text(t)
  local day = t // 86400
  local d = day_cache[day]
  if not d then d = date("!%Y-%m-%dT", t); day_cache[day] = d end
  local s = t % 86400
  return format("%s%02d:%02d:%02dZ", d, s // 3600, s % 3600 // 60, s % 60)
end
local RECORD = '{"id":%d,"email":"%s.%s%d@example.org","first_name":%s,"last_name":%s,"status":"%s",'
  .. '"active":%s,"updated_at":"%s","company":{"name":%s,"city":%s},"tags":[%s],"phones":[%s]}\n'
for i = 1, N do
  local a, b = mix(i), mix(i + 0x5555555555)
  local fi, li = a % nf + 1, a // 32 % nl + 1
  a = a // 1024
  local time = b % (365 * 86400)
  b = b // (365 * 86400)
  local city = a % ny + 1
  local other_city = a // 64 % ny + 1
  a = a // 4096
  local company = companies_q[a % nc + 1]
  a = a // 16
  local ntags = a % 4
  a = a // 4
  local tags
  if ntags == 0 then tags = ""
  elseif ntags == 1 then tags = format("%d", a % 50 + 1)
  elseif ntags == 2 then tags = format("%d,%d", a % 50 + 1, a // 64 % 50 + 1)
  else tags = format("%d,%d,%d", a % 50 + 1, a // 64 % 50 + 1, a // 4096 % 50 + 1) end
  local phones = format('{"kind":"%s","number":"+1-555-%07d"}', kinds[b % nk + 1], b // 4 % 10000000)
  b = b // 0x4000000
  if b % 3 == 0 then
    phones = format('%s,{"kind":"home","number":"+44-20-%08d"}', phones, mix(b) % 100000000)
  end
  local active = b // 4 % 5 ~= 0
  local status, flag = active and "active" or "inactive", active and "true" or "false"
  local line = format(RECORD, i, first_s[fi], last_s[li], i, first_q[fi], last_q[li], status, flag,
    stamp_text(BASE + time), company, cities_q[city], tags, phones)
  n = n + 1
  buf[n] = line
  if g then
    if i % change_every == 1 or change_every == 1 then
      if other_city == city then other_city = city % ny + 1 end
      line = format(RECORD, i, first_s[fi], last_s[li], i, first_q[fi], last_q[li], status, flag,
        stamp_text(CHANGED_BASE + time % 86400), company, cities_q[other_city], tags, phones)
    end
    gbuf[n] = line
  end
  if n == 4096 then
    f:write(concat(buf))
    if g then g:write(concat(gbuf)) end
    n = 0
  end
end
f:write(concat(buf, "", 1, n))
f:close()
if g then
  g:write(concat(gbuf, "", 1, n))
  g:close()
end
