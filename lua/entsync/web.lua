-- entsync.web: the daemon's status page (GET /): one HTML document with
-- its style inline and no script or external asset, so it works wherever
-- the daemon's port is reachable.
--
-- A table of the syncs (mode, schedule, last run, last good run, lag,
-- failures, outbox, next run), each sync's failures pending, and per sync
-- a lag chart over its recent runs in inline SVG: for each run, how long
-- it had been since the last good run when it started (a line that climbs
-- while runs fail), each run a dot coloured by its status. The page
-- refreshes itself every 10 seconds.

local redact = require "entsync.redact"
local status = require "entsync.status"

local M = {}

M.COLOURS = { ok = "#1a7f37", failed = "#cf222e", error = "#cf222e", killed = "#cf222e", partial = "#bf8700",
  running = "#0969da" }

local function esc(value)
  return (tostring(value == nil and "" or value):gsub("[&<>\"']", {
    ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" }))
end
M.escape = esc

local function utc(t)
  if not t then return "" end
  return os.date("!%Y-%m-%d %H:%M:%S UTC", math.floor(t))
end

-- The lag at the start of each recent run (oldest first): seconds since
-- the last good run that ended before it, or nil before the first one.
function M.lag_points(recent)
  local runs = {}
  for i = #recent, 1, -1 do runs[#runs + 1] = recent[i] end
  local points, good_end = {}, nil
  for i, run in ipairs(runs) do
    points[i] = { run = run, lag = good_end and math.max(0, run.started_at - good_end) or nil }
    if run.operation == "run" and run.status == "ok" and run.ended_at then good_end = run.ended_at end
  end
  return points
end

-- The lag chart of one sync, as an <svg> element.
function M.chart(name, recent)
  local width, height, pad = 360, 90, 14
  local points = M.lag_points(recent or {})
  local top = 1
  for _, p in ipairs(points) do if p.lag and p.lag > top then top = p.lag end end
  local n = #points
  local function x(i) return pad + (n > 1 and (i - 1) * (width - 2 * pad) / (n - 1) or (width - 2 * pad) / 2) end
  local function y(lag) return height - pad - (lag or 0) / top * (height - 2 * pad) end
  local out = { string.format('<svg class="lag-chart" data-sync="%s" data-runs="%d" width="%d" height="%d" '
    .. 'viewBox="0 0 %d %d" role="img" aria-label="lag of %s over its last %d runs" '
    .. 'xmlns="http://www.w3.org/2000/svg">', esc(name), n, width, height, width, height, esc(name), n) }
  out[#out + 1] = string.format('<rect x="0" y="0" width="%d" height="%d" fill="#f6f8fa"/>', width, height)
  out[#out + 1] = string.format('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#d0d7de"/>', pad, height - pad,
    width - pad, height - pad)
  local line = {}
  for i, p in ipairs(points) do
    if p.lag then line[#line + 1] = string.format("%.1f,%.1f", x(i), y(p.lag)) end
  end
  if #line > 1 then
    out[#out + 1] = string.format('<polyline class="lag" fill="none" stroke="#57606a" stroke-width="1.5" points="%s"/>',
      table.concat(line, " "))
  end
  for i, p in ipairs(points) do
    local run = p.run
    out[#out + 1] = string.format('<circle class="run %s" cx="%.1f" cy="%.1f" r="5" fill="%s"><title>#%d %s %s %s, '
      .. 'lag %s</title></circle>', esc(run.status), x(i), y(p.lag), M.COLOURS[run.status] or "#57606a", run.id,
      esc(run.operation), esc(run.status), esc(utc(run.started_at)), p.lag and status.span(p.lag) or "-")
  end
  out[#out + 1] = string.format('<text x="%d" y="11" font-size="10" fill="#57606a">lag, up to %s</text>', pad,
    status.span(top))
  out[#out + 1] = "</svg>"
  return table.concat(out)
end

local STYLE = [[
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1f2328; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border-bottom: 1px solid #d0d7de; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
.ok { color: #1a7f37; } .failed, .error, .killed, .stale { color: #cf222e; } .partial { color: #bf8700; }
.problems { color: #cf222e; }
code { font-size: 12px; }
section { margin: 1.5em 0; }
]]

-- page(report [, extra]) -> the HTML of the status page.
function M.page(report, extra)
  extra = extra or {}
  local out = {}
  local function add(fmt, ...) out[#out + 1] = select("#", ...) > 0 and string.format(fmt, ...) or fmt end
  add('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">')
  add('<meta http-equiv="refresh" content="10">')
  add("<title>entsync: %s</title><style>%s</style></head><body>", esc(report.job.path), STYLE)
  add('<h1>entsync <small>%s</small></h1>', esc(report.job.path))
  local daemon = report.daemon
  add('<p id="summary" class="%s">%s; store %s; %s</p>', report.ok and "ok" or "problems",
    report.ok and "all well" or (#report.problems .. " problem" .. (#report.problems == 1 and "" or "s")),
    esc(report.store), daemon and string.format("daemon pid %s, %s, started %s", esc(daemon.pid), esc(daemon.activity),
      esc(status.ago(daemon.started_at))) or "no daemon")
  if #report.problems > 0 then
    add('<ul class="problems">')
    for _, p in ipairs(report.problems) do
      add("<li>%s%s</li>", p.sync and ("<b>" .. esc(p.sync) .. "</b>: ") or "", esc(p.message))
    end
    add("</ul>")
  end
  add('<table id="syncs"><thead><tr><th>sync</th><th>mode</th><th>schedule</th><th>last run</th><th>last good run</th>'
    .. "<th>lag</th><th>failures</th><th>outbox</th><th>next run</th></tr></thead><tbody>")
  for _, s in ipairs(report.syncs) do
    local last = s.last_managed or s.last_run
    add('<tr class="sync" data-sync="%s"><td>%s</td><td>%s</td><td>%s</td>', esc(s.name), esc(s.name), esc(s.mode or "-"),
      esc(s.schedule or "-"))
    if last then
      add('<td class="%s" title="%s">%s %s, %s: %s</td>', esc(last.status), esc(redact.text(last.error or "")),
        esc(last.operation), esc(status.ago(last.started_at)), esc(last.status), esc(status.counts_text(last.counts)))
    else
      add("<td>never</td>")
    end
    add("<td>%s</td>", s.last_good and esc(status.ago(s.last_good.ended_at)) or "none yet")
    add('<td class="%s">%s</td>', s.stale and "stale" or "", s.lag and esc(status.span(s.lag)) or "-")
    add('<td class="failures">%s</td>', s.failures and s.failures.count or 0)
    add("<td>%s</td>", s.outbox and esc(s.outbox.depth) or "-")
    add("<td>%s</td></tr>", s.next_run and esc(utc(s.next_run)) or "-")
  end
  add("</tbody></table>")
  for _, s in ipairs(report.syncs) do
    add('<section class="sync-detail" data-sync="%s"><h2>%s</h2>', esc(s.name), esc(s.name))
    add("%s", M.chart(s.name, s.recent))
    if s.failures and s.failures.count > 0 then
      add('<table class="failure-list"><thead><tr><th>key</th><th>direction</th><th>attempts</th><th>error</th>'
        .. "</tr></thead><tbody>")
      for _, f in ipairs(s.failures.recent) do
        add('<tr class="failure"><td><code>%s</code></td><td>%s</td><td>%d</td><td>%s</td></tr>', esc(f.key),
          esc(f.direction), f.attempts, esc(redact.text(f.error)))
      end
      add("</tbody></table>")
      if s.failures.count > #s.failures.recent then
        add("<p>... and %d more: <code>entsync-run %s failures %s</code></p>", s.failures.count - #s.failures.recent,
          esc(report.job.path), esc(s.name))
      end
    end
    add("</section>")
  end
  add('<p><small>generated %s; <a href="/metrics">metrics</a></small></p>', esc(utc(report.generated_at)))
  add("</body></html>\n")
  return table.concat(out, "\n")
end

return M
