/*
 * http: a libcurl multi handle wrapped for Lua.
 *
 * Each transfer owns its easy handle, request headers, request body copy
 * and response buffers; they are freed when its response is handed to Lua
 * or when the client is closed, exactly once. The response buffers then
 * move into the response's payload (a userdata), from which the body and
 * headers are made only when Lua first reads them, and which a document
 * parses in place: a page's body is never copied into a Lua string. An
 * ended transfer's easy handle is reset and kept for the next one (up to
 * SPARE_HANDLES). A transfer is found again from its easy handle through
 * CURLOPT_PRIVATE.
 *
 * The multi handle is driven through curl's socket interface
 * (curl_multi_socket_action): curl tells which sockets it waits on and
 * when its next timeout falls; the client keeps those sockets in an epoll
 * set, whose one descriptor entsync polls beside its own, and curl then
 * runs only the transfers whose socket is ready (or whose timer is due).
 * curl_multi_perform instead visits every transfer at every call, and curl
 * 7.88 polls each one's socket there: 46 poll calls a page of 100 records
 * at concurrency 32; and a poll of every socket costs the kernel a visit
 * of each, where the epoll set reports only the ready ones.
 */
#include "http.h"

#include "json_simd.h"
#include "loop.h"

#include <curl/curl.h>
#include <errno.h>
#include <lauxlib.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#define CLIENT_META "entsync.http.client"
#define RESPONSE_META "entsync.http.response"
#define PAYLOAD_META "entsync.http.payload"
#define SPARE_HANDLES 64 /* easy handles kept for the next transfers */

typedef struct buffer {
    char *data;
    size_t len, cap;
    int overflow;
} buffer;

typedef struct transfer {
    CURL *easy;
    struct curl_slist *headers;
    char *body;
    buffer response, response_headers;
    lua_Integer id;
    size_t max_body;
    struct transfer *next, **prev; /* in the client's active list; *prev points at it */
} transfer;

/* What a response brought (body and header lines), moved out of its
 * transfer: a response's body and headers are made from it when first
 * read, and a document loads the body from it with no Lua string made. */
typedef struct payload {
    buffer body, headers;
} payload;

typedef struct client {
    CURLM *multi;
    transfer *active;
    CURL *spare[SPARE_HANDLES]; /* easy handles of ended transfers, reset for reuse */
    int nspare;
    lua_Integer next_id;
    int count;
    int epoll; /* the sockets curl waits on, as its socket callback set them */
    double timer_at; /* when curl's timer is due (the monotonic clock), or -1: none */
    struct pollfd *fds; /* the wait's poll set: the epoll set, then the caller's */
    size_t fds_cap;
} client;

/* Makes room in b for len bytes and ENTSYNC_JSON_PADDING after them (a
 * body is parsed where it is: document.c), growing it by doubling from
 * at least `first`; 0 when out of memory. */
static int buffer_room(buffer *b, size_t len, size_t first)
{
    if (len > SIZE_MAX - ENTSYNC_JSON_PADDING)
        return 0;
    if (len + ENTSYNC_JSON_PADDING <= b->cap)
        return 1;
    size_t cap = b->cap ? b->cap : first;
    while (cap < len + ENTSYNC_JSON_PADDING)
        cap = cap <= SIZE_MAX / 2 ? cap * 2 : len + ENTSYNC_JSON_PADDING;
    char *grown = realloc(b->data, cap);
    if (!grown)
        return 0;
    b->data = grown;
    b->cap = cap;
    return 1;
}

static int buffer_add(buffer *b, const char *data, size_t len, size_t limit)
{
    if (limit && b->len + len > limit) {
        b->overflow = 1;
        return 0;
    }
    if (!buffer_room(b, b->len + len, 4096))
        return 0;
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 1;
}

static size_t on_body(char *data, size_t size, size_t count, void *user)
{
    transfer *t = user;
    size_t len = size * count;
    if (!t->response.data) {
        /* the whole body at once when its length is declared: no copy
         * while it grows (a length beyond the limit ended the transfer) */
        curl_off_t declared = -1;
        if (curl_easy_getinfo(t->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &declared) == CURLE_OK && declared > 0 &&
            (!t->max_body || (size_t)declared <= t->max_body))
            buffer_room(&t->response, (size_t)declared, (size_t)declared + ENTSYNC_JSON_PADDING);
    }
    /* Returning less than len makes curl fail the transfer: a body over
     * the limit or out of memory ends it with an error, not a crash. */
    return buffer_add(&t->response, data, len, t->max_body) ? len : 0;
}

