/*
 * hash: canonical encoding of Lua values and their FNV-1a 64 hash.
 */
#include "hash.h"

#include "fsutil.h"
#include "json_simd.h"
#include "record.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <xxhash.h>

/* Deeper than any value JSON decodes to (json_simd.h's limit), with the
 * two levels of mapped entities around it: past it, a table is a cycle. */
#define HASH_MAX_DEPTH (ENTSYNC_JSON_MAX_DEPTH + 8)

#define FNV_OFFSET 14695981039346656037ULL
#define FNV_PRIME 1099511628211ULL

uint64_t entsync_hash_continue(uint64_t seed, const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = seed;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= FNV_PRIME;
    }
    return h;
}

uint64_t entsync_hash_bytes(const void *data, size_t len)
{
    return entsync_hash_continue(FNV_OFFSET, data, len);
}

void entsync_hash_pair(const void *a, size_t alen, const void *b, size_t blen, uint64_t *ha, uint64_t *hb)
{
    const unsigned char *p = a, *q = b;
    size_t both = alen < blen ? alen : blen;
    uint64_t x = FNV_OFFSET, y = FNV_OFFSET;
    for (size_t i = 0; i < both; i++) {
        x = (x ^ p[i]) * FNV_PRIME;
        y = (y ^ q[i]) * FNV_PRIME;
    }
    *ha = entsync_hash_continue(x, p + both, alen - both);
    *hb = entsync_hash_continue(y, q + both, blen - both);
}

uint64_t entsync_hash_line(uint64_t seed, const void *data, size_t len)
{
    return (uint64_t)XXH3_64bits_withSeed(data, len, (XXH64_hash_t)seed);
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
    if (n == 0)
        return; /* nothing to copy, and the buffer may not exist yet */
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

const char *entsync_hash_tagged(char text[ENTSYNC_HASH_TAGGED], char tag, long long n, char end, size_t *len)
{
    char *p = text + ENTSYNC_HASH_TAGGED;
    unsigned long long u = n < 0 ? 0ULL - (unsigned long long)n : (unsigned long long)n;
    if (end)
        *--p = end;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (n < 0)
        *--p = '-';
    if (tag)
        *--p = tag;
    *len = (size_t)(text + ENTSYNC_HASH_TAGGED - p);
    return p;
}

/* Appends tag, the decimal digits of n, then end: snprintf was a tenth of
 * the time of an import, hashing mostly small integers and lengths. */
static void buf_add_tagged(lua_State *L, canon_buf *b, char tag, long long n, char end)
{
    char text[ENTSYNC_HASH_TAGGED];
    size_t len;
    const char *p = entsync_hash_tagged(text, tag, n, end, &len);
    buf_add(L, b, p, len);
}

static void encode_number(lua_State *L, canon_buf *out, int idx)
{
    char text[64];
    if (lua_isinteger(L, idx)) {
        buf_add_tagged(L, out, 'i', (long long)lua_tointeger(L, idx), ';');
        return;
    }
    lua_Number n = lua_tonumber(L, idx);
    /* 2^63 bounds the integral floats that fit an int64 exactly. */
    if (n == floor(n) && n >= -9223372036854775808.0 && n < 9223372036854775808.0) {
        buf_add_tagged(L, out, 'i', (long long)n, ';');
        return;
    }
    if (isnan(n))
        snprintf(text, sizeof text, "dnan;");
    else
        snprintf(text, sizeof text, "d%.17g;", n);
    buf_addstr(L, out, text);
}

static void encode_string(lua_State *L, canon_buf *out, const char *s, size_t len)
{
    buf_add_tagged(L, out, 's', (long long)len, ':');
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
    buf_add_tagged(L, out, 'a', (long long)n, ':');
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, (lua_Integer)i);
        encode_value(L, out, lua_gettop(L), depth + 1);
        lua_pop(L, 1);
    }
}

struct hash_key {
    const char *key; /* a string key of the table itself, or number below */
    size_t len;
    char number[40]; /* the canonical text of a number key */
    int kind;        /* LUA_TSTRING or LUA_TNUMBER */
    lua_Integer integer;
    lua_Number real;
    int is_integer;
};

