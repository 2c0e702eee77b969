-- entsync.redis on the loop, against a real redis-server: commands and
-- replies of every shape, the stream commands the queue provider uses,
-- a blocking read that blocks only its own task (the loop waits on the
-- socket, it does not spin), and failures named as queue errors.

local errors = require "entsync.errors"
local loop = require "entsync.loop"
local redis = require "entsync.redis"
local R = require "redis_support"

describe("entsync.redis", function()
  local server
  setup(function() server = R.start() end)
  teardown(function() if server then server.stop() end end)
  before_each(function() server.cli("FLUSHALL") end)

  local function client() return redis.connect { host = "127.0.0.1", port = server.port, timeout = 5 } end

  it("sends commands and reads replies of every shape", function()
    local r = client()
    assert.equals("PONG", r:call("PING"))
    assert.equals("OK", r:call("SET", "k", "v\0binary"))
    assert.equals("v\0binary", r:call("GET", "k"))
    assert.equals(false, r:call("GET", "missing"))
    assert.equals(3, r:call("RPUSH", "list", "a", 2, "c"))
    assert.same({ "a", "2", "c" }, r:call("LRANGE", "list", 0, -1))
    assert.equals("v\0binary", server.cli("GET", "k"):gsub("\\x00", "\0"))
    r:close()
  end)

  it("raises an error reply as a queue error naming the server and the command", function()
    local r = client()
    local ok, err = pcall(r.call, r, "NOSUCHCOMMAND", "x")
    assert.is_false(ok)
    assert.is_true(errors.is(err, "queue"))
    assert.matches("redis 127.0.0.1:" .. server.port .. ": NOSUCHCOMMAND: ERR unknown command", err.message)
    -- the connection stays usable
    assert.equals("PONG", r:call("PING"))
    r:close()
  end)

  it("sends a command of thousands of arguments, numbers among them", function()
    local r = client()
    local command = { "RPUSH", "big" }
    for i = 1, 5000 do command[#command + 1] = i % 2 == 0 and i or ("v" .. i) end
    assert.equals(5000, r:call(table.unpack(command)))
    local back = r:call("LRANGE", "big", 0, -1)
    assert.equals(5000, #back)
    assert.equals("4", back[4])
    assert.equals("v4999", back[4999])
    r:close()
  end)

  -- A command's arguments stay on the C function's stack while hiredis
  -- formats them; a coroutine's small stack must grow first (it did not:
  -- the daemon's heap was corrupted by the XACK of a large batch).
  it("keeps a command of thousands of arguments within the stack of a fresh coroutine", function()
    local helpers = require "helpers"
    local script = os.tmpname()
    helpers.write(script, string.format([[
local core = require "entsync.core"
for _ = 1, 50 do
  local conn = core.redis.connect("127.0.0.1", %d)
  local big = { "RPUSH", "big" }
  for i = 1, 3000 do big[#big + 1] = i end
  coroutine.wrap(function() assert(conn:append(big)) end)()
  conn:close()
  collectgarbage()
end
print("ok")
]], server.port))
    -- the child is entsync-run itself, so under make asan it is the
    -- sanitized one (a stock lua5.4 cannot load a sanitized entsync.core)
    local pipe = io.popen(string.format("%s --script %s 2>&1", helpers.quote(helpers.bin), helpers.quote(script)))
    local out = pipe:read("a")
    local ok = pipe:close()
    os.remove(script)
    assert.equals("ok\n", out)
    assert.is_true(ok)
  end)

  it("pipelines commands, an error reply in its place", function()
    local r = client()
    local replies = r:pipeline({ "SET", "a", "1" }, { "INCR", "a" }, { "LPUSH", "a", "x" }, { "GET", "a" })
    assert.equals("OK", replies[1])
    assert.equals(2, replies[2])
    assert.matches("WRONGTYPE", replies[3].error)
    assert.equals("2", replies[4])
    r:close()
  end)

  it("runs the stream commands of a consumer group", function()
    local r = client()
    assert.equals("OK", r:call("XGROUP", "CREATE", "s", "g", "0", "MKSTREAM"))
    local id1 = r:call("XADD", "s", "*", "id", "1", "op", "upsert")
    local id2 = r:call("XADD", "s", "*", "id", "2", "op", "delete")
    local got = r:call("XREADGROUP", "GROUP", "g", "c1", "COUNT", 10, "STREAMS", "s", ">")
    assert.equals("s", got[1][1])
    local entries = redis.entries(got[1][2])
    assert.same({ id = id1, fields = { id = "1", op = "upsert" } }, entries[1])
    assert.same({ id = id2, fields = { id = "2", op = "delete" } }, entries[2])
    assert.equals(1, r:call("XACK", "s", "g", id1))
    -- the second is pending for c1; c2 claims it once idle
    local claimed = r:call("XAUTOCLAIM", "s", "g", "c2", 0, "0-0", "COUNT", 10)
    assert.same({ id2 }, { redis.entries(claimed[2])[1].id })
    local pending = r:call("XPENDING", "s", "g", "-", "+", 10)
    assert.equals(id2, pending[1][1])
    assert.equals("c2", pending[1][2])
    assert.equals(2, pending[1][4]) -- delivered twice
    r:close()
  end)

  it("blocks only the task that reads; the loop waits on the socket", function()
    local r, w = client(), client()
    r:call("XGROUP", "CREATE", "s", "g", "$", "MKSTREAM")
    local before = loop.stats()
    local got, other_ran
    loop.run(function()
      local reader = loop.spawn(function()
        got = r:call_blocking(5, "XREADGROUP", "GROUP", "g", "c", "BLOCK", 5000, "STREAMS", "s", ">")
      end)
      loop.spawn(function() other_ran = true end)
      loop.sleep(0.2)
      w:call("XADD", "s", "*", "id", "9")
      assert.is_true(reader:wait())
    end)
    assert.is_true(other_ran)
    assert.equals("9", redis.fields(got[1][2][1][2]).id)
    -- a handful of waits, not a spin over 0.2 s
    assert.is_true(loop.stats().waits - before.waits < 50)
    r:close()
    w:close()
  end)

  it("gives the nil reply of a blocking read that timed out as false", function()
    local r = client()
    r:call("XGROUP", "CREATE", "s", "g", "$", "MKSTREAM")
    assert.equals(false, r:call_blocking(1, "XREADGROUP", "GROUP", "g", "c", "BLOCK", 50, "STREAMS", "s", ">"))
    r:close()
  end)

  it("fails a refused connection as a queue error, and reconnects after a failure", function()
    local dead = redis.connect { host = "127.0.0.1", port = 1, timeout = 2 }
    local ok, err = pcall(dead.call, dead, "PING")
    assert.is_false(ok)
    assert.is_true(errors.is(err, "queue"))
    assert.matches("redis 127.0.0.1:1: connect: redis: cannot connect: Connection refused", err.message)
    local r = client()
    assert.equals("PONG", r:call("PING"))
    server.cli("CLIENT", "KILL", "TYPE", "normal")
    local failed = pcall(r.call, r, "PING")
    assert.is_false(failed)
    assert.equals("PONG", r:call("PING"))
    r:close()
  end)

  it("drops a connection left mid-command by a cancelled task", function()
    local r = client()
    r:call("XGROUP", "CREATE", "s", "g", "$", "MKSTREAM")
    loop.run(function()
      local reader = loop.spawn(function()
        r:call_blocking(5, "XREADGROUP", "GROUP", "g", "c", "BLOCK", 5000, "STREAMS", "s", ">")
      end)
      loop.sleep(0.05)
      reader:cancel()
    end)
    -- the reply of the cancelled read is not taken for this one
    assert.equals("PONG", r:call("PING"))
    r:close()
  end)

  it("parses redis:// URLs", function()
    assert.same({ "127.0.0.1", 6380 }, { redis.parse_url("redis://127.0.0.1:6380") })
    assert.same({ "queue.local", 6379 }, { redis.parse_url("redis://queue.local/") })
    assert.is_nil(redis.parse_url("http://x:1"))
  end)
end)