static size_t on_header(char *data, size_t size, size_t count, void *user)
{
    transfer *t = user;
    size_t len = size * count;
    /* A new status line (after a redirect or 100 Continue) starts over. */
    if (len > 5 && strncmp(data, "HTTP/", 5) == 0)
        t->response_headers.len = 0;
    return buffer_add(&t->response_headers, data, len, 1 << 20) ? len : 0;
}

/* Frees the transfer; its easy handle is kept for the next transfer when
 * c has room (curl_easy_init and _cleanup cost more than a reset). */
static void transfer_free(client *c, transfer *t)
{
    if (!t)
        return;
    if (t->easy && c && c->multi && c->nspare < SPARE_HANDLES)
        c->spare[c->nspare++] = t->easy;
    else if (t->easy)
        curl_easy_cleanup(t->easy);
    curl_slist_free_all(t->headers);
    free(t->body);
    free(t->response.data);
    free(t->response_headers.data);
    free(t);
}

static client *check_client(lua_State *L)
{
    client *c = luaL_checkudata(L, 1, CLIENT_META);
    if (!c->multi)
        luaL_error(L, "http client is closed");
    return c;
}

static void client_release(client *c)
{
    transfer *t = c->active;
    while (t) {
        transfer *next = t->next;
        if (c->multi)
            curl_multi_remove_handle(c->multi, t->easy);
        transfer_free(NULL, t);
        t = next;
    }
    c->active = NULL;
    c->count = 0;
    while (c->nspare > 0)
        curl_easy_cleanup(c->spare[--c->nspare]);
    if (c->multi) {
        curl_multi_cleanup(c->multi);
        c->multi = NULL;
    }
    /* after the cleanup: it may still tell of sockets it closes */
    if (c->epoll >= 0)
        close(c->epoll);
    c->epoll = -1;
    free(c->fds);
    c->fds = NULL;
    c->fds_cap = 0;
}

/* CURLMOPT_SOCKETFUNCTION: curl waits on s for what, or no more
 * (CURL_POLL_REMOVE). -1 (the epoll set refused it) fails the transfer.
 * A socket closed without a remove left the set by itself (and its number
 * may come back as a new socket): a change finds it gone and adds it. */
static int on_socket(CURL *easy, curl_socket_t s, int what, void *user, void *socketp)
{
    client *c = user;
    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        epoll_ctl(c->epoll, EPOLL_CTL_DEL, s, NULL); /* gone already, if curl closed it */
        return 0;
    }
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0) | ((what & CURL_POLL_OUT) ? EPOLLOUT : 0);
    ev.data.fd = s;
    /* socketp is what curl_multi_assign gave the socket since curl last
     * removed it: set, the socket is in the set already (a kept-alive
     * connection comes back unset for each request it carries) */
    int op = socketp ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(c->epoll, op, s, &ev) != 0) {
        /* a socket closed and its number reused, or one never removed */
        if (errno != (op == EPOLL_CTL_MOD ? ENOENT : EEXIST))
            return -1;
        op = op == EPOLL_CTL_MOD ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
        if (epoll_ctl(c->epoll, op, s, &ev) != 0)
            return -1;
    }
    if (!socketp)
        curl_multi_assign(c->multi, s, c);
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: curl's next timeout is ms from now (-1: none).
 * It is run by the wait, never from here (curl's rule). */
static int on_timer(CURLM *multi, long ms, void *user)
{
    client *c = user;
    (void)multi;
    c->timer_at = ms < 0 ? -1 : entsync_loop_clock() + (double)ms / 1000;
    return 0;
}

static int client_gc(lua_State *L)
{
    client_release(luaL_checkudata(L, 1, CLIENT_META));
    return 0;
}

static const char *opt_string(lua_State *L, int idx, const char *key)
{
    lua_getfield(L, idx, key);
    const char *s = lua_tostring(L, -1);
    lua_pop(L, 1); /* the request table keeps the string alive */
    return s;
}

static double opt_number(lua_State *L, int idx, const char *key, double fallback)
{
    lua_getfield(L, idx, key);
    double n = lua_isnumber(L, -1) ? (double)lua_tonumber(L, -1) : fallback;
    lua_pop(L, 1);
    return n;
}

static int opt_bool(lua_State *L, int idx, const char *key, int fallback)
{
    lua_getfield(L, idx, key);
    int b = lua_isnil(L, -1) ? fallback : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return b;
}

/* Request headers come as an array of "Name: value" strings. */
static int set_headers(lua_State *L, transfer *t, int idx)
{
    lua_getfield(L, idx, "headers");
    if (lua_istable(L, -1)) {
        lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            const char *line = lua_tostring(L, -1);
            struct curl_slist *grown = line ? curl_slist_append(t->headers, line) : t->headers;
            lua_pop(L, 1);
            if (!grown) {
                lua_pop(L, 1);
                return 0;
            }
            t->headers = grown;
        }
    }
    lua_pop(L, 1);
    return 1;
}

