/*
 * lock: lease acquisition, heartbeat and release, each one short
 * IMMEDIATE transaction so racing processes are serialized by SQLite.
 */
#include "lock.h"

#include "store.h"

#include <errno.h>
#include <lauxlib.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double wall_clock(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void this_host(char *name, size_t size)
{
    if (gethostname(name, size) != 0)
        snprintf(name, size, "localhost");
    name[size - 1] = '\0';
}

/* A zombie has exited: its lease is as dead as its process. */
static int is_zombie(sqlite3_int64 pid)
{
    char path[64], stat[256];
    snprintf(path, sizeof path, "/proc/%lld/stat", (long long)pid);
    FILE *file = fopen(path, "r");
    if (!file)
        return 0;
    size_t n = fread(stat, 1, sizeof stat - 1, file);
    fclose(file);
    stat[n] = '\0';
    const char *end = strrchr(stat, ')'); /* the command may hold spaces */
    return end && end[1] == ' ' && (end[2] == 'Z' || end[2] == 'X');
}

static int pid_alive(sqlite3_int64 pid)
{
    return pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM) && !is_zombie(pid);
}

static void run_or_raise(lua_State *L, entsync_store *store, const char *sql)
{
    sqlite3_stmt *stmt = entsync_store_stmt(L, 1, sql);
    int rc = sqlite3_step(stmt);
    sqlite3_reset(stmt);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        entsync_store_error(L, store, sql);
}

/* Pushes the lease row of name as a table, or nil. */
static int push_holder(lua_State *L, entsync_store *store, const char *name)
{
    const char *sql = "SELECT owner, pid, host, acquired_at, heartbeat_at, expires_at "
                      "FROM entsync_locks WHERE name = ?1";
    sqlite3_stmt *stmt = entsync_store_stmt(L, 1, sql);
    sqlite3_bind_text(stmt, 1, name, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW) {
        lua_createtable(L, 0, 6);
        for (int i = 0; i < 6; i++) {
            entsync_store_push_column(L, stmt, i);
            lua_setfield(L, -2, sqlite3_column_name(stmt, i));
        }
    } else {
        lua_pushnil(L);
    }
    sqlite3_reset(stmt);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        entsync_store_error(L, store, sql);
    return rc == SQLITE_ROW;
}

