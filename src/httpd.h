/*
 * httpd: a small HTTP server for the daemon (metrics, a status page,
 * later webhooks), through libmicrohttpd, driven by entsync's loop.
 *
 * libmicrohttpd runs here without threads of its own, in its epoll mode:
 * the whole server is one file descriptor, which the loop waits on
 * (loop.wait_fd) beside everything else; when it is readable, or when
 * the server's own timeout (idle connections) comes, server:run() does
 * what is ready and calls the handler once for each complete request. So
 * nothing polls, and handlers run on the loop's thread, between its turns.
 *
 * The sub-table core.httpd holds:
 *
 *   listen(host, port, handler [, max_body]) -> server | nil, message
 *     Binds host ("127.0.0.1", "::1", "0.0.0.0") and port (0: any free
 *     one). handler(request) is called for each request, request being
 *     { method, path, query = { name = value }, headers = { lower-case
 *     name = value }, body, remote }; it returns status, body [, headers]
 *     (headers a table of name = value). A body larger than max_body
 *     (default 1 MiB) is answered 413 without calling the handler. An
 *     error raised by the handler is answered 500 with the message, and
 *     does not stop the server.
 *
 *   server:fd() -> the descriptor to wait on ("r")
 *   server:timeout() -> seconds until run() is due anyway, or nil
 *   server:run()     what is ready: reads, handler calls, writes
 *   server:port()    the port bound (for port 0)
 *   server:close()   stops listening, drops every connection (also __gc)
 *
 * The handler must not wait: it runs inside run(), a C call. The Lua side
 * (lua/entsync/httpd.lua) wraps it in loop.forbid_yield so a wait is a
 * clear error, and spawns tasks for long work.
 */
#ifndef ENTSYNC_HTTPD_H
#define ENTSYNC_HTTPD_H

#include <lua.h>

/* Sets the sub-table httpd of the table on top of the stack. */
void entsync_httpd_register(lua_State *L);

#endif
