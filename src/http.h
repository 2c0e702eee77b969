/*
 * http: HTTP transfers through one libcurl multi handle per client, so
 * many requests are in flight at once and connections are kept alive and
 * reused per host.
 *
 * To Lua a client is a userdata (core.http.client()) with add(request) ->
 * id, which starts a transfer and returns at once, and poll(timeout) ->
 * { completed responses }, which drives every transfer until one ends or
 * the timeout passes. Blocking calls, coroutine yields, retries and rate
 * limits are built on these two in lua/entsync/http.lua.
 */
#ifndef ENTSYNC_HTTP_H
#define ENTSYNC_HTTP_H

#include <lua.h>

/* Sets the sub-table http of the table on top of the stack: client() and
 * curl_version(). */
void entsync_http_register(lua_State *L);

#endif
