-- core.sign: HMAC-SHA256 through libcrypto and the constant-time compare
-- the daemon's webhooks check signatures with. The digests are RFC 4231's
-- test vectors, and the openssl command's answer for a body with every
-- byte value in it.

local core = require "entsync.core"
local helpers = require "helpers"

local function unhex(text)
  return (text:gsub("%x%x", function(pair) return string.char(tonumber(pair, 16)) end))
end

local function hex(bytes)
  return (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

describe("core.sign.hmac_sha256", function()
  it("gives RFC 4231's digests: a short key, a text key, a key longer than the block", function()
    assert.equal("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
      core.sign.hmac_sha256(string.rep("\x0b", 20), "Hi There"))
    assert.equal("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
      core.sign.hmac_sha256("Jefe", "what do ya want for nothing?"))
    assert.equal("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
      core.sign.hmac_sha256(string.rep("\xaa", 131), "Test Using Larger Than Block-Size Key - Hash Key First"))
    assert.equal(unhex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
      core.sign.hmac_sha256("Jefe", "what do ya want for nothing?", "raw"))
  end)

  it("agrees with the openssl command over a body holding every byte, NULs among them", function()
    local bytes = {}
    for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
    local body = table.concat(bytes):rep(9)
    local file = os.tmpname()
    helpers.write(file, body)
    local pipe = io.popen("openssl dgst -sha256 -hmac 's3cr=t key' -r " .. helpers.quote(file))
    local expected = pipe:read("a"):match("^(%x+)")
    pipe:close()
    os.remove(file)
    assert.equal(64, #expected)
    assert.equal(expected, core.sign.hmac_sha256("s3cr=t key", body))
    assert.equal(expected, hex(core.sign.hmac_sha256("s3cr=t key", body, "raw")))
  end)

  it("takes an empty key and an empty body, and refuses an unknown form", function()
    assert.equal("b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad", core.sign.hmac_sha256("", ""))
    assert.has_error(function() core.sign.hmac_sha256("k", "d", "base64") end,
      'sign.hmac_sha256: form must be "hex" or "raw", got "base64"')
  end)
end)

describe("core.sign.equal", function()
  it("is true for the same bytes only, whatever their length or content", function()
    local mac = core.sign.hmac_sha256("k", "d")
    assert.is_true(core.sign.equal(mac, core.sign.hmac_sha256("k", "d")))
    assert.is_false(core.sign.equal(mac, core.sign.hmac_sha256("k", "e")))
    assert.is_false(core.sign.equal(mac, mac:sub(1, 63)))
    assert.is_false(core.sign.equal(mac, mac .. "0"))
    assert.is_true(core.sign.equal("", ""))
    assert.is_true(core.sign.equal("a\0b", "a\0b"))
    assert.is_false(core.sign.equal("a\0b", "a\0c"))
  end)
end)
