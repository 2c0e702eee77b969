/*
 * http: HTTP transfers through one libcurl multi handle per client, so
 * many requests are in flight at once and connections are kept alive and
 * reused per host.
 *
 * To Lua a client is a userdata (core.http.client()) with add(request) ->
 * id, which starts a transfer and returns at once, and poll(timeout) ->
 * { completed responses }, which drives every transfer until one ends or
 * the timeout passes. A response's body and headers are made when first
 * read (from its payload); its methods are core.http.response_methods. The program's one wait, core.loop.wait (src/loop.h),
 * drives a client the same way beside its other descriptors. Waiting
 * tasks, retries and rate limits are built on these in
 * lua/entsync/http.lua.
 */
#ifndef ENTSYNC_HTTP_H
#define ENTSYNC_HTTP_H

#include <lua.h>
#include <poll.h>

/* Sets the sub-table http of the table on top of the stack: client() and
 * curl_version(). */
void entsync_http_register(lua_State *L);

/* Runs the transfers of the client at stack index idx and waits until one
 * completes, one of the n extra descriptors is ready (their revents say
 * which), or timeout seconds pass (negative: no limit); pushes the table of
 * completed responses. Without transfers in flight it returns at once
 * unless wait_idle, when it waits for the descriptors or the timeout all
 * the same (curl_multi_poll does). Shared by client:poll and
 * core.loop.wait, so a response is collected one way. */
void entsync_http_wait(lua_State *L, int idx, struct pollfd *extra, nfds_t n, double timeout, int wait_idle);

/* The body of the response payload at stack index idx (a response's
 * payload field), and its length; NULL when idx holds no payload. The
 * bytes stay the payload's; ENTSYNC_JSON_PADDING zeroed bytes follow them
 * (json_simd.h), so the body is parsed where it is. */
const char *entsync_http_payload_body(lua_State *L, int idx, size_t *len);

#endif
