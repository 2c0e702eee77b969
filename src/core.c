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
#include "redis.h"
#include "sign.h"
#include "store.h"

#include <lauxlib.h>
#include <sqlite3.h>

int luaopen_entsync_core(lua_State *L)
{
    lua_newtable(L);
    entsync_store_register(L);
    entsync_hash_register(L);
    entsync_lock_register(L);
    entsync_fsutil_register(L);
    entsync_http_register(L);
    entsync_httpd_register(L);
    entsync_json_register(L);
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
