-- A CRM that POSTs a signed notification when contacts change: the daemon
-- imports the contacts it names at once, and the hourly schedule catches
-- what notifications miss. See README.md beside this file to run it on the
-- fixture remote and sign a test POST with openssl.

entity "contact" { email = "text", name = "text", city = "text", updated = "timestamp" }

local crm = provider "http_json" { base_url = env("CRM_URL", "http://127.0.0.1:8765"),
  page = { style = "page", size = 100 } }

sync "contacts" {
  remote = crm "api/contacts", entity = "contact",
  mapping = { email = "email", name = "name", city = "city", updated = "updated_at" },
  import = { mode = "incremental", changed = "updated_at", deletes = "delete" },
  schedule = "every 1h",
  webhook = {
    path = "/hooks/crm",
    secret = env "CRM_HOOK_SECRET",   -- never logged, shown or stored
    signature_header = "X-Signature", -- "sha256=<hex>" of the raw body, or plain hex
    event_id = "id",                  -- {"id": "evt-1", ...}: a replay of evt-1 is acknowledged and ignored
    ids = "data.ids",                 -- {"data": {"ids": [1, 2]}}: the contacts to fetch and import
  },
}
