/*
 * sign: HMAC-SHA256 and a constant-time comparison over libcrypto (see
 * sign.h for the Lua interface).
 */
#include "sign.h"

#include <lauxlib.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <string.h>

#define SHA256_LEN 32

/* hmac_sha256(key, data [, "raw"]) -> hex digits | 32 bytes. Raises when
 * libcrypto cannot compute it (out of memory), or on an unknown form. */
static int sign_hmac_sha256(lua_State *L)
{
    static const unsigned char no_key[1] = {0};
    static const char digits[] = "0123456789abcdef";
    size_t key_len, data_len;
    const char *key = luaL_checklstring(L, 1, &key_len);
    const char *data = luaL_checklstring(L, 2, &data_len);
    const char *form = luaL_optstring(L, 3, "hex");
    int raw = strcmp(form, "raw") == 0;
    if (!raw && strcmp(form, "hex") != 0)
        return luaL_error(L, "sign.hmac_sha256: form must be \"hex\" or \"raw\", got \"%s\"", form);
    if (key_len > (size_t)0x7fffffff)
        return luaL_error(L, "sign.hmac_sha256: the key is too long");
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    const void *key_bytes = key_len ? (const void *)key : (const void *)no_key;
    if (!HMAC(EVP_sha256(), key_bytes, (int)key_len, (const unsigned char *)data, data_len, mac, &mac_len) ||
        mac_len != SHA256_LEN)
        goto error;
    if (raw) {
        lua_pushlstring(L, (const char *)mac, mac_len);
    } else {
        char hex[2 * SHA256_LEN];
        for (unsigned int i = 0; i < mac_len; i++) {
            hex[2 * i] = digits[mac[i] >> 4];
            hex[2 * i + 1] = digits[mac[i] & 15];
        }
        lua_pushlstring(L, hex, sizeof hex);
    }
    OPENSSL_cleanse(mac, sizeof mac);
    return 1;
error:
    OPENSSL_cleanse(mac, sizeof mac);
    return luaL_error(L, "sign.hmac_sha256: libcrypto could not compute the HMAC");
}

/* equal(a, b) -> boolean, in time that depends on the length only. */
static int sign_equal(lua_State *L)
{
    size_t a_len, b_len;
    const char *a = luaL_checklstring(L, 1, &a_len);
    const char *b = luaL_checklstring(L, 2, &b_len);
    lua_pushboolean(L, a_len == b_len && CRYPTO_memcmp(a, b, a_len) == 0);
    return 1;
}

void entsync_sign_register(lua_State *L)
{
    static const luaL_Reg functions[] = {
        {"hmac_sha256", sign_hmac_sha256},
        {"equal", sign_equal},
        {NULL, NULL},
    };
    luaL_newlib(L, functions);
    lua_setfield(L, -2, "sign");
}