/* Applies the request table at idx to the transfer's easy handle. */
static const char *configure(lua_State *L, transfer *t, int idx)
{
    const char *url = opt_string(L, idx, "url");
    const char *method = opt_string(L, idx, "method");
    if (!url)
        return "request needs a url";
    CURL *e = t->easy;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, t);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(opt_number(L, idx, "timeout", 60) * 1000));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(opt_number(L, idx, "connect_timeout", 10) * 1000));
    int verify = opt_bool(L, idx, "verify", 1);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, verify ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, verify ? 2L : 0L);
    const char *cafile = opt_string(L, idx, "cafile");
    if (cafile)
        curl_easy_setopt(e, CURLOPT_CAINFO, cafile);
    t->max_body = (size_t)opt_number(L, idx, "max_body", 256.0 * 1024 * 1024);
    /* a declared Content-Length over the limit ends the transfer before
     * its body; a chunked body is stopped by on_body as it streams */
    if (t->max_body)
        curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)t->max_body);
    size_t body_len = 0;
    lua_getfield(L, idx, "body");
    const char *body = lua_tolstring(L, -1, &body_len);
    if (body) {
        t->body = malloc(body_len ? body_len : 1);
        if (!t->body) {
            lua_pop(L, 1);
            return "out of memory";
        }
        memcpy(t->body, body, body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, t->body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    }
    lua_pop(L, 1);
    if (method && strcmp(method, "GET") != 0) {
        if (strcmp(method, "HEAD") == 0)
            curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
        else
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    }
    if (!set_headers(L, t, idx))
        return "out of memory";
    if (t->headers)
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
    return NULL;
}

/* Runs curl's timer when it is due. */
static void run_timer(lua_State *L, client *c)
{
    if (c->timer_at < 0 || entsync_loop_ms_until(c->timer_at) > 0)
        return;
    c->timer_at = -1;
    int running;
    CURLMcode rc = curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    if (rc != CURLM_OK)
        luaL_error(L, "http: %s", curl_multi_strerror(rc));
}

/* Puts t at the head of the client's active list (unlink_transfer takes
 * it out in constant time through t->prev). */
static void link_transfer(client *c, transfer *t)
{
    t->next = c->active;
    t->prev = &c->active;
    if (c->active)
        c->active->prev = &t->next;
    c->active = t;
    c->count++;
}

/* client:add(request) -> id: the transfer starts (its request is sent
 * when the connection allows). request: { url, method, headers =
 * { "K: v" }, body, timeout, connect_timeout, verify, cafile, max_body }. */
