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
 * for each row its columns, then its id when with_id, as parameters in
 * that order (prepared once, cached by the store). Leaves the stack as
 * it was. It is an INSERT OR FAIL: a row that breaks a constraint stops
 * it with the rows before it written, so the caller rolls the
 * transaction back on a failure (the import does, then writes the batch
 * record by record); in exchange SQLite keeps no statement journal, a
 * copy of each page the statement changes. */
sqlite3_stmt *entsync_store_writer_rows(lua_State *L, int idx, int rows, int with_id);

/* The largest id in the writer's table (0 when empty): the next row
 * inserted without an id takes the one after it. */
sqlite3_int64 entsync_store_writer_max_id(lua_State *L, int idx);

/* Pushes column i of the current row as a Lua value. */
void entsync_store_push_column(lua_State *L, sqlite3_stmt *stmt, int i);

/* Sets the sub-table store of the table on top of the stack: open(path) and
 * valid_identifier(name). */
void entsync_store_register(lua_State *L);

#endif
