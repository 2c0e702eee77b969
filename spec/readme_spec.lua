-- The README's first-job walkthrough, run as written: the block between
-- <!-- walkthrough --> and <!-- /walkthrough --> goes to sh -e line for
-- line, from a copy of the tree's top where bin/entsync-run is the binary
-- under test (the walkthrough's own `export PATH="$PWD/bin:$PATH"` finds
-- it), with its /tmp/first-job moved into a temp dir. Every command must
-- succeed and say what the README says it says.

local helpers = require "helpers"

describe("the README walkthrough", function()
  it("runs as written and does what its comments say", function()
    local readme = helpers.read(helpers.root .. "/README.md")
    local block = readme:match("<!%-%- walkthrough %-%->\n```sh\n(.-)```\n<!%-%- /walkthrough %-%->")
    assert.is_truthy(block, "no walkthrough block in README.md")
    local top = helpers.tmpdir()
    local work = top .. "/first-job"
    -- the top of a clone: bin/entsync-run (the binary under test)
    os.execute(string.format("mkdir -p %s/bin && ln -s %s %s/bin/entsync-run", helpers.quote(top),
      helpers.quote(helpers.bin), helpers.quote(top)))
    local script = block:gsub("/tmp/first%-job", work)
    helpers.write(top .. "/walkthrough.sh", "set -e\n" .. script)
    local pipe = io.popen(string.format("cd %s && HOME=%s sh -x walkthrough.sh 2>&1; echo \"rc=$?\"",
      helpers.quote(top), helpers.quote(top)))
    local out = pipe:read("a")
    pipe:close()
    assert.matches("rc=0\n$", out, 1, false)
    -- what the comments promise
    assert.matches("job job.lua: ok", out, 1, true)
    assert.matches("people: 2 created, 0 updated, 0 unchanged, 0 stale, 0 failed, 0 deleted", out, 1, true)
    assert.matches("id  active  email            name", out, 1, true)
    assert.matches('people local person 1 (remote 1): would update', out, 1, true)
    assert.matches('email: "ann@new.example.com"', out, 1, true)
    assert.matches("people: would export 0 created, 1 updated", out, 1, true)
    assert.matches("people: exported 0 created, 1 updated, 0 deleted", out, 1, true)
    assert.matches('"ann@new.example.com"', helpers.read(work .. "/data/changes.ndjson"), 1, true)
    assert.matches("\nsync people: ndjson \"people.ndjson\" %-> person, full, deletes keep\n", out)
    assert.matches("#%d+%s+%S+%s+people%s+outbox%s+export%s+ok", out)
    helpers.rmdir(top)
  end)
end)
