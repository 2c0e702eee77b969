/*
 * record: the C record path of imports (see record.h for the contract).
 *
 * The rule everything here follows: a line is taken only when the result
 * is exactly the Lua pipeline's (lua/entsync/import.lua Run:prepare and
 * lua/entsync/mapping.lua's generated apply), and any doubt hands the line
 * back (BAIL) before anything of it is kept. So the program implements the
 * common cases of each coercion and leaves the rest to Lua.
 */
#include "record.h"

#include "document.h"
#include "fsutil.h"
#include "hash.h"
#include "json.h"
#include "json_simd.h"
#include "marks.h"
#include "store.h"

#include <lauxlib.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROGRAM_META "entsync.record.program"
#define OBJECT_MT "entsync.json.object"
#define ARRAY_MT "entsync.json.array"

/* The key under which a view keeps its state: the program whose current
 * record it is, or, once that record is done, the line's text. A light
 * userdata key: no JSON record has one. */
static const char VIEW_KEY = 0;

/* What a callback's nil result is kept as among a record's results. */
static const char MEMO_NIL = 0;

/* Bit width of the local id in the id map's key (lua/entsync/ledger.lua). */
#define KEY_BITS 40

/* Creates written a statement a table: SQLite's fixed cost of a statement
 * (its setup, its halt, the cursors it opens) is then paid once for them,
 * a third of a create's cost when each was a statement of its own. */
#define ROWS 64
/* The runs of creates written with one statement a table, longest first:
 * a page of 100 records goes as 64 + 2 x 16 + 4 rows. */
static const int RUN_ROWS[] = {ROWS, 16, 4};
#define NRUNS 3

/* A statement binds at most 32766 parameters (SQLite 3.32 and later). */
#define ROWS_MAX_COLUMNS (32766 / ROWS)

enum field_type { F_TEXT, F_INTEGER, F_REAL, F_BOOLEAN, F_JSON, F_TIMESTAMP };
enum cell_type { CELL_NIL, CELL_INT, CELL_REAL, CELL_TEXT, CELL_BOOL, CELL_JSON };

/* One mapped value, typed as its column takes it. Text lives in the
 * arena (off, len); a json value also keeps its canonical encoding there
 * (coff, clen). */
typedef struct cell {
    int type;
    long long i;
    double d;
    size_t off, len, coff, clen;
} cell;

typedef struct path_key {
    char *name; /* NULL for an array index */
    size_t len;
    long long index;
} path_key;

typedef struct field {
    char *name;
    size_t name_len;
    char *canon; /* the name's canonical encoding, "s<len>:<name>" */
    size_t canon_len;
    path_key *keys;
    int nkeys;
    int type;
    int required;
    int callback; /* its import function's slot in the callbacks table, or 0 */
    int callback_after; /* a callback runs after it (it may change this field's value) */
    int has_default;
} field;

typedef struct entity {
    char *name;
    size_t name_len;
    char *canon; /* as a field's */
    size_t canon_len;
    field *fields;
    int nfields;
    int *order; /* the fields by name, bytewise: the canonical encoding's order */
    int first;  /* the index of its first cell in a record's cells */
} entity;

/* A record taken, waiting for the write phase. */
typedef struct entry {
    size_t line_off, line_len;
    uint64_t raw_hash, hash;
    int hashed; /* hash is map_record's; else (a create) it is taken at the write: entry_hash */
    cell id, changed;
    size_t cells;
    lua_Integer src;    /* a decoded record's index in the caller's list (no line) */
    int update;         /* an update of local_id, else a create */
    long long local_id;
} entry;

/* One member of the record being mapped: its key and its value's nodes. */
typedef struct member {
    const char *key;
    size_t len;
    const entsync_json_node *value;
    int decoded; /* a view of the record decoded or set it: absent since, a callback removed it */
} member;


typedef struct program {
    entity *entities;
    int nentities, ncells, max_columns; /* the widest entity's fields */
    int *entity_order;
    char *id_field, *changed_field;
    size_t id_len, changed_len;
    int kind_text; /* changed_kind "text": marks compare as their text */
    uint64_t seed;
    long long sync_id;
    entsync_json_parser *parser;
    entsync_json_encoder *encoder;
    member *members;
    size_t nmembers, members_cap;
    char *line;
    size_t line_cap;
    char *buf; /* the arena: texts of the batch's entries */
    size_t len, cap;
    entry *entries;
    size_t n, entries_cap;
    cell *cells;
    size_t ncells_used, cells_cap;
    int has_max; /* the largest (mark, id) noted since max() */
    entsync_mark max_mark;
    entsync_id max_id;
    size_t max_cap;
    char *max_text; /* the texts of both */
    int updates;    /* a record the id map holds may be updated here */
    const void *view; /* the view of the record being mapped, or NULL */
    int view_extra;   /* since the last callback, the view holds a key the record did not give it */
    int view_removed; /* since the last callback, a field the view decoded is gone from it */
    int track_seen;   /* the run marks unchanged records seen (deletes not "keep") */
    int *pending;     /* slots of json values encoded once every field is mapped */
    int npending;
    int *memo;        /* slots of the callbacks run for the record being mapped */
    int nmemo;
    int failed;     /* out of memory in the arena: raised once back in Lua */
    /* the many-rows statements, made at the first write and kept (the
     * store's statements live while it is open, and the uservalue table
     * anchors it): a write of one page would otherwise build their text */
    sqlite3_stmt *run_rows[16][NRUNS];
    sqlite3_stmt *run_map[NRUNS];
    /* the same id-map rows with no key: SQLite gives each the largest key
     * plus one, an append that skips the search for the key an explicit
     * one takes (see write_creates) */
    sqlite3_stmt *run_map_next[NRUNS];
    sqlite3_stmt *run_max_id;  /* the first entity's last id given (entsync_store_writer_max_stmt) */
    sqlite3_stmt *run_max_key; /* the id map's largest key */
    int runs_made;
    /* the batch's writes kept for hand_off, the other pair of buffers, and
     * the batch handed off last */
    struct range *queued;
    size_t nqueued, queued_cap;
    char *spare_buf;
    size_t spare_cap;
    entry *spare_entries;
    size_t spare_entries_cap;
    cell *spare_cells;
    size_t spare_cells_cap;
    struct handed *handed;
} program;

/* Slots of the program's uservalue table. */
enum { SLOT_WRITERS = 1, SLOT_CALLBACKS, SLOT_COERCE, SLOT_CTX, SLOT_ENCODE, SLOT_CANONICAL, SLOT_DEFAULTS,
       SLOT_STORE, SLOT_IDMAP_SQL, SLOT_KEYS, SLOT_OBJECT_MT, SLOT_LOOKUP_SQL, SLOT_SAVE_SQL, SLOT_LINKS,
       SLOT_NAMES, SLOT_IDMAP_ROWS_SQL, SLOT_PATHS, SLOT_PENDING, SLOT_MEMO, SLOT_MEMO_ERRORS,
       SLOT_HELD, SLOT_UPDATE_SQL, SLOT_MAX_KEY_SQL, SLOT_COUNT = SLOT_MAX_KEY_SQL };

static const char *const type_names[] = {"text", "integer", "real", "boolean", "json", "timestamp", NULL};

/* --- the arena ------------------------------------------------------------ */

/* Room for n more bytes; 0 when out of memory (the line is handed back). */
static int arena_room(program *p, size_t n)
{
    if (n <= p->cap - p->len)
        return 1;
    size_t cap = p->cap ? p->cap : 1 << 16;
    while (cap - p->len < n)
        cap *= 2;
    char *grown = realloc(p->buf, cap);
    if (!grown) {
        p->failed = 1;
        return 0;
    }
    p->buf = grown;
    p->cap = cap;
    return 1;
}

static int arena_add(program *p, const void *s, size_t n, size_t *off)
{
    if (!arena_room(p, n))
        return 0;
    *off = p->len;
    if (n)
        memcpy(p->buf + p->len, s, n);
    p->len += n;
    return 1;
}

static cell *cells_of(program *p, size_t first)
{
    return p->cells + first;
}

/* --- the record's members and paths ------------------------------------- */

/* Lists the members of the object at obj; 0 when out of memory. */
static int index_members(program *p, const entsync_json_node *obj)
{
    size_t count = obj->len;
    if (count > p->members_cap) {
        member *grown = realloc(p->members, count * sizeof *grown);
        if (!grown)
            return 0;
        p->members = grown;
        p->members_cap = count;
    }
    const entsync_json_node *n = obj + 1;
    for (size_t i = 0; i < count; i++) {
        p->members[i].key = n->as.string;
        p->members[i].len = n->len;
        p->members[i].value = n + 1;
        p->members[i].decoded = 0;
        n = entsync_json_node_after(n + 1);
    }
    p->nmembers = count;
    return 1;
}

/* The value of key in the record's members (the last one of a repeated
 * key, as decoding keeps), or NULL. */
static const member *find_member(const program *p, const char *key, size_t len)
{
    for (size_t i = p->nmembers; i-- > 0;) {
        const member *m = &p->members[i];
        if (m->len == len && (len == 0 || (m->key[0] == key[0] && memcmp(m->key, key, len) == 0)))
            return m;
    }
    return NULL;
}

/* The value at a field's path, as mapping.get_path reads a decoded record:
 * a name reads an object, an index an array, anything else is nothing. */
static const entsync_json_node *path_value(const program *p, const field *f)
{
    const path_key *k = &f->keys[0];
    if (!k->name)
        return NULL;
    const member *m = find_member(p, k->name, k->len);
    const entsync_json_node *n = m ? m->value : NULL;
    for (int i = 1; n && i < f->nkeys; i++) {
        k = &f->keys[i];
        if (k->name) {
            n = n->type == ENTSYNC_JSON_OBJECT ? entsync_json_object_get(n, k->name, k->len) : NULL;
        } else if (n->type == ENTSYNC_JSON_ARRAY) {
            n = entsync_json_array_item(n, k->index);
        } else {
            n = NULL;
        }
    }
    return n;
}

/* --- views ------------------------------------------------------------------ */

static void push_marks(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, OBJECT_MT);
    lua_getfield(L, LUA_REGISTRYINDEX, ARRAY_MT);
}

/* Decodes into the view at idx every member of the current record it
 * does not hold yet (a field the callback set is left as it set it). */
static void settle_current(lua_State *L, program *p, int idx)
{
    luaL_checkstack(L, 6, "record: too deep");
    push_marks(L);
    int marks = lua_gettop(L) - 1;
    for (size_t i = 0; i < p->nmembers; i++) {
        const member *m = &p->members[i];
        if (m->decoded || find_member(p, m->key, m->len) != m)
            continue; /* decoded already (and kept, changed or removed), or a repeated key */
        lua_pushlstring(L, m->key, m->len);
        if (lua_rawget(L, idx) != LUA_TNIL) {
            lua_pop(L, 1);
            continue;
        }
        lua_pop(L, 1);
        lua_pushlstring(L, m->key, m->len);
        entsync_json_push_node(L, m->value, marks, marks + 1);
        lua_rawset(L, idx);
    }
    lua_pop(L, 2);
}

/* Decodes into the view at idx the line its record was read from. */
static void settle_line(lua_State *L, int idx, int line)
{
    luaL_checkstack(L, 6, "record: too deep");
    lua_getfield(L, LUA_REGISTRYINDEX, "entsync.record.decode");
    lua_pushvalue(L, line);
    lua_call(L, 1, 1);
    int decoded = lua_gettop(L);
    if (lua_type(L, decoded) == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, decoded) != 0) {
            lua_pushvalue(L, -2);
            if (lua_rawget(L, idx) == LUA_TNIL) {
                lua_pop(L, 1);
                lua_pushvalue(L, -2);
                lua_insert(L, -2);
                lua_rawset(L, idx);
            } else {
                lua_pop(L, 2);
            }
        }
    }
    lua_pop(L, 1);
}

void entsync_record_settle(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    int state = lua_rawgetp(L, idx, &VIEW_KEY);
    if (state == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    /* the state leaves first: settling reads fields, which must not
     * come back here */
    lua_pushnil(L);
    lua_rawsetp(L, idx, &VIEW_KEY);
    int at = lua_gettop(L);
    if (state == LUA_TSTRING) {
        settle_line(L, idx, at);
    } else {
        program *p = luaL_testudata(L, at, PROGRAM_META);
        if (p && p->view == lua_topointer(L, idx))
            settle_current(L, p, idx);
    }
    lua_settop(L, at - 1);
}

/* __index of json.object_mt: nothing for a decoded object; for a view, the
 * field decoded (and kept) at its first read. Upvalues: the programs'
 * metatable, json.object_mt and json.array_mt. */
static int view_index(lua_State *L)
{
    if (lua_rawgetp(L, 1, &VIEW_KEY) == LUA_TNIL || lua_type(L, 2) != LUA_TSTRING)
        return 0;
    if (lua_getmetatable(L, -1) && lua_rawequal(L, -1, lua_upvalueindex(1))) {
        program *p = lua_touserdata(L, -2);
        if (p->view == lua_topointer(L, 1)) {
            size_t len;
            const char *key = lua_tolstring(L, 2, &len);
            member *m = (member *)find_member(p, key, len);
            if (!m || m->decoded)
                return 0; /* not in the record, or removed from the view since */
            m->decoded = 1;
            lua_pushvalue(L, 2);
            entsync_json_push_node(L, m->value, lua_upvalueindex(2), lua_upvalueindex(3));
            lua_pushvalue(L, -1);
            lua_insert(L, -3);
            lua_rawset(L, 1);
            return 1;
        }
    }
    lua_settop(L, 2);
    entsync_record_settle(L, 1);
    lua_settop(L, 2);
    lua_rawget(L, 1);
    return 1;
}

/* __newindex of json.object_mt: a field set that the table does not hold.
 * On a view, the record's field of that name is the callback's from now
 * on (set, or removed when the value is nil), whatever the line holds. */
static int view_newindex(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TSTRING && lua_rawgetp(L, 1, &VIEW_KEY) != LUA_TNIL && lua_getmetatable(L, -1) &&
        lua_rawequal(L, -1, lua_upvalueindex(1))) {
        program *p = lua_touserdata(L, -2);
        if (p->view == lua_topointer(L, 1)) {
            size_t len;
            const char *key = lua_tolstring(L, 2, &len);
            member *m = (member *)find_member(p, key, len);
            if (m)
                m->decoded = 1;
        }
    }
    lua_settop(L, 3);
    lua_rawset(L, 1);
    return 0;
}

