/*
 * core: the C side of entsync as one Lua module, "entsync.core". It is
 * preloaded into bin/entsync-run and built as build/lib/entsync/core.so for
 * the stock lua5.4 interpreter, from the same objects.
 *
 * The module is a table with one sub-table per C concern, each set by that
 * concern's register function: store, hash, lock, fs and sys (fsutil), http,
 * httpd, json, loop, notify and readline; and the fields version and sqlite_version.
 */
#ifndef ENTSYNC_CORE_H
#define ENTSYNC_CORE_H

#include <lua.h>

#define ENTSYNC_VERSION "0.1.0"

int luaopen_entsync_core(lua_State *L);

/* Pushes a new entsync error, a table { kind = kind, message = message }
 * with the metatable "entsync.error" that lua/entsync/errors.lua gives its
 * errors, so errors raised from C carry a kind (and an exit status) of
 * their own. The caller may add fields, then raises it with lua_error. */
void entsync_error_push(lua_State *L, const char *kind, const char *message);

#endif
