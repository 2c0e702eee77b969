/*
 * core: assembles the C concerns into the entsync.core table.
 */
#include "core.h"

#include "fsutil.h"
#include "hash.h"
#include "http.h"
#include "httpd.h"
#include "json.h"
#include "lock.h"
#include "loop.h"
#include "notify.h"
#include "readline.h"
#include "record.h"
#include "redis.h"
#include "sign.h"
#include "store.h"

#include <lauxlib.h>
#include <sqlite3.h>

#define ERROR_META "entsync.error"

/* __tostring of an entsync error: its message. */
static int error_tostring(lua_State *L)
{
    lua_getfield(L, 1, "message");
    if (!lua_isstring(L, -1))
        lua_pushliteral(L, "entsync error");
    return 1;
}

/* Pushes the error metatable, made on first use. */
static void push_error_meta(lua_State *L)
{
    if (luaL_newmetatable(L, ERROR_META)) {
        lua_pushvalue(L, -1);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, error_tostring);
        lua_setfield(L, -2, "__tostring");
    }
}

void entsync_error_push(lua_State *L, const char *kind, const char *message)
{
    lua_createtable(L, 0, 4);
    lua_pushstring(L, kind);
    lua_setfield(L, -2, "kind");
    lua_pushstring(L, message);
    lua_setfield(L, -2, "message");
    push_error_meta(L);
    lua_setmetatable(L, -2);
}

int luaopen_entsync_core(lua_State *L)
{
    lua_newtable(L);
    push_error_meta(L);
    lua_setfield(L, -2, "error_meta");
    entsync_store_register(L);
    entsync_hash_register(L);
    entsync_lock_register(L);
    entsync_fsutil_register(L);
    entsync_http_register(L);
    entsync_httpd_register(L);
    entsync_json_register(L);
    entsync_record_register(L); /* after json: it sets json.object_mt's __index */
    entsync_loop_register(L);
    entsync_notify_register(L);
    entsync_readline_register(L);
    entsync_sign_register(L);
    entsync_redis_register(L);
    lua_pushliteral(L, ENTSYNC_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushstring(L, sqlite3_libversion());
    lua_setfield(L, -2, "sqlite_version");
    return 1;
}
