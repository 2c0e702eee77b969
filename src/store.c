/*
 * store: SQLite persistence for one job.
 *
 * Every statement is prepared once and kept in a per-connection cache keyed
 * by its SQL text (a Lua table maps the text to a slot in a C array), so the
 * hot paths of an import bind and step statements that already exist. Names
 * of tables and columns come from job files, so they are validated as
 * identifiers and quoted; values are always bound, never pasted into SQL.
 */
#include "store.h"

#include "core.h"
#include "hash.h"

#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define STORE_META "entsync.store"
#define WRITER_META "entsync.writer"
#define IDENT_MAX 63

/* The writer thread: it runs the tail of one handed-off transaction at a
 * time (entsync_store_hand_off) while the Lua thread goes on reading. The
 * mutex guards job and quit; the rest is set by the Lua thread while no
 * job is in flight, before the job that reads it is published. The
 * connection is the writer's from the hand-off until the job is done, and
 * every other use of the store waits for that (entsync_store_check), so
 * the two threads never use it at once. */
typedef struct writer_thread {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int started, quit;
    entsync_store_job *job; /* handed off and not done */
    sqlite3_stmt *commit, *rollback;
} writer_thread;

struct entsync_store {
    sqlite3 *db;
    char *path;
    sqlite3_stmt **stmts;
    int count, cap;
    int busy_ms; /* how long a writer waits for another's write lock */
    writer_thread *writer;
};

/* --- errors and identifiers ------------------------------------------- */

/* The start of a statement, for messages: lua_pushfstring has no
 * precision, so the text is cut here. */
static const char *sql_snippet(char *out, size_t size, const char *sql)
{
    snprintf(out, size, "%s", sql ? sql : "");
    return out;
}

/* The kind of an environment failure of SQLite's last call on db: "busy"
 * (another connection holds the lock), "disk_full", "permissions" (the file
 * or its folder cannot be opened or written) or "io"; NULL for any other
 * failure (a constraint, a syntax error: entsync's or the job's to name). */
static const char *failure_kind_of(int code, int sys)
{
    switch (code & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return "busy";
    case SQLITE_FULL:
        return "disk_full";
    case SQLITE_PERM:
    case SQLITE_READONLY:
    case SQLITE_CANTOPEN:
    case SQLITE_AUTH:
        return "permissions";
    case SQLITE_IOERR:
        if (sys == ENOSPC || sys == EDQUOT)
            return "disk_full";
        if (sys == EACCES || sys == EPERM || sys == EROFS)
            return "permissions";
        return "io";
    default:
        return NULL;
    }
}

/* Pushes the message of an environment failure of kind: what happened to
 * which file, and what to do about it. */
static void push_failure_message(lua_State *L, entsync_store *store, const char *kind, const char *reason, int sys)
{
    const char *why = sys ? strerror(sys) : reason;
    if (strcmp(kind, "busy") == 0)
        lua_pushfstring(L, "store %s is busy: another process held its write lock longer than the busy timeout "
                        "(%f s: %s); let it finish, or give the job a longer store { busy_timeout = seconds }, "
                        "and run again", store->path, store->busy_ms / 1000.0, reason);
    else if (strcmp(kind, "disk_full") == 0)
        lua_pushfstring(L, "store %s is full (%s): free disk space, or raise the job's store { max_size = ... }, "
                        "and run again; what was committed before is kept", store->path, why);
    else if (strcmp(kind, "permissions") == 0)
        lua_pushfstring(L, "store %s cannot be opened or written (%s: %s): entsync must read and write the file "
                        "and create %s-wal and %s-shm in its folder", store->path, reason, why, store->path,
                        store->path);
    else
        lua_pushfstring(L, "store %s: the disk failed (%s: %s); check the disk and the file system, then run "
                        "again", store->path, reason, why);
}

/* Pushes the error of SQLite's last failure on the store: an entsync
 * error of its kind (with fields store, code and sql) for an environment
 * failure, else the text "store PATH: reason (in: sql)". */
static void push_error_of(lua_State *L, entsync_store *store, const char *sql, const char *reason, int code, int sys)
{
    char snippet[96];
    const char *kind = failure_kind_of(code, sys);
    if (kind) {
        push_failure_message(L, store, kind, reason, sys);
        entsync_error_push(L, kind, lua_tostring(L, -1));
        lua_remove(L, -2);
        lua_pushstring(L, store->path);
        lua_setfield(L, -2, "store");
        lua_pushinteger(L, code);
        lua_setfield(L, -2, "code");
        if (sql) {
            lua_pushstring(L, sql_snippet(snippet, sizeof snippet, sql));
            lua_setfield(L, -2, "sql");
        }
    } else if (sql) {
        lua_pushfstring(L, "store %s: %s (in: %s)", store->path, reason, sql_snippet(snippet, sizeof snippet, sql));
    } else {
        lua_pushfstring(L, "store %s: %s", store->path, reason);
    }
}

static void push_store_error(lua_State *L, entsync_store *store, const char *sql, const char *reason)
{
    if (!store->db) {
        push_error_of(L, store, sql, reason ? reason : "store is closed", 0, 0);
        return;
    }
    push_error_of(L, store, sql, reason ? reason : sqlite3_errmsg(store->db), sqlite3_extended_errcode(store->db),
                  sqlite3_system_errno(store->db));
}

int entsync_store_error(lua_State *L, entsync_store *store, const char *sql)
{
    push_store_error(L, store, sql, NULL);
    return lua_error(L);
}

/* Raises the failure of a sqlite3_exec whose message (SQLite's, freed
 * here) may say more than sqlite3_errmsg. */
static int exec_error(lua_State *L, entsync_store *store, const char *sql, char *message)
{
    push_store_error(L, store, sql, message);
    sqlite3_free(message);
    return lua_error(L);
}