static int client_add(lua_State *L)
{
    client *c = check_client(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    transfer *t = calloc(1, sizeof *t);
    if (t && c->nspare > 0) {
        t->easy = c->spare[--c->nspare];
        curl_easy_reset(t->easy); /* the options only: connections stay the multi's */
    } else if (t) {
        t->easy = curl_easy_init();
    }
    if (!t || !t->easy) {
        free(t);
        return luaL_error(L, "http: out of memory");
    }
    const char *problem = configure(L, t, 2);
    if (problem) {
        transfer_free(c, t);
        return luaL_error(L, "http: %s", problem);
    }
    CURLMcode rc = curl_multi_add_handle(c->multi, t->easy);
    if (rc != CURLM_OK) {
        transfer_free(c, t);
        return luaL_error(L, "http: %s", curl_multi_strerror(rc));
    }
    t->id = ++c->next_id;
    link_transfer(c, t);
    /* curl asks for its timer at once for a new transfer: running it now
     * sends the request, without a poll of every socket */
    run_timer(L, c);
    lua_pushinteger(L, t->id);
    return 1;
}

/* Pushes the response headers as { lower-case name = value }; a repeated
 * header's values are joined with ", " as HTTP allows. */
static void push_headers(lua_State *L, const buffer *b)
{
    lua_newtable(L);
    if (!b->data)
        return;
    const char *p = b->data, *end = b->data + b->len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = eol ? eol : end;
        const char *colon = memchr(p, ':', (size_t)(line_end - p));
        if (colon && strncmp(p, "HTTP/", 5) != 0) {
            luaL_Buffer name;
            luaL_buffinit(L, &name);
            for (const char *q = p; q < colon; q++)
                luaL_addchar(&name, (char)((*q >= 'A' && *q <= 'Z') ? *q - 'A' + 'a' : *q));
            luaL_pushresult(&name);
            const char *v = colon + 1, *v_end = line_end;
            while (v < v_end && (*v == ' ' || *v == '\t'))
                v++;
            while (v_end > v && (v_end[-1] == '\r' || v_end[-1] == ' '))
                v_end--;
            lua_pushvalue(L, -1);
            lua_rawget(L, -3);
            if (lua_isstring(L, -1)) {
                lua_pushliteral(L, ", ");
                lua_pushlstring(L, v, (size_t)(v_end - v));
                lua_concat(L, 3);
            } else {
                lua_pop(L, 1);
                lua_pushlstring(L, v, (size_t)(v_end - v));
            }
            lua_rawset(L, -3);
        }
        p = line_end + 1;
    }
}

/* The failures a retry cannot mend: a body over the size limit, a peer
 * whose certificate does not verify. NULL for the others. */
static const char *permanent_failure(const transfer *t, CURLcode result)
{
    if (t->response.overflow || result == CURLE_FILESIZE_EXCEEDED)
        return "too_large";
    switch (result) {
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
        return "tls";
    default:
        return NULL;
    }
}

/* Pushes the response of an ended transfer: { id, status, time, payload
 * [, error, permanent] } with RESPONSE_META, whose headers and body are
 * made from the payload when first read; permanent names a failure no
 * retry mends ("too_large", "tls"). */
static void push_response(lua_State *L, transfer *t, CURLcode result)
{
    const char *permanent = result != CURLE_OK ? permanent_failure(t, result) : NULL;
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, t->id);
    lua_setfield(L, -2, "id");
    long status = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
    lua_pushinteger(L, status);
    lua_setfield(L, -2, "status");
    double seconds = 0;
    curl_easy_getinfo(t->easy, CURLINFO_TOTAL_TIME, &seconds);
    lua_pushnumber(L, seconds);
    lua_setfield(L, -2, "time");
    payload *pl = lua_newuserdatauv(L, sizeof *pl, 0);
    if (t->response.data) /* its padding, zeroed for the parse (buffer_room made room) */
        memset(t->response.data + t->response.len, 0, ENTSYNC_JSON_PADDING);
    pl->body = t->response;
    pl->headers = t->response_headers;
    memset(&t->response, 0, sizeof t->response);
    memset(&t->response_headers, 0, sizeof t->response_headers);
    luaL_setmetatable(L, PAYLOAD_META);
    lua_setfield(L, -2, "payload");
    if (result != CURLE_OK) {
        int too_large = permanent && strcmp(permanent, "too_large") == 0;
        lua_pushstring(L, too_large ? "response body over the size limit" : curl_easy_strerror(result));
        lua_setfield(L, -2, "error");
        if (permanent) {
            lua_pushstring(L, permanent);
            lua_setfield(L, -2, "permanent");
        }
    }
    luaL_setmetatable(L, RESPONSE_META);
}

static int payload_gc(lua_State *L)
{
    payload *pl = luaL_checkudata(L, 1, PAYLOAD_META);
    free(pl->body.data);
    free(pl->headers.data);
    memset(pl, 0, sizeof *pl);
    return 0;
}

const char *entsync_http_payload_body(lua_State *L, int idx, size_t *len)
{
    payload *pl = luaL_testudata(L, idx, PAYLOAD_META);
    if (!pl)
        return NULL;
    static const char empty[ENTSYNC_JSON_PADDING + 1]; /* a body that never came, padded too */
    *len = pl->body.len;
    return pl->body.data ? pl->body.data : empty;
}

