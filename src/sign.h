/*
 * sign: message authentication for what the daemon receives (webhooks),
 * through OpenSSL's libcrypto, so no digest or comparison is written in
 * Lua.
 *
 * The sub-table core.sign holds:
 *
 *   hmac_sha256(key, data [, "raw"]) -> string
 *     HMAC-SHA256 (RFC 2104, FIPS 180-4) of data with key: 64 lower-case
 *     hex digits, or the 32 bytes with "raw". key and data are byte
 *     strings of any length (an empty key is a valid, if weak, key).
 *
 *   equal(a, b) -> boolean
 *     Whether two byte strings are the same, in time that depends on their
 *     length only, never on where they first differ (CRYPTO_memcmp): a
 *     signature checked with it tells an attacker nothing of how close a
 *     guess came. Strings of different lengths are unequal at once (a
 *     length is not a secret: a hex HMAC is always 64 digits).
 */
#ifndef ENTSYNC_SIGN_H
#define ENTSYNC_SIGN_H

#include <lua.h>

/* Sets the sub-table sign of the table on top of the stack. */
void entsync_sign_register(lua_State *L);

#endif