static int is_identifier(const char *name, size_t len)
{
    if (len == 0 || len > IDENT_MAX)
        return 0;
    if (!(name[0] == '_' || (name[0] >= 'A' && name[0] <= 'Z') || (name[0] >= 'a' && name[0] <= 'z')))
        return 0;
    for (size_t i = 1; i < len; i++) {
        char c = name[i];
        if (!(c == '_' || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')))
            return 0;
    }
    return 1;
}

static int has_reserved_prefix(const char *name)
{
    return strncasecmp(name, "entsync_", 8) == 0 || strncasecmp(name, "sqlite_", 7) == 0;
}

/* Checks argument idx is an identifier usable as a table or column name. */
static const char *check_identifier(lua_State *L, int idx, const char *what)
{
    size_t len;
    const char *name = luaL_checklstring(L, idx, &len);
    if (!is_identifier(name, len))
        luaL_error(L, "%s \"%s\" is not an identifier (letters, digits and _, not starting with a digit, at most %d)",
                   what, name, IDENT_MAX);
    return name;
}

/* valid_identifier(name) -> boolean */
static int store_valid_identifier(lua_State *L)
{
    size_t len;
    const char *name = lua_tolstring(L, 1, &len);
    lua_pushboolean(L, lua_type(L, 1) == LUA_TSTRING && is_identifier(name, len));
    return 1;
}

/* --- the handle -------------------------------------------------------- */

static entsync_store *to_store(lua_State *L, int idx)
{
    return luaL_checkudata(L, idx, STORE_META);
}

static void writer_wait(entsync_store *store);

entsync_store *entsync_store_check(lua_State *L, int idx)
{
    entsync_store *store = to_store(L, idx);
    writer_wait(store);
    if (!store->db)
        luaL_error(L, "store %s is closed", store->path ? store->path : "?");
    return store;
}

sqlite3 *entsync_store_db(entsync_store *store)
{
    return store->db;
}

/* --- the writer thread ------------------------------------------------ */

void entsync_store_fail(sqlite3 *db, const char *sql, entsync_store_failure *out)
{
    out->code = sqlite3_extended_errcode(db);
    out->sys = sqlite3_system_errno(db);
    snprintf(out->reason, sizeof out->reason, "%s", sqlite3_errmsg(db));
    snprintf(out->sql, sizeof out->sql, "%s", sql ? sql : "");
}

void entsync_store_push_failure(lua_State *L, entsync_store *store, const entsync_store_failure *failure)
{
    if (!failure->code && !failure->sql[0])
        lua_pushstring(L, failure->reason);
    else
        push_error_of(L, store, failure->sql[0] ? failure->sql : NULL, failure->reason, failure->code,
                      failure->sys);
}

int entsync_store_raise(lua_State *L, entsync_store *store, const entsync_store_failure *failure)
{
    entsync_store_push_failure(L, store, failure);
    return lua_error(L);
}

int entsync_store_step_done(sqlite3 *db, sqlite3_stmt *stmt, entsync_store_failure *failure)
{
    int rc = sqlite3_step(stmt);
    if (rc != SQLITE_DONE)
        entsync_store_fail(db, sqlite3_sql(stmt), failure);
    sqlite3_reset(stmt);
    return rc == SQLITE_DONE;
}

/* The thread: waits for a job, runs its work, then the statement after
 * it and COMMIT; on a failure it keeps SQLite's account of it (taken
 * before the ROLLBACK that follows, which would clear it) and rolls back. */
static void *writer_main(void *arg)
{
    entsync_store *store = arg;
    writer_thread *w = store->writer;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->job && !w->quit)
            pthread_cond_wait(&w->cv, &w->mu);
        if (!w->job)
            break;
        entsync_store_job *job = w->job;
        pthread_mutex_unlock(&w->mu);
        entsync_store_failure failure;
        memset(&failure, 0, sizeof failure);
        int ok = job->work(job->arg, &failure);
        if (ok && job->after)
            ok = entsync_store_step_done(store->db, job->after, &failure);
        if (ok)
            ok = entsync_store_step_done(store->db, w->commit, &failure);
        if (!ok && !sqlite3_get_autocommit(store->db)) {
            entsync_store_failure ignored;
            entsync_store_step_done(store->db, w->rollback, &ignored);
        }
        pthread_mutex_lock(&w->mu);
        job->ok = ok;
        job->failure = failure;
        job->done = 1;
        w->job = NULL;
        pthread_cond_broadcast(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Waits until no job is in flight: then the connection is this thread's
 * again. Nothing when no job was ever handed off. */
static void writer_wait(entsync_store *store)
{
    writer_thread *w = store->writer;
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    while (w->job)
        pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
}

/* Waits for the job in flight, then ends and joins the thread. */
static void writer_stop(entsync_store *store)
{
    writer_thread *w = store->writer;
    if (!w)
        return;
    if (w->started) {
        pthread_mutex_lock(&w->mu);
        w->quit = 1;
        pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->thread, NULL);
    }
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
    store->writer = NULL;
}

entsync_store *entsync_store_writer_ready(lua_State *L, int store_idx)
{
    entsync_store *store = entsync_store_check(L, store_idx);
    if (sqlite3_get_autocommit(store->db))
        luaL_error(L, "store %s: a hand-off needs a transaction in progress", store->path);
    writer_thread *w = store->writer;
    if (!w) {
        w = calloc(1, sizeof *w);
        if (!w)
            luaL_error(L, "store %s: out of memory", store->path);
        pthread_mutex_init(&w->mu, NULL);
        pthread_cond_init(&w->cv, NULL);
        store->writer = w;
    }
    w->commit = entsync_store_stmt(L, store_idx, "COMMIT");
    w->rollback = entsync_store_stmt(L, store_idx, "ROLLBACK");
    if (!w->started) {
        /* signals stay the Lua thread's: its handlers wake its loop */
        sigset_t all, was;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &was);
        int rc = pthread_create(&w->thread, NULL, writer_main, store);
        pthread_sigmask(SIG_SETMASK, &was, NULL);
        if (rc != 0)
            luaL_error(L, "store %s: cannot start its writer thread", store->path);
        w->started = 1;
    }
    return store;
}

void entsync_store_hand_off(entsync_store *store, entsync_store_job *job)
{
    writer_thread *w = store->writer;
    job->done = job->ok = 0;
    pthread_mutex_lock(&w->mu);
    w->job = job;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

int entsync_store_wait(entsync_store *store, entsync_store_job *job)
{
    writer_wait(store);
    return job->done;
}

/* Finalizes every cached statement and closes the connection; safe to call
 * again (from __gc after close()). */
static void writer_stop(entsync_store *store);

static void store_release(entsync_store *store)
{
    writer_stop(store);
    for (int i = 0; i < store->count; i++)
        sqlite3_finalize(store->stmts[i]);
    free(store->stmts);
    store->stmts = NULL;
    store->count = store->cap = 0;
    if (store->db) {
        sqlite3_close(store->db);
        store->db = NULL;
    }
}

static int store_gc(lua_State *L)
{
    entsync_store *store = to_store(L, 1);
    store_release(store);
    free(store->path);
    store->path = NULL;
    return 0;
}

static int store_close(lua_State *L)
{
    store_release(to_store(L, 1));
    return 0;
}

/* The statement for the SQL string at sql_idx. Looking the cache up with the
 * caller's own Lua string reuses its cached hash, which matters on hot
 * paths where the same constant SQL is run per entity. */
static sqlite3_stmt *stmt_for(lua_State *L, int store_idx, int sql_idx)
{
    entsync_store *store = entsync_store_check(L, store_idx);
    sql_idx = lua_absindex(L, sql_idx);
    lua_getiuservalue(L, store_idx, 1);
    lua_pushvalue(L, sql_idx);
    lua_rawget(L, -2);
    int slot = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) : -1;
    lua_pop(L, 1);
    if (slot >= 0) {
        lua_pop(L, 1);
        sqlite3_stmt *stmt = store->stmts[slot];
        sqlite3_reset(stmt);
        sqlite3_clear_bindings(stmt);
        return stmt;
    }
    const char *sql = lua_tostring(L, sql_idx);
    if (store->count == store->cap) {
        int cap = store->cap ? store->cap * 2 : 32;
        sqlite3_stmt **grown = realloc(store->stmts, (size_t)cap * sizeof *grown);
        if (!grown)
            luaL_error(L, "store %s: out of memory", store->path);
        store->stmts = grown;
        store->cap = cap;
    }
    sqlite3_stmt *stmt = NULL;
    if (sqlite3_prepare_v3(store->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, NULL) != SQLITE_OK)
        entsync_store_error(L, store, sql);
    if (!stmt)
        luaL_error(L, "store %s: empty statement", store->path);
    store->stmts[store->count] = stmt;
    lua_pushvalue(L, sql_idx);
    lua_pushinteger(L, store->count++);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    return stmt;
}

sqlite3_stmt *entsync_store_stmt(lua_State *L, int store_idx, const char *sql)
{
    store_idx = lua_absindex(L, store_idx);
    lua_pushstring(L, sql);
    sqlite3_stmt *stmt = stmt_for(L, store_idx, -1);
    lua_pop(L, 1);
    return stmt;
}

void entsync_store_bind(lua_State *L, entsync_store *store, sqlite3_stmt *stmt,
                        int n, int idx, const char *what)
{
    int rc;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        rc = sqlite3_bind_null(stmt, n);
        break;
    case LUA_TLIGHTUSERDATA: /* cjson.null */
        rc = sqlite3_bind_null(stmt, n);
        break;
    case LUA_TBOOLEAN:
        rc = sqlite3_bind_int(stmt, n, lua_toboolean(L, idx));
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            rc = sqlite3_bind_int64(stmt, n, (sqlite3_int64)lua_tointeger(L, idx));
        else
            rc = sqlite3_bind_double(stmt, n, (double)lua_tonumber(L, idx));
        break;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        rc = sqlite3_bind_text64(stmt, n, s, len, SQLITE_TRANSIENT, SQLITE_UTF8);
        break;
    }
    default:
        sqlite3_reset(stmt);
        luaL_error(L, "cannot store a %s in %s", luaL_typename(L, idx), what);
        return;
    }
    if (rc != SQLITE_OK) {
        sqlite3_reset(stmt);
        entsync_store_error(L, store, sqlite3_sql(stmt));
    }
}

