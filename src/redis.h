/*
 * redis: a connection to a Redis server through hiredis, in non-blocking
 * mode, for entsync's one loop (lua/entsync/loop.lua): the C side never
 * waits. Commands are appended to the connection's output buffer, written
 * as far as the socket takes them, and replies are parsed from what has
 * arrived; lua/entsync/redis.lua waits on the connection's descriptor
 * (loop.wait_fd) between those steps, so a blocking command (XREADGROUP
 * BLOCK) blocks only its own task.
 *
 * The sub-table core.redis holds:
 *
 *   connect(host, port) -> conn | nil, message
 *     Starts a TCP connection (non-blocking; it completes once the
 *     descriptor is writable, then conn:connected() says how it went).
 *
 *   conn:fd() -> the socket's descriptor, to wait on
 *   conn:connected() -> true | nil, message   the connect's outcome (SO_ERROR)
 *   conn:append({ arg, ... }) -> true | nil, message   one command, queued
 *   conn:write() -> true (everything queued is sent) | false (wait "w")
 *                   | nil, message
 *   conn:read() -> true, got | nil, message   takes what the socket holds
 *                   now (got: some bytes came); "connection closed" at its end
 *   conn:reply() -> true, value | false (no whole reply yet) | nil, message
 *     A value is a Lua string (bulk and status replies), an integer, false
 *     (the nil reply), a list of values, or { error = message } (an error
 *     reply, anywhere in a reply).
 *   conn:close()   also __close and __gc
 */
#ifndef ENTSYNC_REDIS_H
#define ENTSYNC_REDIS_H

#include <lua.h>

/* Sets the sub-table redis of the table on top of the stack. */
void entsync_redis_register(lua_State *L);

#endif
