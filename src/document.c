/*
 * document: a parsed JSON text kept for questions (see document.h).
 */
#include "document.h"

#include "http.h"

#include "json.h"

#include <lauxlib.h>
#include <stdio.h>
#include <string.h>

#define DOCUMENT_META "entsync.json.document"
#define OBJECT_MT "entsync.json.object"
#define ARRAY_MT "entsync.json.array"
#define MESSAGE_SIZE 256

struct entsync_document {
    entsync_json_parser *parser;
    const entsync_json_node *root;    /* NULL: nothing loaded */
    const entsync_json_node *records; /* the array select chose, or NULL */
    size_t count;                     /* its items */
    size_t at;                        /* the record last found (1-based; 0: none) */
    const entsync_json_node *at_node; /* and its nodes */
};
typedef struct entsync_document document;

static document *check_document(lua_State *L)
{
    return luaL_checkudata(L, 1, DOCUMENT_META);
}

static document *loaded(lua_State *L)
{
    document *d = check_document(L);
    if (!d->root)
        luaL_error(L, "document: nothing is loaded");
    return d;
}

entsync_document *entsync_document_test(lua_State *L, int idx)
{
    return luaL_testudata(L, idx, DOCUMENT_META);
}

size_t entsync_document_count(const entsync_document *d)
{
    return d->count;
}

const entsync_json_node *entsync_document_record(entsync_document *d, size_t i)
{
    if (!d->at || i < d->at) {
        d->at = 1;
        d->at_node = d->records + 1;
    }
    while (d->at < i) {
        d->at_node = entsync_json_node_after(d->at_node);
        d->at++;
    }
    return d->at_node;
}

/* Record i of the loaded document at 1, raising when there is none. */
static const entsync_json_node *record_argument(lua_State *L, document *d, int arg)
{
    lua_Integer i = luaL_checkinteger(L, arg);
    if (i < 1 || (size_t)i > d->count)
        luaL_error(L, "document: no record %d (it has %d)", (int)i, (int)d->count);
    return entsync_document_record(d, (size_t)i);
}

/* Pushes the value at n as json.decode gives it (nil for NULL: none). */
static void push_value(lua_State *L, const entsync_json_node *n)
{
    if (!n) {
        lua_pushnil(L);
        return;
    }
    lua_getfield(L, LUA_REGISTRYINDEX, OBJECT_MT);
    lua_getfield(L, LUA_REGISTRYINDEX, ARRAY_MT);
    entsync_json_push_node(L, n, -2, -1);
    lua_replace(L, -3);
    lua_pop(L, 1);
}

/* One step of a path from n, as dig takes it: value[tonumber(key) or key]
 * of a decoded value, where an object's keys are strings and an array's
 * are 1..n. NULL: nothing there. */
static const entsync_json_node *step(lua_State *L, const entsync_json_node *n, const char *key, size_t len)
{
    char text[64];
    if (len < sizeof text) {
        memcpy(text, key, len);
        text[len] = '\0';
        if (lua_stringtonumber(L, text)) {
            int integral = 0;
            lua_Integer k = lua_tointegerx(L, -1, &integral);
            lua_pop(L, 1);
            if (!integral || n->type != ENTSYNC_JSON_ARRAY)
                return NULL;
            return entsync_json_array_item(n, k);
        }
    }
    return n->type == ENTSYNC_JSON_OBJECT ? entsync_json_object_get(n, key, len) : NULL;
}

/* The value at the path at stack index arg (nil or "": the whole). */
static const entsync_json_node *walk(lua_State *L, const document *d, int arg)
{
    size_t len = 0;
    const char *path = luaL_optlstring(L, arg, "", &len);
    const entsync_json_node *n = d->root;
    size_t i = 0;
    while (n && i < len) {
        if (path[i] == '.') {
            i++;
            continue;
        }
        size_t j = i;
        while (j < len && path[j] != '.')
            j++;
        n = step(L, n, path + i, j - i);
        i = j;
    }
    return n;
}