void entsync_store_push_column(lua_State *L, sqlite3_stmt *stmt, int i)
{
    switch (sqlite3_column_type(stmt, i)) {
    case SQLITE_INTEGER:
        lua_pushinteger(L, (lua_Integer)sqlite3_column_int64(stmt, i));
        break;
    case SQLITE_FLOAT:
        lua_pushnumber(L, (lua_Number)sqlite3_column_double(stmt, i));
        break;
    case SQLITE_TEXT:
        lua_pushlstring(L, (const char *)sqlite3_column_text(stmt, i),
                        (size_t)sqlite3_column_bytes(stmt, i));
        break;
    case SQLITE_BLOB: {
        const void *blob = sqlite3_column_blob(stmt, i);
        lua_pushlstring(L, blob ? blob : "", (size_t)sqlite3_column_bytes(stmt, i));
        break;
    }
    default:
        lua_pushnil(L);
    }
}

/* Prepares sql (argument 2) and binds arguments 3..top to it. */
static sqlite3_stmt *prepare_with_args(lua_State *L, entsync_store **store_out)
{
    entsync_store *store = entsync_store_check(L, 1);
    const char *sql = luaL_checkstring(L, 2);
    sqlite3_stmt *stmt = stmt_for(L, 1, 2);
    int params = sqlite3_bind_parameter_count(stmt), given = lua_gettop(L) - 2;
    if (given > params) {
        char snippet[96];
        luaL_error(L, "store: %d values given for %d parameters (in: %s)", given, params,
                   sql_snippet(snippet, sizeof snippet, sql));
    }
    for (int i = 1; i <= given; i++)
        entsync_store_bind(L, store, stmt, i, i + 2, "a statement parameter");
    *store_out = store;
    return stmt;
}

