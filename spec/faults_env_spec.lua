-- Faults of the environment and hostile input, met by real runs of
-- entsync-run: another process holding the store's write lock, a full
-- store, a store it may not create; secrets in URLs and settings at every
-- place entsync writes to; log lines that cannot be forged; values checked
-- as they enter; job settings checked by type.

local core = require "entsync.core"
local helpers = require "helpers"
local S = require "import_support"
local X = require "export_support"

local dir

before_each(function()
  dir = helpers.tmpdir()
end)

after_each(function()
  helpers.rmdir(dir)
end)

local function contacts(n, first)
  local records = {}
  for i = first or 1, (first or 1) + n - 1 do
    records[#records + 1] = { id = i, email = "c" .. i .. "@example.com", name = string.rep("n", 60), age = i % 90 }
  end
  return records
end

-- A job importing data/contacts.ndjson in batches of 100, with store settings.
local function import_job(store, opts)
  opts = opts or {}
  opts.batch = opts.batch or 100
  opts.prelude = (store and ("store " .. store .. "\n") or "") .. (opts.prelude or "")
  return S.job(dir, opts)
end

describe("the store refused by the machine", function()
  it("another connection holding the write lock past busy_timeout ends the run with status 6, named", function()
    import_job('{ "entsync.db", busy_timeout = 0.3 }')
    S.data(dir, contacts(5))
    assert.equal(0, S.run(dir).code)
    -- a second connection of this process holds a write transaction
    local other = core.store.open(S.db(dir))
    other:run("BEGIN IMMEDIATE")
    local started = core.sys.monotonic()
    local r = S.run(dir)
    local waited = core.sys.monotonic() - started
    -- a JSON log's fatal line names the kind
    local json_run = helpers.run(dir, { "job.lua", "run", "--log-format", "json" })
    other:run("ROLLBACK")
    assert.equal(6, json_run.code, json_run.stderr)
    local fatal = require("cjson").decode(json_run.stderr:match("[^\n]+\n?$"))
    assert.same({ "fatal", "busy" }, { fatal.level, fatal.kind })
    other:close()
    assert.equal(6, r.code, r.stderr)
    assert.matches('^entsync%-run: job%.lua: sync "contacts": store [^\n]*/entsync%.db is busy: ', r.stderr)
    assert.matches("busy_timeout", r.stderr)
    assert.not_matches("internal error", r.stderr)
    assert.not_matches("%.lua:%d+:", r.stderr:gsub("^entsync%-run: job%.lua", ""))
    assert.is_true(waited >= 0.3, tostring(waited))
    assert.is_true(waited < 8, tostring(waited))
    -- once it lets go, the run goes through
    assert.equal(0, S.run(dir).code)
  end)

  it("a foreign sqlite3 process holding BEGIN IMMEDIATE makes an export end with status 6", function()
    X.sink_job(dir, "on_change = true")
    helpers.write(dir .. "/job.lua", 'store { "entsync.db", busy_timeout = 0.3 }\n' .. helpers.read(dir .. "/job.lua"))
    assert.equal(0, X.run(dir).code)
    X.sql(dir, "INSERT INTO contact (email, name, age) VALUES ('ann@x', 'Ann', 30)")
    local fifo = dir .. "/held"
    os.execute("mkfifo " .. helpers.quote(fifo))
    -- the shell says "held" once its transaction holds the lock, then
    -- waits for its stdin to close
    local shell = io.popen(string.format("sqlite3 -batch %s > %s", helpers.quote(X.db(dir)), helpers.quote(fifo)), "w")
    shell:write("BEGIN IMMEDIATE;\nINSERT INTO contact (email, name, age) VALUES ('held@x', 'Held', 1);\n",
      "SELECT 'held';\n.output /dev/null\n")
    shell:flush()
    local reader = assert(io.open(fifo, "r"))
    assert.equal("held", reader:read("l"))
    local r = X.run(dir, "export", "contacts", "--all")
    shell:write("ROLLBACK;\n")
    shell:close()
    reader:close()
    assert.equal(6, r.code, r.stderr)
    assert.matches('sync "contacts": store [^\n]*entsync%.db is busy', r.stderr)
    assert.same({}, X.sink_lines(dir))
    local again = X.run(dir)
    assert.equal(0, again.code, again.stderr)
    assert.equal(1, #X.sink_lines(dir))
  end)

  it("a store capped by max_size ends an import with status 7; what was committed stays and is reported", function()
    import_job('{ "entsync.db", max_size = "600KB" }')
    S.data(dir, contacts(3000))
    local r = S.run(dir)
    assert.equal(7, r.code, r.stderr)
    assert.matches('^entsync%-run: job%.lua: sync "contacts": store [^\n]*entsync%.db is full', r.stderr)
    assert.not_matches("lock", r.stderr)
    local committed = tonumber(r.stderr:match("this run committed: (%d+) created"))
    assert.is_not_nil(committed, r.stderr)
    assert.is_true(committed > 0 and committed < 3000, r.stderr)
    assert.equal(committed, S.value(dir, "SELECT count(*) FROM contact"))
    assert.equal(committed, S.value(dir, "SELECT count(*) FROM entsync_map"))
    -- the run record says what happened
    local run = S.query(dir, "SELECT status, error FROM entsync_runs ORDER BY id DESC LIMIT 1")[1]
    assert.equal("error", run.status)
    assert.matches("is full", run.error)
    -- with room, the next run imports the rest and loses nothing
    import_job('{ "entsync.db", max_size = "64MB" }')
    r = S.run(dir)
    assert.equal(0, r.code, r.stderr)
    assert.equal(3000, S.value(dir, "SELECT count(*) FROM contact"))
    assert.equal(3000, S.value(dir, "SELECT count(DISTINCT email) FROM contact"))
  end)

  it("a store capped by max_size ends an export with status 7, and the next run sends the rest", function()
    X.sink_job(dir, "on_change = true")
    assert.equal(0, X.run(dir).code)
    local values = {}
    for i = 1, 1500 do values[#values + 1] = string.format("('c%d@x', '%s', %d)", i, string.rep("n", 40), i % 90) end
    X.sql(dir, "INSERT INTO contact (email, name, age) VALUES " .. table.concat(values, ","))
    local size = #helpers.read(X.db(dir))
    local job = helpers.read(dir .. "/job.lua")
    helpers.write(dir .. "/job.lua", string.format('store { "entsync.db", max_size = %d }\n', size) .. job)
    local r = X.run(dir)
    assert.equal(7, r.code, r.stderr)
    assert.matches('sync "contacts": store [^\n]*entsync%.db is full', r.stderr)
    assert.equal(1500, X.value(dir, "SELECT count(*) FROM contact"))
    helpers.write(dir .. "/job.lua", job)
    r = X.run(dir)
    assert.equal(0, r.code, r.stderr)
    assert.same({}, X.outbox(dir))
    local sent = {}
    for _, line in ipairs(X.sink_lines(dir)) do sent[line.record.email] = true end
    for i = 1, 1500 do assert.is_true(sent["c" .. i .. "@x"], "c" .. i) end
  end)

  it("a file sink on a full disk fails its writes, kept as failures that a retry sends", function()
    X.sink_job(dir, "on_change = true")
    assert.equal(0, X.run(dir).code)
    X.sql(dir, "INSERT INTO contact (email, name, age) VALUES ('full@x', 'Full', 1)")
    assert.is_true(os.execute("ln -s /dev/full '" .. dir .. "/out/sink.ndjson'"))
    local r = X.run(dir)
    assert.equal(1, r.code, r.stderr)
    assert.matches("No space left on device", r.stderr)
    local failed = X.export_failures(dir)
    assert.is_truthy(next(failed), "the write is kept as a failure of its entity, to be sent again")
    os.remove(dir .. "/out/sink.ndjson")
    r = X.run(dir, "failures", "contacts", "retry")
    assert.equal(0, r.code, r.stderr)
    assert.same({}, X.outbox(dir))
    assert.equal("full@x", X.sink_lines(dir)[1].record.email)
  end)

  it("a store in a folder that cannot be made ends a run with status 8, named", function()
    helpers.write(dir .. "/plain", "a file, not a folder\n")
    import_job('"plain/entsync.db"')
    S.data(dir, contacts(2))
    local r = S.run(dir)
    assert.equal(8, r.code, r.stderr)
    assert.matches("^entsync%-run: job%.lua: store [^\n]*plain/entsync%.db cannot be opened or written", r.stderr)
    assert.not_matches("internal error", r.stderr)
    X.sink_job(dir, "on_change = true")
    helpers.write(dir .. "/job.lua", 'store "plain/entsync.db"\n' .. helpers.read(dir .. "/job.lua"))
    r = X.run(dir, "export", "contacts", "--all")
    assert.equal(8, r.code, r.stderr)
  end)

  it("a new store and its -wal and -shm files are readable by their owner only", function()
    import_job()
    S.data(dir, contacts(3))
    assert.equal(0, S.run(dir).code)
    local other = core.store.open(S.db(dir)) -- keeps -wal and -shm in place
    for _, suffix in ipairs({ "", "-wal", "-shm" }) do
      local p = io.popen("stat -c %a " .. helpers.quote(S.db(dir) .. suffix))
      assert.equal("600", p:read("l"), suffix)
      p:close()
    end
    other:close()
  end)

  it("store settings are checked where they are declared", function()
    for _, case in ipairs({
      { '{ "entsync.db", busy_timeout = "ten" }', "store busy_timeout must be a positive number" },
      { '{ "entsync.db", max_size = "lots" }', "store max_size must be a size in bytes" },
      { '{ "entsync.db", busy = 1 }', 'store: unknown setting "busy"' },
    }) do
      import_job(case[1])
      local r = S.run(dir)
      assert.equal(2, r.code, r.stderr)
      assert.matches("job%.lua:1: " .. case[2]:gsub("%p", "%%%0"), r.stderr)
    end
  end)
end)

describe("secrets", function()
  local fixture = require "fixture"
  local PASSWORD, TOKEN = "pw-URL-7c1f9a", "tok-SETTING-5e2d"
  local server

  setup(function()
    server = fixture.start({ resources = { contacts = X.records(3) } },
      { auth = { api_key = { header = "X-Access-Token", value = TOKEN } } })
  end)
  teardown(function()
    if server then server.stop() end
  end)
  before_each(function()
    server.reset()
  end)

  local function job()
    local url = server.url:gsub("^http://", "http://ann:" .. PASSWORD .. "@")
    helpers.write(dir .. "/job.lua", table.concat({
      'entity "contact" { email = "text", name = "text", age = "integer" }',
      string.format('local api = provider "http_json" { base_url = %q, page = { style = "page", size = 2 }, '
        .. 'attempts = 2, auth = { api_key = { header = "X-Access-Token", value = %q } } }', url, TOKEN),
      'sync "contacts" { remote = api "api/contacts", entity = "contact",',
      '  mapping = { email = "email", name = "name", age = "age" },',
      '  import = { mode = "full", changed = "updated_at" }, export = { on_change = true } }',
    }, "\n") .. "\n")
  end

  local function repl(input)
    local inp = dir .. "/repl.in"
    helpers.write(inp, input)
    local p = io.popen(string.format("cd %s && HOME=%s %s job.lua repl <%s 2>&1", helpers.quote(dir),
      helpers.quote(dir), helpers.quote(helpers.bin), helpers.quote(inp)))
    local out = p:read("a")
    p:close()
    return out
  end

  it("appear in no log, error, status, failure, REPL line or store row", function()
    job()
    local outputs = {}
    local function keep(what, r)
      outputs[#outputs + 1] = { what, r.stdout .. r.stderr }
      return r
    end
    -- a page that fails once (a retry warning), verbose request logs
    server.faults({ { path = "/api/contacts", kind = "status", status = 503, method = "GET", count = 1 } })
    local r = keep("run -v", helpers.run(dir, { "job.lua", "run", "-v" }))
    assert.equal(0, r.code, r.stderr)
    assert.matches("retrying", r.stderr)
    assert.matches("%[redacted%]", r.stderr)
    -- an export the remote refuses: a failure with its message stored
    X.sql(dir, "INSERT INTO contact (email, name, age) VALUES ('new@x', 'New', 40)")
    server.faults({ { path = "/api/contacts", kind = "status", status = 422, method = "POST", count = 10 } })
    r = keep("export failure", helpers.run(dir, { "job.lua", "run", "--log-format", "json" }))
    assert.equal(1, r.code, r.stdout .. r.stderr)
    assert.is_true(X.value(dir, "SELECT count(*) FROM entsync_failures") > 0)
    -- a remote that keeps failing: the fatal error and the run record
    server.faults({ { path = "/api/contacts", kind = "status", status = 500, method = "GET", count = 10 } })
    r = keep("fatal", helpers.run(dir, { "job.lua", "run", "--full" }))
    assert.equal(1, r.code, r.stderr)
    assert.matches("status 500", r.stderr)
    keep("fatal json", helpers.run(dir, { "job.lua", "run", "--full", "--log-format", "json" }))
    keep("status", helpers.run(dir, { "job.lua", "status" }))
    keep("status --json", helpers.run(dir, { "job.lua", "status", "--json" }))
    keep("log", helpers.run(dir, { "job.lua", "log" }))
    keep("failures", helpers.run(dir, { "job.lua", "failures", "contacts" }))
    keep("check", helpers.run(dir, { "job.lua", "check" }))
    local printed = repl('provider("contacts")\njob.providers\nprint(job.providers[1].config.base_url)\n'
      .. 'error(job.providers[1].config.auth.api_key.value)\n')
    outputs[#outputs + 1] = { "repl", printed }
    assert.matches("X%-Access%-Token", printed)
    local dump = io.popen("sqlite3 " .. helpers.quote(X.db(dir)) .. " .dump")
    outputs[#outputs + 1] = { "store", dump:read("a") }
    dump:close()
    assert.matches("status 422", outputs[#outputs][2])
    for _, output in ipairs(outputs) do
      assert.is_nil(output[2]:find(PASSWORD, 1, true), output[1] .. ":\n" .. output[2])
      assert.is_nil(output[2]:find(TOKEN, 1, true), output[1] .. ":\n" .. output[2])
      assert.is_nil(output[2]:find("ann:", 1, true), output[1] .. ":\n" .. output[2])
    end
  end)
end)

describe("job settings", function()
  -- A job with one sync; sync_extra and import_extra are Lua source put
  -- into the sync and its import table, provider the files provider.
  local function job(opts)
    helpers.write(dir .. "/job.lua", table.concat({
      'entity "contact" { email = "text", name = "text", age = "integer" }',
      "local files = " .. (opts.provider or 'provider "ndjson" { dir = "data" }'),
      'sync "other" { remote = files "c.ndjson", entity = "contact", mapping = { email = "email" } }',
      'sync "contacts" { remote = files "c.ndjson", entity = "contact",',
      '  mapping = { email = "email", name = "name", age = "age" },',
      "  import = { mode = \"full\"" .. (opts.import and (", " .. opts.import) or "") .. " }"
        .. (opts.sync and (", " .. opts.sync) or "") .. " }",
    }, "\n") .. "\n")
  end

  local function refused(opts, line, message)
    job(opts)
    for _, command in ipairs({ "run", "check" }) do
      local r = helpers.run(dir, { "job.lua", command })
      assert.equal(2, r.code, command .. ": " .. r.stderr)
      assert.matches("job%.lua:" .. line .. ": " .. message:gsub("%p", "%%%0"), r.stderr, 1)
      assert.not_matches("internal error", r.stderr)
    end
  end

  it("every sync option is checked by type, naming the job file and line, the sync and the setting", function()
    for _, case in ipairs({
      { { sync = "depends_on = 5" }, 'sync "contacts": setting depends_on must be a sync name or a list of them, got 5' },
      { { sync = "depends_on = { 5 }" }, 'sync "contacts": setting depends_on must be a sync name or a list of them' },
      { { sync = "id = 5" }, 'sync "contacts": setting id must be a string, got 5' },
      { { sync = "description = {}" }, 'sync "contacts": setting description must be a string, got a table' },
      { { sync = "on_missing = 1" }, 'sync "contacts": setting on_missing must be a string, got 1' },
      { { sync = "entity = 5" }, 'sync "contacts": setting entity must be an entity name or a list of them, got 5' },
      { { sync = "changed = true" }, 'sync "contacts": setting changed must be a string, got true' },
      { { sync = 'export = { on_change = "yes" }' },
        'sync "contacts": setting export.on_change must be true or false, got "yes"' },
      { { sync = "export = { resource = 5 }" }, 'sync "contacts": setting export.resource must be a string, got 5' },
      { { sync = "export = { conflict = 5 }" },
        'sync "contacts": setting export.conflict must be a policy name or a function, got 5' },
      { { import = 'retry = "no"' }, 'sync "contacts": setting import.retry must be true or false, got "no"' },
      { { import = 'batch = "10"' }, 'sync "contacts": setting import.batch must be an integer, got "10"' },
      { { import = "changed = 5" }, 'sync "contacts": setting import.changed must be a string, got 5' },
      { { import = 'delete_guard = "half"' },
        'sync "contacts": setting import.delete_guard must be a share between 0 and 1, or false, got "half"' },
    }) do
      refused(case[1], 4, case[2])
    end
  end)

  it("every setting of the shipped providers is checked by type, nested tables included", function()
    local http = 'provider "http_json" { base_url = "http://127.0.0.1:1", %s }'
    for _, case in ipairs({
      { http:format('headers = "x"'), 'provider "http_json": setting headers must be a table, got "x"' },
      { http:format('headers = { ["X-A"] = {} }'), 'provider "http_json": setting headers.X-A must be a string or a number, got a table' },
      { http:format('timeout = "ten"'), 'provider "http_json": setting timeout must be a number, got "ten"' },
      { http:format('page = { size = "x" }'), 'provider "http_json": setting page.size must be a positive integer, got "x"' },
      { http:format('rate = { per_second = "x" }'), 'provider "http_json": setting rate.per_second must be a number, got "x"' },
      { http:format('auth = { basic = "u:p" }'), 'provider "http_json": setting auth.basic must be a list' },
      { http:format("verify = 1"), 'provider "http_json": setting verify must be true or false, got 1' },
      { 'provider "ndjson" { dir = 5 }', 'provider "ndjson": setting dir must be a string, got 5' },
      { 'provider "csv" { dir = "data", delimiter = 1 }', 'provider "csv": setting delimiter must be a string, got 1' },
      { 'provider "json" { dir = "data", records = {} }', 'provider "json": setting records must be a string, got a table' },
    }) do
      refused({ provider = case[1] }, 2, case[2])
    end
  end)

  it("check reports every sync's wrong setting at once", function()
    helpers.write(dir .. "/job.lua", table.concat({
      'entity "contact" { email = "text" }',
      'local files = provider "ndjson" { dir = "data" }',
      'sync "a" { remote = files "a.ndjson", entity = "contact", mapping = { email = "email" }, id = 5 }',
      'sync "b" { remote = files "b.ndjson", entity = "contact", mapping = { email = "email" }, import = { retry = "no" } }',
    }, "\n") .. "\n")
    local r = helpers.run(dir, { "job.lua", "check" })
    assert.equal(2, r.code, r.stderr)
    assert.matches('job%.lua:3: sync "a": setting id must be a string, got 5', r.stdout .. r.stderr)
    assert.matches('job%.lua:4: sync "b": setting import%.retry must be true or false, got "no"', r.stdout .. r.stderr)
  end)
end)

describe("values as they enter", function()
  local function failures()
    local out = {}
    for _, row in ipairs(S.query(dir, "SELECT key, error FROM entsync_failures ORDER BY key")) do out[row.key] = row.error end
    return out
  end

  it("bad text, numbers that are not finite and ids that are no ids fail their record, named", function()
    import_job()
    helpers.write(dir .. "/data/contacts.ndjson", table.concat({
      '{"id":1,"email":"a@x","name":"fine","age":1}',
      '{"id":2,"email":"b@x","name":"bad\255\254utf","age":2}',
      '{"id":1e400,"email":"c@x","name":"huge id","age":3}',
      '{"id":4,"email":"d@x","name":"raw nul\0byte","age":4}',
      '{"id":5,"email":"e@x","name":"escaped nul \\u0000 byte","age":5}',
      '{"email":"f@x","name":"no id","age":6}',
      '{"id":{"a":1},"email":"g@x","name":"table id","age":7}',
      '{"id":8,"email":"h@x","name":"fine too","age":1e300}',
    }, "\n") .. "\n")
    local r = S.run(dir)
    assert.equal(1, r.code, r.stderr)
    local f = failures()
    assert.matches("invalid UTF%-8", f["@contacts.ndjson:2"])
    assert.matches("number out of range", f["@contacts.ndjson:3"])
    assert.matches("NUL byte", f["@contacts.ndjson:4"])
    assert.not_matches("unexpected end", f["@contacts.ndjson:4"])
    assert.matches('^field name: a NUL byte at byte 13 of "escaped nul \\x00 byte": not text', f["5"])
    local no_id, table_id
    for key, message in pairs(f) do
      if message:find("(got nothing)", 1, true) then no_id = message end
      if message:find("(got a table)", 1, true) then table_id = message end
    end
    assert.equal('record has no usable id in field "id" (got nothing)', no_id)
    assert.equal('record has no usable id in field "id" (got a table)', table_id)
    -- age 1e300 is no integer; the only good records are stored
    assert.matches("^field age: ", f["8"])
    assert.same({ { id = 1, name = "fine" } }, S.query(dir, "SELECT c.id, c.name FROM contact c"))
    assert.matches('contacts 5: field name: a NUL byte at byte 13 of "escaped nul \\x00 byte"', r.stderr, 1, true)
  end)

  it("text columns of CSV input take UTF-8 without NUL bytes, and reals are finite", function()
    helpers.write(dir .. "/data/c.csv", "id,email,name,score\n1,a@x,ok,1.5\n2,b@x,bad\255utf,2\n3,c@x,nul\0here,3\n"
      .. "4,d@x,inf,1e999\n")
    helpers.write(dir .. "/job.lua", table.concat({
      'entity "contact" { email = "text", name = "text", score = "real" }',
      'local csv = provider "csv" { dir = "data" }',
      'sync "contacts" { remote = csv "c.csv", entity = "contact",',
      '  mapping = { email = "email", name = "name", score = "score" }, import = { mode = "full" } }',
    }, "\n") .. "\n")
    local r = S.run(dir)
    assert.equal(1, r.code, r.stderr)
    local f = failures()
    assert.equal('field name: invalid UTF-8 at byte 4 of "bad\\xffutf": not text (UTF-8 without NUL bytes) '
      .. "(job.lua:4)", f["2"])
    assert.matches('^field name: a NUL byte at byte 4 of "nul\\x00here"', f["3"])
    assert.equal('field score: expected real, got "1e999" (job.lua:4)', f["4"])
    assert.same({ { id = 1, name = "ok", score = 1.5 } }, S.query(dir, "SELECT id, name, score FROM contact"))
  end)

  it("rows another program wrote with bad text or infinity fail their export, named", function()
    X.sink_job(dir, "on_change = true")
    assert.equal(0, X.run(dir).code)
    X.sql(dir, "INSERT INTO contact (email, name, age) VALUES ('a@x', CAST(X'626164FF' AS TEXT), 1), "
      .. "('b@x', 'nul' || char(0) || 'x', 2), ('c@x', 'ok', 3), ('d@x', 'x', 9e999)")
    local r = X.run(dir)
    assert.equal(1, r.code, r.stderr)
    local f = X.export_failures(dir)
    assert.matches('field name: invalid UTF%-8 at byte 4 of "bad\\xff"', f[1].error)
    assert.matches('field name: a NUL byte at byte 4 of "nul\\x00x"', f[2].error)
    assert.matches("field age: inf, a number that is not finite", f[4].error)
    local lines = X.sink_lines(dir)
    assert.equal(1, #lines)
    assert.equal("ok", lines[1].record.name)
  end)

  it("an id read twice in a full pass warns naming both records; the later is written, run after run", function()
    import_job()
    S.data(dir, { S.contact(1), S.contact(5, { name = "first" }), S.contact(2), S.contact(5, { name = "second" }) })
    for _ = 1, 3 do
      local r = S.run(dir)
      assert.equal(0, r.code, r.stderr)
      assert.matches('sync "contacts": remote id 5 is in the input twice %(records 2 and 4 read by this run%): the '
        .. "later one is written", r.stderr)
      assert.equal("second", S.value(dir, "SELECT name FROM contact c JOIN entsync_map m ON m.local_id = c.id "
        .. "WHERE m.remote_id = 5"))
    end
    -- once the input is fixed, nothing is said
    S.data(dir, { S.contact(1), S.contact(2), S.contact(5, { name = "second" }) })
    local r = S.run(dir)
    assert.not_matches("twice", r.stderr)
    assert.equal(3, S.value(dir, "SELECT count(*) FROM contact"))
  end)
end)

describe("an id read twice in batches apart", function()
  it("warns with the later record's place and writes it, first import or not", function()
    import_job(nil, { batch = 2 })
    S.data(dir, { S.contact(5, { name = "first" }), S.contact(1), S.contact(2), S.contact(3),
      S.contact(5, { name = "second" }), S.contact(4) })
    for run = 1, 2 do
      local r = S.run(dir)
      assert.equal(0, r.code, r.stderr)
      assert.matches('remote id 5 is in the input twice %(record 5 read by this run, and an earlier one of this '
        .. "pass%): the later one is written", r.stderr, 1)
      assert.equal("second", S.value(dir, "SELECT name FROM contact c JOIN entsync_map m ON m.local_id = c.id "
        .. "WHERE m.remote_id = 5"), "run " .. run)
      assert.equal(5, S.value(dir, "SELECT count(*) FROM contact"))
    end
  end)
end)

describe("log lines", function()
  local hostile = "x\nentsync: info: forged line\27[2J\r\194\155"

  it("escape newlines and control codes in remote ids and values; JSON lines stay JSON", function()
    import_job()
    helpers.write(dir .. "/data/contacts.ndjson",
      require("cjson").encode({ id = hostile, email = "a@x", name = { "not", "text" }, age = 1 }) .. "\n")
    local r = S.run(dir)
    assert.equal(1, r.code, r.stderr)
    assert.matches("^entsync: error: contacts x\\nentsync: info: forged[^\n]*\n$", r.stderr)
    assert.not_matches("[\27\r]", r.stderr)
    assert.not_matches("\194\155", r.stderr)
    assert.matches("x\\nentsync: info: forged line\\x1b[2J\\r\\u{9b}", r.stderr, 1, true)
    local lines = 0
    for _ in r.stderr:gmatch("[^\n]+") do lines = lines + 1 end
    assert.equal(1, lines, r.stderr)
    -- JSON logs: every line one object, the id as it was
    r = helpers.run(dir, { "job.lua", "run", "--log-format", "json" })
    assert.equal(1, r.code, r.stderr)
    local cjson = require "cjson"
    local seen = false
    for l in r.stderr:gmatch("[^\n]+") do
      local entry = cjson.decode(l)
      if entry.remote_id == hostile then seen = true end
    end
    assert.is_true(seen, r.stderr)
    -- the failures listing escapes it too
    r = helpers.run(dir, { "job.lua", "failures", "contacts" })
    assert.matches("^import x\\nentsync: info: forged[^\n]*\n", r.stdout)
    assert.not_matches("\nentsync: info: forged", r.stdout)
    assert.not_matches("[\27\r]", r.stdout)
    -- and so does status
    r = helpers.run(dir, { "job.lua", "status" })
    assert.matches("x\\nentsync: info: forged", r.stdout, 1, true)
    assert.not_matches("\nentsync: info: forged", r.stdout)
    assert.not_matches("[\27\r]", r.stdout)
  end)
end)