static void write_lease(lua_State *L, entsync_store *store, const char *name,
                        const char *owner, double ttl, double now)
{
    char host[256];
    this_host(host, sizeof host);
    const char *sql = "INSERT OR REPLACE INTO entsync_locks "
                      "(name, owner, pid, host, acquired_at, heartbeat_at, expires_at) "
                      "VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)";
    sqlite3_stmt *stmt = entsync_store_stmt(L, 1, sql);
    sqlite3_bind_text(stmt, 1, name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(stmt, 2, owner, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(stmt, 3, (sqlite3_int64)getpid());
    sqlite3_bind_text(stmt, 4, host, -1, SQLITE_TRANSIENT);
    sqlite3_bind_double(stmt, 5, now);
    sqlite3_bind_double(stmt, 6, now + ttl);
    int rc = sqlite3_step(stmt);
    sqlite3_reset(stmt);
    if (rc != SQLITE_DONE)
        entsync_store_error(L, store, sql);
}

/* Why a held lease may be taken over, or NULL when it may not. */
static const char *takeover_reason(lua_State *L, int holder, double now)
{
    char host[256];
    this_host(host, sizeof host);
    lua_getfield(L, holder, "expires_at");
    double expires = lua_tonumber(L, -1);
    lua_getfield(L, holder, "host");
    int same_host = lua_tostring(L, -1) && strcmp(lua_tostring(L, -1), host) == 0;
    lua_getfield(L, holder, "pid");
    sqlite3_int64 pid = (sqlite3_int64)lua_tointeger(L, -1);
    lua_pop(L, 3);
    if (expires < now)
        return "expired";
    if (same_host && !pid_alive(pid))
        return "dead";
    return NULL;
}

/* acquire(store, name, owner, ttl) -> true [, takeover] | false, holder
 * takeover is { reason = "expired"|"dead", holder = previous lease }. */
static int lock_acquire(lua_State *L)
{
    entsync_store *store = entsync_store_check(L, 1);
    const char *name = luaL_checkstring(L, 2);
    const char *owner = luaL_checkstring(L, 3);
    double ttl = (double)luaL_checknumber(L, 4);
    if (!sqlite3_get_autocommit(entsync_store_db(store)))
        return luaL_error(L, "lock %s: cannot be taken inside a transaction", name);
    run_or_raise(L, store, "BEGIN IMMEDIATE");
    double now = wall_clock();
    int held = push_holder(L, store, name);
    int holder = lua_gettop(L);
    const char *reason = NULL;
    if (held) {
        lua_getfield(L, holder, "owner");
        int mine = strcmp(lua_tostring(L, -1), owner) == 0;
        lua_pop(L, 1);
        if (!mine && !(reason = takeover_reason(L, holder, now))) {
            run_or_raise(L, store, "ROLLBACK");
            lua_pushboolean(L, 0);
            lua_pushvalue(L, holder);
            return 2;
        }
    }
    write_lease(L, store, name, owner, ttl, now);
    run_or_raise(L, store, "COMMIT");
    lua_pushboolean(L, 1);
    if (!reason)
        return 1;
    lua_createtable(L, 0, 2);
    lua_pushstring(L, reason);
    lua_setfield(L, -2, "reason");
    lua_pushvalue(L, holder);
    lua_setfield(L, -2, "holder");
    return 2;
}

/* heartbeat(store, name, owner, ttl) -> true | false (the lease was lost) */
static int lock_heartbeat(lua_State *L)
{
    entsync_store *store = entsync_store_check(L, 1);
    const char *name = luaL_checkstring(L, 2);
    const char *owner = luaL_checkstring(L, 3);
    double ttl = (double)luaL_checknumber(L, 4);
    double now = wall_clock();
    const char *sql = "UPDATE entsync_locks SET heartbeat_at = ?3, expires_at = ?4 "
                      "WHERE name = ?1 AND owner = ?2";
    sqlite3_stmt *stmt = entsync_store_stmt(L, 1, sql);
    sqlite3_bind_text(stmt, 1, name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(stmt, 2, owner, -1, SQLITE_TRANSIENT);
    sqlite3_bind_double(stmt, 3, now);
    sqlite3_bind_double(stmt, 4, now + ttl);
    int rc = sqlite3_step(stmt);
    sqlite3_reset(stmt);
    if (rc != SQLITE_DONE)
        return entsync_store_error(L, store, sql);
    lua_pushboolean(L, sqlite3_changes(entsync_store_db(store)) > 0);
    return 1;
}

/* release(store, name, owner) -> true | false (not ours) */
static int lock_release(lua_State *L)
{
    entsync_store *store = entsync_store_check(L, 1);
    const char *name = luaL_checkstring(L, 2);
    const char *owner = luaL_checkstring(L, 3);
    const char *sql = "DELETE FROM entsync_locks WHERE name = ?1 AND owner = ?2";
    sqlite3_stmt *stmt = entsync_store_stmt(L, 1, sql);
    sqlite3_bind_text(stmt, 1, name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(stmt, 2, owner, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(stmt);
    sqlite3_reset(stmt);
    if (rc != SQLITE_DONE)
        return entsync_store_error(L, store, sql);
    lua_pushboolean(L, sqlite3_changes(entsync_store_db(store)) > 0);
    return 1;
}

/* holder(store, name) -> lease | nil */
static int lock_holder(lua_State *L)
{
    entsync_store *store = entsync_store_check(L, 1);
    push_holder(L, store, luaL_checkstring(L, 2));
    return 1;
}

void entsync_lock_register(lua_State *L)
{
    static const luaL_Reg functions[] = {
        {"acquire", lock_acquire},
        {"heartbeat", lock_heartbeat},
        {"release", lock_release},
        {"holder", lock_holder},
        {NULL, NULL},
    };
    luaL_newlib(L, functions);
    lua_setfield(L, -2, "lock");
}
