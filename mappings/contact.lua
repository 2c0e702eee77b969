-- Maps a remote contact onto two local entities: the contact itself and
-- its profile. Keys are local fields; values are remote paths or tables
-- with callbacks.
return {
  contact = {
    email = "email",
    name = { import = function(_, record) return record.first_name .. " " .. record.last_name end },
    active = { "status", import = function(status) return status == "active" end },
    updated = "updated_at",
    tags = "tags",
  },
  contact_profile = {
    company = "company.name",
    city = "company.city",
    phone = "phones[1].number",
  },
}