/* A number key's text lives in its own entry, which qsort moves. */
static const char *key_text(const struct hash_key *k)
{
    return k->kind == LUA_TNUMBER ? k->number : k->key;
}

/* String keys sort before number keys, each bytewise by their text, so a
 * key 1.5 and a key "1.5" in one table have a fixed order. */
static int compare_keys(const void *a, const void *b)
{
    const struct hash_key *x = a, *y = b;
    if (x->kind != y->kind)
        return x->kind == LUA_TSTRING ? -1 : 1;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(key_text(x), key_text(y), n);
    if (c != 0)
        return c;
    return (x->len > y->len) - (x->len < y->len);
}

#define HASH_SMALL_OBJECT 32

/* Objects are encoded as their entries sorted by the canonical text of the
 * keys. String keys are pointed to in place (the table anchors them while
 * it is encoded); number keys are rendered into the entry. Small objects,
 * the common case of a mapped entity, sort on the C stack. */
static void encode_object(lua_State *L, canon_buf *out, int idx, size_t count, int depth)
{
    struct hash_key small[HASH_SMALL_OBJECT];
    struct hash_key *keys = small;
    int anchored = 0;
    if (count > HASH_SMALL_OBJECT) {
        keys = lua_newuserdatauv(L, count * sizeof *keys, 0);
        anchored = 1;
    }
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        struct hash_key *k = &keys[n];
        lua_pop(L, 1);
        k->kind = lua_type(L, -1);
        if (k->kind == LUA_TSTRING) {
            k->key = lua_tolstring(L, -1, &k->len);
        } else if (k->kind == LUA_TNUMBER) {
            k->is_integer = lua_isinteger(L, -1);
            if (k->is_integer) {
                k->integer = lua_tointeger(L, -1);
                snprintf(k->number, sizeof k->number, "%lld", (long long)k->integer);
            } else {
                k->real = lua_tonumber(L, -1);
                snprintf(k->number, sizeof k->number, "%.17g", k->real);
            }
            k->key = NULL;
            k->len = strlen(k->number);
        } else {
            luaL_error(L, "hash: table keys must be strings or numbers, got %s", luaL_typename(L, -1));
        }
        n++;
    }
    qsort(keys, n, sizeof *keys, compare_keys);
    buf_add_tagged(L, out, 'o', (long long)n, ':');
    for (size_t i = 0; i < n; i++) {
        struct hash_key *k = &keys[i];
        if (k->kind == LUA_TSTRING) {
            encode_string(L, out, k->key, k->len);
        } else if (k->is_integer) {
            buf_add_tagged(L, out, 'i', (long long)k->integer, ';');
        } else {
            buf_add(L, out, "d", 1);
            buf_add(L, out, k->number, k->len);
            buf_add(L, out, ";", 1);
        }
        if (k->kind == LUA_TSTRING)
            lua_pushlstring(L, k->key, k->len);
        else if (k->is_integer)
            lua_pushinteger(L, k->integer);
        else
            lua_pushnumber(L, k->real);
        lua_rawget(L, idx);
        encode_value(L, out, lua_gettop(L), depth + 1);
        lua_pop(L, 1);
    }
    if (anchored)
        lua_pop(L, 1);
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
        entsync_record_settle(L, idx); /* a record view, decoded whole first */
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

/* --- hash sets --------------------------------------------------------- */

#define HASHSET_META "entsync.hashset"

entsync_hashset *entsync_hashset_check(lua_State *L, int idx)
{
    return luaL_checkudata(L, idx, HASHSET_META);
}

struct entsync_hashset {
    uint64_t *slots; /* 0 marks an empty slot; the hash 0 is kept aside */
    size_t count, mask;
    int has_zero;
};

static int hashset_gc(lua_State *L)
{
    entsync_hashset *set = luaL_checkudata(L, 1, HASHSET_META);
    free(set->slots);
    set->slots = NULL;
    set->count = 0;
    set->mask = 0;
    return 0;
}

