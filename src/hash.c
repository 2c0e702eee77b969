/*
 * hash: canonical encoding of Lua values and their FNV-1a 64 hash.
 */
#include "hash.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HASH_MAX_DEPTH 64

uint64_t entsync_hash_bytes(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* The encoding is built in one growable buffer per Lua state, kept as an
 * upvalue so repeated hashing allocates nothing, and freed by its __gc so
 * an error half-way through leaks nothing. */
typedef struct canon_buf {
    char *data;
    size_t len, cap;
} canon_buf;

#define CANON_BUF_META "entsync.hash.buffer"

static void buf_add(lua_State *L, canon_buf *b, const char *s, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown)
            luaL_error(L, "hash: out of memory");
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
}

static void buf_addstr(lua_State *L, canon_buf *b, const char *s)
{
    buf_add(L, b, s, strlen(s));
}

static int buf_gc(lua_State *L)
{
    canon_buf *b = luaL_checkudata(L, 1, CANON_BUF_META);
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    return 0;
}

static void encode_value(lua_State *L, canon_buf *out, int idx, int depth);

static void encode_number(lua_State *L, canon_buf *out, int idx)
{
    char text[64];
    if (lua_isinteger(L, idx)) {
        snprintf(text, sizeof text, "i%lld;", (long long)lua_tointeger(L, idx));
    } else {
        lua_Number n = lua_tonumber(L, idx);
        /* 2^63 bounds the integral floats that fit an int64 exactly. */
        if (n == floor(n) && n >= -9223372036854775808.0 && n < 9223372036854775808.0)
            snprintf(text, sizeof text, "i%lld;", (long long)n);
        else if (isnan(n))
            snprintf(text, sizeof text, "dnan;");
        else
            snprintf(text, sizeof text, "d%.17g;", n);
    }
    buf_addstr(L, out, text);
}

static void encode_string(lua_State *L, canon_buf *out, const char *s, size_t len)
{
    char head[32];
    snprintf(head, sizeof head, "s%zu:", len);
    buf_addstr(L, out, head);
    buf_add(L, out, s, len);
}

/* Counts the entries of the table at idx; a table is a sequence when its
 * keys are exactly 1..n. */
static size_t count_entries(lua_State *L, int idx, int *sequence)
{
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
    size_t count = 0;
    *sequence = 1;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        lua_pop(L, 1);
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 || lua_tointeger(L, -1) > n)
            *sequence = 0;
        count++;
    }
    if (count != (size_t)n)
        *sequence = 0;
    return count;
}

static void encode_sequence(lua_State *L, canon_buf *out, int idx, size_t n, int depth)
{
    char head[32];
    snprintf(head, sizeof head, "a%zu:", n);
    buf_addstr(L, out, head);
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, (lua_Integer)i);
        encode_value(L, out, lua_gettop(L), depth + 1);
        lua_pop(L, 1);
    }
}

struct hash_key {
    const char *key; /* anchored in the keys table while sorting */
    size_t len;
    lua_Integer slot; /* where key and value sit in the keys table */
};

static int compare_keys(const void *a, const void *b)
{
    const struct hash_key *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->key, y->key, n);
    if (c != 0)
        return c;
    return (x->len > y->len) - (x->len < y->len);
}

/* Pushes the canonical string of the key on top of the stack. */
static void push_key_string(lua_State *L)
{
    if (lua_type(L, -1) == LUA_TSTRING) {
        lua_pushvalue(L, -1);
    } else if (lua_isinteger(L, -1)) {
        lua_pushfstring(L, "%I", (LUAI_UACINT)lua_tointeger(L, -1));
    } else if (lua_type(L, -1) == LUA_TNUMBER) {
        char number[64];
        snprintf(number, sizeof number, "%.17g", lua_tonumber(L, -1));
        lua_pushstring(L, number);
    } else {
        luaL_error(L, "hash: table keys must be strings or numbers, got %s",
                   luaL_typename(L, -1));
    }
}

/* Keys and values are copied into a Lua table (so they stay anchored and an
 * error frees them through the collector), sorted by key, then encoded. */
