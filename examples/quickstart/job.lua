-- The quickstart: contacts and tags from files bundled beside this job,
-- into entsync.db next to it. Run it twice: the second run finds every
-- entity unchanged.

entity "tag" { name = "text", updated = "timestamp" }
entity "contact" { email = "text", name = "text", active = "boolean", updated = "timestamp", tags = "json" }
entity "contact_profile" { company = "text", city = "text", phone = "text" }

local files = {
  csv = provider "csv" { dir = "data" },
  ndjson = provider "ndjson" { dir = "data" },
}

sync "tags" {
  remote = files.csv "tags.csv", entity = "tag",
  mapping = { name = "name", updated = "updated_at" },
  import = { mode = "full", changed = "updated_at" },
}

-- One remote contact becomes a contact and its profile (a split).
sync "contacts" {
  remote = files.ndjson "contacts.ndjson", entity = { "contact", "contact_profile" },
  mapping = "mappings.contact", depends_on = { "tags" },
  import = { mode = "full", changed = "updated_at", deletes = "flag" },
}