static int view_next(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    if (lua_next(L, 1))
        return 2;
    lua_pushnil(L);
    return 1;
}

/* __pairs of json.object_mt: a view is decoded whole first. */
static int view_pairs(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    entsync_record_settle(L, 1);
    lua_pushcfunction(L, view_next);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* --- values into cells -------------------------------------------------------- */

enum { TAKEN, OLDER, SAME, BAIL };

static int text_cell(program *p, cell *c, const char *s, size_t len)
{
    c->type = CELL_TEXT;
    return arena_add(p, s, len, &c->off) ? (c->len = len, 1) : 0;
}

/* "%d" of an integer, as string.format gives it. */
static int integer_text_cell(program *p, cell *c, long long n)
{
    char text[32];
    size_t len;
    const char *digits = entsync_hash_tagged(text, 0, n, 0, &len);
    return text_cell(p, c, digits, len);
}

/* math.tointeger of a float: 1 with *out set when it has an exact integer. */
static int float_integer(double d, long long *out)
{
    if (d != floor(d) || !(d >= -9223372036854775808.0 && d < 9223372036854775808.0))
        return 0;
    *out = (long long)d;
    return 1;
}

/* Whether s starts as the timestamps coerce.timestamp keeps: YYYY-MM-DD. */
static int looks_dated(const char *s, size_t len)
{
    static const char shape[] = "dddd-dd-dd";
    if (len < 10)
        return 0;
    for (int i = 0; i < 10; i++) {
        int digit = s[i] >= '0' && s[i] <= '9';
        if (shape[i] == 'd' ? !digit : s[i] != '-')
            return 0;
    }
    return 1;
}

/* A string node into a text cell. Its UTF-8 was checked by its parse: a
 * NUL is all a text column is left to refuse. */
static int string_cell(program *p, cell *c, const entsync_json_node *n)
{
    return !memchr(n->as.string, 0, n->len) && text_cell(p, c, n->as.string, n->len) ? TAKEN : BAIL;
}

/* A JSON entsync_mark node as its column takes it (mapping.lua's coerce for the
 * cases done here); BAIL for the rest. Containers are not scalars. */
static int node_cell(program *p, const field *f, const entsync_json_node *n, cell *c)
{
    long long i;
    switch (f->type) {
    case F_TEXT:
        if (n->type == ENTSYNC_JSON_STRING)
            return string_cell(p, c, n);
        if (n->type == ENTSYNC_JSON_INTEGER)
            return integer_text_cell(p, c, n->as.integer) ? TAKEN : BAIL;
        if (n->type == ENTSYNC_JSON_FLOAT && fabs(n->as.number) < 9007199254740992.0 && float_integer(n->as.number, &i))
            return integer_text_cell(p, c, i) ? TAKEN : BAIL;
        if (n->type == ENTSYNC_JSON_TRUE || n->type == ENTSYNC_JSON_FALSE)
            return text_cell(p, c, n->type == ENTSYNC_JSON_TRUE ? "true" : "false",
                             n->type == ENTSYNC_JSON_TRUE ? 4 : 5) ? TAKEN : BAIL;
        return BAIL;
    case F_INTEGER:
        c->type = CELL_INT;
        if (n->type == ENTSYNC_JSON_INTEGER)
            return c->i = n->as.integer, TAKEN;
        if (n->type == ENTSYNC_JSON_FLOAT && float_integer(n->as.number, &c->i))
            return TAKEN;
        if (n->type == ENTSYNC_JSON_TRUE || n->type == ENTSYNC_JSON_FALSE)
            return c->i = n->type == ENTSYNC_JSON_TRUE, TAKEN;
        return BAIL;
    case F_REAL:
        c->type = CELL_REAL;
        if (n->type == ENTSYNC_JSON_INTEGER)
            return c->d = (double)n->as.integer, TAKEN;
        if (n->type == ENTSYNC_JSON_FLOAT)
            return c->d = n->as.number, TAKEN;
        return BAIL;
    case F_BOOLEAN:
        c->type = CELL_BOOL;
        if (n->type == ENTSYNC_JSON_TRUE || n->type == ENTSYNC_JSON_FALSE)
            return c->i = n->type == ENTSYNC_JSON_TRUE, TAKEN;
        if (n->type == ENTSYNC_JSON_INTEGER && (n->as.integer == 0 || n->as.integer == 1))
            return c->i = n->as.integer, TAKEN;
        if (n->type == ENTSYNC_JSON_FLOAT && (n->as.number == 0 || n->as.number == 1))
            return c->i = n->as.number == 1, TAKEN;
        return BAIL;
    case F_TIMESTAMP:
        if (n->type == ENTSYNC_JSON_STRING && looks_dated(n->as.string, n->len))
            return string_cell(p, c, n);
        return BAIL;
    default:
        return BAIL;
    }
}

/* A json field's value (at idx): the text the column stores and its
 * canonical encoding, both through entsync's own encoders. */
static int json_cell(lua_State *L, program *p, int uv, int idx, cell *c)
{
    idx = lua_absindex(L, idx);
    c->type = CELL_JSON;
    lua_rawgeti(L, uv, SLOT_ENCODE);
    lua_pushvalue(L, idx);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK || lua_type(L, -1) != LUA_TSTRING) {
        lua_pop(L, 1);
        return BAIL;
    }
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    int ok = arena_add(p, s, len, &c->off);
    c->len = len;
    lua_pop(L, 1);
    if (!ok)
        return BAIL;
    lua_rawgeti(L, uv, SLOT_CANONICAL);
    lua_pushvalue(L, idx);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK || lua_type(L, -1) != LUA_TSTRING) {
        lua_pop(L, 1);
        return BAIL;
    }
    s = lua_tolstring(L, -1, &len);
    ok = arena_add(p, s, len, &c->coff);
    c->clen = len;
    lua_pop(L, 1);
    return ok ? TAKEN : BAIL;
}

/* Appends to the arena the canonical encoding (hash.c's) of the value
 * the nodes at n decode to; 0 when out of memory. */
static int canon_node_bytes(program *p, const entsync_json_node *n)
{
    char text[48];
    const char *t;
    size_t off, tlen;
    long long i;
    int len;
    switch (n->type) {
    case ENTSYNC_JSON_NULL:
        return arena_add(p, "n", 1, &off);
    case ENTSYNC_JSON_FALSE:
        return arena_add(p, "f", 1, &off);
    case ENTSYNC_JSON_TRUE:
        return arena_add(p, "t", 1, &off);
    case ENTSYNC_JSON_INTEGER:
        t = entsync_hash_tagged(text, 'i', n->as.integer, ';', &tlen);
        return arena_add(p, t, tlen, &off);
    case ENTSYNC_JSON_FLOAT:
        if (float_integer(n->as.number, &i)) {
            t = entsync_hash_tagged(text, 'i', i, ';', &tlen);
            return arena_add(p, t, tlen, &off);
        }
        len = snprintf(text, sizeof text, "d%.17g;", n->as.number);
        return arena_add(p, text, (size_t)len, &off);
    case ENTSYNC_JSON_STRING:
        t = entsync_hash_tagged(text, 's', (long long)n->len, ':', &tlen);
        return arena_add(p, t, tlen, &off) && arena_add(p, n->as.string, n->len, &off);
    case ENTSYNC_JSON_ARRAY: {
        t = entsync_hash_tagged(text, 'a', (long long)n->len, ':', &tlen);
        if (!arena_add(p, t, tlen, &off))
            return 0;
        const entsync_json_node *item = n + 1;
        for (size_t k = 0; k < n->len; k++, item = entsync_json_node_after(item))
            if (!canon_node_bytes(p, item))
                return 0;
        return 1;
    }
    default: {
        entsync_json_member *members;
        long count = entsync_json_sorted_members(n, &members);
        if (count < 0)
            return 0;
        t = entsync_hash_tagged(text, count ? 'o' : 'a', count, ':', &tlen);
        int ok = arena_add(p, t, tlen, &off);
        for (long k = 0; ok && k < count; k++) {
            t = entsync_hash_tagged(text, 's', (long long)members[k].len, ':', &tlen);
            ok = arena_add(p, t, tlen, &off) && arena_add(p, members[k].key, members[k].len, &off) &&
                 canon_node_bytes(p, members[k].value);
        }
        free(members);
        return ok;
    }
    }
}

/* A json field's value read from the record (nodes at n), encoded and
 * canonically encoded in C as encode and core.hash would do its decoded
 * value. */
static int json_node_cell(lua_State *L, program *p, const entsync_json_node *n, cell *c)
{
    size_t len;
    const char *text = entsync_json_encode_node(L, p->encoder, n, &len);
    c->type = CELL_JSON;
    if (!arena_add(p, text, len, &c->off))
        return BAIL;
    c->len = len;
    c->coff = p->len;
    if (!canon_node_bytes(p, n))
        return BAIL;
    c->clen = p->len - c->coff;
    return TAKEN;
}

/* A Lua value at idx already of its column's type (the generated apply's
 * native check), into c; 0 when it is not. */
static int native_cell(program *p, const field *f, lua_State *L, int idx, cell *c, int *result)
{
    int t = lua_type(L, idx);
    size_t len;
    const char *s;
    switch (f->type) {
    case F_TEXT:
        if (t != LUA_TSTRING)
            return 0;
        s = lua_tolstring(L, idx, &len);
        if (entsync_json_text_bad(s, len))
            return 0;
        *result = text_cell(p, c, s, len) ? TAKEN : BAIL;
        return 1;
    case F_INTEGER:
        if (!lua_isinteger(L, idx))
            return 0;
        c->type = CELL_INT;
        c->i = (long long)lua_tointeger(L, idx);
        *result = TAKEN;
        return 1;
    case F_REAL:
        if (t != LUA_TNUMBER || lua_isinteger(L, idx) || !isfinite(lua_tonumber(L, idx)))
            return 0;
        c->type = CELL_REAL;
        c->d = (double)lua_tonumber(L, idx);
        *result = TAKEN;
        return 1;
    case F_BOOLEAN:
        if (t != LUA_TBOOLEAN)
            return 0;
        c->type = CELL_BOOL;
        c->i = lua_toboolean(L, idx);
        *result = TAKEN;
        return 1;
    case F_TIMESTAMP:
        /* a dated text is kept as it is, as node_cell keeps one; any
         * other value is mapping.coerce's */
        if (t != LUA_TSTRING)
            return 0;
        s = lua_tolstring(L, idx, &len);
        if (!looks_dated(s, len) || entsync_json_text_bad(s, len))
            return 0;
        *result = text_cell(p, c, s, len) ? TAKEN : BAIL;
        return 1;
    default:
        return 0;
    }
}

/* A Lua value at idx (a callback's result, a default) as its column takes
 * it: kept when native, else through mapping.coerce[type], whose nil is
 * the Lua pipeline's failure (BAIL: Lua reports it). */
static int lua_cell(lua_State *L, program *p, int uv, const field *f, int idx, cell *c)
{
    idx = lua_absindex(L, idx);
    if (f->type == F_JSON)
        return json_cell(L, p, uv, idx, c);
    int result;
    if (native_cell(p, f, L, idx, c, &result))
        return result;
    lua_rawgeti(L, uv, SLOT_COERCE);
    lua_getfield(L, -1, type_names[f->type]);
    lua_remove(L, -2);
    lua_pushvalue(L, idx);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK || lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return BAIL;
    }
    if (f->type == F_TIMESTAMP) {
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        result = lua_type(L, -1) == LUA_TSTRING && text_cell(p, c, s, len) ? TAKEN : BAIL;
    } else if (!native_cell(p, f, L, -1, c, &result)) {
        result = BAIL;
    }
    lua_pop(L, 1);
    return result;
}

/* --- the canonical hash -------------------------------------------------------- */

/* The canonical encoding being hashed, or gathered into buf (up to cap
 * bytes; over when it did not fit) for entsync_hash_pair. */
typedef struct canon {
    uint64_t h;
    char *buf;
    size_t len, cap;
    int over;
} canon;

static void canon_add(canon *k, const void *s, size_t n)
{
    if (!k->buf) {
        k->h = entsync_hash_continue(k->h, s, n);
    } else if (n > k->cap - k->len) {
        k->over = 1;
    } else {
        memcpy(k->buf + k->len, s, n);
        k->len += n;
    }
}

/* tag, n's digits, end: hash.c's buf_add_tagged. */
static void canon_tagged(canon *k, char tag, long long n, char end)
{
    char text[32];
    size_t len;
    const char *t = entsync_hash_tagged(text, tag, n, end, &len);
    canon_add(k, t, len);
}

static void canon_string(canon *k, const char *s, size_t len)
{
    canon_tagged(k, 's', (long long)len, ':');
    canon_add(k, s, len);
}

static void canon_cell(canon *k, const program *p, const cell *c)
{
    long long i;
    char text[40];
    switch (c->type) {
    case CELL_INT:
        canon_tagged(k, 'i', c->i, ';');
        break;
    case CELL_REAL:
        if (float_integer(c->d, &i)) {
            canon_tagged(k, 'i', i, ';');
        } else {
            int n = snprintf(text, sizeof text, "d%.17g;", c->d);
            canon_add(k, text, (size_t)n);
        }
        break;
    case CELL_TEXT:
        canon_string(k, p->buf + c->off, c->len);
        break;
    case CELL_BOOL:
        canon_add(k, c->i ? "t" : "f", 1);
        break;
    case CELL_JSON:
        canon_add(k, p->buf + c->coff, c->clen);
        break;
    default:
        canon_add(k, "n", 1);
    }
}

/* The canonical encoding of the mapped entities { entity = { field = value } }
 * as core.hash.of encodes them: the entities and their fields in bytewise
 * order of their names, an entity with no value an empty sequence. */