entsync_hashset *entsync_hashset_push(lua_State *L)
{
    entsync_hashset *set = lua_newuserdatauv(L, sizeof *set, 0);
    memset(set, 0, sizeof *set);
    if (luaL_newmetatable(L, HASHSET_META)) {
        lua_pushcfunction(L, hashset_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushvalue(L, -1);
        lua_setfield(L, -2, "__index");
    }
    lua_setmetatable(L, -2);
    return set;
}

static void hashset_insert(entsync_hashset *set, uint64_t hash)
{
    size_t i = (size_t)(hash ^ (hash >> 29)) & set->mask;
    while (set->slots[i] != 0) {
        if (set->slots[i] == hash)
            return;
        i = (i + 1) & set->mask;
    }
    set->slots[i] = hash;
    set->count++;
}

void entsync_hashset_add(lua_State *L, entsync_hashset *set, uint64_t hash)
{
    if (hash == 0) {
        set->has_zero = 1;
        return;
    }
    /* Kept at most three quarters full so probes stay short. */
    if (!set->slots || 4 * (set->count + 1) > 3 * (set->mask + 1)) {
        size_t size = set->slots ? 2 * (set->mask + 1) : 1024;
        uint64_t *old = set->slots;
        size_t old_size = old ? set->mask + 1 : 0;
        set->slots = calloc(size, sizeof *set->slots);
        if (!set->slots) {
            set->slots = old;
            luaL_error(L, "hash set: out of memory");
            return;
        }
        set->mask = size - 1;
        set->count = 0;
        for (size_t i = 0; i < old_size; i++)
            if (old[i] != 0)
                hashset_insert(set, old[i]);
        free(old);
    }
    hashset_insert(set, hash);
}

int entsync_hashset_has(const entsync_hashset *set, uint64_t hash)
{
    if (hash == 0)
        return set->has_zero;
    if (!set->slots)
        return 0;
    size_t i = (size_t)(hash ^ (hash >> 29)) & set->mask;
    while (set->slots[i] != 0) {
        if (set->slots[i] == hash)
            return 1;
        i = (i + 1) & set->mask;
    }
    return 0;
}

static int hashset_new(lua_State *L)
{
    entsync_hashset_push(L);
    return 1;
}

static int hashset_add(lua_State *L)
{
    entsync_hashset *set = luaL_checkudata(L, 1, HASHSET_META);
    entsync_hashset_add(L, set, (uint64_t)luaL_checkinteger(L, 2));
    return 0;
}

static int hashset_has(lua_State *L)
{
    entsync_hashset *set = luaL_checkudata(L, 1, HASHSET_META);
    lua_pushboolean(L, entsync_hashset_has(set, (uint64_t)luaL_checkinteger(L, 2)));
    return 1;
}

static int hashset_count(lua_State *L)
{
    entsync_hashset *set = luaL_checkudata(L, 1, HASHSET_META);
    lua_pushinteger(L, (lua_Integer)(set->count + (size_t)set->has_zero));
    return 1;
}

/* Turns integral floats into integers throughout a decoded JSON value:
 * lua-cjson gives every number as a float, so an id 17 would read "17.0". */
static void integerize(lua_State *L, int idx, int depth)
{
    if (depth > HASH_MAX_DEPTH)
        return;
    luaL_checkstack(L, 4, "integerize: value too deep");
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1)) {
            lua_Number n = lua_tonumber(L, -1);
            lua_Integer i;
            if (lua_numbertointeger(n, &i) && (lua_Number)i == n) {
                lua_pushvalue(L, -2);
                lua_pushinteger(L, i);
                lua_rawset(L, idx); /* assigning an existing field is allowed during lua_next */
            }
        } else if (lua_type(L, -1) == LUA_TTABLE) {
            integerize(L, lua_gettop(L), depth + 1);
        }
        lua_pop(L, 1);
    }
}

static int hash_integerize(lua_State *L)
{
    if (lua_type(L, 1) == LUA_TTABLE)
        integerize(L, 1, 0);
    lua_settop(L, 1);
    return 1;
}