static int step_or_raise(lua_State *L, entsync_store *store, sqlite3_stmt *stmt)
{
    int rc = sqlite3_step(stmt);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        sqlite3_reset(stmt);
        entsync_store_error(L, store, sqlite3_sql(stmt));
    }
    return rc;
}

static void push_row(lua_State *L, sqlite3_stmt *stmt)
{
    int columns = sqlite3_column_count(stmt);
    lua_createtable(L, 0, columns);
    for (int i = 0; i < columns; i++) {
        entsync_store_push_column(L, stmt, i);
        lua_setfield(L, -2, sqlite3_column_name(stmt, i));
    }
}

/* store:run(sql, ...) -> changes, last_insert_rowid */
static int store_run(lua_State *L)
{
    entsync_store *store;
    sqlite3_stmt *stmt = prepare_with_args(L, &store);
    while (step_or_raise(L, store, stmt) == SQLITE_ROW)
        ;
    sqlite3_reset(stmt);
    lua_pushinteger(L, sqlite3_changes(store->db));
    lua_pushinteger(L, (lua_Integer)sqlite3_last_insert_rowid(store->db));
    return 2;
}

/* store:row(sql, ...) -> { column = value } | nil */
static int store_row(lua_State *L)
{
    entsync_store *store;
    sqlite3_stmt *stmt = prepare_with_args(L, &store);
    if (step_or_raise(L, store, stmt) == SQLITE_ROW)
        push_row(L, stmt);
    else
        lua_pushnil(L);
    sqlite3_reset(stmt);
    return 1;
}

/* store:value(sql, ...) -> the first column of the first row, or nil */
static int store_value(lua_State *L)
{
    entsync_store *store;
    sqlite3_stmt *stmt = prepare_with_args(L, &store);
    if (step_or_raise(L, store, stmt) == SQLITE_ROW && sqlite3_column_count(stmt) > 0)
        entsync_store_push_column(L, stmt, 0);
    else
        lua_pushnil(L);
    sqlite3_reset(stmt);
    return 1;
}

/* store:rows(sql, ...) -> { row, ... } */
static int store_rows(lua_State *L)
{
    entsync_store *store;
    sqlite3_stmt *stmt = prepare_with_args(L, &store);
    lua_newtable(L);
    lua_Integer n = 0;
    while (step_or_raise(L, store, stmt) == SQLITE_ROW) {
        push_row(L, stmt);
        lua_rawseti(L, -2, ++n);
    }
    sqlite3_reset(stmt);
    return 1;
}

/* store:query(sql, ...) -> columns, rows, changes, total_changes, readonly:
 * the REPL's sql, shown as the sqlite3 shell shows it: the column names in
 * the statement's order, each row a list of its values as SQLite writes
 * them as text (nil for NULL), and the change counts of a statement that
 * writes. */
static int store_query(lua_State *L)
{
    entsync_store *store;
    sqlite3_stmt *stmt = prepare_with_args(L, &store);
    int columns = sqlite3_column_count(stmt);
    lua_createtable(L, columns, 0);
    for (int i = 0; i < columns; i++) {
        lua_pushstring(L, sqlite3_column_name(stmt, i));
        lua_rawseti(L, -2, i + 1);
    }
    lua_newtable(L);
    lua_Integer n = 0;
    while (step_or_raise(L, store, stmt) == SQLITE_ROW) {
        lua_createtable(L, columns, 0);
        for (int i = 0; i < columns; i++) {
            if (sqlite3_column_type(stmt, i) == SQLITE_NULL)
                continue;
            const unsigned char *text = sqlite3_column_text(stmt, i);
            lua_pushlstring(L, text ? (const char *)text : "", (size_t)sqlite3_column_bytes(stmt, i));
            lua_rawseti(L, -2, i + 1);
        }
        lua_rawseti(L, -2, ++n);
    }
    int readonly = sqlite3_stmt_readonly(stmt);
    sqlite3_reset(stmt);
    lua_pushinteger(L, readonly ? 0 : sqlite3_changes(store->db));
    lua_pushinteger(L, sqlite3_total_changes(store->db));
    lua_pushboolean(L, readonly);
    return 5;
}

/* store:hash_set(sql, ...) -> a hash set of the first column's integers,
 * built in C: a run loads hundreds of thousands of them. */
static int store_hash_set(lua_State *L)
{
    entsync_store *store;
    sqlite3_stmt *stmt = prepare_with_args(L, &store);
    entsync_hashset *set = entsync_hashset_push(L);
    while (step_or_raise(L, store, stmt) == SQLITE_ROW)
        if (sqlite3_column_type(stmt, 0) == SQLITE_INTEGER)
            entsync_hashset_add(L, set, (uint64_t)sqlite3_column_int64(stmt, 0));
    sqlite3_reset(stmt);
    return 1;
}

/* store:exec(sql): runs one or more statements without parameters (DDL,
 * pragmas, scripts); nothing is cached. */
static int store_exec(lua_State *L)
{
    entsync_store *store = entsync_store_check(L, 1);
    const char *sql = luaL_checkstring(L, 2);
    char *message = NULL;
    if (sqlite3_exec(store->db, sql, NULL, NULL, &message) != SQLITE_OK)
        return exec_error(L, store, sql, message);
    return 0;
}

static int store_in_transaction(lua_State *L)
{
    entsync_store *store = entsync_store_check(L, 1);
    lua_pushboolean(L, !sqlite3_get_autocommit(store->db));
    return 1;
}

static int store_path(lua_State *L)
{
    entsync_store *store = to_store(L, 1);
    lua_pushstring(L, store->path);
    return 1;
}

static int store_is_open(lua_State *L)
{
    lua_pushboolean(L, to_store(L, 1)->db != NULL);
    return 1;
}

/* store:data_version() -> integer that changes when another connection
 * commits, for noticing outside writes cheaply. */
