-- Drop folders under hostile input: a file still being written, a link
-- out of the folder, a FIFO, a line with no end, a CSV quote that never
-- closes, and the order of commit and move under a power loss. Real runs
-- of entsync-run over real files; the store and the folder are read after.

local helpers = require "helpers"
local S = require "import_support"

local newdir = S.newdir

after_each(S.cleanup)

-- Backdates a file past any settle time: a file its writer finished.
local function settled(path)
  os.execute("touch -d '-5 seconds' " .. helpers.quote(path))
  return path
end

-- Writes a finished file into the drop folder.
local function drop(d, name, text)
  return settled(helpers.write(d .. "/inbox/" .. name, text))
end

local function job(d, settings, kind)
  helpers.write(d .. "/inbox/.keep", "")
  S.job(d, { provider = string.format('provider "%s" { dir = "inbox"%s }', kind or "ndjson",
    settings and (", " .. settings) or ""), remote = "files" })
end

local function lines(from, to)
  local records = {}
  for i = from, to do records[#records + 1] = S.contact(i) end
  return S.ndjson(records)
end

local function run_ok(d)
  local r = S.run(d, "run", "--no-progress")
  assert.equal(0, r.code, r.stdout .. r.stderr)
  return r
end

-- The failures of the sync, each as "key: error" (the key of a line that
-- could not be read is its place, "@a.ndjson:3").
local function failures(d)
  local out = {}
  for _, row in ipairs(S.query(d, "SELECT key, error FROM entsync_failed ORDER BY key")) do
    out[#out + 1] = row.key .. ": " .. row.error
  end
  return out
end

local function failure_count(d)
  return S.count(d, "entsync_failed")
end

-- A run that ends with failed records (exit 1) and `rows` contacts in the
-- store; returns its first failure ("key: error").
local function failing_run(d, rows)
  local r = S.run(d, "run", "--no-progress")
  assert.equal(1, r.code, r.stdout .. r.stderr)
  assert.equal(rows, S.count(d, "contact"))
  return failures(d)[1], r
end

-- Starts a writer (python3) appending the text of `pieces` to path, one
-- piece every `pause` seconds; returns its pid.
local function writer(path, pieces, pause)
  local script, data = helpers.tmpfile(), helpers.tmpfile()
  helpers.write(script, string.format([[
import json, sys, time
pieces = json.load(open(%q))
with open(%q, "ab") as f:
    for piece in pieces:
        f.write(piece.encode())
        f.flush()
        time.sleep(%s)
]], data, path, pause))
  helpers.write(data, require("cjson").encode(pieces))
  local pipe = io.popen(string.format("python3 %s >/dev/null 2>&1 & echo $!", helpers.quote(script)))
  local pid = tonumber(pipe:read("l"))
  pipe:close()
  return S.own(pid)
end

describe("a drop folder file still being written", function()
  it("is not read while its writer appends, nor moved half-read; once it settles all 200 records arrive", function()
    local d = newdir()
    job(d)
    local text = lines(1, 200)
    -- 200 records written in 40 pieces (pieces cut mid-line), one every 50 ms
    local pieces, size = {}, math.ceil(#text / 40)
    for i = 1, #text, size do pieces[#pieces + 1] = text:sub(i, i + size - 1) end
    local pid = writer(d .. "/inbox/a.ndjson", pieces, 0.05)
    assert.is_truthy(helpers.wait_for(function() return S.exists(d .. "/inbox/a.ndjson") end, 5))
    local r = run_ok(d)
    assert.is_true(helpers.alive(pid), "the writer finished before the run looked")
    assert.matches("inbox/a.ndjson: left for the next run: it is still being written", r.stderr, 1, true)
    assert.same({ "a.ndjson" }, S.ls(d .. "/inbox"))
    assert.equal(0, S.count(d, "contact"))
    assert.is_true(helpers.wait_gone(pid, 10))
    r = run_ok(d)
    assert.equal(200, S.count(d, "contact"), r.stdout .. r.stderr)
    assert.same({ "a.ndjson" }, S.ls(d .. "/inbox/processed"))
    assert.equal(0, failure_count(d))
  end)

  it("a writer paused past settle mid-line: the partial line keeps the file; when it is done nothing is lost",
    function()
      local d = newdir()
      job(d, "settle = 0.2")
      local text = lines(1, 200)
      local cut = 0
      for _ = 1, 100 do cut = text:find("\n", cut + 1, true) end
      cut = cut + 15 -- into record 101
      drop(d, "a.ndjson", text:sub(1, cut))
      local r = S.run(d, "run", "--no-progress")
      assert.equal(1, r.code, r.stdout .. r.stderr)
      assert.equal(100, S.count(d, "contact"))
      assert.matches("ends without a line break", r.stdout .. r.stderr, 1, true)
      assert.same({ "a.ndjson" }, S.ls(d .. "/inbox"))
      -- the writer ends the file
      local f = assert(io.open(d .. "/inbox/a.ndjson", "ab"))
      f:write(text:sub(cut + 1))
      f:close()
      settled(d .. "/inbox/a.ndjson")
      r = run_ok(d)
      assert.equal(200, S.count(d, "contact"), r.stdout .. r.stderr)
      assert.same({ "a.ndjson" }, S.ls(d .. "/inbox/processed"))
      assert.equal(0, failure_count(d))
      -- and a later full pass loses nothing
      run_ok(d)
      assert.equal(200, S.count(d, "contact"))
    end)

  it("a file that grows after it was read is not moved: the next run reads the rest", function()
    local d = newdir()
    job(d, "settle = 0")
    -- a mapping that appends to the file while the run reads it
    S.job(d, { provider = 'provider "ndjson" { dir = "inbox", settle = 0 }', remote = "files",
      prelude = string.format([[
local grown = false
local function grow(v)
  if not grown then
    grown = true
    local f = io.open(%q, "ab")
    f:write(%q)
    f:close()
  end
  return v
end
]], d .. "/inbox/a.ndjson", S.ndjson({ S.contact(3) })),
      mapping = '{ email = "email", name = { "name", import = grow }, age = "age" }' })
    helpers.write(d .. "/inbox/a.ndjson", lines(1, 2))
    local r = run_ok(d)
    assert.matches("not moved to processed/: it changed while it was read", r.stderr, 1, true)
    assert.same({ "a.ndjson", "processed" }, S.ls(d .. "/inbox"))
    assert.same({}, S.ls(d .. "/inbox/processed"))
    r = run_ok(d)
    assert.equal(3, S.count(d, "contact"), r.stdout .. r.stderr)
    assert.same({ "a.ndjson" }, S.ls(d .. "/inbox/processed"))
  end)
end)

describe("what a drop folder holds besides regular files", function()
  it("a symbolic link out of the folder is not followed: nothing of its target is imported or kept", function()
    local d = newdir()
    job(d)
    helpers.write(d .. "/secret.ndjson", '{"id": 900, "email": "SECRET-LINE", "name": "x", "age": 1}\nnot json SECRET\n')
    os.execute(string.format("ln -s ../secret.ndjson %s", helpers.quote(d .. "/inbox/a.ndjson")))
    drop(d, "b.ndjson", lines(1, 2))
    local r = run_ok(d)
    assert.matches("inbox/a.ndjson: passed over: not a regular file (a link)", r.stderr, 1, true)
    assert.equal(2, S.count(d, "contact"))
    assert.equal(0, failure_count(d))
    assert.is_nil(helpers.sqlite3(S.db(d), ".dump"):find("SECRET", 1, true))
    assert.same({ "a.ndjson", "processed" }, S.ls(d .. "/inbox"))
    assert.same({ "b.ndjson" }, S.ls(d .. "/inbox/processed"))
  end)

  it("a FIFO is passed over without blocking the run", function()
    local d = newdir()
    job(d)
    os.execute("mkfifo " .. helpers.quote(d .. "/inbox/a.ndjson"))
    drop(d, "b.ndjson", lines(1, 2))
    local child = S.spawn(d, { "job.lua", "run", "--no-progress" })
    S.own(child.pid)
    assert.is_true(helpers.wait_gone(child.pid, 15), "the run hangs on the FIFO")
    assert.matches("inbox/a.ndjson: passed over: not a regular file (a fifo)", helpers.read(child.stderr), 1, true)
    assert.equal(2, S.count(d, "contact"))
  end)
end)

describe("max_line", function()
  local BIG = 3 * 1024 * 1024

  -- a.ndjson: two records, a line of `size` bytes, and after it (when
  -- newline) a line break and a third record.
  local function endless(d, size, newline)
    drop(d, "a.ndjson", lines(1, 2) .. string.rep("x", size) .. (newline and ("\n" .. lines(3, 3)) or ""))
  end

  -- A run of the job, and its peak RSS in KiB (GNU time).
  local function run_measured(d)
    local base = os.tmpname()
    local _, _, code = os.execute(string.format("cd %s && /usr/bin/time -f %%M -o %s.rss %s job.lua run --no-progress "
      .. "</dev/null >%s.out 2>%s.err", helpers.quote(d), base, helpers.quote(helpers.bin), base, base))
    local r = { code = code, stdout = helpers.read(base .. ".out") or "", stderr = helpers.read(base .. ".err") or "" }
    local kib = tonumber((helpers.read(base .. ".rss") or ""):match("(%d+)%s*$"))
    for _, ext in ipairs({ "", ".rss", ".out", ".err" }) do os.remove(base .. ext) end
    return r, kib
  end

  it("ndjson: a line over max_line is one failure naming file:line and the setting, read in bounded memory; the "
    .. "records after it arrive; the file stays", function()
      local d = newdir()
      job(d, "max_line = 65536")
      local huge = 48 * 1024 * 1024
      endless(d, huge, true)
      local r, kib = run_measured(d)
      assert.equal(1, r.code, r.stdout .. r.stderr)
      assert.equal(3, S.count(d, "contact"))
      assert.same({ "@a.ndjson:3: a line of " .. (huge + 1) .. " bytes is over max_line (65536 bytes): passed over; "
        .. "the provider's setting max_line reads longer ones" }, failures(d))
      assert.same({ "a.ndjson" }, S.ls(d .. "/inbox"))
      -- bounded memory: far less than the line's 48 MiB
      assert.is_true(kib ~= nil and kib < 40 * 1024, "peak RSS " .. tostring(kib) .. " KiB")
      -- a second run, its records known (skipped in C), still finds it
      r = S.run(d, "run", "--no-progress")
      assert.equal(1, r.code, r.stdout .. r.stderr)
      assert.equal(1, failure_count(d))
      assert.matches("@a.ndjson:3:", failures(d)[1], 1, true)
    end)

  it("ndjson: a file with no line break at all fails at its line 3 under the default max_line (1 MiB)", function()
    local d = newdir()
    job(d)
    endless(d, BIG, false)
    local failure = failing_run(d, 2)
    assert.matches("@a.ndjson:3: a line of " .. BIG .. " bytes is over max_line (1048576 bytes)", failure, 1, true)
    assert.equal(2, S.count(d, "contact"))
  end)

  it("csv: a line over max_line is one failure; the rows after it arrive", function()
    local d = newdir()
    job(d, "max_line = 1000", "csv")
    drop(d, "a.csv", "id,email,name,age\n1,a@x,A,1\n2," .. string.rep("y", 5000) .. ",B,2\n3,c@x,C,3\n")
    local failure = failing_run(d, 2)
    assert.matches("@a.csv:3: a line of 5007 bytes is over max_line (1000 bytes)", failure, 1, true)
  end)

  it("json: a record over max_line is one failure; the records after it arrive; the file stays", function()
    local d = newdir()
    job(d, "max_line = 1000", "json")
    drop(d, "a.json", '[{"id": 1, "email": "a@x", "name": "A", "age": 1},\n{"id": 2, "email": "'
      .. string.rep("y", 5000) .. '", "name": "B", "age": 2},\n{"id": 3, "email": "c@x", "name": "C", "age": 3}]\n')
    local failure = failing_run(d, 2)
    assert.matches("@a.json:2: a record over max_line (1000 bytes)", failure, 1, true)
    assert.same({ "a.json" }, S.ls(d .. "/inbox"))
  end)
end)

describe("csv with a quote that never closes", function()
  -- ~2 MB: a header, 4 rows, a row opening a quote it never closes, then
  -- 60000 more rows (read as the quoted field's text).
  local function unbalanced(d)
    local rows = { "id,email,name,age" }
    for i = 1, 4 do rows[#rows + 1] = string.format("%d,c%d@example.com,Contact %d,%d", i, i, i, i) end
    rows[#rows + 1] = '5,c5@example.com,"Contact 5,5'
    for i = 6, 60005 do rows[#rows + 1] = string.format("%d,c%d@example.com,Contact number %d,%d", i, i, i, i % 90) end
    drop(d, "a.csv", table.concat(rows, "\n") .. "\n")
  end

  it("is read in linear time and reported at the line the quote opens, the file kept", function()
    local d = newdir()
    job(d, "max_line = 8388608", "csv")
    unbalanced(d)
    local failure = failing_run(d, 4)
    assert.matches("@a.csv:6: unterminated quoted field", failure, 1, true)
    assert.same({ "a.csv" }, S.ls(d .. "/inbox"))
  end)

  it("under the default max_line the quoted field stops at 1 MiB, reported at the line the quote opens", function()
    local d = newdir()
    job(d, nil, "csv")
    unbalanced(d)
    local failure = failing_run(d, 4)
    assert.matches("@a.csv:6: a quoted field opened here runs on past max_line (1048576 bytes)", failure, 1, true)
  end)
end)

describe("the move to processed/ and the commit it follows", function()
  it("the WAL holding the file's records is synced to disk before the file moves, the folder after", function()
    local d = newdir()
    job(d)
    drop(d, "a.ndjson", lines(1, 3))
    run_ok(d) -- the store exists: its WAL is open from the start
    drop(d, "b.ndjson", lines(4, 6))
    local trace = os.tmpname()
    -- LeakSanitizer (make asan) cannot run under a tracer: leaks are checked by every other spec
    local ok = os.execute(string.format("cd %s && ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 strace -f -qq -y -e trace=fsync,fdatasync,rename,renameat,renameat2,"
      .. "pwrite64 -o %s %s job.lua run --no-progress >/dev/null 2>&1", helpers.quote(d), trace,
      helpers.quote(helpers.bin)))
    assert.is_true(ok)
    local text = helpers.read(trace)
    os.remove(trace)
    local events = {}
    for line in text:gmatch("[^\n]+") do
      if line:match("pwrite64%(%d+<[^>]*entsync%.db%-wal>") then events[#events + 1] = "wal write"
      elseif line:match("f[dat]*sync%(%d+<[^>]*entsync%.db%-wal>") then events[#events + 1] = "wal sync"
      elseif line:match("rename[at2]*%(.*b%.ndjson") then events[#events + 1] = "move"
      elseif line:match("fsync%(%d+<[^>]*/inbox/processed>") then events[#events + 1] = "folder sync"
      end
    end
    local last_write, synced, move, folder
    for i, e in ipairs(events) do
      if e == "move" and not move then move = i end
      if not move then
        -- a write after a sync is not on the disk until the next sync
        if e == "wal write" then last_write, synced = i, nil end
        if e == "wal sync" and last_write then synced = i end
      end
      if e == "folder sync" and move and not folder then folder = i end
    end
    local first_sync_after = synced
    assert.is_not_nil(move, table.concat(events, ", "))
    assert.is_not_nil(last_write, table.concat(events, ", "))
    assert.is_not_nil(first_sync_after, "no sync of the WAL between its last write and the move: "
      .. table.concat(events, ", "))
    assert.is_not_nil(folder, table.concat(events, ", "))
    assert.equal(6, S.count(d, "contact"))
  end)
end)
