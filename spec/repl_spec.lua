-- The REPL through a pipe (stdin from a file) and through -e, once through
-- a pseudo-terminal: every helper, errors that leave the session going,
-- multi-line input, reload, and a store that dry helpers leave alone.

local helpers = require "helpers"
local S = require "import_support"
local X = require "export_support"

local RECORDS = { S.contact(1), S.contact(2), S.contact(3) }

local JOB = [[
entity "contact" { email = "text", name = "text", age = "integer" }
local files = provider "ndjson" { dir = "data" }
sync "contacts" { remote = files "contacts.ndjson", entity = "contact",
  mapping = { email = "email", name = "name", age = "age" },
  import = { mode = "full" }, export = { resource = "sink.ndjson" } }
]]

-- The job after an edit: the mapping upper-cases names and a second sync
-- appears.
local JOB2 = [[
entity "contact" { email = "text", name = "text", age = "integer" }
local files = provider "ndjson" { dir = "data" }
sync "contacts" { remote = files "contacts.ndjson", entity = "contact",
  mapping = { email = "email", name = { "name", import = function(v) return v:upper() end }, age = "age" },
  import = { mode = "full" }, export = { resource = "sink.ndjson" } }
sync "extra" { remote = files "contacts.ndjson", entity = "contact", mapping = { email = "email" } }
]]

local dirs = {}