static void record_canon(canon *k, const program *p, const cell *cells)
{
    canon_tagged(k, 'o', p->nentities, ':');
    for (int e = 0; e < p->nentities; e++) {
        const entity *en = &p->entities[p->entity_order[e]];
        canon_add(k, en->canon, en->canon_len);
        int present = 0;
        for (int i = 0; i < en->nfields; i++)
            present += cells[en->first + i].type != CELL_NIL;
        if (!present) {
            canon_add(k, "a0:", 3);
            continue;
        }
        canon_tagged(k, 'o', present, ':');
        for (int i = 0; i < en->nfields; i++) {
            const field *f = &en->fields[en->order[i]];
            const cell *c = &cells[en->first + en->order[i]];
            if (c->type == CELL_NIL)
                continue;
            canon_add(k, f->canon, f->canon_len);
            canon_cell(k, p, c);
        }
    }
}

/* core.hash.of the mapped entities (record_canon). */
static uint64_t record_hash(const program *p, const cell *cells)
{
    canon k = {entsync_hash_bytes("", 0), NULL, 0, 0, 0};
    record_canon(&k, p, cells);
    return k.h;
}

/* An entry's record hash: map_record's, or for a create the one it left
 * to the write. */
static uint64_t entry_hash(const program *p, const entry *en)
{
    return en->hashed ? en->hash : record_hash(p, cells_of((program *)p, en->cells));
}

/* Records whose canonical encoding is longer than this are hashed alone. */
#define PAIR_BYTES 1024

/* The hashes of entries from..from + n - 1, a run of creates (whose
 * hashes map_record left to here), two at a time: FNV-1a is one multiply
 * after another, byte after byte, so the bytes of two records hashed side
 * by side (entsync_hash_pair) take about the time of one. */
static void run_hashes(const program *p, lua_Integer from, int n, uint64_t *out)
{
    char a[PAIR_BYTES], b[PAIR_BYTES];
    for (int r = 0; r < n; r += 2) {
        const entry *x = &p->entries[from - 1 + r];
        if (r + 1 == n) {
            out[r] = entry_hash(p, x);
            break;
        }
        canon ka = {0, a, 0, sizeof a, 0}, kb = {0, b, 0, sizeof b, 0};
        record_canon(&ka, p, cells_of((program *)p, x[0].cells));
        record_canon(&kb, p, cells_of((program *)p, x[1].cells));
        if (ka.over || kb.over) {
            out[r] = entry_hash(p, x);
            out[r + 1] = entry_hash(p, x + 1);
        } else {
            entsync_hash_pair(a, ka.len, b, kb.len, &out[r], &out[r + 1]);
        }
    }
}

/* A cell (an id or a mark read here) as a mark. */
static entsync_mark cell_mark(const program *p, const cell *c)
{
    entsync_mark v = {LUA_TNIL, 0, 0, 0, NULL, 0};
    if (c->type == CELL_INT) {
        v.type = LUA_TNUMBER;
        v.integer = 1;
        v.i = c->i;
    } else if (c->type == CELL_TEXT) {
        v.type = LUA_TSTRING;
        v.s = p->buf + c->off;
        v.len = c->len;
    }
    return v;
}

/* The text of an id cell (ids.text). */
static const char *id_text(const program *p, const cell *c, char *text, size_t size, size_t *len)
{
    if (c->type == CELL_INT && size >= 32)
        return entsync_hash_tagged(text, 0, c->i, 0, len);
    *len = c->len;
    return p->buf + c->off;
}

/* An id cell as marks.h compares it: an integer with no text when its
 * digits are an integer id's (fewer than 19 bytes), else its text, an
 * integer's written into text (32 bytes). A text id's view into the arena
 * holds until the arena grows. */
static entsync_id cell_id(const program *p, const cell *c, char *text, size_t size)
{
    if (c->type == CELL_INT && c->i > -100000000000000000LL && c->i < 1000000000000000000LL) {
        entsync_id id = {NULL, 0, 1, c->i};
        return id;
    }
    size_t len;
    const char *s = id_text(p, c, text, size, &len);
    return entsync_id_of(s, len);
}

/* --- mapping one record ----------------------------------------------------------- */

/* What mapping one record needs on the Lua side: the program's uservalue
 * table and, once a callback runs, the view of the record. */
typedef struct mapping_run {
    int uv;   /* the uservalue table's stack index */
    int view; /* the view's stack index, or 0 before the first callback */
    int prog; /* the program's stack index */
    const cell *id;
    long long local_id; /* the id map's, for ctx.local_id; 0: none yet */
    int table;          /* the record's stack index when it is a Lua table (no view) */
    int ran;            /* a callback ran for the record */
} mapping_run;

/* Pushes an id cell as the Lua value ids.remote gives. */
static void push_id(lua_State *L, const program *p, const cell *c)
{
    if (c->type == CELL_INT)
        lua_pushinteger(L, (lua_Integer)c->i);
    else
        lua_pushlstring(L, p->buf + c->off, c->len);
}

/* The view of the record being mapped, made at its first callback; ctx is
 * pointed at it as ctx:at(remote_id, nil, record) would. */