/* RESPONSE_META's __index: body and headers are made from the payload at
 * their first read and kept in the response; any other key is looked up
 * in the methods (upvalue 1: core.http.response_methods, which
 * lua/entsync/http.lua fills). */
static int response_index(lua_State *L)
{
    const char *key = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : NULL;
    int body = key && strcmp(key, "body") == 0, headers = key && strcmp(key, "headers") == 0;
    if (!body && !headers) {
        lua_pushvalue(L, 2);
        lua_gettable(L, lua_upvalueindex(1));
        return 1;
    }
    lua_pushliteral(L, "payload");
    lua_rawget(L, 1);
    const payload *pl = luaL_testudata(L, -1, PAYLOAD_META);
    static const buffer none = {NULL, 0, 0, 0};
    if (body)
        lua_pushlstring(L, pl && pl->body.data ? pl->body.data : "", pl ? pl->body.len : 0);
    else
        push_headers(L, pl ? &pl->headers : &none);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, -2);
    lua_rawset(L, 1);
    return 1;
}

/* Takes t out of the client's active list: an ended or cancelled transfer. */
static void unlink_transfer(client *c, transfer *t)
{
    *t->prev = t->next;
    if (t->next)
        t->next->prev = t->prev;
    c->count--;
}

/* Moves the transfers that ended into the table on top of the stack, after
 * the n responses it holds; returns the new count. */
static lua_Integer collect(lua_State *L, client *c, lua_Integer n)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(c->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        transfer *t = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&t);
        CURLcode result = msg->data.result;
        curl_multi_remove_handle(c->multi, msg->easy_handle);
        unlink_transfer(c, t);
        push_response(L, t, result);
        lua_rawseti(L, -2, ++n);
        transfer_free(c, t);
    }
    return n;
}

/* Polls the epoll set of curl's sockets and the n extra descriptors
 * (their revents are set) for up to ms, then runs the transfers whose
 * sockets are ready; 1 when one of the extra descriptors is. */
static int poll_once(lua_State *L, client *c, struct pollfd *extra, nfds_t n, int ms)
{
    size_t total = 1 + n;
    if (total > c->fds_cap) {
        struct pollfd *grown = realloc(c->fds, total * sizeof *grown);
        if (!grown)
            luaL_error(L, "http: out of memory");
        c->fds = grown;
        c->fds_cap = total;
    }
    struct pollfd *fds = c->fds;
    fds[0].fd = c->epoll;
    fds[0].events = POLLIN;
    if (n)
        memcpy(fds + 1, extra, n * sizeof *fds); /* extra is NULL for client:poll */
    if (entsync_loop_poll(L, fds, (nfds_t)total, ms) == 0)
        return 0;
    int extra_ready = 0;
    for (nfds_t i = 0; i < n; i++) {
        extra[i].revents = fds[1 + i].revents;
        extra_ready |= extra[i].revents != 0;
    }
    if (!fds[0].revents)
        return extra_ready;
    /* the ready sockets, at once; a socket curl closes while it runs the
     * ones before it is one it no longer knows, and ignores */
    struct epoll_event ready[64];
    int got = epoll_wait(c->epoll, ready, (int)(sizeof ready / sizeof ready[0]), 0);
    if (got < 0 && errno != EINTR)
        luaL_error(L, "http: epoll_wait: %s", strerror(errno));
    for (int i = 0; i < got; i++) {
        uint32_t r = ready[i].events;
        int bits = ((r & (EPOLLIN | EPOLLHUP)) ? CURL_CSELECT_IN : 0) | ((r & EPOLLOUT) ? CURL_CSELECT_OUT : 0) |
                   ((r & EPOLLERR) ? CURL_CSELECT_ERR : 0);
        int running;
        CURLMcode rc = curl_multi_socket_action(c->multi, ready[i].data.fd, bits, &running);
        if (rc != CURLM_OK)
            luaL_error(L, "http: %s", curl_multi_strerror(rc));
    }
    return extra_ready;
}

