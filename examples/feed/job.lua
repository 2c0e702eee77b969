-- A document store with a changes feed (providers/docstore.lua, beside this
-- job: a job's own providers live in a providers/ folder next to it).
-- Start the fixture remote on the bundled documents, then run the job:
--
--   python3 spec/support/fixture_server.py --data examples/feed/data.json --port 8765 &
--   DOCS_URL=http://127.0.0.1:8765 bin/entsync-run examples/feed/job.lua run
--
-- Each run takes the feed from where the last one stopped (its checkpoint),
-- applies deletions as they come (deletes = "delete"), and sends local
-- changes back with the document's revision: one the store has replaced
-- since is a conflict, settled by the newest change.

entity "contact" { name = "text", email = "text", city = "text", updated = "timestamp" }

local docs = provider "docstore" { base_url = env("DOCS_URL", "http://127.0.0.1:8765"), db = "contacts",
  type = "contact" }

sync "contacts" {
  remote = docs, entity = "contact", id = "_id",
  mapping = { name = "name", email = "email", city = "address.city", updated = "updated_at" },
  import = { mode = "incremental", changed = "updated_at", changed_kind = "time", deletes = "delete" },
  export = { on_change = true, conflict = "newest", deletes = "delete" },
}