static int ensure_view(lua_State *L, program *p, mapping_run *r)
{
    if (r->view)
        return r->view;
    if (r->table) {
        r->view = r->table; /* a decoded record is its own view */
    } else {
        lua_createtable(L, 0, 4);
        lua_rawgeti(L, r->uv, SLOT_OBJECT_MT);
        lua_setmetatable(L, -2);
        lua_pushvalue(L, r->prog);
        lua_rawsetp(L, -2, &VIEW_KEY);
        r->view = lua_gettop(L);
        p->view = lua_topointer(L, r->view); /* the view stays on the stack while it is current */
        p->view_extra = p->view_removed = 0;
    }
    lua_rawgeti(L, r->uv, SLOT_CTX);
    if (lua_type(L, -1) == LUA_TTABLE) {
        /* ctx:at(remote_id, local_id, record), its keys kept as strings */
        lua_rawgeti(L, r->uv, SLOT_KEYS);
        lua_rawgeti(L, -1, 1);
        push_id(L, p, r->id);
        lua_rawset(L, -4);
        lua_rawgeti(L, -1, 2);
        if (r->local_id)
            lua_pushinteger(L, (lua_Integer)r->local_id);
        else
            lua_pushnil(L);
        lua_rawset(L, -4);
        lua_rawgeti(L, -1, 3);
        lua_pushvalue(L, r->view);
        lua_rawset(L, -4);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return r->view;
}

/* The record is done: a view still referenced keeps the line it came from,
 * to be decoded whole at its next use; a view of a document's record (no
 * line) is decoded whole now, since the document moves on to other pages. */
static void seal_view(lua_State *L, program *p, mapping_run *r, const char *line, size_t len)
{
    if (!r->view || r->table)
        return;
    if (lua_rawgetp(L, r->view, &VIEW_KEY) == LUA_TUSERDATA && (void *)lua_touserdata(L, -1) == (void *)p) {
        if (p->view_removed || !line) {
            /* a callback removed a field: the line would bring it back,
             * so the view is decoded whole now, without it */
            settle_current(L, p, r->view);
            lua_pushnil(L);
        } else {
            lua_pushlstring(L, line, len);
        }
        lua_rawsetp(L, r->view, &VIEW_KEY);
    }
    lua_pop(L, 1);
    p->view = NULL;
}

/* After a callback: notes whether the view at view holds a key that is
 * not a field it decoded (the callback set it, or decoded the view whole:
 * the fields mapped after it look each such key up in the view), and
 * whether a field it decoded is gone (seal_view must not let the line
 * bring it back). Members decoded after the last callback are in the view:
 * only Lua code removes one. One walk over the few keys a view holds, in
 * place of a lookup a field. */
static void note_view_keys(lua_State *L, program *p, int view)
{
    size_t decoded = 0, present = 0;
    int extra = 0;
    for (size_t i = 0; i < p->nmembers; i++)
        decoded += p->members[i].decoded != 0;
    lua_pushnil(L);
    while (lua_next(L, view) != 0) {
        lua_pop(L, 1);
        int type = lua_type(L, -1);
        if (type == LUA_TSTRING) {
            size_t len;
            const char *key = lua_tolstring(L, -1, &len);
            const member *m = find_member(p, key, len);
            if (m && m->decoded)
                present++;
            else
                extra = 1;
        } else if (type != LUA_TLIGHTUSERDATA || lua_touserdata(L, -1) != (void *)&VIEW_KEY) {
            extra = 1;
        }
    }
    p->view_extra = extra;
    p->view_removed = present != decoded;
}

/* Pushes the value at a field's path read through the view (or the
 * decoded record) at view, as the generated apply reads a decoded record:
 * a table step by step. The path's keys are the compiled mapping's own
 * Lua values (paths[slot]), so no key is made again. */
static void push_view_path(lua_State *L, const field *f, int view, int uv, int slot)
{
    lua_rawgeti(L, uv, SLOT_PATHS);
    lua_rawgeti(L, -1, slot);
    lua_remove(L, -2);
    int keys = lua_gettop(L);
    lua_pushvalue(L, view);
    for (int i = 0; i < f->nkeys; i++) {
        if (lua_type(L, -1) != LUA_TTABLE) {
            lua_pop(L, 1);
            lua_pushnil(L);
            break;
        }
        lua_rawgeti(L, keys, i + 1);
        lua_gettable(L, -2); /* a view's __index decodes the field */
        lua_remove(L, -2);
    }
    lua_remove(L, keys);
}

/* Keeps the json value on top for encoding once every field is mapped
 * (as the Lua pipeline stores a table a later callback changed). */
static int defer_json(lua_State *L, program *p, mapping_run *r, int slot)
{
    lua_rawgeti(L, r->uv, SLOT_PENDING);
    lua_pushvalue(L, -2);
    lua_rawseti(L, -2, slot);
    lua_pop(L, 1);
    p->pending[p->npending++] = slot;
    return TAKEN;
}

/* Encodes the json values defer_json kept into their cells (NULL: the
 * record is not taken, they are only dropped). */
static int resolve_json(lua_State *L, program *p, mapping_run *r, cell *cells)
{
    int result = cells ? TAKEN : BAIL;
    lua_rawgeti(L, r->uv, SLOT_PENDING);
    for (int i = 0; i < p->npending; i++) {
        int slot = p->pending[i];
        lua_rawgeti(L, -1, slot);
        if (result == TAKEN)
            result = json_cell(L, p, r->uv, -1, &cells[slot - 1]);
        lua_pop(L, 1);
        lua_pushnil(L);
        lua_rawseti(L, -2, slot);
    }
    lua_pop(L, 1);
    p->npending = 0;
    return result;
}

/* Forgets the callback results kept for the last record. */
static void clear_memo(lua_State *L, program *p, mapping_run *r)
{
    if (!p->nmemo)
        return;
    lua_rawgeti(L, r->uv, SLOT_MEMO);
    lua_rawgeti(L, r->uv, SLOT_MEMO_ERRORS);
    for (int i = 0; i < p->nmemo; i++) {
        lua_pushnil(L);
        lua_rawseti(L, -3, p->memo[i]);
        lua_pushnil(L);
        lua_rawseti(L, -2, p->memo[i]);
    }
    lua_pop(L, 2);
    p->nmemo = 0;
}

/* A record handed to the Lua pipeline after callbacks ran: it takes the
 * record as they left it (the view, or the decoded record) with their
 * results, kept for program:held(); the program keeps new result tables. */
static void hold_record(lua_State *L, program *p, mapping_run *r)
{
    lua_createtable(L, 3, 0);
    lua_pushvalue(L, r->view);
    lua_rawseti(L, -2, 1);
    lua_rawgeti(L, r->uv, SLOT_MEMO);
    lua_rawseti(L, -2, 2);
    lua_rawgeti(L, r->uv, SLOT_MEMO_ERRORS);
    lua_rawseti(L, -2, 3);
    lua_rawseti(L, r->uv, SLOT_HELD);
    lua_newtable(L);
    lua_rawseti(L, r->uv, SLOT_MEMO);
    lua_newtable(L);
    lua_rawseti(L, r->uv, SLOT_MEMO_ERRORS);
    p->nmemo = 0;
}

/* Maps field f into c: path, callback, null, default, required, coercion. */
static int map_field(lua_State *L, program *p, mapping_run *r, const field *f, int slot, cell *c)
{
    c->type = CELL_NIL;
    int view = f->callback ? ensure_view(L, p, r) : 0; /* below top: it outlives the field */
    /* the stack as the field found it, taken (and put back at done) by the
     * branches that push: a field read from its node pushes nothing */
    int top = -1, result = TAKEN;
    if (f->callback) {
        top = lua_gettop(L);
        lua_rawgeti(L, r->uv, SLOT_CALLBACKS);
        lua_rawgeti(L, -1, f->callback);
        lua_remove(L, -2);
        if (f->nkeys)
            push_view_path(L, f, view, r->uv, slot);
        else
            lua_pushvalue(L, view);
        lua_pushvalue(L, view);
        lua_rawgeti(L, r->uv, SLOT_CTX);
        int ok = lua_pcall(L, 3, 1, 0) == LUA_OK;
        if (!r->table)
            note_view_keys(L, p, view);
        /* kept, so that the Lua pipeline taking this record over does not
         * call it again */
        lua_rawgeti(L, r->uv, ok ? SLOT_MEMO : SLOT_MEMO_ERRORS);
        if (ok && lua_isnil(L, -2))
            lua_pushlightuserdata(L, (void *)&MEMO_NIL);
        else
            lua_pushvalue(L, -2);
        lua_rawseti(L, -2, slot);
        lua_pop(L, 1);
        p->memo[p->nmemo++] = slot;
        r->ran = 1;
        if (!ok) {
            result = BAIL; /* the Lua pipeline reports the error */
            goto done;
        }
        if (lua_type(L, -1) == LUA_TLIGHTUSERDATA && lua_touserdata(L, -1) == NULL)
            lua_pushnil(L);
        if (!lua_isnil(L, -1)) {
            result = f->type == F_JSON ? defer_json(L, p, r, slot) : lua_cell(L, p, r->uv, f, -1, c);
            goto done;
        }
    } else if (f->nkeys) {
        /* after a callback, a field it set in the record is what the
         * Lua pipeline would read */
        int through_view = r->table != 0; /* a decoded record is read as Lua reads it */
        if (!through_view && r->view && f->keys[0].name) {
            /* set or changed by a callback, or decoded for one (and maybe
             * removed since): read as the Lua pipeline reads the record */
            const member *m = find_member(p, f->keys[0].name, f->keys[0].len);
            through_view = m && m->decoded;
            if (!through_view && p->view_extra) {
                lua_rawgeti(L, r->uv, SLOT_PATHS);
                lua_rawgeti(L, -1, slot);
                lua_rawgeti(L, -1, 1);
                through_view = lua_rawget(L, r->view) != LUA_TNIL;
                lua_pop(L, 3);
            }
        }
        if (!through_view && f->type == F_JSON && f->callback_after) {
            /* a later callback may change the value in the record: it is
             * read through the view and encoded once every field is mapped */
            ensure_view(L, p, r);
            through_view = 1;
        }
        if (through_view) {
            top = lua_gettop(L);
            push_view_path(L, f, r->table ? r->table : r->view, r->uv, slot);
            if (lua_type(L, -1) == LUA_TLIGHTUSERDATA && lua_touserdata(L, -1) == NULL)
                lua_pushnil(L);
            if (!lua_isnil(L, -1)) {
                result = f->type == F_JSON ? defer_json(L, p, r, slot) : lua_cell(L, p, r->uv, f, -1, c);
                goto done;
            }
        } else {
            const entsync_json_node *n = path_value(p, f);
            if (n && n->type != ENTSYNC_JSON_NULL) {
                if (f->type == F_JSON) {
                    top = lua_gettop(L); /* its encoder may use the stack */
                    result = json_node_cell(L, p, n, c);
                } else if (n->type == ENTSYNC_JSON_ARRAY || n->type == ENTSYNC_JSON_OBJECT) {
                    result = BAIL;
                } else {
                    result = node_cell(p, f, n, c);
                }
                goto done;
            }
        }
    }
    /* nothing: the default, or nothing (a missing required value fails) */
    if (f->has_default) {
        if (top < 0)
            top = lua_gettop(L);
        lua_rawgeti(L, r->uv, SLOT_DEFAULTS);
        lua_rawgeti(L, -1, slot);
        result = lua_cell(L, p, r->uv, f, -1, c);
    } else if (f->required) {
        result = BAIL;
    }
done:
    if (top >= 0)
        lua_settop(L, top);
    return result;
}

/* Reads the id and changed mark of the record; BAIL when either is not one
 * the program takes. */
static int read_keys(program *p, cell *id, cell *changed)
{
    const member *m = find_member(p, p->id_field, p->id_len);
    const entsync_json_node *n = m ? m->value : NULL;
    if (n && n->type == ENTSYNC_JSON_STRING && n->len > 0) {
        if (!text_cell(p, id, n->as.string, n->len))
            return BAIL;
    } else if (n && n->type == ENTSYNC_JSON_INTEGER) {
        id->type = CELL_INT;
        id->i = n->as.integer;
    } else {
        return BAIL; /* no usable id, or a float one: Lua's to judge */
    }
    changed->type = CELL_NIL;
    if (!p->changed_field)
        return TAKEN;
    m = find_member(p, p->changed_field, p->changed_len);
    n = m ? m->value : NULL;
    if (!n || n->type == ENTSYNC_JSON_NULL)
        return TAKEN;
    if (n->type == ENTSYNC_JSON_STRING)
        return text_cell(p, changed, n->as.string, n->len) ? TAKEN : BAIL;
    if (n->type == ENTSYNC_JSON_INTEGER) {
        changed->type = CELL_INT;
        changed->i = n->as.integer;
        return TAKEN;
    }
    return BAIL;
}

/* What take needs to know beyond the line: the cursor, the failing keys,
 * and the statements that look remote ids up. */
typedef struct take_args {
    int has_cursor;
    entsync_mark cursor_mark;
    entsync_id cursor_id;
    int failing;          /* stack index of run.failing, or 0 when it is empty */
    int ordered;          /* the reader promised changed order */
    sqlite3_stmt *lookup; /* Ledger's by_remote, or NULL: a first import */
    entsync_store *store;
} take_args;

/* The id-map entry of a remote id, as Ledger:by_remote reads it. */
typedef struct stored {
    int found;
    long long local_id;
    uint64_t hash, raw_hash;
    int has_hash, has_raw_hash, gone;
    entsync_mark changed;
    char changed_text[64];
} stored;

/* Looks the id up (stmt: by_remote); 1 found, 0 not, -1 for an entry the
 * Lua pipeline must judge (a version, a long mark). Raises on a store
 * failure. */
static int lookup_id(lua_State *L, const take_args *a, const program *p, const cell *id, stored *out)
{
    sqlite3_stmt *stmt = a->lookup;
    sqlite3_reset(stmt);
    int rc = sqlite3_bind_int64(stmt, 1, p->sync_id);
    if (rc == SQLITE_OK)
        rc = id->type == CELL_INT ? sqlite3_bind_int64(stmt, 2, id->i)
                                  : sqlite3_bind_text64(stmt, 2, p->buf + id->off, id->len, SQLITE_STATIC, SQLITE_UTF8);
    if (rc != SQLITE_OK)
        entsync_store_error(L, a->store, sqlite3_sql(stmt));
    rc = sqlite3_step(stmt);
    if (rc == SQLITE_DONE) {
        sqlite3_reset(stmt);
        out->found = 0;
        return 0;
    }
    if (rc != SQLITE_ROW) {
        sqlite3_reset(stmt);
        entsync_store_error(L, a->store, sqlite3_sql(stmt));
    }
    /* local_id, remote_id, changed, hash, version, seen_pass, gone_at, raw_hash */
    out->found = 1;
    out->local_id = sqlite3_column_int64(stmt, 0);
    memset(&out->changed, 0, sizeof out->changed);
    switch (sqlite3_column_type(stmt, 2)) {
    case SQLITE_INTEGER:
        out->changed.type = LUA_TNUMBER;
        out->changed.integer = 1;
        out->changed.i = sqlite3_column_int64(stmt, 2);
        break;
    case SQLITE_FLOAT:
        out->changed.type = LUA_TNUMBER;
        out->changed.d = sqlite3_column_double(stmt, 2);
        break;
    case SQLITE_TEXT: {
        int n = sqlite3_column_bytes(stmt, 2);
        if ((size_t)n >= sizeof out->changed_text) {
            sqlite3_reset(stmt);
            return -1; /* a long mark: the Lua pipeline compares it */
        }
        memcpy(out->changed_text, sqlite3_column_text(stmt, 2), (size_t)n);
        out->changed.type = LUA_TSTRING;
        out->changed.s = out->changed_text;
        out->changed.len = (size_t)n;
        break;
    }
    case SQLITE_NULL:
        out->changed.type = LUA_TNIL;
        break;
    default:
        sqlite3_reset(stmt);
        return -1;
    }
    out->has_hash = sqlite3_column_type(stmt, 3) == SQLITE_INTEGER;
    out->hash = (uint64_t)sqlite3_column_int64(stmt, 3);
    out->gone = sqlite3_column_type(stmt, 6) != SQLITE_NULL;
    out->has_raw_hash = sqlite3_column_type(stmt, 7) == SQLITE_INTEGER;
    out->raw_hash = (uint64_t)sqlite3_column_int64(stmt, 7);
    int versioned = sqlite3_column_type(stmt, 4) != SQLITE_NULL;
    sqlite3_reset(stmt);
    return versioned ? -1 : 1;
}

/* Whether an id the map does not hold under its own type is held under
 * the other (schema 1's text of an integer id, or an id typed as text):
 * Ledger:by_remote finds and retypes those, so the Lua pipeline takes
 * them. */
static int held_otherwise(lua_State *L, const take_args *a, program *p, const cell *id)
{
    cell other;
    memset(&other, 0, sizeof other);
    char text[32];
    size_t len, arena_len = p->len;
    if (id->type == CELL_INT) {
        const char *digits = entsync_hash_tagged(text, 0, id->i, 0, &len);
        if (!text_cell(p, &other, digits, len))
            return 1;
    } else {
        const char *s = p->buf + id->off;
        if (!entsync_id_is_integer(s, id->len) || s[s[0] == '-'] == '0')
            return 0;
        other.type = CELL_INT;
        other.i = entsync_id_value(s, id->len);
    }
    stored found;
    int held = lookup_id(L, a, p, &other, &found) != 0;
    p->len = arena_len;
    return held;
}

/* Makes (mark, id) the largest pair noted, copying their texts; 0 when
 * out of memory. */
static int set_max(program *p, entsync_mark mark, const entsync_id *id)
{
    size_t idlen = id->s ? id->len : 0;
    size_t need = idlen + (mark.type == LUA_TSTRING ? mark.len : 0) + 1;
    if (need > p->max_cap) {
        char *grown = realloc(p->max_text, need);
        if (!grown)
            return 0;
        p->max_text = grown;
        p->max_cap = need;
    }
    p->max_id = *id;
    if (id->s) {
        memcpy(p->max_text, id->s, idlen);
        p->max_id.s = p->max_text;
    }
    p->max_mark = mark;
    if (mark.type == LUA_TSTRING) {
        memcpy(p->max_text + idlen, mark.s, mark.len);
        p->max_mark.s = p->max_text + idlen;
    }
    p->has_max = 1;
    return 1;
}

/* The largest (mark, id) noted since max(), kept apart from the entries
 * (an unchanged record moves the cursor too). */
static void note_max(lua_State *L, program *p, const cell *changed, const cell *id)
{
    char idbuf[32];
    entsync_id key = cell_id(p, id, idbuf, sizeof idbuf);
    entsync_mark mark = cell_mark(p, changed);
    if (p->has_max && entsync_cursor_compare(L, p->kind_text, &mark, &key, &p->max_mark, &p->max_id) <= 0)
        return;
    if (!set_max(p, mark, &key))
        p->failed = 1;
}

/* Grows the cells for one more record; 0 when out of memory. */
static int cells_room(program *p)
{
    if (p->ncells_used + (size_t)p->ncells <= p->cells_cap)
        return 1;
    size_t cap = p->cells_cap ? 2 * p->cells_cap : 4096;
    while (cap < p->ncells_used + (size_t)p->ncells)
        cap *= 2;
    cell *grown = realloc(p->cells, cap * sizeof *grown);
    if (!grown)
        return 0;
    p->cells = grown;
    p->cells_cap = cap;
    return 1;
}

/* Maps the record whose id and mark e holds (read by map_line or
 * map_table), as Run:prepare would: cursor, failures, the id map, stale,
 * fields, hash. TAKEN: it is the batch's next entry (a create, or an update
 * of the local entity its id map entry names); OLDER: it is not newer than
 * the cursor (skipped); SAME: it maps to what is stored (unchanged); BAIL:
 * the Lua pipeline takes it. The arena is as before unless TAKEN. */
static int map_record(lua_State *L, program *p, mapping_run *r, const take_args *a, entry *e, size_t arena_len,
                      const char *line, size_t len)
{
    size_t cells_used = p->ncells_used;
    char idbuf[32];
    entsync_id key = cell_id(p, &e->id, idbuf, sizeof idbuf); /* the arena does not grow before its last use */
    int result = TAKEN;
    if (a->has_cursor && e->changed.type != CELL_NIL) {
        entsync_mark mark = cell_mark(p, &e->changed);
        if (entsync_cursor_compare(L, p->kind_text, &mark, &key, &a->cursor_mark, &a->cursor_id) <= 0)
            result = OLDER;
    }
    if (result == TAKEN && a->failing) {
        /* a key that failed before is the Lua pipeline's: its success
         * clears the failure */
        char digits[24];
        size_t len;
        const char *s = entsync_id_text(&key, digits, &len);
        lua_pushlstring(L, s, len);
        if (lua_rawget(L, a->failing) != LUA_TNIL)
            result = BAIL;
        lua_pop(L, 1);
    }
    if (result == TAKEN && a->ordered && e->changed.type != CELL_NIL && p->has_max) {
        /* a reader that promised changed order and breaks it: the Lua
         * pipeline says so */
        entsync_mark mark = cell_mark(p, &e->changed);
        if (entsync_cursor_compare(L, p->kind_text, &mark, &key, &p->max_mark, &p->max_id) < 0)
            result = BAIL;
    }
    stored st;
    st.found = 0;
    if (result == TAKEN && a->lookup) {
        int found = lookup_id(L, a, p, &e->id, &st);
        if (found < 0 || (found && !p->updates) || (!found && held_otherwise(L, a, p, &e->id)))
            result = BAIL;
        if (found > 0 && result == TAKEN && e->changed.type != CELL_NIL && st.changed.type != LUA_TNIL) {
            /* stale: older than what is stored (the Lua pipeline counts it) */
            char ta[40], tb[40];
            entsync_mark mark = cell_mark(p, &e->changed);
            entsync_mark ka = entsync_mark_as_kind(L, p->kind_text, mark, ta, sizeof ta), kb = entsync_mark_as_kind(L, p->kind_text, st.changed, tb, sizeof tb);
            if (entsync_mark_compare(L, &ka, &kb) < 0)
                result = BAIL;
        }
    }
    r->id = &e->id;
    r->view = 0;
    r->ran = 0;
    r->local_id = st.found ? st.local_id : 0;
    e->cells = p->ncells_used;
    int top = lua_gettop(L);
    clear_memo(L, p, r);
    p->npending = 0;
    for (int en = 0; result == TAKEN && en < p->nentities; en++) {
        const entity *ent = &p->entities[en];
        for (int i = 0; result == TAKEN && i < ent->nfields; i++)
            result = map_field(L, p, r, &ent->fields[i], ent->first + i + 1,
                               cells_of(p, e->cells + (size_t)ent->first + (size_t)i));
    }
    if (p->npending)
        result = resolve_json(L, p, r, result == TAKEN ? cells_of(p, e->cells) : NULL);
    e->hashed = 0;
    if (result == TAKEN && st.found) {
        /* a create's hash is left to its write (run_hashes): nothing here
         * compares it */
        e->hash = record_hash(p, cells_of(p, e->cells));
        e->hashed = 1;
        /* the Lua pipeline marks it seen, and keeps a line's new hash */
        int raw_known = !line || (st.has_raw_hash && st.raw_hash == e->raw_hash);
        if (st.has_hash && st.hash == e->hash && !st.gone)
            result = p->track_seen || !raw_known ? BAIL : SAME;
    }
    seal_view(L, p, r, line, len);
    if (result == BAIL && r->ran)
        hold_record(L, p, r); /* its callbacks ran: the Lua pipeline does not call them again */
    if (lua_gettop(L) != top) /* a record mapped from its nodes alone left the stack as it was */
        lua_settop(L, top);
    if (result == TAKEN && p->entries_cap == p->n) {
        size_t cap = p->entries_cap ? 2 * p->entries_cap : 1024;
        entry *grown = realloc(p->entries, cap * sizeof *grown);
        if (grown) {
            p->entries = grown;
            p->entries_cap = cap;
        } else {
            result = BAIL;
        }
    }
    if (result == TAKEN && line && !arena_add(p, line, len, &e->line_off))
        result = BAIL;
    if ((result == TAKEN || result == SAME) && e->changed.type != CELL_NIL)
        note_max(L, p, &e->changed, &e->id);
    if (result != TAKEN) {
        p->len = arena_len;
        p->ncells_used = cells_used;
        return result;
    }
    e->line_len = line ? len : 0;
    e->update = st.found;
    e->local_id = st.local_id;
    p->ncells_used += (size_t)p->ncells;
    p->entries[p->n++] = *e;
    return TAKEN;
}

/* Maps the record whose nodes are at obj: an object, read from line (or
 * from a document's records: no line). map_record's results. */
static int map_object(lua_State *L, program *p, mapping_run *r, const take_args *a, const entsync_json_node *obj,
                      const char *line, size_t len, uint64_t raw_hash)
{
    size_t arena_len = p->len;
    if (obj->type != ENTSYNC_JSON_OBJECT || !index_members(p, obj) || !cells_room(p))
        return BAIL;
    entry e;
    memset(&e, 0, sizeof e);
    e.raw_hash = raw_hash;
    r->table = 0;
    if (read_keys(p, &e.id, &e.changed) != TAKEN) {
        p->len = arena_len;
        return BAIL;
    }
    return map_record(L, p, r, a, &e, arena_len, line, len);
}

/* Maps one line (map_record's results). */
static int map_line(lua_State *L, program *p, mapping_run *r, const take_args *a, const char *line, size_t len,
                    uint64_t raw_hash)
{
    const entsync_json_node *nodes;
    const char *detail;
    char *input = entsync_json_buffer(p->parser, len);
    if (!input)
        return BAIL;
    memcpy(input, line, len);
    if (entsync_json_parse(p->parser, len, &nodes, &detail) != ENTSYNC_JSON_OK)
        return BAIL;
    return map_object(L, p, r, a, nodes, line, len, raw_hash);
}

/* A value of a decoded record (at idx) as an id or mark cell: a non-empty
 * string, or an integer; a mark may be nothing. 0 for anything else. */
static int table_key(lua_State *L, program *p, int idx, cell *c, int mark)
{
    int t = lua_type(L, idx);
    if (t == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        return (len > 0 || mark) && text_cell(p, c, s, len);
    }
    if (t == LUA_TNUMBER && lua_isinteger(L, idx)) {
        c->type = CELL_INT;
        c->i = (long long)lua_tointeger(L, idx);
        return 1;
    }
    if (mark && (t == LUA_TNIL || (t == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == NULL))) {
        c->type = CELL_NIL;
        return 1;
    }
    return 0;
}

/* Maps one decoded record, the table at idx (map_record's results); its
 * entry has no line: the caller keeps the record. */
static int map_table(lua_State *L, program *p, mapping_run *r, const take_args *a, int idx)
{
    size_t arena_len = p->len;
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) != LUA_TTABLE || !cells_room(p))
        return BAIL;
    if (lua_getmetatable(L, idx)) {
        /* a decoded object, not a tombstone or a table of the provider's */
        lua_rawgeti(L, r->uv, SLOT_OBJECT_MT);
        int object = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
        if (!object)
            return BAIL;
    }
    entry e;
    memset(&e, 0, sizeof e);
    lua_rawgeti(L, r->uv, SLOT_NAMES);
    lua_rawgeti(L, -1, 1);
    lua_rawget(L, idx);
    int ok = table_key(L, p, -1, &e.id, 0);
    lua_pop(L, 1);
    if (ok && p->changed_field) {
        lua_rawgeti(L, -1, 2);
        lua_rawget(L, idx);
        ok = table_key(L, p, -1, &e.changed, 1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (!ok) {
        p->len = arena_len;
        return BAIL;
    }
    r->table = idx;
    int result = map_record(L, p, r, a, &e, arena_len, NULL, 0);
    r->table = 0;
    return result;
}

/* --- the program's methods --------------------------------------------------------- */

static program *check_program(lua_State *L)
{
    return luaL_checkudata(L, 1, PROGRAM_META);
}

/* What one take read, pushed as its results. */
typedef struct take_counts {
    lua_Integer skipped, lines, taken, older;
} take_counts;

/* Pushes take's results after the first, which is on the stack already. */
static int push_take(lua_State *L, const take_counts *t, lua_Integer hash, int has_hash)
{
    lua_pushinteger(L, t->skipped);
    lua_pushinteger(L, t->lines);
    if (has_hash)
        lua_pushinteger(L, hash);
    else
        lua_pushnil(L);
    lua_pushinteger(L, t->taken);
    lua_pushinteger(L, t->older);
    return 6;
}

/* Reads the cursor mark, cursor id and failing keys at first, first + 1
 * and first + 2 into a; the uservalue table at uv anchors what a points
 * at. */
static void take_arguments(lua_State *L, program *p, int uv, take_args *a, int first)
{
    memset(a, 0, sizeof *a);
    if (!lua_isnil(L, first)) {
        a->has_cursor = entsync_mark_from_lua(L, first, &a->cursor_mark);
        luaL_argcheck(L, a->has_cursor, first, "a cursor mark is a number or a string");
        size_t len;
        const char *id = luaL_optlstring(L, first + 1, "", &len);
        a->cursor_id = entsync_id_of(id, len);
    }
    if (lua_type(L, first + 2) == LUA_TTABLE) {
        lua_pushnil(L);
        if (lua_next(L, first + 2)) {
            lua_pop(L, 2);
            a->failing = first + 2;
        }
    }
    /* a first import looks nothing up: its takes leave the store to the
     * writer thread (entsync_store_check waits for it) */
    if (lua_rawgeti(L, uv, SLOT_LOOKUP_SQL) == LUA_TSTRING) {
        lua_rawgeti(L, uv, SLOT_STORE);
        int store_idx = lua_gettop(L);
        a->store = entsync_store_check(L, store_idx);
        a->lookup = entsync_store_stmt(L, store_idx, lua_tostring(L, -2));
        lua_pop(L, 1);
    }
    lua_pop(L, 1); /* the uservalue table anchors both */
    (void)p;
}

/* Starts a take: the uservalue table pushed (r's), the record held() gave
 * forgotten (it is for the one this call hands back), and the cursor and
 * failing keys at first.. read into a. */
static void begin_take(lua_State *L, program *p, mapping_run *r, take_args *a, int first)
{
    memset(r, 0, sizeof *r);
    r->prog = 1;
    lua_getiuservalue(L, 1, 1);
    r->uv = lua_gettop(L);
    lua_pushnil(L);
    lua_rawseti(L, r->uv, SLOT_HELD);
    take_arguments(L, p, r->uv, a, first);
}

/* program:take(file, known, max, max_line, cursor_mark, cursor_id, failing)
 *   -> line | nil | false, skipped, lines, hash | bytes, taken, older
 * Reads lines as core.hash.skip_known does (a line whose hash is in known
 * is skipped unread; blank lines are passed over; a line over max_line is
 * false, with its length), and takes each other line into the batch when
 * it can: taken counts those; skipped also counts the lines that map to
 * what is stored (both are unchanged), older those not newer than the
 * cursor (cursor_mark nil: no cursor). At most max lines are skipped,
 * taken or older in one call. The first line it cannot take is returned
 * with its hash, for the Lua pipeline. */
static int program_take(lua_State *L)
{
    program *p = check_program(L);
    luaL_Stream *stream = luaL_checkudata(L, 2, LUA_FILEHANDLE);
    entsync_hashset *known = entsync_hashset_check(L, 3);
    lua_Integer max = luaL_checkinteger(L, 4);
    lua_Integer max_line = luaL_optinteger(L, 5, LUA_MAXINTEGER);
    luaL_argcheck(L, max_line > 0, 5, "max_line must be positive");
    if (!stream->closef || !stream->f)
        return luaL_error(L, "take: the file is closed");
    lua_settop(L, 8);
    mapping_run r;
    take_args a;
    begin_take(L, p, &r, &a, 6);
    take_counts t = {0, 0, 0, 0};
    size_t dropped = 0;
    ssize_t len = 0;
    while (t.skipped + t.taken + t.older < max &&
           (len = entsync_read_line(stream->f, &p->line, &p->line_cap, (size_t)max_line, &dropped)) >= 0) {
        t.lines++;
        if (dropped) {
            lua_pushboolean(L, 0);
            return push_take(L, &t, (lua_Integer)dropped, 1);
        }
        if (len > 0 && p->line[len - 1] == '\n')
            len--;
        ssize_t i = 0;
        while (i < len && (p->line[i] == ' ' || p->line[i] == '\t' || p->line[i] == '\r'))
            i++;
        if (i == len)
            continue; /* blank: no record */
        uint64_t hash = entsync_hash_line(p->seed, p->line, (size_t)len);
        if (entsync_hashset_has(known, hash)) {
            t.skipped++;
            continue;
        }
        int result = map_line(L, p, &r, &a, p->line, (size_t)len, hash);
        if (result == TAKEN) {
            t.taken++;
        } else if (result == OLDER) {
            t.older++;
        } else if (result == SAME) {
            t.skipped++;
        } else {
            lua_pushlstring(L, p->line, (size_t)len);
            return push_take(L, &t, (lua_Integer)hash, 1);
        }
    }
    if (len == -2)
        return luaL_error(L, "take: out of memory");
    lua_pushnil(L);
    return push_take(L, &t, 0, 0);
}

/* Seeds the largest (mark, id) with the caller's (at idx and idx + 1),
 * so a reader's promised order is checked against the whole run. */
static void seed_max(lua_State *L, program *p, int idx)
{
    entsync_mark mark;
    if (p->has_max || lua_isnil(L, idx) || !entsync_mark_from_lua(L, idx, &mark) || lua_type(L, idx + 1) != LUA_TSTRING)
        return;
    size_t idlen;
    const char *text = lua_tolstring(L, idx + 1, &idlen);
    entsync_id id = entsync_id_of(text, idlen);
    if (!set_max(p, mark, &id))
        luaL_error(L, "record: out of memory");
}

/* program:take_records(list, from, to, cursor_mark, cursor_id, failing,
 *   ordered, max_mark, max_id) -> taken, skipped, older, stop, passing
 * Takes the decoded records list[from..to] (a reader's page), or records
 * from..to of a document (document.h: mapped from its nodes, no Lua value
 * made), into the batch as take does lines: taken, skipped (found unchanged) and older
 * count them; stop is the index of the first record it cannot take (the
 * Lua pipeline's, with the ones after it), or nil. ordered: the reader
 * promised changed order, and max_mark, max_id is the largest pair of the
 * run so far. The entries keep each record's index in list. passing: the
 * last records were older than the cursor (the Lua pipeline passes over
 * those, and the next pages', before a batch may end). */
static int program_take_records(lua_State *L)
{
    program *p = check_program(L);
    entsync_document *doc = entsync_document_test(L, 2);
    if (!doc)
        luaL_checktype(L, 2, LUA_TTABLE);
    lua_Integer from = luaL_checkinteger(L, 3), to = luaL_checkinteger(L, 4);
    luaL_argcheck(L, !doc || from >= 1, 3, "records count from 1");
    luaL_argcheck(L, !doc || to <= (lua_Integer)entsync_document_count(doc), 4, "beyond the document's records");
    lua_settop(L, 10);
    mapping_run r;
    take_args a;
    begin_take(L, p, &r, &a, 5);
    a.ordered = lua_toboolean(L, 8);
    if (a.ordered) {
        p->has_max = 0; /* the run's largest pair is the caller's, now */
        seed_max(L, p, 9);
    }
    lua_Integer taken = 0, skipped = 0, older = 0;
    int last = TAKEN;
    for (lua_Integer i = from; i <= to; i++) {
        int result;
        if (doc) {
            result = map_object(L, p, &r, &a, entsync_document_record(doc, (size_t)i), NULL, 0, 0);
        } else {
            lua_rawgeti(L, 2, i);
            result = map_table(L, p, &r, &a, -1);
            lua_pop(L, 1);
        }
        last = result;
        if (result == TAKEN) {
            p->entries[p->n - 1].src = i;
            taken++;
        } else if (result == SAME) {
            skipped++;
        } else if (result == OLDER) {
            older++;
        } else {
            lua_pushinteger(L, taken);
            lua_pushinteger(L, skipped);
            lua_pushinteger(L, older);
            lua_pushinteger(L, i);
            lua_pushboolean(L, 0);
            return 5;
        }
    }
    lua_pushinteger(L, taken);
    lua_pushinteger(L, skipped);
    lua_pushinteger(L, older);
    lua_pushnil(L);
    lua_pushboolean(L, last == OLDER);
    return 5;
}

/* program:max() -> mark, id: the largest (changed mark, id text) of the
 * records taken or found unchanged since the last call (nothing when none
 * had a mark). */
static int program_max(lua_State *L)
{
    program *p = check_program(L);
    if (!p->has_max)
        return 0;
    if (p->max_mark.type == LUA_TSTRING)
        lua_pushlstring(L, p->max_mark.s, p->max_mark.len);
    else if (p->max_mark.integer)
        lua_pushinteger(L, (lua_Integer)p->max_mark.i);
    else
        lua_pushnumber(L, p->max_mark.d);
    char digits[24];
    size_t len;
    const char *id = entsync_id_text(&p->max_id, digits, &len);
    lua_pushlstring(L, id, len);
    p->has_max = 0;
    return 2;
}

/* program:held() -> record, results, errors | nothing: the last record
 * handed back after callbacks ran: the record as they left it, and their
 * results and errors by field slot (a nil result kept as held_nil()). */
static int program_held(lua_State *L)
{
    check_program(L);
    lua_getiuservalue(L, 1, 1);
    if (lua_rawgeti(L, -1, SLOT_HELD) != LUA_TTABLE)
        return 0;
    lua_pushnil(L);
    lua_rawseti(L, -3, SLOT_HELD);
    int held = lua_gettop(L);
    lua_rawgeti(L, held, 1);
    lua_rawgeti(L, held, 2);
    lua_rawgeti(L, held, 3);
    return 3;
}

/* core.record.held_nil(): what held() gives for a callback that returned nil. */
static int record_held_nil(lua_State *L)
{
    lua_pushlightuserdata(L, (void *)&MEMO_NIL);
    return 1;
}

/* program:count() -> entries in the batch */
static int program_count(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)check_program(L)->n);
    return 1;
}

