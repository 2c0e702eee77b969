/*
 * store: the SQLite file of one job. It owns the connection and its
 * settings, a cache of prepared statements reused for the life of the
 * connection, and the local entity tables. entsync's own tables and their
 * migrations are lua/entsync/ledger.lua's.
 *
 * To Lua a store is a userdata (metatable "entsync.store") made by
 * core.store.open(path); close() or __gc/__close finalizes every statement
 * and closes the connection exactly once.
 */
#ifndef ENTSYNC_STORE_H
#define ENTSYNC_STORE_H

#include <lua.h>
#include <sqlite3.h>

typedef struct entsync_store entsync_store;

/* Checks that the value at idx is an open store, raising a Lua error if not. */
entsync_store *entsync_store_check(lua_State *L, int idx);

sqlite3 *entsync_store_db(entsync_store *store);

/* Returns the cached prepared statement for sql, preparing it on first use;
 * the statement is reset and its bindings cleared. Raises a Lua error when
 * the SQL does not prepare. The store at store_idx anchors the cache. */
sqlite3_stmt *entsync_store_stmt(lua_State *L, int store_idx, const char *sql);

/* Raises a Lua error naming the store file and the failing SQL. */
int entsync_store_error(lua_State *L, entsync_store *store, const char *sql);

/* Binds the Lua value at idx to parameter n (nil and JSON null as NULL,
 * booleans as 0/1); tables raise an error naming what. */
void entsync_store_bind(lua_State *L, entsync_store *store, sqlite3_stmt *stmt,
                        int n, int idx, const char *what);

/* The statements of the writer (store:writer) at idx: insert binds its
 * columns as parameters 1..columns, insert_with_id those and the id after
 * them, update those and the id of the row after them. Pushes the
 * writer's store; raises a Lua error when idx is not a writer or its store
 * is closed. */
typedef struct entsync_writer_stmts {
    sqlite3_stmt *insert, *insert_with_id, *update;
    int columns;
} entsync_writer_stmts;

void entsync_store_writer_stmts(lua_State *L, int idx, entsync_writer_stmts *out);

/* The statement inserting rows rows at once through the writer at idx:
 * for each row its columns, as parameters in that order (prepared once,
 * cached by the store). The rows take no id of their own: SQLite gives
 * each the next one (entsync_store_writer_max_stmt), an append that skips
 * the search of the table a named rowid takes. Leaves the stack as it
 * was. It is an INSERT OR FAIL: a row that breaks a constraint stops it
 * with the rows before it written, so the caller rolls the transaction
 * back on a failure (the import does, then writes the batch record by
 * record); in exchange SQLite keeps no statement journal, a copy of each
 * page the statement changes. */
sqlite3_stmt *entsync_store_writer_rows(lua_State *L, int idx, int rows);

/* The statement whose one row is the id before the one the next row
 * inserted with no id takes: the largest id in the writer's table (0 when
 * empty), or for an AUTOINCREMENT table the largest it ever gave. Each row
 * after takes the one after, unless something else writes to the table
 * in between (a trigger). */
sqlite3_stmt *entsync_store_writer_max_stmt(lua_State *L, int idx);

/* --- the writer thread --------------------------------------------------
 * A transaction's last writes and its COMMIT may run on the store's writer
 * thread while the caller reads on: the import hands off a batch's writes
 * this way (src/record.c) and takes the next batch meanwhile. From the
 * hand-off until the work is done the connection is the writer's; every
 * other use of the store (entsync_store_check, so every method and every
 * statement fetched) waits for it first. */

/* SQLite's account of a failure, kept to be raised later on the Lua thread:
 * its extended code and errno (code 0 and no sql: reason is entsync's own
 * message), its message and the statement's text. */
typedef struct entsync_store_failure {
    int code, sys;
    char reason[256];
    char sql[96];
} entsync_store_failure;

/* Work run on the writer thread, with no Lua state: 1 done, 0 failed with
 * *failure set. */
typedef int (*entsync_store_work)(void *arg, entsync_store_failure *failure);

/* One hand-off: work(arg), then after (a statement already bound, or
 * NULL), then COMMIT. The writer sets done, ok and, when it failed,
 * failure. */
typedef struct entsync_store_job {
    entsync_store_work work;
    void *arg;
    sqlite3_stmt *after;
    int done, ok;
    entsync_store_failure failure;
} entsync_store_job;

/* Keeps db's last failure, in sql, into *out. */
void entsync_store_fail(sqlite3 *db, const char *sql, entsync_store_failure *out);

/* Steps stmt (a statement with no rows) once: 1 done, else 0 with
 * *failure set (and stmt reset either way). */
int entsync_store_step_done(sqlite3 *db, sqlite3_stmt *stmt, entsync_store_failure *failure);

/* Pushes failure as the store's own errors are: an entsync error of its
 * kind for an environment failure, else "store PATH: reason (in: sql)";
 * code 0 with no sql pushes reason as it is. _raise raises it. */
void entsync_store_push_failure(lua_State *L, entsync_store *store, const entsync_store_failure *failure);
int entsync_store_raise(lua_State *L, entsync_store *store, const entsync_store_failure *failure);

/* Makes ready to hand the transaction in progress over to the writer
 * thread, after waiting for the job before it: starts the thread at the
 * first call, prepares its COMMIT and ROLLBACK. Raises when no transaction
 * is in progress or the thread cannot start; returns the store. */
entsync_store *entsync_store_writer_ready(lua_State *L, int store_idx);

/* Hands the transaction over (entsync_store_writer_ready first; this
 * cannot fail): the writer runs job and commits, or rolls back at its
 * first failure. job and what it points at must live until
 * entsync_store_wait says it is done. */
void entsync_store_hand_off(entsync_store *store, entsync_store_job *job);

/* Waits for the writer to finish its job; returns job->done, 1 for every
 * job handed off (a store closed meanwhile runs its job to the end
 * first). */
int entsync_store_wait(entsync_store *store, entsync_store_job *job);

/* Pushes column i of the current row as a Lua value. */
void entsync_store_push_column(lua_State *L, sqlite3_stmt *stmt, int i);

/* Sets the sub-table store of the table on top of the stack: open(path) and
 * valid_identifier(name). */
void entsync_store_register(lua_State *L);

#endif