static void encode_object(lua_State *L, canon_buf *out, int idx, size_t count, int depth)
{
    struct hash_key *keys = lua_newuserdatauv(L, count * sizeof *keys + 1, 0);
    lua_createtable(L, (int)(2 * count), 0);
    int slots = lua_gettop(L);
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        lua_pushvalue(L, -2);
        push_key_string(L);
        lua_rawseti(L, slots, (lua_Integer)(2 * n + 1));
        lua_pop(L, 1);
        lua_rawseti(L, slots, (lua_Integer)(2 * n + 2)); /* the value */
        lua_rawgeti(L, slots, (lua_Integer)(2 * n + 1));
        keys[n].key = lua_tolstring(L, -1, &keys[n].len);
        keys[n].slot = (lua_Integer)(2 * n + 1);
        lua_pop(L, 1);
        n++;
    }
    qsort(keys, n, sizeof *keys, compare_keys);
    char head[32];
    snprintf(head, sizeof head, "o%zu:", n);
    buf_addstr(L, out, head);
    for (size_t i = 0; i < n; i++) {
        encode_string(L, out, keys[i].key, keys[i].len);
        lua_rawgeti(L, slots, keys[i].slot + 1);
        encode_value(L, out, lua_gettop(L), depth + 1);
        lua_pop(L, 1);
    }
    lua_pop(L, 2);
}

static void encode_value(lua_State *L, canon_buf *out, int idx, int depth)
{
    if (depth > HASH_MAX_DEPTH)
        luaL_error(L, "hash: value nested deeper than %d levels (a cycle?)", HASH_MAX_DEPTH);
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        buf_add(L, out, "n", 1);
        break;
    case LUA_TLIGHTUSERDATA: /* cjson.null */
        if (lua_touserdata(L, idx) != NULL)
            luaL_error(L, "hash: cannot hash a light userdata");
        buf_add(L, out, "n", 1);
        break;
    case LUA_TBOOLEAN:
        buf_add(L, out, lua_toboolean(L, idx) ? "t" : "f", 1);
        break;
    case LUA_TNUMBER:
        encode_number(L, out, idx);
        break;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        encode_string(L, out, s, len);
        break;
    }
    case LUA_TTABLE: {
        int sequence;
        luaL_checkstack(L, 8, "hash: value too deep");
        size_t count = count_entries(L, idx, &sequence);
        if (sequence)
            encode_sequence(L, out, idx, count, depth);
        else
            encode_object(L, out, idx, count, depth);
        break;
    }
    default:
        luaL_error(L, "hash: cannot hash a %s", luaL_typename(L, idx));
    }
}

/* Encodes the value at index 1 into the state's buffer and returns it. */
static canon_buf *encode_argument(lua_State *L)
{
    luaL_checkany(L, 1);
    canon_buf *out = lua_touserdata(L, lua_upvalueindex(1));
    out->len = 0;
    encode_value(L, out, 1, 0);
    return out;
}

static int hash_value(lua_State *L)
{
    canon_buf *out = encode_argument(L);
    lua_pushinteger(L, (lua_Integer)entsync_hash_bytes(out->data, out->len));
    return 1;
}

static int hash_hex(lua_State *L)
{
    canon_buf *out = encode_argument(L);
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx",
             (unsigned long long)entsync_hash_bytes(out->data, out->len));
    lua_pushstring(L, hex);
    return 1;
}

static int hash_canonical(lua_State *L)
{
    canon_buf *out = encode_argument(L);
    lua_pushlstring(L, out->data, out->len);
    return 1;
}

void entsync_hash_register(lua_State *L)
{
    static const luaL_Reg functions[] = {
        {"hash", hash_value},
        {"hash_hex", hash_hex},
        {"canonical", hash_canonical},
        {NULL, NULL},
    };
    canon_buf *buf = lua_newuserdatauv(L, sizeof *buf, 0);
    memset(buf, 0, sizeof *buf);
    if (luaL_newmetatable(L, CANON_BUF_META)) {
        lua_pushcfunction(L, buf_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    luaL_setfuncs(L, functions, 1);
}