static program *handed_view(lua_State *L, program *p);

/* program:entry(i [, handed]) -> line, raw_hash | nil, nil, src: entry i
 * (1-based) of the batch (handed: of the batch handed off last) as it was
 * read (a line, or a decoded record's index in its list), for the Lua
 * pipeline to take it again. */
static int program_entry(lua_State *L)
{
    program *p = check_program(L);
    lua_Integer i = luaL_checkinteger(L, 2);
    if (lua_toboolean(L, 3))
        p = handed_view(L, p);
    luaL_argcheck(L, i >= 1 && (size_t)i <= p->n, 2, "no such entry");
    const entry *e = &p->entries[i - 1];
    if (!e->line_len) {
        lua_pushnil(L);
        lua_pushnil(L);
        lua_pushinteger(L, e->src);
        return 3;
    }
    lua_pushlstring(L, p->buf + e->line_off, e->line_len);
    lua_pushinteger(L, (lua_Integer)e->raw_hash);
    return 2;
}

/* program:reset(): a new batch; the entries are dropped. */
static int program_reset(lua_State *L)
{
    program *p = check_program(L);
    p->n = 0;
    p->len = 0;
    p->ncells_used = 0;
    p->has_max = 0;
    if (p->failed) {
        p->failed = 0;
        return luaL_error(L, "record: out of memory");
    }
    return 0;
}

