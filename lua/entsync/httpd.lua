-- entsync.httpd: an HTTP server on entsync's loop (src/httpd.c,
-- libmicrohttpd), for the daemon's /metrics and status page, and for what
-- comes later (webhooks).
--
--   local httpd = require "entsync.httpd"
--   local server = httpd.listen("127.0.0.1", 9464)
--   server:route("GET", "/metrics", function(request) return 200, text, { ["Content-Type"] = "text/plain" } end)
--   server:route("POST", "/webhooks/", function(request, rest) ... end, { prefix = true })
--   server:start()        -- a task of the loop serves until server:close()
--
-- A handler gets request = { method, path, query = { name = value },
-- headers = { lower-case name = value }, body, remote } (and, for a
-- prefix route, the rest of the path after the prefix) and returns
-- status, body [, headers], or a table { status, body, headers }.
--
-- Handlers answer at once: they run inside the server's C call, between
-- two turns of the loop, so a wait there (a request, a sleep, a lock wait)
-- is refused (loop.forbid_yield); work that waits is spawned as a task
-- (loop.spawn) and the handler answers without waiting for it (202). An
-- error in a handler is answered 500 and logged; the server goes on.
--
-- The server is one descriptor to the loop: its task waits on it (and on
-- the server's own timeout, for idle connections) with loop.wait_fd and
-- lets libmicrohttpd do what is ready, so nothing polls.

local core = require "entsync.core"
local errors = require "entsync.errors"
local loop = require "entsync.loop"

local M = {}

local Server = {}
Server.__index = Server

-- listen(host, port [, options]) -> server. options: max_body (bytes a
-- request body may have, default 1 MiB), log(level, message, fields).
-- Raises a usage error when the address cannot be bound.
function M.listen(host, port, options)
  options = options or {}
  local server = setmetatable({ routes = {}, host = host, log = options.log or function() end, requests = 0 }, Server)
  local native, err = core.httpd.listen(host, port, function(request) return server:dispatch(request) end,
    options.max_body)
  if not native then errors.raise("usage", err) end
  server.native = native
  server.port = native:port()
  return server
end

-- route(method, path, handler [, { prefix = true, tag = name }]): handler
-- for method ("GET", "POST", ... or "*") on path; with prefix, on every
-- path that starts with it (the handler gets the rest as its second
-- argument). The longest matching route wins. A tag names a group of
-- routes that unroute(tag) takes away (the webhooks of a job reloaded).
function Server:route(method, path, handler, options)
  self.routes[#self.routes + 1] = { method = method:upper(), path = path, handler = handler,
    prefix = options and options.prefix or false, tag = options and options.tag }
  table.sort(self.routes, function(a, b) return #a.path > #b.path end)
end

function Server:unroute(tag)
  local kept = {}
  for _, route in ipairs(self.routes) do
    if route.tag ~= tag then kept[#kept + 1] = route end
  end
  self.routes = kept
end

local function normalize(status, body, headers)
  if type(status) == "table" then
    return status.status or 200, status.body or "", status.headers
  end
  return status or 200, body or "", headers
end

function Server:dispatch(request)
  self.requests = self.requests + 1
  local allowed = {}
  for _, route in ipairs(self.routes) do
    local matches = route.path == request.path or (route.prefix and request.path:sub(1, #route.path) == route.path)
    if matches then
      if route.method == "*" or route.method == request.method or (route.method == "GET" and request.method == "HEAD") then
        local rest = route.prefix and request.path:sub(#route.path + 1) or nil
        local results = table.pack(pcall(loop.forbid_yield, "an HTTP handler", route.handler, request, rest))
        if not results[1] then
          local message = errors.message(results[2], true)
          self.log("error", string.format("HTTP %s %s: %s", request.method, request.path, message),
            { event = "http", method = request.method, path = request.path })
          return 500, message .. "\n", { ["Content-Type"] = "text/plain; charset=utf-8" }
        end
        return normalize(table.unpack(results, 2, results.n))
      end
      allowed[#allowed + 1] = route.method
    end
  end
  if #allowed > 0 then
    return 405, "method not allowed\n", { Allow = table.concat(allowed, ", ") }
  end
  return 404, "not found\n"
end

-- serve(): the server's task body: waits until the descriptor is ready
-- or the server's timeout comes, then lets it work; until close().
function Server:serve()
  local native = self.native
  local fd = native:fd()
  while not self.closed do
    loop.wait_fd(fd, "r", native:timeout())
    if self.closed then break end
    native:run()
  end
end

-- start() -> task: serves as a task of the running loop.
function Server:start()
  self.task = loop.spawn(self.serve, self)
  return self.task
end

function Server:close()
  if self.closed then return end
  self.closed = true
  if self.task then self.task:cancel() end
  self.native:close()
end

return M