static int store_data_version(lua_State *L)
{
    entsync_store *store = entsync_store_check(L, 1);
    int version = 0;
    if (sqlite3_file_control(store->db, "main", SQLITE_FCNTL_DATA_VERSION, &version) != SQLITE_OK)
        return entsync_store_error(L, store, NULL);
    lua_pushinteger(L, version);
    return 1;
}

/* store:sync(): every transaction committed so far is on the disk. In
 * WAL mode with synchronous=NORMAL a commit reaches the WAL file but not
 * the disk, so a power loss may take it back; what must not outlive its
 * commit (a drop-folder file moved to processed/) waits for this fsync of
 * the WAL (through SQLite's own handle of it) first. */
static int store_sync(lua_State *L)
{
    entsync_store *store = entsync_store_check(L, 1);
    sqlite3_file *wal = NULL;
    if (sqlite3_file_control(store->db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &wal) != SQLITE_OK)
        return entsync_store_error(L, store, NULL);
    if (wal && wal->pMethods && wal->pMethods->xSync(wal, SQLITE_SYNC_FULL) != SQLITE_OK) {
        lua_pushfstring(L, "store %s: cannot sync its write-ahead log", store->path);
        return lua_error(L);
    }
    return 0;
}

/* --- entity tables ----------------------------------------------------- */

static const char *column_type(const char *field_type)
{
    static const char *const types[][2] = {
        {"text", "TEXT"},    {"integer", "INTEGER"},  {"real", "REAL"},
        {"boolean", "INTEGER"}, {"json", "TEXT"},     {"timestamp", "TEXT"},
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strcmp(types[i][0], field_type) == 0)
            return types[i][1];
    return NULL;
}

/* Pushes the set { column = declared type } of table name. */
static void push_columns(lua_State *L, int store_idx, const char *name)
{
    entsync_store *store = entsync_store_check(L, store_idx);
    sqlite3_stmt *stmt = entsync_store_stmt(L, store_idx,
        "SELECT name, type FROM pragma_table_info(?1)");
    sqlite3_bind_text(stmt, 1, name, -1, SQLITE_TRANSIENT);
    lua_newtable(L);
    while (step_or_raise(L, store, stmt) == SQLITE_ROW) {
        lua_pushstring(L, (const char *)sqlite3_column_text(stmt, 1));
        lua_setfield(L, -2, (const char *)sqlite3_column_text(stmt, 0));
    }
    sqlite3_reset(stmt);
}

/* store:columns(table) -> { column = declared type } (empty: no table) */
static int store_columns(lua_State *L)
{
    const char *name = check_identifier(L, 2, "table");
    push_columns(L, 1, name);
    return 1;
}

static void exec_or_raise(lua_State *L, entsync_store *store, const char *sql)
{
    char *message = NULL;
    if (sqlite3_exec(store->db, sql, NULL, NULL, &message) != SQLITE_OK)
        exec_error(L, store, sql, message);
}

/* Pushes name in ASCII lower case: SQLite compares identifiers so. */
static void push_lower(lua_State *L, const char *name)
{
    char folded[IDENT_MAX + 1];
    size_t i = 0;
    for (; i < IDENT_MAX && name[i]; i++)
        folded[i] = (char)((name[i] >= 'A' && name[i] <= 'Z') ? name[i] - 'A' + 'a' : name[i]);
    lua_pushlstring(L, folded, i);
}

/* store:define_entity(name, { field = type, ... }) -> created, { added... }
 * Creates the table with an integer primary key "id", then adds each
 * declared field it lacks. Nothing is ever dropped or rewritten: a column
 * whose declaration went away stays, with its data. */
static int store_define_entity(lua_State *L)
{
    entsync_store *store = entsync_store_check(L, 1);
    const char *name = check_identifier(L, 2, "entity");
    luaL_checktype(L, 3, LUA_TTABLE);
    if (has_reserved_prefix(name))
        return luaL_error(L, "entity \"%s\": names starting with entsync_ or sqlite_ are reserved", name);

    /* Sorted field names give the same column order on every machine. */
    lua_newtable(L);
    int fields = lua_gettop(L);
    lua_Integer n = 0;
    lua_pushnil(L);
    while (lua_next(L, 3) != 0) {
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_rawseti(L, fields, ++n);
    }
    lua_getglobal(L, "table");
    lua_getfield(L, -1, "sort");
    lua_pushvalue(L, fields);
    lua_call(L, 1, 0);
    lua_pop(L, 1);

    /* Every field is checked before any DDL runs, so a bad declaration
     * changes nothing. */
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, fields, i);
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "entity \"%s\": field names must be strings", name);
        const char *field = check_identifier(L, -1, "field");
        if (strcasecmp(field, "id") == 0)
            return luaL_error(L, "entity \"%s\": field \"%s\" is the primary key and cannot be declared", name, field);
        for (lua_Integer j = 1; j < i; j++) {
            lua_rawgeti(L, fields, j);
            if (strcasecmp(lua_tostring(L, -1), field) == 0)
                return luaL_error(L, "entity \"%s\": fields \"%s\" and \"%s\" differ only in case",
                                  name, lua_tostring(L, -1), field);
            lua_pop(L, 1);
        }
        lua_getfield(L, 3, field);
        const char *type = lua_tostring(L, -1);
        if (!type || !column_type(type))
            return luaL_error(L, "entity \"%s\": field \"%s\" has unknown type \"%s\" "
                              "(text, integer, real, boolean, json, timestamp)",
                              name, field, type ? type : luaL_typename(L, -1));
        lua_pop(L, 2);
    }

    push_columns(L, 1, name);
    int existing = lua_gettop(L);
    int created = 0;
    lua_pushnil(L); /* is the column set empty? */
    if (lua_next(L, existing) == 0) {
        created = 1;
    } else {
        lua_pop(L, 2);
    }
    if (created) {
        lua_pushfstring(L, "CREATE TABLE \"%s\" (id INTEGER PRIMARY KEY)", name);
        exec_or_raise(L, store, lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    /* Existing column names, folded to lower case as SQLite compares them. */
    lua_newtable(L);
    int folded = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, existing) != 0) {
        lua_pop(L, 1);
        push_lower(L, lua_tostring(L, -1));
        lua_pushboolean(L, 1);
        lua_rawset(L, folded);
    }
    lua_newtable(L);
    int added = lua_gettop(L);
    lua_Integer n_added = 0;
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, fields, i);
        const char *field = lua_tostring(L, -1);
        lua_getfield(L, 3, field);
        const char *sql_type = column_type(lua_tostring(L, -1));
        lua_pop(L, 1);
        push_lower(L, field);
        lua_rawget(L, folded);
        int present = lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (!present) {
            lua_pushfstring(L, "ALTER TABLE \"%s\" ADD COLUMN \"%s\" %s", name, field, sql_type);
            exec_or_raise(L, store, lua_tostring(L, -1));
            lua_pop(L, 1);
            lua_pushvalue(L, -1);
            lua_rawseti(L, added, ++n_added);
        }
        lua_pop(L, 1);
    }
    lua_pushboolean(L, created);
    lua_pushvalue(L, added);
    return 2;
}