static int bind_cell(sqlite3_stmt *stmt, int n, const program *p, const cell *c)
{
    switch (c->type) {
    case CELL_INT:
    case CELL_BOOL:
        return sqlite3_bind_int64(stmt, n, (sqlite3_int64)c->i);
    case CELL_REAL:
        return sqlite3_bind_double(stmt, n, c->d);
    case CELL_TEXT:
    case CELL_JSON:
        return sqlite3_bind_text64(stmt, n, p->buf + c->off, c->len, SQLITE_STATIC, SQLITE_UTF8);
    default:
        return sqlite3_bind_null(stmt, n);
    }
}

/* The write phase runs with no Lua state, on the Lua thread (write) or on
 * the store's writer thread (hand_off): each step returns 1, or 0 with
 * *f set to what failed, which the Lua thread raises. */

static int bind_failed(sqlite3 *db, sqlite3_stmt *stmt, entsync_store_failure *f)
{
    entsync_store_fail(db, sqlite3_sql(stmt), f);
    return 0;
}

/* A failure of entsync's own (no SQL): *f says why. */
static int own_failure(entsync_store_failure *f, const char *why, long long n)
{
    memset(f, 0, sizeof *f);
    snprintf(f->reason, sizeof f->reason, why, n);
    return 0;
}

/* A local id the id map's narrow keys cannot hold. */
static int beyond_keys(sqlite3_int64 local_id, entsync_store_failure *f)
{
    return own_failure(f, "record: local id %lld is beyond the id map's narrow keys", (long long)local_id);
}

/* Binds cells as parameters 1..n of stmt, then extra (an id) as n+1..
 * when given: a writer's statements take the values first. */
static int bind_row(sqlite3_stmt *stmt, const program *p, const entity *ent, const cell *cells, int nextra,
                    const sqlite3_int64 *extra)
{
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    int rc = SQLITE_OK;
    for (int f = 0; rc == SQLITE_OK && f < ent->nfields; f++)
        rc = bind_cell(stmt, f + 1, p, &cells[ent->first + f]);
    for (int x = 0; rc == SQLITE_OK && x < nextra; x++)
        rc = sqlite3_bind_int64(stmt, ent->nfields + 1 + x, extra[x]);
    return rc;
}

/* The statements the write phase runs, fetched on the Lua thread. */
typedef struct write_stmts {
    entsync_writer_stmts writers[16];
    sqlite3_stmt *links[16]; /* a split's entity by its link column, for updates */
    sqlite3_stmt *insert_map, *save_map, *update_map;
    entsync_store *store;
    sqlite3 *db;
    int by_rows; /* creates go in runs of RUN_ROWS */
} write_stmts;

/* A range of entries to write, and the pass and time of their id-map rows. */
typedef struct range {
    lua_Integer from, to, pass;
    int has_pass;
    double now;
} range;

/* A batch handed off: the program as it was (its buffers are the batch's),
 * the statements and the ranges to write. */
typedef struct handed {
    program view;
    write_stmts w;
    range *ranges;
    size_t nranges, ranges_cap;
    entsync_store_job job;
    int in_flight;
} handed;

