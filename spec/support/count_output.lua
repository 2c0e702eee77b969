-- busted output handler for entsync's specs: busted's own terminal output,
-- then one last line "N passed, N failed" from busted's counts (errors
-- count as failed), which is what CI reads.
return function(options)
  local busted = require "busted"
  local term = require "term"
  local style = term.isatty(io.stdout) and "utfTerminal" or "plainTerminal"
  local handler = require("busted.outputHandlers." .. style)(options)
  busted.subscribe({ "suite", "end" }, function()
    local failed = #handler.failures + #handler.errors
    io.write(string.format("%d passed, %d failed\n", #handler.successes, failed))
    io.flush()
    return nil, true
  end)
  return handler
end
