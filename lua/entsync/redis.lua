-- entsync.redis: a Redis client on entsync's loop.
--
--   local redis = require "entsync.redis"
--   local r = redis.connect { host = "127.0.0.1", port = 6379 }
--   r:call("XADD", "orders", "*", "id", "7", "op", "upsert")   -- -> "1700000000000-0"
--   local replies = r:pipeline({ "XACK", "orders", "g", id }, { "XLEN", "orders" })
--   r:close()
--
-- The connection is core.redis's non-blocking hiredis context
-- (src/redis.c): a command is queued and written, and between the socket
-- taking it and the reply arriving the calling task waits on the
-- descriptor (loop.wait_fd), so other tasks run meanwhile and a blocking
-- command (XREADGROUP ... BLOCK) blocks only its caller. One command (or
-- pipeline) is on a connection at a time: callers take turns. A reply is a
-- string, an integer, false (the nil reply) or a list; an error reply
-- raises from call() and is { error = message } inside a pipeline's list.
--
-- Failures raise entsync errors of kind "queue" naming the server
-- (host:port) and the command; a connection that failed, timed out or was
-- left mid-command (a cancelled task) is closed and opened again by the
-- next call.

local core = require "entsync.core"
local errors = require "entsync.errors"
local loop = require "entsync.loop"

local M = {}

local Client = {}
Client.__index = Client

-- parse_url("redis://host:port/") -> host, port (nil when it is no such URL)
function M.parse_url(url)
  local host, port = tostring(url):match("^redis://%[?([^/%]]-)%]?:(%d+)/?$")
  if not host then
    host = tostring(url):match("^redis://([^/:]+)/?$")
    port = host and "6379"
  end
  if not host or host == "" then return nil end
  return host, math.tointeger(tonumber(port))
end

-- connect{ host, port, timeout } -> client. Nothing is sent until the
-- first call; the connection is made then (and again after a failure).
function M.connect(options)
  return setmetatable({ host = options.host or "127.0.0.1", port = options.port or 6379,
    timeout = options.timeout or 10, turn = loop.semaphore(1) }, Client)
end

function Client:where()
  return string.format("redis %s:%d", self.host, self.port)
end

function Client:fail(what, message)
  self:drop()
  errors.raise("queue", string.format("%s: %s: %s", self:where(), what, tostring(message)))
end

-- Drops the connection (the next call makes a new one).
function Client:drop()
  if self.conn then self.conn:close() end
  self.conn = nil
end

function Client:close()
  self:drop()
end

-- Waits until the connection's descriptor is ready for mode, or fails
-- the call after timeout seconds.
function Client:wait(mode, deadline, what)
  local left = deadline - loop.now()
  if left <= 0 or not loop.wait_fd(self.conn:fd(), mode, left) then
    self:fail(what, string.format("no answer within %g s", self.timeout))
  end
end

function Client:open(deadline)
  local conn, problem = core.redis.connect(self.host, self.port)
  if not conn then self:fail("connect", problem) end
  self.conn = conn
  self:wait("w", deadline, "connect")
  local ok, why = conn:connected()
  if not ok then self:fail("connect", why) end
end

-- Sends the commands and collects one reply each, waiting on the socket.
function Client:exchange(commands, extra_wait, what)
  local deadline = loop.now() + self.timeout + (extra_wait or 0)
  if not self.conn then self:open(deadline) end
  local conn = self.conn
  for _, command in ipairs(commands) do
    local ok, problem = conn:append(command)
    if not ok then self:fail(what, problem) end
  end
  while true do
    local done, problem = conn:write()
    if done == nil then self:fail(what, problem) end
    if done then break end
    self:wait("w", deadline, what)
  end
  local replies = {}
  while #replies < #commands do
    local got, value = conn:reply()
    if got == nil then self:fail(what, value) end
    if got then
      replies[#replies + 1] = value
    else
      -- more of a long reply is often there already: wait only when not
      local read, came = conn:read()
      if not read then self:fail(what, came) end
      if not came then
        self:wait("r", deadline, what)
        read, came = conn:read()
        if not read then self:fail(what, came) end
      end
    end
  end
  return replies
end

-- A call left mid-way (an error, a cancelled task) leaves the protocol
-- out of step: the connection is dropped then.
local function guarded(self, commands, extra_wait)
  self.turn:acquire()
  local finished = false
  local _ <close> = setmetatable({}, { __close = function()
    if not finished then self:drop() end
    self.turn:release()
  end })
  local replies = self:exchange(commands, extra_wait, tostring(commands[1][1]))
  finished = true
  return replies
end

local function checked(self, reply, name)
  if type(reply) == "table" and reply.error then
    errors.raise("queue", string.format("%s: %s: %s", self:where(), tostring(name), reply.error))
  end
  return reply
end

-- call(name, ...) -> the reply; an error reply raises.
function Client:call(...)
  return checked(self, guarded(self, { { ... } })[1], (...))
end

-- call_blocking(seconds, name, ...): a command that the server holds up
-- to seconds (BLOCK), allowed that much more time.
function Client:call_blocking(seconds, ...)
  return checked(self, guarded(self, { { ... } }, seconds)[1], (...))
end

-- pipeline(command, ...) -> { reply, ... }: the commands written at once,
-- their replies in order (an error reply as { error = message }).
function Client:pipeline(...)
  local commands = { ... }
  if #commands == 0 then return {} end
  return guarded(self, commands)
end

-- Helpers for stream replies -------------------------------------------------------

-- fields({ k1, v1, k2, v2 }) -> { k1 = v1, k2 = v2 }
function M.fields(list)
  local t = {}
  if type(list) ~= "table" then return t end
  for i = 1, #list - 1, 2 do t[list[i]] = list[i + 1] end
  return t
end

-- entries(reply) -> { { id, fields }, ... } of an XRANGE-shaped list;
-- an entry deleted from the stream while pending has false fields.
function M.entries(list)
  if type(list) ~= "table" then return {} end
  local out = {}
  for i = 1, #list do
    local entry = list[i]
    local flat, fields = entry[2], false
    if type(flat) == "table" then
      fields = {}
      for j = 1, #flat - 1, 2 do fields[flat[j]] = flat[j + 1] end
    end
    out[i] = { id = entry[1], fields = fields }
  end
  return out
end

return M
