-- entsync.metrics: the daemon's GET /metrics, in Prometheus' text format
-- (version 0.0.4).
--
-- Per sync, from the store (so runs made beside the daemon count too):
--   entsync_runs_total{sync,status}            runs finished, by status   counter
--   entsync_entities_total{sync,outcome}       entities by outcome        counter
--   entsync_failures{sync,direction}           failures pending           gauge
--   entsync_outbox_depth{sync}                 changes waiting to export  gauge
--   entsync_outbox_oldest_age_seconds{sync}    age of the oldest of them  gauge
--   entsync_lag_seconds{sync}                  since the last good run    gauge
--   entsync_last_run_timestamp_seconds{sync}   when the last run ended    gauge
--   entsync_last_good_run_timestamp_seconds{sync}                         gauge
--   entsync_running{sync}                      1 while a run is going on  gauge
--   entsync_mapped_entities{sync}              entities in the id map     gauge
--   entsync_stale{sync}                        1 when status calls it stale gauge
-- From the daemon's process (since it started):
--   entsync_http_requests_total{sync}          HTTP requests sent          counter
--   entsync_http_retries_total{sync}           of which retries            counter
--   entsync_http_failures_total{sync}          requests failed for good    counter
--   entsync_webhook_requests_total{sync,outcome} webhook POSTs by answer:    counter
--       accepted (202), duplicate (200), unauthorized (401), invalid (400),
--       too_large (413)
--   entsync_webhook_pending{sync}              events accepted, not pulled gauge
--   entsync_daemon_start_time_seconds, entsync_daemon_http_requests_total
-- The counters that come from the store are totals kept beside the run
-- history (entsync_meta), so pruning old runs never makes one go back.

local M = {}

local function escape(value)
  return (tostring(value):gsub("\\", "\\\\"):gsub("\n", "\\n"):gsub('"', '\\"'))
end

local function number(value)
  if value == nil then return nil end
  if math.type(value) == "integer" then return string.format("%d", value) end
  if value ~= value then return "NaN" end
  return string.format("%.17g", value)
end

local function sorted_keys(t)
  local keys = {}
  for key in pairs(t) do keys[#keys + 1] = key end
  table.sort(keys)
  return keys
end

-- render(report, extra) -> text. report: entsync.status.gather's;
-- extra: { http = entsync.http.stats(), started_at, requests, webhooks =
-- { sync = { accepted, duplicate, ..., pending } } }.
function M.render(report, extra)
  extra = extra or {}
  local out = {}
  local families = {}
  local function family(name, kind, help)
    local f = families[name]
    if not f then
      f = { name = name, kind = kind, help = help, samples = {} }
      families[name] = f
      families[#families + 1] = f
    end
    return f
  end
  local function sample(name, kind, help, labels, value)
    local f = family(name, kind, help) -- typed even while it has no sample
    local text = number(value)
    if text == nil then return end
    local parts = {}
    for _, pair in ipairs(labels) do parts[#parts + 1] = string.format('%s="%s"', pair[1], escape(pair[2])) end
    f.samples[#f.samples + 1] = string.format("%s{%s} %s", name, table.concat(parts, ","), text)
  end
  local now = report.generated_at
  for _, s in ipairs(report.syncs) do
    local sync = { "sync", s.name }
    local totals = s.totals or {}
    family("entsync_runs_total", "counter", "Runs finished, by sync and status.")
    local statuses = {}
    for key in pairs(totals) do
      local status = key:match("^runs_(.+)$")
      if status then statuses[#statuses + 1] = status end
    end
    table.sort(statuses)
    for _, status in ipairs(statuses) do
      sample("entsync_runs_total", "counter", nil, { sync, { "status", status } }, totals["runs_" .. status])
    end
    for _, outcome in ipairs({ "created", "updated", "unchanged", "stale", "failed", "deleted", "conflicts" }) do
      sample("entsync_entities_total", "counter", "Entities by outcome, over every finished run.",
        { sync, { "outcome", outcome } }, totals[outcome] or 0)
    end
    if s.failures then
      sample("entsync_failures", "gauge", "Failures pending, by direction.", { sync, { "direction", "import" } },
        s.failures.import)
      sample("entsync_failures", "gauge", nil, { sync, { "direction", "export" } }, s.failures.export)
    end
    if s.outbox then
      sample("entsync_outbox_depth", "gauge", "Local changes waiting to be exported.", { sync }, s.outbox.depth)
      sample("entsync_outbox_oldest_age_seconds", "gauge",
        "Age of the oldest change waiting to be exported (0 when none waits).", { sync },
        s.outbox.oldest_at and math.max(0, now - s.outbox.oldest_at) or 0)
    end
    sample("entsync_lag_seconds", "gauge", "Seconds since the last good run ended.", { sync }, s.lag)
    local last = s.last_managed or s.last_run
    sample("entsync_last_run_timestamp_seconds", "gauge", "When the last run ended (or started, while it runs).",
      { sync }, last and (last.ended_at or last.started_at))
    sample("entsync_last_good_run_timestamp_seconds", "gauge", "When the last good run ended.", { sync },
      s.last_good and (s.last_good.ended_at or s.last_good.started_at))
    local running = 0
    for _, run in ipairs(s.running or {}) do if run.alive then running = 1 end end
    sample("entsync_running", "gauge", "1 while a run of the sync is going on.", { sync }, running)
    sample("entsync_mapped_entities", "gauge", "Remote entities in the id map.", { sync }, s.mapped or 0)
    sample("entsync_stale", "gauge", "1 when the last good run is older than the schedule allows.", { sync },
      s.stale and 1 or 0)
  end
  local http = extra.http or {}
  for _, label in ipairs(sorted_keys(http)) do
    local c = http[label]
    local sync = { "sync", label }
    sample("entsync_http_requests_total", "counter", "HTTP requests sent (each attempt), by the sync they were for.",
      { sync }, c.requests)
    sample("entsync_http_retries_total", "counter", "HTTP requests that were retries.", { sync }, c.retries)
    sample("entsync_http_failures_total", "counter", "HTTP requests that failed after their last attempt.", { sync },
      c.failures)
  end
  local hooks = extra.webhooks or {}
  for _, name in ipairs(sorted_keys(hooks)) do
    local h = hooks[name]
    for _, outcome in ipairs({ "accepted", "duplicate", "unauthorized", "invalid", "too_large" }) do
      sample("entsync_webhook_requests_total", "counter", "Webhook POSTs received, by sync and answer.",
        { { "sync", name }, { "outcome", outcome } }, h[outcome] or 0)
    end
    sample("entsync_webhook_pending", "gauge", "Webhook events accepted whose pull has not committed.",
      { { "sync", name } }, h.pending)
  end
  if extra.started_at then
    sample("entsync_daemon_start_time_seconds", "gauge", "When the daemon started.", {}, extra.started_at)
  end
  if extra.requests then
    sample("entsync_daemon_http_requests_total", "counter", "Requests the daemon's HTTP server answered.", {},
      extra.requests)
  end
  for _, f in ipairs(families) do
    if f.help then out[#out + 1] = string.format("# HELP %s %s", f.name, f.help) end
    out[#out + 1] = string.format("# TYPE %s %s", f.name, f.kind)
    for _, line in ipairs(f.samples) do out[#out + 1] = (line:gsub("{}", "")) end
  end
  return table.concat(out, "\n") .. "\n"
end

return M