local function newdir()
  local d = helpers.tmpdir()
  dirs[#dirs + 1] = d
  helpers.write(d .. "/job.lua", JOB)
  S.data(d, RECORDS)
  return d
end

after_each(function()
  for _, d in ipairs(dirs) do helpers.rmdir(d) end
  dirs = {}
end)

-- Runs `entsync-run job.lua repl ARGS` in dir with `input` on stdin (a
-- file, so not a terminal); HOME is the temp dir so no history is touched.
local function repl(dir, input, args)
  local inp, out, err = os.tmpname(), os.tmpname(), os.tmpname()
  helpers.write(inp, input or "")
  local parts = {}
  for i, a in ipairs(args or {}) do parts[i] = helpers.quote(a) end
  local cmd = string.format("cd %s && HOME=%s %s job.lua repl %s <%s >%s 2>%s", helpers.quote(dir),
    helpers.quote(dir), helpers.quote(helpers.bin), table.concat(parts, " "), inp, out, err)
  local _, _, code = os.execute(cmd)
  local r = { code = code, stdout = helpers.read(out) or "", stderr = helpers.read(err) or "" }
  os.remove(inp)
  os.remove(out)
  os.remove(err)
  return r
end

local function lines(text)
  local out = {}
  for line in text:gmatch("[^\n]*") do out[#out + 1] = line end
  if out[#out] == "" then out[#out] = nil end
  return out
end

local function has(text, needle)
  return text:find(needle, 1, true) ~= nil
end

describe("repl", function()
  it("fetch prints the raw remote record; an unknown id is an error and the session goes on", function()
    local d = newdir()
    local r = repl(d, 'fetch("contacts", 2)\nfetch("contacts", 99)\n"after"\n')
    assert.equal(0, r.code, r.stderr)
    local out = lines(r.stdout)
    assert.equal('{ age = 22, email = "c2@example.com", id = 2, name = "Contact 2" }', out[1])
    assert.is_truthy(has(r.stdout, "99: not found"), r.stdout)
    -- one line, no traceback
    assert.equal("error: contacts 99: not found", out[2])
    assert.is_falsy(has(r.stdout, "stack traceback"), r.stdout)
    assert.equal('"after"', out[#out])
  end)

  it("map shows the local entities a record maps to, from an id or a table, and writes nothing", function()
    local d = newdir()
    local r = repl(d, 'map("contacts", 2)\nmap("contacts", { id = 7, email = "e@x", name = "N", age = "33" })\n')
    assert.equal(0, r.code, r.stderr)
    local out = lines(r.stdout)
    assert.equal('{ contact = { age = 22, email = "c2@example.com", name = "Contact 2" } }', out[1])
    assert.equal('{ contact = { age = 33, email = "e@x", name = "N" } }', out[2])
    assert.equal(0, S.count(d, "contact"))
    assert.equal(0, S.count(d, "entsync_idmap"))
  end)

  it("import with dry = true leaves the store unchanged; without it writes", function()
    local d = newdir()
    -- the store exists (the repl opened it) and every write to it is audited
    assert.equal(0, repl(d, "", { "-e", "1" }).code)
    S.audit(d)
    local r = repl(d, table.concat({
      'import("contacts", 2, { dry = true })',
      'sql "SELECT count(*) AS n FROM contact"',
    }, "\n") .. "\n")
    assert.equal(0, r.code, r.stderr)
    local out = lines(r.stdout)
    assert.is_truthy(out[1]:match("^\"created.*dry"), r.stdout)
    assert.same({ "n", "-", "0" }, { out[2], out[3], out[4] })
    assert.same({}, S.audited(d))
    assert.equal(0, S.count(d, "contact"))
    assert.equal(0, S.count(d, "entsync_idmap"))
    assert.equal(0, S.count(d, "entsync_changes"))

    r = repl(d, 'import("contacts", 2)\nsql "SELECT email, name FROM contact"\nimport("contacts", 2, { dry = true })\n')
    assert.equal(0, r.code, r.stderr)
    out = lines(r.stdout)
    assert.equal('"created"', out[1])
    assert.is_truthy(has(r.stdout, "c2@example.com  Contact 2"), r.stdout)
    assert.is_truthy(out[#out]:match("^\"unchanged"), r.stdout)
    assert.same({ [2] = "c2@example.com|Contact 2|22" }, S.contacts(d))
    -- an import's own writes are not queued for its own export
    assert.same({}, X.outbox(d))
  end)

  it("export with dry = true returns the remote record and sends nothing", function()
    local d = newdir()
    assert.equal(0, S.run(d, "run", "--no-progress").code)
    local before = S.dump(d)
    local r = repl(d, 'e = export("contacts", 1, { dry = true })\ne.remote_id\ne.record\n'
      .. 'export("contacts", 1, { dry = true })\n')
    assert.equal(0, r.code, r.stderr)
    local out = lines(r.stdout)
    assert.equal('1', out[1]) -- the remote id keeps its JSON type
    assert.equal('{ age = 21, email = "c1@example.com", name = "Contact 1" }', out[2])
    assert.is_truthy(has(r.stdout, 'remote_id = 1'), r.stdout)
    assert.is_nil(helpers.read(d .. "/data/sink.ndjson"))
    assert.equal(before, S.dump(d))
  end)

  it("export with dry = true of a local id that does not exist is an error naming it", function()
    local d = newdir()
    assert.equal(0, S.run(d, "run", "--no-progress").code)
    local r = repl(d, 'export("contacts", 999, { dry = true })\n"after"\n')
    assert.equal(0, r.code, r.stderr)
    local out = lines(r.stdout)
    assert.equal('"after"', out[#out])
    assert.is_truthy(has(r.stdout, "999"), "no error for a missing local id:\n" .. r.stdout)
    assert.is_truthy(has(r.stdout, "does not exist"), "no error for a missing local id:\n" .. r.stdout)
  end)

  it("state shows the last run, the id map count, failures, outbox and lock of a sync", function()
    local d = newdir()
    assert.equal(0, S.run(d, "run", "--no-progress").code)
    local r = repl(d, table.concat({
      's = state("contacts")',
      "s.last_run.status",
      "s.last_run.created",
      "s.mapped",
      "#s.failures",
      "s.outbox",
      "s.lock",
      'state("contacts")',
    }, "\n") .. "\n")
    assert.equal(0, r.code, r.stderr)
    local out = lines(r.stdout)
    assert.same({ '"ok"', "3", "3", "0", "0", "nil" }, { out[1], out[2], out[3], out[4], out[5], out[6] })
    assert.is_truthy(has(r.stdout, "last_run = {"), r.stdout)
    assert.is_truthy(has(r.stdout, "mapped = 3"), r.stdout)
  end)

  it("sql prints what the sqlite3 shell prints: the columns in their order, headers, change counts", function()
    local d = newdir()
    assert.equal(0, S.run(d, "run", "--no-progress").code)
    helpers.sqlite3(d .. "/entsync.db", "UPDATE contact SET age = NULL WHERE id = 2; UPDATE contact SET name = 'Zoë' "
      .. "WHERE id = 3")
    local queries = {
      "SELECT name, id, email FROM contact ORDER BY id",
      "SELECT age, id, age * 1.5 AS half FROM contact ORDER BY id DESC",
      "SELECT * FROM contact WHERE id > 100",
    }
    local input = {}
    for _, q in ipairs(queries) do input[#input + 1] = string.format("sql %q", q) end
    input[#input + 1] = 'sql("SELECT name FROM contact WHERE id = ?1", 2)'
    input[#input + 1] = 'sql "UPDATE contact SET age = 40 WHERE id >= 2"'
    input[#input + 1] = 'sql "SELECT nosuch FROM contact"'
    input[#input + 1] = '"after"'
    -- the shell's own output for the same queries, byte for byte
    local expected = {}
    for _, q in ipairs(queries) do
      local pipe = io.popen(string.format("sqlite3 -header -column %s %s", helpers.quote(d .. "/entsync.db"),
        helpers.quote(q)))
      expected[#expected + 1] = pipe:read("a")
      pipe:close()
    end
    local r = repl(d, table.concat(input, "\n") .. "\n")
    assert.equal(0, r.code, r.stderr)
    local want = table.concat(expected) .. "name     \n---------\nContact 2\n"
    assert.equal(want, r.stdout:sub(1, #want))
    -- the write's counts, as `.changes on` shows them (the capture
    -- triggers' rows count in the connection's total)
    assert.matches("^changes: 2   total_changes: %d+\n", r.stdout:sub(#want + 1))
    assert.is_truthy(expected[1]:find("Zoë", 1, true), expected[1])
    local out = lines(r.stdout)
    assert.is_truthy(out[#out - 1]:match("^error: .*no such column: nosuch"), r.stdout)
    assert.equal('"after"', out[#out])
    assert.same({ { age = 21 }, { age = 40 }, { age = 40 } },
      helpers.query(d .. "/entsync.db", "SELECT age FROM contact ORDER BY id"))
  end)

  it("reload picks up an edited job and its mapping, and keeps the old job when the edit is broken", function()
    local d = newdir()
    helpers.write(d .. "/job2.lua", JOB2)
    helpers.write(d .. "/broken.lua", JOB2 .. 'sync "contacts" {\n')
    local r = repl(d, table.concat({
      "syncs.extra == nil",
      'map("contacts", 1).contact.name',
      'assert(os.execute("cp job2.lua job.lua"))',
      "reload()",
      "syncs.extra ~= nil",
      'map("contacts", 1).contact.name',
      'assert(os.execute("cp broken.lua job.lua"))',
      "reload()",
      "syncs.extra ~= nil",
      'map("contacts", 1).contact.name',
    }, "\n") .. "\n")
    assert.equal(0, r.code, r.stderr)
    local out = lines(r.stdout)
    assert.equal("true", out[1])
    assert.equal('"Contact 1"', out[2])
    assert.is_truthy(has(r.stdout, '"reloaded job.lua"'), r.stdout)
    local after_reload = {}
    for i, line in ipairs(out) do
      if line == '"reloaded job.lua"' then after_reload = { table.unpack(out, i + 1) } break end
    end
    assert.equal("true", after_reload[1], r.stdout)
    assert.equal('"CONTACT 1"', after_reload[2], r.stdout)
    -- the broken edit: an error naming the file and line, the old job stays
    assert.is_truthy(r.stdout:match("job%.lua:%d+:"), r.stdout)
    assert.equal('"CONTACT 1"', out[#out], r.stdout)
    assert.equal("true", out[#out - 1], r.stdout)
  end)

  it("help lists the helpers", function()
    local d = newdir()
    local r = repl(d, "help()\n")
    assert.equal(0, r.code, r.stderr)
    for _, name in ipairs({ "fetch(", "map(", "import(", "export(", "state(", "sql", "reload(", "help(",
        "syncs", "entities", "providers", "store" }) do
      assert.is_truthy(has(r.stdout, name), name .. " missing from help:\n" .. r.stdout)
    end
  end)

  it("has the job's syncs, entities, providers and store by name; prints values pretty", function()
    local d = newdir()
    local r = repl(d, table.concat({
      "syncs.contacts.name",
      "entities.contact.name",
      "#providers",
      'store:rows("SELECT count(*) AS n FROM contact")[1].n',
      '({ b = { 1, 2 }, a = "x" })',
      "=1 + 1",
      "return 1, nil, 3",
    }, "\n") .. "\n")
    assert.equal(0, r.code, r.stderr)
    assert.same({ '"contacts"', '"contact"', "1", "0", '{ a = "x", b = { 1, 2 } }', "2", "1", "nil", "3" },
      lines(r.stdout))
  end)

  it("shows an error as one line and goes on; --verbose adds the traceback", function()
    local d = newdir()
    local input = 'nosuch()\nfetch("nope", 1)\nerror("boom")\nstate("contacts").nope.x\n1 + 1\n'
    local r = repl(d, input)
    assert.equal(0, r.code, r.stderr)
    assert.same({
      "error: repl:1: attempt to call a nil value (global 'nosuch')",
      'error: no sync named "nope" (declared: contacts)',
      "error: repl:1: boom",
      "error: repl:1: attempt to index a nil value (field 'nope')",
      "2",
    }, lines(r.stdout))
    r = repl(d, input, { "--verbose" })
    assert.equal(0, r.code, r.stderr)
    assert.is_truthy(has(r.stdout, "stack traceback"), r.stdout)
    assert.equal("2", lines(r.stdout)[#lines(r.stdout)])
  end)

  it("continues a statement over several lines", function()
    local d = newdir()
    local r = repl(d, table.concat({
      "function f()",
      "  return 40 + 2",
      "end",
      "f()",
      "t = {",
      "  1, 2,",
      "  3 }",
      "#t",
      "function g()",
      '  error("inner")',
      "end",
      "g()",
      "f() + 1",
    }, "\n") .. "\n")
    assert.equal(0, r.code, r.stderr)
    local out = lines(r.stdout)
    assert.equal("42", out[1])
    assert.equal("3", out[2])
    assert.is_truthy(has(r.stdout, "repl:2: inner"), r.stdout)
    assert.equal("43", out[#out])
  end)

  it("-e prints the value and exits 0; a failing -e exits non-zero", function()
    local d = newdir()
    local r = repl(d, "", { "-e", 'fetch("contacts", 1).email' })
    assert.equal(0, r.code, r.stdout .. r.stderr)
    assert.equal('"c1@example.com"\n', r.stdout)
    r = repl(d, "", { "-e", "1 + 2" })
    assert.equal(0, r.code)
    assert.equal("3\n", r.stdout)
    r = repl(d, "", { "-e", 'error("boom")' })
    assert.is_true(r.code ~= 0, "exit 0 after an error")
    assert.is_truthy(has(r.stdout .. r.stderr, "boom"))
    r = repl(d, "", { "-e", 'fetch("contacts", 99)' })
    assert.is_true(r.code ~= 0)
    r = repl(d, "", { "-e", "return +" })
    assert.is_true(r.code ~= 0)
    assert.is_truthy(has(r.stdout .. r.stderr, "unexpected symbol"), r.stdout .. r.stderr)
    -- stdin is not read with -e
    r = repl(d, "error('read stdin')\n", { "-e", '"only this"' })
    assert.equal(0, r.code)
    assert.equal('"only this"\n', r.stdout)
  end)

  -- Once through a pseudo-terminal (readline): the banner and prompt
  -- appear, a line is evaluated, end of input ends the session with 0.
  it("shows a prompt and evaluates a line on a terminal", function()
    local has_python = os.execute("python3 -c 'import pty, select' >/dev/null 2>&1")
    if not has_python then
      pending("python3 with pty is not available")
      return
    end
    local d = newdir()
    local driver = d .. "/tty_driver.py"
    helpers.write(driver, [[
import os, pty, select, sys, time
bin, job = sys.argv[1], sys.argv[2]
pid, fd = pty.fork()
if pid == 0:
    os.execv(bin, [bin, job, "repl"])
buf = b""
def until(needle, timeout=20.0):  # a sanitized build starts slowly
    global buf
    end = time.time() + timeout
    while needle not in buf and time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return needle in buf
prompt = until(b"> ")
os.write(fd, b"20 + 22\n")
answer = until(b"42\r\n")
# End of input only once the next prompt is up: typed ahead while the
# terminal is set up for the next line, it can be dropped.
end = time.time() + 20
while answer and b"> " not in buf.split(b"42\r\n", 1)[1] and time.time() < end:
    until(b"\x00", 0.05)
os.write(fd, b"\x04")
end = time.time() + 20
next_eof = time.time() + 5
status = None
while time.time() < end:
    done, st = os.waitpid(pid, os.WNOHANG)
    if done:
        status = os.waitstatus_to_exitcode(st)
        break
    if time.time() > next_eof:
        os.write(fd, b"\x04")
        next_eof = time.time() + 5
    until(b"\x00", 0.05)
if status is None:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
print("prompt=%s answer=%s status=%s" % (prompt, answer, status))
print(repr(buf))
]])
    local pipe = io.popen(string.format("cd %s && HOME=%s timeout 60 python3 %s %s job.lua 2>&1", helpers.quote(d),
      helpers.quote(d), helpers.quote(driver), helpers.quote(helpers.bin)))
    local output = pipe:read("a")
    pipe:close()
    assert.is_truthy(has(output, "prompt=True answer=True status=0"), output)
    assert.is_truthy(has(output, "repl: job.lua"), output)
    -- the line went into the history file under HOME
    assert.is_truthy(has(helpers.read(d .. "/.entsync_history") or "", "20 + 22"))
  end)
end)

-- On a terminal (a pty): Tab completion, Ctrl-C, and the live objects.
describe("repl on a terminal", function()
  local function pty(d, steps)
    local cjson = require "cjson"
    local pipe = io.popen(string.format("HOME=%s python3 %s %s --cwd %s --timeout 20 -- %s job.lua repl",
      helpers.quote(d), helpers.quote(helpers.root .. "/spec/support/pty_run.py"), helpers.quote(cjson.encode(steps)),
      helpers.quote(d), helpers.quote(helpers.bin)))
    local result = cjson.decode(pipe:read("a"))
    pipe:close()
    return result
  end

  it("completes globals, fields, sync names inside a helper's string, and names inside sql", function()
    local d = newdir()
    local result = pty(d, {
      { expect = "> " },
      { send = "syncs.con\t.ent\t\n" }, { expect = '{ "contact" }' },
      { expect = "> " },
      { send = 'fetch("con\t, 2).name\n' }, { expect = '"Contact 2"' },
      { expect = "> " },
      { send = "stat\t" }, { expect = "state" }, { send = '("contacts").mapped\n' }, { expect = "0" },
      { expect = "> " },
      { send = 'sql "SELECT count(*) AS n FROM cont\t"\n' }, { expect = "n\r\n-\r\n0" },
      { expect = "> " },
      -- store:ro completes to store:row (rows too): an s makes it rows
      { send = "store:ro\t" }, { sleep = 0.2 }, { send = 's("SELECT 7 * 6 AS x")[1].x\n' }, { expect = "42" },
    })
    assert.is_true(result.ok, result.output)
    assert.equal(0, result.status, result.output)
    assert.matches('fetch("contacts", 2).name', result.output, 1, true)
    assert.matches("syncs.contacts.entities", result.output, 1, true)
  end)

  it("Ctrl-C drops the line being typed, and stops what is being evaluated; the session goes on", function()
    local d = newdir()
    local result = pty(d, {
      { expect = "> " },
      { send = "this is not lua" }, { sleep = 0.2 }, { send = "\3" },
      { expect = "> " },
      { send = "function f()\n" }, { expect = ">> " }, { send = "\3" }, { expect = "> " },
      { send = "require('entsync.loop').sleep(30)\n" }, { sleep = 0.5 }, { signal = "INT" },
      { expect = "interrupted" },
      { expect = "> " },
      { send = "40 + 2\n" }, { expect = "42" },
    })
    assert.is_true(result.ok, result.output)
    assert.equal(0, result.status, result.output)
    assert.is_nil(result.output:find("unexpected symbol", 1, true), result.output)
  end)

  it("provider(sync) is the live provider object; reload() reads the providers' code again", function()
    local d = newdir()
    helpers.write(d .. "/providers/tagged.lua", [[
local ndjson = require "providers.ndjson"
return { new = function(config, ctx)
  local p = ndjson.new(config, ctx)
  p.marker = "one"
  return p
end }
]])
    helpers.write(d .. "/job.lua", (JOB:gsub('provider "ndjson"', 'provider "tagged"')))
    local r = repl(d, table.concat({
      'provider("contacts").marker',
      'provider("contacts"):get("contacts.ndjson", 3).name',
      '(assert(os.execute("sed -i s/one/two/ providers/tagged.lua")))',
      "reload()",
      'provider("contacts").marker',
      'provider("nope")',
    }, "\n") .. "\n")
    assert.equal(0, r.code, r.stderr)
    assert.same({ '"one"', '"Contact 3"', "true", '"reloaded job.lua"', '"two"',
      'error: no sync named "nope" (declared: contacts)' }, lines(r.stdout))
  end)
end)
