/*
 * json: entsync's JSON codec, the sub-table json of entsync.core (Lua's
 * require "entsync.json" re-exports it with its documentation).
 *
 * Decoding is simdjson's (through the shim of json_simd.h), validating
 * and type-faithful: objects become tables with the metatable
 * json.object_mt and arrays tables with json.array_mt, so [] and {} keep
 * apart; null is the light userdata NULL (json.null, equal to lua-cjson's
 * cjson.null); integers that fit an int64 are Lua integers, every other
 * number a float; a duplicate key's last value wins. Encoding is here, in
 * C, with keys sorted bytewise so equal values give equal bytes.
 *
 * Functions: decode(text) -> value (raises the message), try_decode(text)
 * -> value | nil, message, encode(value [, { pretty = true }]) -> text,
 * array([t]) and object([t]) -> t marked, is_array(v), is_object(v),
 * text_ok(s) -> true | false, offset, "utf8"|"nul" (valid UTF-8 without
 * NUL bytes: what a text column takes); the
 * fields null, object_mt and array_mt. The two metatables also live in
 * the registry under "entsync.json.object" and "entsync.json.array".
 */
#ifndef ENTSYNC_JSON_H
#define ENTSYNC_JSON_H

#include <lua.h>

/* Sets the sub-table json of the table on top of the stack. */
void entsync_json_register(lua_State *L);

#endif