/* --- writers: fixed column lists, statements prepared once ------------- */

typedef struct entsync_writer {
    sqlite3_stmt *insert, *insert_with_id, *update;
    int columns;
} entsync_writer;

/* Builds the three statements of a writer for table name and the column
 * names in the array at cols_idx, all validated. */
static void build_writer_sql(lua_State *L, const char *name, int cols_idx, int columns)
{
    luaL_Buffer b;
    /* INSERT INTO "t" ("a","b") VALUES (?1,?2) */
    luaL_buffinit(L, &b);
    lua_pushfstring(L, "INSERT INTO \"%s\" (", name);
    luaL_addvalue(&b);
    for (int i = 1; i <= columns; i++) {
        lua_rawgeti(L, cols_idx, i);
        lua_pushfstring(L, "%s\"%s\"", i > 1 ? "," : "", lua_tostring(L, -1));
        lua_remove(L, -2);
        luaL_addvalue(&b);
    }
    luaL_addstring(&b, columns ? ") VALUES (" : ") DEFAULT VALUES");
    for (int i = 1; columns && i <= columns; i++) {
        lua_pushfstring(L, "%s?%d", i > 1 ? "," : "", i);
        luaL_addvalue(&b);
    }
    if (columns)
        luaL_addstring(&b, ")");
    luaL_pushresult(&b);

    /* INSERT INTO "t" ("a","b",id) VALUES (?1,?2,?3) */
    luaL_buffinit(L, &b);
    lua_pushfstring(L, "INSERT INTO \"%s\" (", name);
    luaL_addvalue(&b);
    for (int i = 1; i <= columns; i++) {
        lua_rawgeti(L, cols_idx, i);
        lua_pushfstring(L, "\"%s\",", lua_tostring(L, -1));
        lua_remove(L, -2);
        luaL_addvalue(&b);
    }
    luaL_addstring(&b, "id) VALUES (");
    for (int i = 1; i <= columns + 1; i++) {
        lua_pushfstring(L, "%s?%d", i > 1 ? "," : "", i);
        luaL_addvalue(&b);
    }
    luaL_addstring(&b, ")");
    luaL_pushresult(&b);

    /* UPDATE "t" SET "a"=?1,"b"=?2 WHERE id=?3 */
    luaL_buffinit(L, &b);
    lua_pushfstring(L, "UPDATE \"%s\" SET ", name);
    luaL_addvalue(&b);
    for (int i = 1; i <= columns; i++) {
        lua_rawgeti(L, cols_idx, i);
        lua_pushfstring(L, "%s\"%s\"=?%d", i > 1 ? "," : "", lua_tostring(L, -1), i);
        lua_remove(L, -2);
        luaL_addvalue(&b);
    }
    if (!columns)
        luaL_addstring(&b, "id=id");
    lua_pushfstring(L, " WHERE id=?%d", columns + 1);
    luaL_addvalue(&b);
    luaL_pushresult(&b);
}

/* store:writer(table, { column, ... }) -> writer
 * A writer inserts and updates rows of one table through exactly the named
 * columns (the fields one mapping owns), with statements prepared once. */
static int store_writer(lua_State *L)
{
    entsync_store_check(L, 1);
    const char *name = check_identifier(L, 2, "table");
    luaL_checktype(L, 3, LUA_TTABLE);
    int columns = (int)lua_rawlen(L, 3);
    lua_createtable(L, columns, 0);
    int cols = lua_gettop(L);
    for (int i = 1; i <= columns; i++) {
        lua_rawgeti(L, 3, i);
        check_identifier(L, -1, "column");
        lua_rawseti(L, cols, i);
    }
    build_writer_sql(L, name, cols, columns);
    entsync_writer *writer = lua_newuserdatauv(L, sizeof *writer, 3);
    memset(writer, 0, sizeof *writer);
    writer->columns = columns;
    luaL_setmetatable(L, WRITER_META);
    writer->insert = entsync_store_stmt(L, 1, lua_tostring(L, -4));
    writer->insert_with_id = entsync_store_stmt(L, 1, lua_tostring(L, -3));
    writer->update = entsync_store_stmt(L, 1, lua_tostring(L, -2));
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);
    lua_pushvalue(L, cols);
    lua_setiuservalue(L, -2, 2);
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, -2, 3);
    return 1;
}

/* Binds values[column i] to parameter i for every column; returns the store. */
static entsync_store *writer_bind(lua_State *L, entsync_writer *writer,
                                  sqlite3_stmt *stmt, int values_idx)
{
    lua_getiuservalue(L, 1, 1);
    entsync_store *store = entsync_store_check(L, -1);
    lua_getiuservalue(L, 1, 2);
    int cols = lua_gettop(L);
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    for (int i = 1; i <= writer->columns; i++) {
        lua_rawgeti(L, cols, i);
        lua_pushvalue(L, -1);
        lua_rawget(L, values_idx);
        if (lua_istable(L, -1))
            luaL_error(L, "field %s: cannot store a table (declare it json)", lua_tostring(L, -2));
        entsync_store_bind(L, store, stmt, i, -1, "a field");
        lua_pop(L, 2);
    }
    lua_pop(L, 2);
    return store;
}