static void fetch_stmts(lua_State *L, program *p, int uv, write_stmts *w)
{
    lua_rawgeti(L, uv, SLOT_WRITERS);
    w->by_rows = p->max_columns + 1 <= ROWS_MAX_COLUMNS;
    for (int e = 0; e < p->nentities; e++) {
        lua_rawgeti(L, -1, e + 1);
        entsync_store_writer_stmts(L, lua_gettop(L), &w->writers[e]);
        lua_pop(L, 1); /* the writer's store */
        if (w->writers[e].columns != p->entities[e].nfields + (e > 0))
            luaL_error(L, "record: entity %s's writer has %d columns", p->entities[e].name, w->writers[e].columns);
        if (e == 0 && w->by_rows && !p->runs_made)
            p->run_max_id = entsync_store_writer_max_stmt(L, -1);
        if (w->by_rows && !p->runs_made)
            for (int r = 0; r < NRUNS; r++)
                p->run_rows[e][r] = entsync_store_writer_rows(L, -1, RUN_ROWS[r]);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    lua_rawgeti(L, uv, SLOT_STORE);
    int store_idx = lua_gettop(L);
    w->store = entsync_store_check(L, store_idx);
    w->db = entsync_store_db(w->store);
    lua_rawgeti(L, uv, SLOT_IDMAP_SQL);
    w->insert_map = entsync_store_stmt(L, store_idx, lua_tostring(L, -1));
    lua_pop(L, 1);
    w->save_map = w->update_map = NULL;
    if (lua_rawgeti(L, uv, SLOT_SAVE_SQL) == LUA_TSTRING)
        w->save_map = entsync_store_stmt(L, store_idx, lua_tostring(L, -1));
    lua_pop(L, 1);
    if (lua_rawgeti(L, uv, SLOT_UPDATE_SQL) == LUA_TSTRING)
        w->update_map = entsync_store_stmt(L, store_idx, lua_tostring(L, -1));
    lua_pop(L, 1);
    if (w->by_rows && !p->runs_made) {
        /* idmap_rows_sql(n, keyed): the text of an insert of n id-map rows,
         * with their keys or with none */
        lua_rawgeti(L, uv, SLOT_MAX_KEY_SQL);
        p->run_max_key = entsync_store_stmt(L, store_idx, lua_tostring(L, -1));
        lua_pop(L, 1);
        if (lua_rawgeti(L, uv, SLOT_IDMAP_ROWS_SQL) != LUA_TFUNCTION)
            luaL_error(L, "record: the program's idmap_rows_sql must be a function");
        for (int r = 0; r < NRUNS; r++)
            for (int keyed = 0; keyed <= 1; keyed++) {
                lua_pushvalue(L, -1);
                lua_pushinteger(L, RUN_ROWS[r]);
                lua_pushboolean(L, keyed);
                lua_call(L, 2, 1);
                sqlite3_stmt *stmt = entsync_store_stmt(L, store_idx, luaL_checkstring(L, -1));
                *(keyed ? &p->run_map[r] : &p->run_map_next[r]) = stmt;
                lua_pop(L, 1);
            }
        lua_pop(L, 1);
        p->runs_made = 1;
    }
    lua_rawgeti(L, uv, SLOT_LINKS);
    for (int e = 1; e < p->nentities; e++) {
        w->links[e] = NULL;
        if (lua_rawgeti(L, -1, e + 1) == LUA_TSTRING)
            w->links[e] = entsync_store_stmt(L, store_idx, lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_pop(L, 2); /* the uservalue table anchors the store */
}

/* The row of a split's entity linked to local_id, as write_rows finds it:
 * *found 1 with *id set, 0 none. */
static int linked_row(const write_stmts *w, sqlite3_stmt *stmt, sqlite3_int64 local_id, int *found,
                      sqlite3_int64 *id, entsync_store_failure *f)
{
    sqlite3_reset(stmt);
    if (sqlite3_bind_int64(stmt, 1, local_id) != SQLITE_OK)
        return bind_failed(w->db, stmt, f);
    int rc = sqlite3_step(stmt);
    *found = rc == SQLITE_ROW;
    if (*found)
        *id = sqlite3_column_int64(stmt, 0);
    else if (rc != SQLITE_DONE)
        entsync_store_fail(w->db, sqlite3_sql(stmt), f);
    sqlite3_reset(stmt);
    return rc == SQLITE_ROW || rc == SQLITE_DONE;
}

/* Writes one entry's rows as Session:write_rows does; *out is the local id. */
static int write_rows(const program *p, const write_stmts *w, const entry *en, sqlite3_int64 *out,
                      entsync_store_failure *f)
{
    const cell *cells = cells_of((program *)p, en->cells);
    sqlite3_int64 local_id = en->update ? en->local_id : 0;
    for (int e = 0; e < p->nentities; e++) {
        const entity *ent = &p->entities[e];
        const entsync_writer_stmts *ws = &w->writers[e];
        sqlite3_stmt *stmt;
        if (e == 0 && en->update) {
            if (bind_row(ws->update, p, ent, cells, 1, &local_id) != SQLITE_OK)
                return bind_failed(w->db, ws->update, f);
            if (!entsync_store_step_done(w->db, ws->update, f))
                return 0;
            if (sqlite3_changes(w->db) > 0)
                continue;
            stmt = ws->insert_with_id; /* the row is gone: made again under its id */
            if (bind_row(stmt, p, ent, cells, 1, &local_id) != SQLITE_OK)
                return bind_failed(w->db, stmt, f);
        } else if (e == 0) {
            stmt = ws->insert;
            if (bind_row(stmt, p, ent, cells, 0, NULL) != SQLITE_OK)
                return bind_failed(w->db, stmt, f);
        } else {
            sqlite3_int64 row[2] = {local_id, 0};
            int found = 0;
            if (en->update && w->links[e] && !linked_row(w, w->links[e], local_id, &found, &row[1], f))
                return 0;
            stmt = found ? ws->update : ws->insert;
            if (bind_row(stmt, p, ent, cells, found ? 2 : 1, row) != SQLITE_OK)
                return bind_failed(w->db, stmt, f);
        }
        if (!entsync_store_step_done(w->db, stmt, f))
            return 0;
        if (e == 0 && !en->update)
            local_id = sqlite3_last_insert_rowid(w->db);
    }
    *out = local_id;
    return 1;
}

/* Binds an entry's id-map row to stmt as Ledger:insert_map binds its own
 * (update_map and save_map number theirs the same). */
static int bind_map(sqlite3_stmt *stmt, const program *p, const entry *en, sqlite3_int64 local_id, int has_pass,
                    lua_Integer pass, double now)
{
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    int rc = sqlite3_bind_int64(stmt, 1, p->sync_id);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(stmt, 2, local_id);
    if (rc == SQLITE_OK)
        rc = bind_cell(stmt, 3, p, &en->id);
    if (rc == SQLITE_OK)
        rc = bind_cell(stmt, 4, p, &en->changed);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(stmt, 5, (sqlite3_int64)entry_hash(p, en));
    if (rc == SQLITE_OK) /* a decoded record has no line, nor its hash */
        rc = en->line_len ? sqlite3_bind_int64(stmt, 6, (sqlite3_int64)en->raw_hash) : sqlite3_bind_null(stmt, 6);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_null(stmt, 7);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_double(stmt, 8, now);
    if (rc == SQLITE_OK)
        rc = has_pass ? sqlite3_bind_int64(stmt, 9, pass) : sqlite3_bind_null(stmt, 9);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(stmt, 10, (p->sync_id << KEY_BITS) | local_id);
    return rc;
}


/* Writes one entry's id-map row: insert_map for a create; for an update
 * update_map, or save_map when the entry is not there any more. */
static int write_map(const program *p, const write_stmts *w, const entry *en, sqlite3_int64 local_id,
                     const range *g, entsync_store_failure *f)
{
    if (local_id < 0 || local_id >= ((sqlite3_int64)1 << KEY_BITS))
        return beyond_keys(local_id, f);
    if (en->update && w->update_map) {
        if (bind_map(w->update_map, p, en, local_id, g->has_pass, g->pass, g->now) != SQLITE_OK)
            return bind_failed(w->db, w->update_map, f);
        if (!entsync_store_step_done(w->db, w->update_map, f))
            return 0;
        if (sqlite3_changes(w->db) > 0)
            return 1;
    }
    sqlite3_stmt *stmt = en->update ? w->save_map : w->insert_map;
    if (!stmt)
        return own_failure(f, "record: an update with no save_map statement", 0);
    if (bind_map(stmt, p, en, local_id, g->has_pass, g->pass, g->now) != SQLITE_OK)
        return bind_failed(w->db, stmt, f);
    return entsync_store_step_done(w->db, stmt, f);
}

/* The longest run (an index in RUN_ROWS) of creates at entries i..to,
 * or -1 when the entry at i goes alone. */
static int creates_ahead(const program *p, lua_Integer i, lua_Integer to)
{
    lua_Integer k = i;
    while (k <= to && k < i + ROWS && !p->entries[k - 1].update)
        k++;
    for (int r = 0; r < NRUNS; r++)
        if (k - i >= RUN_ROWS[r])
            return r;
    return -1;
}

/* Binds the id-map row of entry en, the r-th of a run, as write_map binds
 * one (its key first, when keyed; its record hash given). */
static int bind_map_row(sqlite3_stmt *stmt, const program *p, const entry *en, int r, sqlite3_int64 local_id,
                        const range *g, int keyed, uint64_t hash)
{
    int n = r * (9 + keyed) + keyed - 1; /* parameter n + 2 is the row's sync */
    int rc = keyed ? sqlite3_bind_int64(stmt, n + 1, (p->sync_id << KEY_BITS) | local_id) : SQLITE_OK;
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(stmt, n + 2, p->sync_id);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(stmt, n + 3, local_id);
    if (rc == SQLITE_OK)
        rc = bind_cell(stmt, n + 4, p, &en->id);
    if (rc == SQLITE_OK)
        rc = bind_cell(stmt, n + 5, p, &en->changed);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(stmt, n + 6, (sqlite3_int64)hash);
    if (rc == SQLITE_OK)
        rc = en->line_len ? sqlite3_bind_int64(stmt, n + 7, (sqlite3_int64)en->raw_hash)
                          : sqlite3_bind_null(stmt, n + 7);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_null(stmt, n + 8);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_double(stmt, n + 9, g->now);
    if (rc == SQLITE_OK)
        rc = g->has_pass ? sqlite3_bind_int64(stmt, n + 10, g->pass) : sqlite3_bind_null(stmt, n + 10);
    return rc;
}

/* The one integer stmt's row holds (NULL as 0) into *out; 0 with *f set
 * when it fails. */
static int step_integer(const write_stmts *w, sqlite3_stmt *stmt, sqlite3_int64 *out, entsync_store_failure *f)
{
    int rc = sqlite3_step(stmt);
    *out = rc == SQLITE_ROW ? sqlite3_column_int64(stmt, 0) : 0;
    if (rc != SQLITE_ROW)
        entsync_store_fail(w->db, sqlite3_sql(stmt), f);
    sqlite3_reset(stmt);
    return rc == SQLITE_ROW;
}

/* Steps a run's insert that left its keys to SQLite, which gives each row
 * the next one: its last row's must be last (else something else wrote
 * to the table in between, a trigger, and the rows are not where the id
 * map will say; the batch is then rolled back and written record by
 * record). */
static int step_appended(const write_stmts *w, sqlite3_stmt *stmt, sqlite3_int64 last, entsync_store_failure *f)
{
    if (!entsync_store_step_done(w->db, stmt, f))
        return 0;
    if (sqlite3_last_insert_rowid(w->db) != last)
        return own_failure(f, "record: a run of creates did not get the keys that follow the table's largest (%lld)",
                           last);
    return 1;
}

/* Writes the creates from entry i, RUN_ROWS[run] of them, with one
 * statement a table: the first entity's rows under the ids its table
 * gives them one by one, the others linked to them, then their id-map
 * rows.
 *
 * Why keys are left to SQLite where they can be: an insert naming its
 * rowid first searches the table for it (the uniqueness check), a binary
 * search down every level of the B-tree, while a row with none is
 * appended after the last one, found at once: about 30% of an insert's
 * instructions (callgrind, 64 rows a statement). The first entity's rows take the id after first - 1 one
 * by one (entsync_store_writer_max_stmt). The id map's keys are the sync
 * in the high bits and the local id in the low, so its next key is the
 * first row's when its largest key is this sync's row of the id before
 * first: this sync made the last rows, as a first import does. Either
 * append is checked by the last key it gave. */
static int write_creates(const program *p, const write_stmts *w, lua_Integer i, int run, const range *g,
                         entsync_store_failure *f)
{
    const int rows = RUN_ROWS[run];
    sqlite3_int64 first, max_key;
    if (!step_integer(w, p->run_max_id, &first, f))
        return 0;
    first++; /* at least 1 unless the table holds negative ids */
    if (first < 0 || first + rows > ((sqlite3_int64)1 << KEY_BITS))
        return beyond_keys(first < 0 ? first : first + rows, f);
    for (int e = 0; e < p->nentities; e++) {
        const entity *ent = &p->entities[e];
        sqlite3_stmt *stmt = p->run_rows[e][run];
        int width = ent->nfields + (e > 0); /* a split's other entities: the link to the first's id */
        int rc = SQLITE_OK;
        sqlite3_reset(stmt); /* every parameter is bound again below: none is cleared */
        for (int r = 0; rc == SQLITE_OK && r < rows; r++) {
            const cell *cells = cells_of((program *)p, p->entries[i - 1 + r].cells);
            for (int k = 0; rc == SQLITE_OK && k < ent->nfields; k++)
                rc = bind_cell(stmt, r * width + k + 1, p, &cells[ent->first + k]);
            if (rc == SQLITE_OK && e > 0)
                rc = sqlite3_bind_int64(stmt, r * width + width, first + r);
        }
        if (rc != SQLITE_OK)
            return bind_failed(w->db, stmt, f);
        if (!(e > 0 ? entsync_store_step_done(w->db, stmt, f) : step_appended(w, stmt, first + rows - 1, f)))
            return 0;
    }
    if (!step_integer(w, p->run_max_key, &max_key, f))
        return 0;
    int keyed = max_key != ((p->sync_id << KEY_BITS) | (first - 1));
    sqlite3_stmt *stmt = keyed ? p->run_map[run] : p->run_map_next[run];
    uint64_t hashes[ROWS];
    run_hashes(p, i, rows, hashes);
    sqlite3_reset(stmt); /* as above */
    int rc = SQLITE_OK;
    for (int r = 0; rc == SQLITE_OK && r < rows; r++)
        rc = bind_map_row(stmt, p, &p->entries[i - 1 + r], r, first + r, g, keyed, hashes[r]);
    if (rc != SQLITE_OK)
        return bind_failed(w->db, stmt, f);
    if (keyed)
        return entsync_store_step_done(w->db, stmt, f);
    return step_appended(w, stmt, (p->sync_id << KEY_BITS) | (first + rows - 1), f);
}

/* Writes the entries of range g: each entity's rows as Session:write_rows
 * does (a split's other entities linked to the first's id), then the
 * id-map row, as Run:write would; stops at the first failure. */
static int write_range(const program *p, const write_stmts *w, const range *g, entsync_store_failure *f)
{
    for (lua_Integer i = g->from; i <= g->to; i++) {
        int run = w->by_rows ? creates_ahead(p, i, g->to) : -1;
        if (run >= 0) {
            if (!write_creates(p, w, i, run, g, f))
                return 0;
            i += RUN_ROWS[run] - 1;
            continue;
        }
        const entry *en = &p->entries[i - 1];
        sqlite3_int64 local_id = 0;
        if (!write_rows(p, w, en, &local_id, f) || !write_map(p, w, en, local_id, g, f))
            return 0;
    }
    return 1;
}

/* The creates and updates among entries from..to. */
static void count_range(const program *p, lua_Integer from, lua_Integer to, lua_Integer *created,
                        lua_Integer *updated)
{
    *created = *updated = 0;
    for (lua_Integer i = from; i <= to; i++) {
        if (p->entries[i - 1].update)
            (*updated)++;
        else
            (*created)++;
    }
}

/* Reads write's and queue's arguments (from, to, pass, now) into g. */
static void range_arguments(lua_State *L, const program *p, range *g)
{
    g->from = luaL_checkinteger(L, 2);
    g->to = luaL_checkinteger(L, 3);
    g->has_pass = !lua_isnoneornil(L, 4);
    g->pass = g->has_pass ? luaL_checkinteger(L, 4) : 0;
    g->now = (double)luaL_checknumber(L, 5);
    luaL_argcheck(L, g->from >= 1 && g->to <= (lua_Integer)p->n, 2, "no such entries");
}

/* program:write(from, to, pass, now) -> created, updated
 * Writes entries from..to (1-based) now, inside the caller's transaction;
 * raises on the first failure. */
static int program_write(lua_State *L)
{
    program *p = check_program(L);
    range g;
    range_arguments(L, p, &g);
    lua_settop(L, 5);
    lua_getiuservalue(L, 1, 1);
    write_stmts w;
    fetch_stmts(L, p, lua_gettop(L), &w);
    entsync_store_failure f;
    if (!write_range(p, &w, &g, &f))
        return entsync_store_raise(L, w.store, &f);
    lua_Integer created, updated;
    count_range(p, g.from, g.to, &created, &updated);
    lua_pushinteger(L, created);
    lua_pushinteger(L, updated);
    return 2;
}

/* --- handing a batch's writes off ------------------------------------------- */

/* program:queue(from, to, pass, now) -> created, updated
 * Keeps entries from..to to be written by the next hand_off, and counts
 * what they will create and update. */
static int program_queue(lua_State *L)
{
    program *p = check_program(L);
    range g;
    range_arguments(L, p, &g);
    if (p->nqueued == p->queued_cap) {
        size_t cap = p->queued_cap ? p->queued_cap * 2 : 8;
        range *grown = realloc(p->queued, cap * sizeof *grown);
        if (!grown)
            return luaL_error(L, "record: out of memory");
        p->queued = grown;
        p->queued_cap = cap;
    }
    p->queued[p->nqueued++] = g;
    lua_Integer created, updated;
    count_range(p, g.from, g.to, &created, &updated);
    lua_pushinteger(L, created);
    lua_pushinteger(L, updated);
    return 2;
}

/* The store of the program at 1 (its uservalue table anchors it), or
 * NULL; pushes two values. Unchecked: settling must work on a closed store
 * too, and from __gc. */
static entsync_store *program_store(lua_State *L)
{
    lua_getiuservalue(L, 1, 1);
    lua_rawgeti(L, -1, SLOT_STORE);
    return lua_touserdata(L, -1);
}

/* The program as it was when it handed off its last batch, settled. */
static program *handed_view(lua_State *L, program *p)
{
    luaL_argcheck(L, p->handed && !p->handed->in_flight, 3, "no settled hand-off");
    return &p->handed->view;
}

/* The writer thread's work: the queued ranges of the handed-off batch. */
static int write_handed(void *arg, entsync_store_failure *f)
{
    handed *h = arg;
    for (size_t i = 0; i < h->nranges; i++)
        if (!write_range(&h->view, &h->w, &h->ranges[i], f))
            return 0;
    return 1;
}

#define SWAP(type, a, b) do { type swap_ = (a); (a) = (b); (b) = swap_; } while (0)

/* program:hand_off([after_sql, ...]): hands the transaction in progress
 * to the store's writer thread, which writes the queued entries, runs
 * after_sql bound with the values after it, and commits; the batch's
 * buffers go with it (the program takes the next batch into the other
 * pair), and entry(i, true) still reads them. settle() says how it ended;
 * it must be called before the next hand_off. */
static int program_hand_off(lua_State *L)
{
    program *p = check_program(L);
    if (!p->handed && !(p->handed = calloc(1, sizeof *p->handed)))
        return luaL_error(L, "record: out of memory");
    handed *h = p->handed;
    if (h->in_flight)
        return luaL_error(L, "record: the last hand-off is not settled");
    int nargs = lua_gettop(L);
    lua_getiuservalue(L, 1, 1);
    int uv = lua_gettop(L);
    fetch_stmts(L, p, uv, &h->w);
    lua_rawgeti(L, uv, SLOT_STORE);
    int store_idx = lua_gettop(L);
    sqlite3_stmt *after = NULL;
    if (nargs >= 2 && !lua_isnil(L, 2)) {
        after = entsync_store_stmt(L, store_idx, luaL_checkstring(L, 2));
        for (int i = 3; i <= nargs; i++)
            entsync_store_bind(L, h->w.store, after, i - 2, i, "a value");
    }
    entsync_store *store = entsync_store_writer_ready(L, store_idx);
    /* nothing fails from here: the view writes the batch as it is, the
     * program takes the next into the other buffers */
    h->view = *p;
    SWAP(range *, h->ranges, p->queued);
    SWAP(size_t, h->ranges_cap, p->queued_cap);
    h->nranges = p->nqueued;
    p->nqueued = 0;
    SWAP(char *, p->buf, p->spare_buf);
    SWAP(size_t, p->cap, p->spare_cap);
    SWAP(entry *, p->entries, p->spare_entries);
    SWAP(size_t, p->entries_cap, p->spare_entries_cap);
    SWAP(cell *, p->cells, p->spare_cells);
    SWAP(size_t, p->cells_cap, p->spare_cells_cap);
    p->n = p->len = p->ncells_used = 0;
    h->job.work = write_handed;
    h->job.arg = h;
    h->job.after = after;
    entsync_store_hand_off(store, &h->job);
    h->in_flight = 1;
    return 0;
}

/* program:settle() -> true | false, error | nil
 * Waits for the last hand-off: true when it committed, false and the
 * error of its first failure when it was rolled back (as write would
 * have raised it), nil when there was none. */
static int program_settle(lua_State *L)
{
    program *p = check_program(L);
    handed *h = p->handed;
    if (!h || !h->in_flight) {
        lua_pushnil(L);
        return 1;
    }
    entsync_store *store = program_store(L);
    if (!store)
        return luaL_error(L, "record: the program has no store");
    entsync_store_wait(store, &h->job);
    h->in_flight = 0;
    if (h->job.ok) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushboolean(L, 0);
    entsync_store_push_failure(L, store, &h->job.failure);
    return 2;
}

/* --- making a program ----------------------------------------------------------------- */

static void free_program(program *p)
{
    for (int e = 0; p->entities && e < p->nentities; e++) {
        entity *ent = &p->entities[e];
        for (int i = 0; ent->fields && i < ent->nfields; i++) {
            for (int k = 0; ent->fields[i].keys && k < ent->fields[i].nkeys; k++)
                free(ent->fields[i].keys[k].name);
            free(ent->fields[i].keys);
            free(ent->fields[i].name);
            free(ent->fields[i].canon);
        }
        free(ent->fields);
        free(ent->order);
        free(ent->name);
        free(ent->canon);
    }
    free(p->entities);
    free(p->entity_order);
    free(p->id_field);
    free(p->changed_field);
    free(p->members);
    free(p->line);
    free(p->buf);
    free(p->entries);
    free(p->cells);
    free(p->max_text);
    free(p->pending);
    free(p->memo);
    free(p->queued);
    free(p->spare_buf);
    free(p->spare_entries);
    free(p->spare_cells);
    if (p->handed)
        free(p->handed->ranges);
    free(p->handed);
    if (p->parser)
        entsync_json_parser_free(p->parser);
    entsync_json_encoder_free(p->encoder);
    memset(p, 0, sizeof *p);
}

static int program_gc(lua_State *L)
{
    program *p = luaL_checkudata(L, 1, PROGRAM_META);
    if (p->handed && p->handed->in_flight) {
        /* the writer thread reads the batch's buffers until it is done */
        entsync_store *store = program_store(L);
        if (store)
            entsync_store_wait(store, &p->handed->job);
        p->handed->in_flight = 0;
    }
    free_program(p);
    return 0;
}

/* A copy of the string field key of the table at idx (NULL when absent). */
static char *copy_field(lua_State *L, int idx, const char *key, size_t *len, int required)
{
    lua_getfield(L, idx, key);
    char *out = NULL;
    if (lua_type(L, -1) == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        out = malloc(n + 1);
        if (!out)
            luaL_error(L, "record: out of memory");
        memcpy(out, s, n + 1);
        if (len)
            *len = n;
    } else if (required) {
        luaL_error(L, "record: the program's %s must be a string", key);
    }
    lua_pop(L, 1);
    return out;
}

static void *zalloc(lua_State *L, size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p)
        luaL_error(L, "record: out of memory");
    return p;
}

/* Sorts indices by the names they point at, bytewise. */
static const char *const *sort_names;
static const size_t *sort_lens;
static int compare_named(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return entsync_bytes_compare(sort_names[x], sort_lens[x], sort_names[y], sort_lens[y]);
}

static int *name_order(lua_State *L, const char **names, const size_t *lens, int n)
{
    int *order = zalloc(L, (size_t)n, sizeof *order);
    for (int i = 0; i < n; i++)
        order[i] = i;
    sort_names = names;
    sort_lens = lens;
    qsort(order, (size_t)n, sizeof *order, compare_named);
    return order;
}

/* A name's canonical encoding (a string's), made once for record_hash. */
static char *canon_name(lua_State *L, const char *name, size_t len, size_t *out_len)
{
    char text[ENTSYNC_HASH_TAGGED];
    size_t tlen;
    const char *t = entsync_hash_tagged(text, 's', (long long)len, ':', &tlen);
    char *s = malloc(tlen + len);
    if (!s)
        luaL_error(L, "record: out of memory");
    memcpy(s, t, tlen);
    memcpy(s + tlen, name, len);
    *out_len = tlen + len;
    return s;
}

/* Reads field i (the table on top) of entity ent; slot is its 1-based
 * place among all the program's fields (its default's and callback's). */
static void read_field(lua_State *L, int uv, field *f, int slot)
{
    int idx = lua_gettop(L);
    f->name = copy_field(L, idx, "name", &f->name_len, 1);
    f->canon = canon_name(L, f->name, f->name_len, &f->canon_len);
    lua_getfield(L, idx, "type");
    const char *type = luaL_checkstring(L, -1);
    f->type = -1;
    for (int t = 0; type_names[t]; t++)
        if (strcmp(type, type_names[t]) == 0)
            f->type = t;
    if (f->type < 0)
        luaL_error(L, "record: field %s has an unknown type %s", f->name, type);
    lua_pop(L, 1);
    lua_getfield(L, idx, "required");
    f->required = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, idx, "keys");
    if (lua_type(L, -1) == LUA_TTABLE) {
        lua_rawgeti(L, uv, SLOT_PATHS);
        lua_pushvalue(L, -2);
        lua_rawseti(L, -2, slot);
        lua_pop(L, 1);
        f->nkeys = (int)lua_rawlen(L, -1);
        f->keys = zalloc(L, (size_t)f->nkeys, sizeof *f->keys);
        for (int k = 0; k < f->nkeys; k++) {
            lua_rawgeti(L, -1, k + 1);
            if (lua_type(L, -1) == LUA_TSTRING) {
                size_t n;
                const char *s = lua_tolstring(L, -1, &n);
                f->keys[k].name = malloc(n + 1);
                if (!f->keys[k].name)
                    luaL_error(L, "record: out of memory");
                memcpy(f->keys[k].name, s, n + 1);
                f->keys[k].len = n;
            } else {
                f->keys[k].index = (long long)luaL_checkinteger(L, -1);
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    lua_getfield(L, idx, "import");
    if (!lua_isnil(L, -1)) {
        lua_rawgeti(L, uv, SLOT_CALLBACKS);
        lua_pushvalue(L, -2);
        lua_rawseti(L, -2, slot);
        lua_pop(L, 1);
        f->callback = slot;
    }
    lua_pop(L, 1);
    lua_getfield(L, idx, "default");
    if (!lua_isnil(L, -1)) {
        lua_rawgeti(L, uv, SLOT_DEFAULTS);
        lua_pushvalue(L, -2);
        lua_rawseti(L, -2, slot);
        lua_pop(L, 1);
        f->has_default = 1;
    }
    lua_pop(L, 1);
}

static void read_entities(lua_State *L, program *p, int spec, int uv)
{
    lua_getfield(L, spec, "entities");
    luaL_checktype(L, -1, LUA_TTABLE);
    p->nentities = (int)lua_rawlen(L, -1);
    if (p->nentities < 1 || p->nentities > 16)
        luaL_error(L, "record: a program maps 1 to 16 entities");
    p->entities = zalloc(L, (size_t)p->nentities, sizeof *p->entities);
    const char *names[16];
    size_t lens[16];
    int slot = 0;
    for (int e = 0; e < p->nentities; e++) {
        entity *ent = &p->entities[e];
        lua_rawgeti(L, -1, e + 1);
        int eidx = lua_gettop(L);
        ent->name = copy_field(L, eidx, "name", &ent->name_len, 1);
        ent->canon = canon_name(L, ent->name, ent->name_len, &ent->canon_len);
        names[e] = ent->name;
        lens[e] = ent->name_len;
        lua_getfield(L, eidx, "fields");
        luaL_checktype(L, -1, LUA_TTABLE);
        ent->nfields = (int)lua_rawlen(L, -1);
        ent->fields = zalloc(L, (size_t)ent->nfields, sizeof *ent->fields);
        ent->first = p->ncells;
        const char **fnames = zalloc(L, (size_t)ent->nfields, sizeof *fnames);
        size_t *flens = zalloc(L, (size_t)ent->nfields, sizeof *flens);
        for (int i = 0; i < ent->nfields; i++) {
            lua_rawgeti(L, -1, i + 1);
            read_field(L, uv, &ent->fields[i], ++slot);
            lua_pop(L, 1);
            fnames[i] = ent->fields[i].name;
            flens[i] = ent->fields[i].name_len;
        }
        ent->order = name_order(L, fnames, flens, ent->nfields);
        free(fnames);
        free(flens);
        p->ncells += ent->nfields;
        if (ent->nfields > p->max_columns)
            p->max_columns = ent->nfields;
        lua_pop(L, 2);
    }
    p->entity_order = name_order(L, names, lens, p->nentities);
    /* fields are mapped entity by entity, each's in its order */
    int later = 0;
    for (int e = p->nentities - 1; e >= 0; e--) {
        for (int i = p->entities[e].nfields - 1; i >= 0; i--) {
            field *f = &p->entities[e].fields[i];
            f->callback_after = later;
            later = later || f->callback;
        }
    }
    lua_pop(L, 1);
}

/* Copies spec[key] into the uservalue slot. */
static void keep(lua_State *L, int spec, int uv, const char *key, int slot, int type)
{
    lua_getfield(L, spec, key);
    if (type != LUA_TNONE && lua_type(L, -1) != type)
        luaL_error(L, "record: the program's %s must be a %s", key, lua_typename(L, type));
    lua_rawseti(L, uv, slot);
}

/* program(spec) -> program; spec as lua/entsync/record_path.lua builds it:
 * store, writers (one per entity, in order), idmap_sql, max_key_sql, sync_id, seed,
 * id_field, changed_field, kind, ctx, coerce, encode, canonical, and
 * entities { { name, fields { { name, keys, type, required, import,
 * default } } } } in the compiled mapping's order. */
static int program_new(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    program *p = lua_newuserdatauv(L, sizeof *p, 1);
    memset(p, 0, sizeof *p);
    luaL_setmetatable(L, PROGRAM_META);
    lua_createtable(L, SLOT_COUNT, 0);
    int uv = lua_gettop(L);
    lua_pushvalue(L, uv);
    lua_setiuservalue(L, 2, 1);
    lua_newtable(L);
    lua_rawseti(L, uv, SLOT_CALLBACKS);
    lua_newtable(L);
    lua_rawseti(L, uv, SLOT_DEFAULTS);
    lua_newtable(L);
    lua_rawseti(L, uv, SLOT_PATHS);
    lua_createtable(L, 3, 0);
    lua_pushliteral(L, "remote_id");
    lua_rawseti(L, -2, 1);
    lua_pushliteral(L, "local_id");
    lua_rawseti(L, -2, 2);
    lua_pushliteral(L, "record");
    lua_rawseti(L, -2, 3);
    lua_rawseti(L, uv, SLOT_KEYS);
    lua_createtable(L, 2, 0);
    lua_getfield(L, 1, "id_field");
    lua_rawseti(L, -2, 1);
    lua_getfield(L, 1, "changed_field");
    lua_rawseti(L, -2, 2);
    lua_rawseti(L, uv, SLOT_NAMES);
    keep(L, 1, uv, "writers", SLOT_WRITERS, LUA_TTABLE);
    keep(L, 1, uv, "coerce", SLOT_COERCE, LUA_TTABLE);
    keep(L, 1, uv, "ctx", SLOT_CTX, LUA_TNONE);
    keep(L, 1, uv, "encode", SLOT_ENCODE, LUA_TFUNCTION);
    keep(L, 1, uv, "canonical", SLOT_CANONICAL, LUA_TFUNCTION);
    keep(L, 1, uv, "store", SLOT_STORE, LUA_TUSERDATA);
    keep(L, 1, uv, "idmap_sql", SLOT_IDMAP_SQL, LUA_TSTRING);
    keep(L, 1, uv, "max_key_sql", SLOT_MAX_KEY_SQL, LUA_TSTRING);
    keep(L, 1, uv, "lookup_sql", SLOT_LOOKUP_SQL, LUA_TNONE);
    keep(L, 1, uv, "save_sql", SLOT_SAVE_SQL, LUA_TNONE);
    keep(L, 1, uv, "update_sql", SLOT_UPDATE_SQL, LUA_TNONE);
    keep(L, 1, uv, "links", SLOT_LINKS, LUA_TNONE);
    keep(L, 1, uv, "idmap_rows_sql", SLOT_IDMAP_ROWS_SQL, LUA_TNONE);
    lua_getfield(L, 1, "updates");
    p->updates = lua_toboolean(L, -1);
    lua_getfield(L, 1, "track_seen");
    p->track_seen = lua_toboolean(L, -1);
    lua_pop(L, 2);
    lua_getfield(L, LUA_REGISTRYINDEX, OBJECT_MT);
    if (lua_type(L, -1) != LUA_TTABLE)
        return luaL_error(L, "record: entsync.json is not loaded");
    lua_rawseti(L, uv, SLOT_OBJECT_MT);
    p->id_field = copy_field(L, 1, "id_field", &p->id_len, 1);
    p->changed_field = copy_field(L, 1, "changed_field", &p->changed_len, 0);
    lua_getfield(L, 1, "kind");
    p->kind_text = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "text") == 0;
    lua_pop(L, 1);
    lua_getfield(L, 1, "seed");
    p->seed = (uint64_t)luaL_checkinteger(L, -1);
    lua_getfield(L, 1, "sync_id");
    p->sync_id = (long long)luaL_checkinteger(L, -1);
    lua_pop(L, 2);
    read_entities(L, p, 1, uv);
    p->pending = zalloc(L, (size_t)p->ncells, sizeof *p->pending);
    p->memo = zalloc(L, (size_t)p->ncells, sizeof *p->memo);
    for (int slot = SLOT_PENDING; slot <= SLOT_MEMO_ERRORS; slot++) {
        lua_newtable(L);
        lua_rawseti(L, uv, slot);
    }
    p->parser = entsync_json_parser_new();
    p->encoder = entsync_json_encoder_new();
    if (!p->parser || !p->encoder)
        return luaL_error(L, "record: out of memory");
    lua_settop(L, 2);
    return 1;
}

void entsync_record_register(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"take", program_take}, {"take_records", program_take_records}, {"held", program_held}, {"max", program_max},     {"count", program_count}, {"entry", program_entry},
        {"reset", program_reset}, {"write", program_write}, {"queue", program_queue},
        {"hand_off", program_hand_off}, {"settle", program_settle}, {NULL, NULL},
    };
    if (luaL_newmetatable(L, PROGRAM_META)) {
        lua_newtable(L);
        luaL_setfuncs(L, methods, 0);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, program_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    /* views: the mark of decoded objects reads a view's fields */
    lua_getfield(L, LUA_REGISTRYINDEX, OBJECT_MT);
    if (lua_type(L, -1) != LUA_TTABLE)
        luaL_error(L, "record: entsync.json must be registered first");
    luaL_getmetatable(L, PROGRAM_META);
    lua_pushvalue(L, -2);
    lua_getfield(L, LUA_REGISTRYINDEX, ARRAY_MT);
    lua_pushcclosure(L, view_index, 3);
    lua_setfield(L, -2, "__index");
    luaL_getmetatable(L, PROGRAM_META);
    lua_pushcclosure(L, view_newindex, 1);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, view_pairs);
    lua_setfield(L, -2, "__pairs");
    lua_pop(L, 1);
    lua_getfield(L, -1, "json");
    lua_getfield(L, -1, "decode");
    lua_setfield(L, LUA_REGISTRYINDEX, "entsync.record.decode");
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushcfunction(L, program_new);
    lua_setfield(L, -2, "program");
    lua_pushcfunction(L, record_held_nil);
    lua_setfield(L, -2, "held_nil");
    lua_setfield(L, -2, "record");
}
