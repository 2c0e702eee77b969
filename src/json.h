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
 * NUL bytes: what a text column takes), document() (document.h); the
 * fields null, object_mt and array_mt. The two metatables also live in
 * the registry under "entsync.json.object" and "entsync.json.array".
 */
#ifndef ENTSYNC_JSON_H
#define ENTSYNC_JSON_H

#include "json_simd.h"

#include <lua.h>

/* Pushes the Lua value decode gives for the nodes at n, its objects and
 * arrays marked with the tables at object_mt and array_mt; returns the
 * node after them. */
const entsync_json_node *entsync_json_push_node(lua_State *L, const entsync_json_node *n, int object_mt, int array_mt);

/* Parses text with parser as decode does (an integer beyond 64 bits is
 * read as a float): 1 with *nodes set (valid until the parser's next
 * parse or release), or 0 with decode's message for the text in msg.
 * padded: ENTSYNC_JSON_PADDING zeroed bytes follow the text, which is then
 * parsed where it is, not copied into the parser first. */
int entsync_json_parse_text(entsync_json_parser *parser, const char *text, size_t len, int padded,
                            const entsync_json_node **nodes, char *msg, size_t size);

/* The node after the value whose nodes start at n. */
const entsync_json_node *entsync_json_node_after(const entsync_json_node *n);

/* The value of key in the object at obj (a repeated key's last, as
 * decoding keeps), or NULL. */
const entsync_json_node *entsync_json_object_get(const entsync_json_node *obj, const char *key, size_t len);

/* The k-th (1-based) item of the array at arr, or NULL when k is out of
 * range. */
const entsync_json_node *entsync_json_array_item(const entsync_json_node *arr, long long k);

/* One member of a decoded object. */
typedef struct entsync_json_member {
    const char *key;
    size_t len;
    const entsync_json_node *value;
} entsync_json_member;

/* The members of the object at obj as its decoded table holds them (a
 * repeated key's last value), sorted bytewise by key, in *members
 * (malloc'ed: the caller frees it); their count, or -1 out of memory. */
long entsync_json_sorted_members(const entsync_json_node *obj, entsync_json_member **members);

/* An encoder of decoded nodes, with its own output buffer. */
typedef struct entsync_json_encoder entsync_json_encoder;

entsync_json_encoder *entsync_json_encoder_new(void); /* NULL: out of memory */
void entsync_json_encoder_free(entsync_json_encoder *enc);

/* The text encode() gives for the value the nodes at n decode to, valid
 * until the encoder's next use; raises a Lua error only when out of
 * memory. */
const char *entsync_json_encode_node(lua_State *L, entsync_json_encoder *enc, const entsync_json_node *n, size_t *len);

/* Where text stops being what a text column takes (valid UTF-8 without
 * NUL bytes): the offset of the first bad byte + 1, or 0 when all is. */
size_t entsync_json_text_bad(const char *text, size_t len);

/* Sets the sub-table json of the table on top of the stack. */
void entsync_json_register(lua_State *L);

#endif