static int writer_step(lua_State *L, entsync_store *store, sqlite3_stmt *stmt)
{
    int rc = sqlite3_step(stmt);
    sqlite3_reset(stmt);
    if (rc != SQLITE_DONE)
        entsync_store_error(L, store, sqlite3_sql(stmt));
    return sqlite3_changes(store->db);
}

/* writer:insert(values [, id]) -> id */
static int writer_insert(lua_State *L)
{
    entsync_writer *writer = luaL_checkudata(L, 1, WRITER_META);
    luaL_checktype(L, 2, LUA_TTABLE);
    int with_id = !lua_isnoneornil(L, 3);
    sqlite3_stmt *stmt = with_id ? writer->insert_with_id : writer->insert;
    entsync_store *store = writer_bind(L, writer, stmt, 2);
    if (with_id)
        sqlite3_bind_int64(stmt, writer->columns + 1, (sqlite3_int64)luaL_checkinteger(L, 3));
    writer_step(L, store, stmt);
    lua_pushinteger(L, (lua_Integer)sqlite3_last_insert_rowid(store->db));
    return 1;
}

void entsync_store_writer_stmts(lua_State *L, int idx, entsync_writer_stmts *out)
{
    entsync_writer *writer = luaL_checkudata(L, idx, WRITER_META);
    lua_getiuservalue(L, idx, 1);
    entsync_store_check(L, -1);
    out->insert = writer->insert;
    out->insert_with_id = writer->insert_with_id;
    out->update = writer->update;
    out->columns = writer->columns;
}

sqlite3_stmt *entsync_store_writer_rows(lua_State *L, int idx, int rows)
{
    idx = lua_absindex(L, idx);
    luaL_checkudata(L, idx, WRITER_META);
    lua_getiuservalue(L, idx, 1);
    int store_idx = lua_gettop(L);
    lua_getiuservalue(L, idx, 2);
    int cols = lua_gettop(L);
    lua_getiuservalue(L, idx, 3);
    int columns = (int)lua_rawlen(L, cols);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    lua_pushfstring(L, "INSERT OR FAIL INTO \"%s\" (", lua_tostring(L, cols + 1));
    luaL_addvalue(&b);
    for (int i = 1; i <= columns; i++) {
        lua_rawgeti(L, cols, i);
        lua_pushfstring(L, "%s\"%s\"", i > 1 ? "," : "", lua_tostring(L, -1));
        lua_remove(L, -2);
        luaL_addvalue(&b);
    }
    luaL_addstring(&b, ") VALUES ");
    for (int r = 0; r < rows; r++) {
        luaL_addstring(&b, r ? ",(" : "(");
        for (int i = 0; i < columns; i++)
            luaL_addstring(&b, i ? ",?" : "?");
        luaL_addchar(&b, ')');
    }
    luaL_pushresult(&b);
    sqlite3_stmt *stmt = entsync_store_stmt(L, store_idx, lua_tostring(L, -1));
    lua_settop(L, store_idx - 1);
    return stmt;
}

sqlite3_stmt *entsync_store_writer_max_stmt(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    luaL_checkudata(L, idx, WRITER_META);
    lua_getiuservalue(L, idx, 1);
    int store_idx = lua_gettop(L);
    entsync_store *store = entsync_store_check(L, store_idx);
    lua_getiuservalue(L, idx, 3);
    const char *name = lua_tostring(L, -1); /* an identifier: store_writer checked it */
    /* an AUTOINCREMENT table's largest id ever given is in sqlite_sequence,
     * which SQLite makes with the first such table */
    static const char has_sequence_sql[] = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'";
    sqlite3_stmt *has_sequence = entsync_store_stmt(L, store_idx, has_sequence_sql);
    int rc = sqlite3_step(has_sequence);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        entsync_store_error(L, store, has_sequence_sql);
    sqlite3_reset(has_sequence);
    if (rc == SQLITE_ROW)
        lua_pushfstring(L, "SELECT max(coalesce((SELECT max(id) FROM \"%s\"), 0), "
                        "coalesce((SELECT seq FROM sqlite_sequence WHERE name = '%s' COLLATE NOCASE), 0))", name, name);
    else
        lua_pushfstring(L, "SELECT coalesce(max(id), 0) FROM \"%s\"", name);
    sqlite3_stmt *stmt = entsync_store_stmt(L, store_idx, lua_tostring(L, -1));
    lua_settop(L, store_idx - 1);
    return stmt;
}

/* writer:update(id, values) -> rows changed (0: the row is gone) */
static int writer_update(lua_State *L)
{
    entsync_writer *writer = luaL_checkudata(L, 1, WRITER_META);
    lua_Integer id = luaL_checkinteger(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    entsync_store *store = writer_bind(L, writer, writer->update, 3);
    sqlite3_bind_int64(writer->update, writer->columns + 1, (sqlite3_int64)id);
    lua_pushinteger(L, writer_step(L, store, writer->update));
    return 1;
}

/* --- opening ------------------------------------------------------------ */

/* Creates the store file readable and writable by its owner only when it
 * does not exist yet: SQLite gives its -wal and -shm files the database
 * file's mode, so what the store holds stays the owner's. A path that
 * cannot be created is left to sqlite3_open_v2 to report. */
static void create_private(const char *path)
{
    if (strcmp(path, ":memory:") == 0 || strncmp(path, "file:", 5) == 0 || path[0] == '\0')
        return;
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0)
        close(fd);
}

/* Reads the optional number options[key] (options: a stack index, 0 for
 * none); raises when it is not a positive number. Returns fallback when
 * the key is absent. */
