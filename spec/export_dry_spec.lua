-- export --dry-run shows the remote records it would send and sends and
-- writes nothing.

local cjson = require "cjson"
local helpers = require "helpers"
local S = require "import_support"
local X = require "export_support"

describe("export --dry-run", function()
  local dir

  before_each(function()
    dir = helpers.tmpdir()
    helpers.write(dir .. "/job.lua", [[
entity "contact" { email = "text", name = "text" }
local files = provider "ndjson" { dir = "data" }
sync "contacts" { remote = files "in.ndjson", entity = "contact", mapping = { email = "email", name = "name" },
  export = { on_change = true, resource = "sink.ndjson" } }
]])
    S.data(dir, { { id = 1, email = "a@x", name = "A" } }, "in.ndjson")
    assert.equal(0, S.run(dir, "run", "--no-progress").code)
    os.execute(string.format("sqlite3 %s \"INSERT INTO contact (email, name) VALUES ('b@x', 'B')\"",
      helpers.quote(S.db(dir))))
  end)
  after_each(function() helpers.rmdir(dir) end)

  it("prints each record it would send, with create or update, and sends and stores nothing", function()
    local before = helpers.read(S.db(dir))
    local r = S.run(dir, "export", "contacts", "--all", "--dry-run")
    assert.equal(0, r.code, r.stderr)
    local lines = {}
    for line in r.stdout:gmatch("[^\n]+") do lines[#lines + 1] = line end
    assert.equal(3, #lines)
    local first, second = cjson.decode(lines[1]), cjson.decode(lines[2])
    -- the remote id keeps its JSON type: the file's id 1 is an integer
    assert.same({ "update", 1, "A" }, { first.operation, first.remote_id, first.record.name })
    assert.matches('"remote_id":1[,}]', lines[1])
    assert.same({ "create", "B" }, { second.operation, second.record.name })
    assert.matches("would export 2", lines[3], 1, true)
    assert.is_false(S.exists(dir .. "/data/sink.ndjson"))
    -- B's insert still waits for the drain
    local pending = X.outbox(dir)
    assert.equal(1, #pending)
    assert.same({ "contact", 2, "upsert" }, { pending[1].entity, pending[1].local_id, pending[1].operation })
    assert.equal(before, helpers.read(S.db(dir)))
  end)
end)