/* skip_known(file, set, seed, max, max_line) -> line | nil | false,
 * skipped, lines, hash | bytes
 * Reads lines from a Lua file handle; a line whose hash (FNV-1a 64 of its
 * bytes continued from seed) is in the set is a record known unchanged and
 * is skipped, at most max of them; blank lines are passed over. Returns
 * the first unknown line (nil at the end of the file or when max were
 * skipped; false for a line over max_line bytes, read to its end in
 * bounded memory and passed over), how many were skipped, how many lines
 * were read, and the unknown line's hash (nil with no line; the length of
 * a line passed over), so no line is hashed twice. This is the whole of
 * an unchanged re-import's work per line, so it is in C. */
static int hash_skip_known(lua_State *L)
{
    luaL_Stream *stream = luaL_checkudata(L, 1, LUA_FILEHANDLE);
    entsync_hashset *set = luaL_checkudata(L, 2, HASHSET_META);
    uint64_t seed = (uint64_t)luaL_checkinteger(L, 3);
    lua_Integer max = luaL_checkinteger(L, 4);
    lua_Integer max_line = luaL_optinteger(L, 5, LUA_MAXINTEGER);
    luaL_argcheck(L, max_line > 0, 5, "max_line must be positive");
    if (!stream->closef || !stream->f)
        return luaL_error(L, "skip_known: the file is closed");
    char *line = NULL;
    size_t cap = 0, dropped = 0;
    lua_Integer skipped = 0, lines = 0;
    ssize_t len = 0;
    int found = 0;
    uint64_t hash = 0;
    while (skipped < max && (len = entsync_read_line(stream->f, &line, &cap, (size_t)max_line, &dropped)) >= 0) {
        lines++;
        if (dropped) {
            free(line);
            lua_pushboolean(L, 0);
            lua_pushinteger(L, skipped);
            lua_pushinteger(L, lines);
            lua_pushinteger(L, (lua_Integer)dropped);
            return 4;
        }
        if (len > 0 && line[len - 1] == '\n')
            len--;
        ssize_t i = 0;
        while (i < len && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r'))
            i++;
        if (i == len)
            continue; /* blank: no record */
        hash = entsync_hash_line(seed, line, (size_t)len);
        if (entsync_hashset_has(set, hash)) {
            skipped++;
            continue;
        }
        lua_pushlstring(L, line, (size_t)len);
        found = 1;
        break;
    }
    free(line);
    if (len == -2)
        return luaL_error(L, "skip_known: out of memory");
    if (!found)
        lua_pushnil(L);
    lua_pushinteger(L, skipped);
    lua_pushinteger(L, lines);
    if (found)
        lua_pushinteger(L, (lua_Integer)hash);
    else
        lua_pushnil(L);
    return 4;
}

/* line(text [, seed]) -> integer: entsync_hash_line of the bytes (seed
 * 0 when not given). */
static int hash_line(lua_State *L)
{
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    uint64_t seed = lua_isnoneornil(L, 2) ? 0 : (uint64_t)luaL_checkinteger(L, 2);
    lua_pushinteger(L, (lua_Integer)entsync_hash_line(seed, text, len));
    return 1;
}

void entsync_hash_register(lua_State *L)
{
    static const luaL_Reg set_methods[] = {
        {"add", hashset_add},
        {"has", hashset_has},
        {"count", hashset_count},
        {NULL, NULL},
    };
    entsync_hashset_push(L); /* creates the metatable once */
    lua_getmetatable(L, -1);
    luaL_setfuncs(L, set_methods, 0);
    lua_pop(L, 2);

    static const luaL_Reg functions[] = {
        {"line", hash_line},
        {"integerize", hash_integerize},
        {"skip_known", hash_skip_known},
        {"set", hashset_new},
        {NULL, NULL},
    };
    /* These share one encoding buffer, their upvalue. */
    static const luaL_Reg buffered[] = {
        {"of", hash_value},
        {"hex", hash_hex},
        {"canonical", hash_canonical},
        {NULL, NULL},
    };
    luaL_newlib(L, functions);
    canon_buf *buf = lua_newuserdatauv(L, sizeof *buf, 0);
    memset(buf, 0, sizeof *buf);
    if (luaL_newmetatable(L, CANON_BUF_META)) {
        lua_pushcfunction(L, buf_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    luaL_setfuncs(L, buffered, 1);
    lua_setfield(L, -2, "hash");
}