static double positive_option(lua_State *L, int options, const char *key, double fallback)
{
    if (options == 0)
        return fallback;
    lua_getfield(L, options, key);
    double value = fallback;
    if (!lua_isnil(L, -1)) {
        if (!lua_isnumber(L, -1) || lua_tonumber(L, -1) <= 0)
            luaL_error(L, "store option %s must be a positive number", key);
        value = lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
    return value;
}

/* Caps the store at max_size bytes (PRAGMA max_page_count, a setting of
 * this connection): a write that would grow it further fails as a full
 * disk would. */
static void cap_size(lua_State *L, int store_idx, entsync_store *store, double max_size)
{
    sqlite3_stmt *stmt = entsync_store_stmt(L, store_idx, "PRAGMA page_size");
    if (sqlite3_step(stmt) != SQLITE_ROW) {
        sqlite3_reset(stmt);
        entsync_store_error(L, store, "PRAGMA page_size");
    }
    double page = (double)sqlite3_column_int64(stmt, 0);
    sqlite3_reset(stmt);
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA max_page_count=%lld", (long long)(max_size / (page > 0 ? page : 4096)) + 1);
    exec_or_raise(L, store, sql);
}

/* store.open(path [, options]) -> store. Opens (creating, mode 0600) the
 * file with the settings every connection of entsync's uses; entsync's own
 * tables are brought to their schema by lua/entsync/ledger.lua. options:
 * busy_timeout (seconds a writer waits for another's write lock, default
 * 10), max_size (bytes the file may grow to). A failure to open raises an
 * entsync error of kind permissions, io, busy or disk_full. */
static int store_open(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    int options = lua_istable(L, 2) ? 2 : 0;
    if (!options && !lua_isnoneornil(L, 2))
        luaL_argerror(L, 2, "a table of options expected");
    double busy = positive_option(L, options, "busy_timeout", 10);
    double max_size = positive_option(L, options, "max_size", 0);
    entsync_store *store = lua_newuserdatauv(L, sizeof *store, 1);
    int store_idx = lua_gettop(L);
    memset(store, 0, sizeof *store);
    luaL_setmetatable(L, STORE_META);
    lua_newtable(L);
    lua_setiuservalue(L, -2, 1);
    store->path = strdup(path);
    if (!store->path)
        return luaL_error(L, "out of memory");
    store->busy_ms = busy * 1000 > 2e9 ? 2000000000 : (int)(busy * 1000);
    create_private(path);
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(path, &store->db, flags, NULL) != SQLITE_OK) {
        if (!store->db)
            return luaL_error(L, "cannot open store %s: out of memory", path);
        sqlite3_extended_result_codes(store->db, 1);
        push_store_error(L, store, NULL, NULL);
        store_release(store);
        return lua_error(L);
    }
    sqlite3_extended_result_codes(store->db, 1);
    /* Other programs read and write the same file while entsync runs:
     * WAL lets them read during an import, the busy timeout lets writers
     * queue instead of failing, and NORMAL sync is durable in WAL mode
     * against a killed process, which is what resumable runs rely on. */
    if (sqlite3_busy_timeout(store->db, store->busy_ms) != SQLITE_OK)
        entsync_store_error(L, store, NULL);
    /* A new store gets 16 KiB pages (fewer, wider B-tree levels for the
     * id map and the entity tables); an existing file keeps its own. */
    exec_or_raise(L, store, "PRAGMA page_size=16384");
    exec_or_raise(L, store, "PRAGMA journal_mode=WAL");
    exec_or_raise(L, store, "PRAGMA synchronous=NORMAL");
    /* Statement journals (a write that fails inside a batch) stay in
     * memory, and a 16 MiB page cache keeps the id map's indexes hot
     * through a large import. */
    exec_or_raise(L, store, "PRAGMA temp_store=MEMORY");
    exec_or_raise(L, store, "PRAGMA cache_size=-16384");
    if (max_size > 0)
        cap_size(L, store_idx, store, max_size);
    lua_settop(L, store_idx);
    return 1;
}

/* Turns off SQLite's allocation statistics, before the library starts:
 * with them on, every allocation and free SQLite makes (a text bind's
 * copy, a cursor, a record) takes a process-wide mutex to count bytes,
 * whatever a connection's own threading mode, and entsync reads none of
 * those counts (no soft heap limit either). About a tenth of the
 * instructions an insert takes. SQLITE_MISUSE means SQLite had already
 * started in this process (another module opened a database first): its
 * settings stand, and nothing else changes. Raises on any other result. */
static void configure_sqlite(lua_State *L)
{
    int rc = sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    if (rc != SQLITE_OK && rc != SQLITE_MISUSE)
        luaL_error(L, "cannot configure SQLite: %s", sqlite3_errstr(rc));
}

void entsync_store_register(lua_State *L)
{
    configure_sqlite(L);
    static const luaL_Reg store_methods[] = {
        {"exec", store_exec},
        {"run", store_run},
        {"row", store_row},
        {"rows", store_rows},
        {"query", store_query},
        {"value", store_value},
        {"hash_set", store_hash_set},
        {"columns", store_columns},
        {"define_entity", store_define_entity},
        {"writer", store_writer},
        {"in_transaction", store_in_transaction},
        {"data_version", store_data_version},
        {"sync", store_sync},
        {"path", store_path},
        {"is_open", store_is_open},
        {"close", store_close},
        {NULL, NULL},
    };
    static const luaL_Reg writer_methods[] = {
        {"insert", writer_insert},
        {"update", writer_update},
        {NULL, NULL},
    };
    static const luaL_Reg functions[] = {
        {"open", store_open},
        {"valid_identifier", store_valid_identifier},
        {NULL, NULL},
    };
    if (luaL_newmetatable(L, STORE_META)) {
        luaL_newlib(L, store_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, store_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, store_close);
        lua_setfield(L, -2, "__close");
        lua_pushliteral(L, "entsync.store");
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, WRITER_META)) {
        luaL_newlib(L, writer_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    luaL_newlib(L, functions);
    lua_setfield(L, -2, "store");
}