void entsync_http_wait(lua_State *L, int idx, struct pollfd *extra, nfds_t n, double timeout, int wait_idle)
{
    client *c = luaL_checkudata(L, idx, CLIENT_META);
    if (!c->multi)
        luaL_error(L, "http client is closed");
    for (nfds_t i = 0; i < n; i++)
        extra[i].revents = 0;
    lua_newtable(L);
    double deadline = timeout >= 0 ? entsync_loop_clock() + timeout : -1;
    lua_Integer got = 0;
    int extra_ready = 0, polled = 0;
    for (;;) {
        run_timer(L, c);
        got = collect(L, c, got);
        if (got > 0 || extra_ready)
            break;
        if (c->count == 0 && !wait_idle)
            break;
        if (c->count == 0 && n == 0 && deadline < 0)
            luaL_error(L, "core.loop.wait: nothing to wait for and no timeout: it would never return");
        int ms = entsync_loop_ms_until(deadline);
        if (ms == 0 && polled)
            break;
        /* until the deadline or curl's timer, whichever comes first; a
         * longer wait is waited in turns */
        int timer = c->timer_at < 0 ? -1 : entsync_loop_ms_until(c->timer_at);
        if (timer >= 0 && (ms < 0 || timer < ms))
            ms = timer;
        if (ms < 0 || ms > 3600 * 1000)
            ms = 3600 * 1000;
        extra_ready = poll_once(L, c, extra, n, ms);
        polled = 1;
    }
}

/* client:poll(timeout) -> { responses }: runs the transfers, waiting up to
 * timeout seconds for one to end; returns those that ended (possibly
 * none, and at once when none is in flight). A response is { id, status,
 * headers, body, time [, error] }. core.loop.wait shares this. */
static int client_poll(lua_State *L)
{
    check_client(L);
    entsync_http_wait(L, 1, NULL, 0, luaL_optnumber(L, 2, 0), 0);
    return 1;
}

/* client:cancel(id) -> true if it was in flight */
static int client_cancel(lua_State *L)
{
    client *c = check_client(L);
    lua_Integer id = luaL_checkinteger(L, 2);
    for (transfer *t = c->active; t; t = t->next) {
        if (t->id == id) {
            curl_multi_remove_handle(c->multi, t->easy);
            unlink_transfer(c, t);
            transfer_free(c, t);
            lua_pushboolean(L, 1);
            return 1;
        }
    }
    lua_pushboolean(L, 0);
    return 1;
}

static int client_pending(lua_State *L)
{
    lua_pushinteger(L, check_client(L)->count);
    return 1;
}

static int client_close(lua_State *L)
{
    client_release(luaL_checkudata(L, 1, CLIENT_META));
    return 0;
}

/* client() -> client */
static int http_client(lua_State *L)
{
    client *c = lua_newuserdatauv(L, sizeof *c, 0);
    memset(c, 0, sizeof *c);
    luaL_setmetatable(L, CLIENT_META);
    c->epoll = -1;
    c->multi = curl_multi_init();
    if (!c->multi)
        return luaL_error(L, "http: cannot create a curl multi handle");
    c->epoll = epoll_create1(EPOLL_CLOEXEC);
    if (c->epoll < 0)
        return luaL_error(L, "http: epoll_create1: %s", strerror(errno));
    /* Idle connections kept for reuse; per-host limits are the Lua
     * layer's, per provider. */
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, 64L);
    c->timer_at = -1;
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    return 1;
}

static int http_version(lua_State *L)
{
    lua_pushstring(L, curl_version());
    return 1;
}

void entsync_http_register(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"add", client_add},       {"poll", client_poll},
        {"cancel", client_cancel}, {"pending", client_pending},
        {"close", client_close},   {NULL, NULL},
    };
    static int initialized = 0;
    if (!initialized) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        initialized = 1;
    }
    if (luaL_newmetatable(L, CLIENT_META)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, client_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, client_close);
        lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, PAYLOAD_META)) {
        lua_pushcfunction(L, payload_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    static const luaL_Reg functions[] = {
        {"client", http_client},
        {"curl_version", http_version},
        {NULL, NULL},
    };
    luaL_newlib(L, functions);
    /* the responses' methods, kept by RESPONSE_META (one table a state) */
    if (luaL_newmetatable(L, RESPONSE_META)) {
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, "methods");
        lua_pushcclosure(L, response_index, 1);
        lua_setfield(L, -2, "__index");
    }
    lua_getfield(L, -1, "methods");
    lua_setfield(L, -3, "response_methods");
    lua_pop(L, 1);
    lua_setfield(L, -2, "http");
}
