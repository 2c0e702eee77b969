-- The job scripts/bench runs: contacts from one NDJSON file, each split into
-- a user and a profile. scripts/bench copies it into its temp dir beside
-- contacts.ndjson and sets BENCH_MODE: "incremental" for the first import
-- and the 10%-changed run, "full" for the unchanged re-import (a full pass
-- reads every record whatever the cursor, and leaves the cursor as it is).

store "bench.db"

entity "user" { email = "text", name = "text", status = "integer", updated = "timestamp" }
entity "profile" { company = "text", city = "text", tags = "json", phone = "text" }

local files = provider "ndjson" { path = "contacts.ndjson" }

sync "contacts" {
  remote = files, entity = { "user", "profile" },
  mapping = {
    user = {
      email = "email",
      -- the one Lua callback: the whole record in, the display name out
      name = { import = function(_, r) return r.first_name .. " " .. r.last_name end },
      status = "active",            -- JSON true/false coerced to the integer column (1/0)
      updated = "updated_at",
    },
    profile = {
      company = "company.name",
      city = "company.city",
      tags = "tags",                -- an array, stored as JSON
      phone = "phones[1].number",
    },
  },
  import = { mode = env("BENCH_MODE", "incremental"), changed = "updated_at", batch = 5000 },
}