/* doc:load(text | payload) -> true | nil, message */
static int document_load(lua_State *L)
{
    document *d = check_document(L);
    size_t len;
    const char *text = entsync_http_payload_body(L, 2, &len);
    int padded = text != NULL; /* a payload's body is padded for the parse: see http.h */
    if (!text)
        text = luaL_checklstring(L, 2, &len);
    d->root = d->records = d->at_node = NULL;
    d->count = d->at = 0;
    if (!d->parser && !(d->parser = entsync_json_parser_new()))
        return luaL_error(L, "document: out of memory");
    /* a parser grown for a large page gives that memory back first */
    entsync_json_release(d->parser);
    char msg[MESSAGE_SIZE];
    const entsync_json_node *nodes;
    if (!entsync_json_parse_text(d->parser, text, len, padded, &nodes, msg, sizeof msg)) {
        lua_pushnil(L);
        lua_pushstring(L, msg);
        return 2;
    }
    d->root = nodes;
    lua_pushboolean(L, 1);
    return 1;
}

/* doc:get(path) -> value */
static int document_get(lua_State *L)
{
    document *d = loaded(L);
    push_value(L, walk(L, d, 2));
    return 1;
}

static const char *kind_name(int type)
{
    switch (type) {
    case ENTSYNC_JSON_NULL:
        return "null";
    case ENTSYNC_JSON_FALSE:
    case ENTSYNC_JSON_TRUE:
        return "boolean";
    case ENTSYNC_JSON_INTEGER:
    case ENTSYNC_JSON_FLOAT:
        return "number";
    case ENTSYNC_JSON_STRING:
        return "string";
    case ENTSYNC_JSON_ARRAY:
        return "array";
    default:
        return "object";
    }
}

/* doc:select(path) -> kind, n | nil */
static int document_select(lua_State *L)
{
    document *d = loaded(L);
    const entsync_json_node *n = walk(L, d, 2);
    int array = n && n->type == ENTSYNC_JSON_ARRAY;
    d->records = array ? n : NULL;
    d->count = array ? n->len : 0;
    d->at = 0;
    d->at_node = NULL;
    if (!n) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushstring(L, kind_name(n->type));
    if (array || n->type == ENTSYNC_JSON_OBJECT)
        lua_pushinteger(L, (lua_Integer)n->len);
    else
        lua_pushnil(L);
    return 2;
}

/* doc:item(i [, key]) -> value */
static int document_item(lua_State *L)
{
    const entsync_json_node *n = record_argument(L, loaded(L), 2);
    if (!lua_isnoneornil(L, 3)) {
        size_t len;
        const char *key = luaL_checklstring(L, 3, &len);
        n = n->type == ENTSYNC_JSON_OBJECT ? entsync_json_object_get(n, key, len) : NULL;
    }
    push_value(L, n);
    return 1;
}

/* doc:objects(from, to) -> last */
static int document_objects(lua_State *L)
{
    document *d = loaded(L);
    lua_Integer from = luaL_checkinteger(L, 2), to = luaL_checkinteger(L, 3);
    luaL_argcheck(L, from >= 1, 2, "records count from 1");
    luaL_argcheck(L, to <= (lua_Integer)d->count, 3, "beyond the records");
    lua_Integer last = from - 1;
    while (last < to && entsync_document_record(d, (size_t)last + 1)->type == ENTSYNC_JSON_OBJECT)
        last++;
    lua_pushinteger(L, last);
    return 1;
}

/* doc:list() -> list */
static int document_list(lua_State *L)
{
    document *d = loaded(L);
    if (d->records) {
        push_value(L, d->records);
    } else {
        lua_newtable(L);
        lua_getfield(L, LUA_REGISTRYINDEX, ARRAY_MT);
        lua_setmetatable(L, -2);
    }
    return 1;
}

static int document_gc(lua_State *L)
{
    document *d = check_document(L);
    if (d->parser)
        entsync_json_parser_free(d->parser);
    d->parser = NULL;
    d->root = d->records = d->at_node = NULL;
    d->count = d->at = 0;
    return 0;
}

/* json.document() -> doc */
static int document_new(lua_State *L)
{
    document *d = lua_newuserdatauv(L, sizeof *d, 0);
    memset(d, 0, sizeof *d);
    luaL_setmetatable(L, DOCUMENT_META);
    return 1;
}

void entsync_document_register(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"load", document_load},       {"get", document_get},   {"select", document_select},
        {"item", document_item},       {"objects", document_objects}, {"list", document_list},
        {NULL, NULL},
    };
    if (luaL_newmetatable(L, DOCUMENT_META)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, document_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, document_new);
    lua_setfield(L, -2, "document");
}
