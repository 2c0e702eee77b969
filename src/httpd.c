/*
 * httpd: libmicrohttpd in its epoll mode, without threads, driven by
 * entsync's loop (see httpd.h for the Lua interface).
 */
#include "httpd.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <lauxlib.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#define SERVER_MT "entsync.httpd"
#define DEFAULT_MAX_BODY (1024 * 1024)

typedef struct {
    struct MHD_Daemon *daemon;
    lua_State *L;    /* the thread inside server:run(), NULL outside it */
    int handler_ref; /* registry reference of the handler */
    size_t max_body;
} httpd_server;

/* One request's body, gathered across MHD's calls of on_request. */
typedef struct {
    char *body;
    size_t len, cap;
    int too_large;
} httpd_request;

/* What the protected call needs, and what it did. */
typedef struct {
    httpd_server *server;
    struct MHD_Connection *connection;
    const char *url, *method;
    httpd_request *request;
    int queued;
} httpd_call;

static enum MHD_Result respond(struct MHD_Connection *connection, unsigned int status, const char *body,
                               size_t len)
{
    struct MHD_Response *response =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!response)
        return MHD_NO;
    MHD_add_response_header(response, "Content-Type", "text/plain; charset=utf-8");
    enum MHD_Result result = MHD_queue_response(connection, status, response);
    MHD_destroy_response(response);
    return result;
}

/* Header names are case-insensitive: the handler sees them lower-case. */
static enum MHD_Result add_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    lua_State *L = cls;
    (void)kind;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (const char *p = key; *p; p++)
        luaL_addchar(&b, (char)tolower((unsigned char)*p));
    luaL_pushresult(&b);
    lua_pushstring(L, value ? value : "");
    lua_settable(L, -3);
    return MHD_YES;
}

static enum MHD_Result add_argument(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    lua_State *L = cls;
    (void)kind;
    lua_pushstring(L, value ? value : "");
    lua_setfield(L, -2, key);
    return MHD_YES;
}

static void push_remote(lua_State *L, struct MHD_Connection *connection)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    char text[INET6_ADDRSTRLEN] = "";
    if (info && info->client_addr) {
        const struct sockaddr *sa = info->client_addr;
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, text, sizeof text);
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, text, sizeof text);
    }
    lua_pushstring(L, text);
}

/* Builds the request table, calls the handler and queues its answer. Runs
 * under lua_pcall, so a Lua error (the handler's, or out of memory) never
 * unwinds through libmicrohttpd. */
static int protected_call(lua_State *L)
{
    httpd_call *call = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, call->server->handler_ref);
    lua_createtable(L, 0, 7);
    lua_pushstring(L, call->method);
    lua_setfield(L, -2, "method");
    lua_pushstring(L, call->url);
    lua_setfield(L, -2, "path");
    lua_newtable(L);
    MHD_get_connection_values(call->connection, MHD_GET_ARGUMENT_KIND, add_argument, L);
    lua_setfield(L, -2, "query");
    lua_newtable(L);
    MHD_get_connection_values(call->connection, MHD_HEADER_KIND, add_header, L);
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, call->request->body ? call->request->body : "", call->request->len);
    lua_setfield(L, -2, "body");
    push_remote(L, call->connection);
    lua_setfield(L, -2, "remote");
    lua_call(L, 1, 3);
    lua_Integer status = luaL_optinteger(L, -3, 200);
    size_t len = 0;
    const char *body = luaL_optlstring(L, -2, "", &len);
    if (status < 100 || status > 599)
        return luaL_error(L, "httpd: the handler answered status %d", (int)status);
    struct MHD_Response *response = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!response)
        return luaL_error(L, "httpd: cannot make a response: out of memory");
    int has_type = 0;
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            if (lua_type(L, -2) == LUA_TSTRING && lua_isstring(L, -1)) {
                const char *name = lua_tostring(L, -2);
                if (strcasecmp(name, "content-type") == 0)
                    has_type = 1;
                MHD_add_response_header(response, name, lua_tostring(L, -1));
            }
            lua_pop(L, 1);
        }
    }
    if (!has_type)
        MHD_add_response_header(response, "Content-Type", "text/plain; charset=utf-8");
    enum MHD_Result queued = MHD_queue_response(call->connection, (unsigned int)status, response);
    MHD_destroy_response(response);
    call->queued = queued == MHD_YES ? 1 : -1;
    return 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *connection, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **state)
{
    httpd_server *server = cls;
    httpd_request *request = *state;
    (void)version;
    if (!request) {
        /* the headers are in; the body (if any) comes in the next calls */
        request = calloc(1, sizeof *request);
        if (!request)
            return MHD_NO;
        *state = request;
        return MHD_YES;
    }
    if (*upload_size > 0) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (request->too_large)
            return MHD_YES;
        if (request->len + n > server->max_body) {
            request->too_large = 1;
            free(request->body);
            request->body = NULL;
            request->len = request->cap = 0;
            return MHD_YES;
        }
        if (request->len + n > request->cap) {
            size_t cap = request->cap ? request->cap : 4096;
            while (cap < request->len + n)
                cap *= 2;
            char *grown = realloc(request->body, cap);
            if (!grown)
                return MHD_NO;
            request->body = grown;
            request->cap = cap;
        }
        memcpy(request->body + request->len, upload_data, n);
        request->len += n;
        return MHD_YES;
    }
    if (request->too_large) {
        static const char text[] = "request body too large\n";
        return respond(connection, MHD_HTTP_CONTENT_TOO_LARGE, text, sizeof text - 1);
    }
    lua_State *L = server->L;
    if (!L) {
        static const char text[] = "not serving\n";
        return respond(connection, MHD_HTTP_SERVICE_UNAVAILABLE, text, sizeof text - 1);
    }
    httpd_call call = {server, connection, url, method, request, 0};
    int top = lua_gettop(L);
    lua_pushcfunction(L, protected_call);
    lua_pushlightuserdata(L, &call);
    int rc = lua_pcall(L, 1, 0, 0);
    enum MHD_Result result = MHD_YES;
    if (rc != LUA_OK) {
        size_t len = 0;
        const char *message = lua_tolstring(L, -1, &len);
        if (!call.queued)
            result = respond(connection, MHD_HTTP_INTERNAL_SERVER_ERROR, message ? message : "error",
                             message ? len : 5);
    } else if (call.queued < 0) {
        result = MHD_NO;
    }
    lua_settop(L, top);
    return result;
}

static void on_completed(void *cls, struct MHD_Connection *connection, void **state,
                         enum MHD_RequestTerminationCode code)
{
    (void)cls;
    (void)connection;
    (void)code;
    httpd_request *request = *state;
    if (request) {
        free(request->body);
        free(request);
        *state = NULL;
    }
}

static httpd_server *check_server(lua_State *L)
{
    httpd_server *server = luaL_checkudata(L, 1, SERVER_MT);
    if (!server->daemon)
        luaL_error(L, "httpd: the server is closed");
    return server;
}

static void server_release(lua_State *L, httpd_server *server)
{
    if (server->daemon) {
        MHD_stop_daemon(server->daemon);
        server->daemon = NULL;
    }
    if (server->handler_ref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, server->handler_ref);
        server->handler_ref = LUA_NOREF;
    }
}

/* listen(host, port, handler [, max_body]) -> server | nil, message */
static int httpd_listen(lua_State *L)
{
    const char *host = luaL_checkstring(L, 1);
    lua_Integer port = luaL_checkinteger(L, 2);
    luaL_checktype(L, 3, LUA_TFUNCTION);
    lua_Integer max_body = luaL_optinteger(L, 4, DEFAULT_MAX_BODY);
    if (port < 0 || port > 65535)
        return luaL_error(L, "httpd.listen: port %d is not a port", (int)port);
    if (max_body < 0)
        return luaL_error(L, "httpd.listen: max_body must not be negative");
    if (strcmp(host, "localhost") == 0)
        host = "127.0.0.1";

    struct sockaddr_storage addr;
    memset(&addr, 0, sizeof addr);
    unsigned int flags = MHD_USE_EPOLL;
    struct sockaddr_in *in4 = (struct sockaddr_in *)&addr;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&addr;
    if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
    } else if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        flags |= MHD_USE_IPv6;
    } else {
        lua_pushnil(L);
        lua_pushfstring(L, "cannot listen on %s:%d: not an IP address", host, (int)port);
        return 2;
    }

    httpd_server *server = lua_newuserdatauv(L, sizeof *server, 0);
    server->daemon = NULL;
    server->L = NULL;
    server->handler_ref = LUA_NOREF;
    server->max_body = (size_t)max_body;
    luaL_setmetatable(L, SERVER_MT);
    lua_pushvalue(L, 3);
    server->handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);

    errno = 0;
    server->daemon = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, server,
                                      MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                                      MHD_OPTION_NOTIFY_COMPLETED, on_completed, server,
                                      MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)30,
                                      MHD_OPTION_CONNECTION_LIMIT, (unsigned int)64, MHD_OPTION_END);
    if (!server->daemon) {
        int err = errno;
        server_release(L, server);
        lua_pushnil(L);
        lua_pushfstring(L, "cannot listen on %s:%d: %s", host, (int)port,
                        err ? strerror(err) : "the server did not start");
        return 2;
    }
    return 1;
}

static int server_fd(lua_State *L)
{
    httpd_server *server = check_server(L);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(server->daemon, MHD_DAEMON_INFO_EPOLL_FD);
    if (!info)
        return luaL_error(L, "httpd: the server has no epoll descriptor");
    lua_pushinteger(L, info->epoll_fd);
    return 1;
}

static int server_timeout(lua_State *L)
{
    httpd_server *server = check_server(L);
    MHD_UNSIGNED_LONG_LONG ms = 0;
    if (MHD_get_timeout(server->daemon, &ms) == MHD_YES)
        lua_pushnumber(L, (lua_Number)ms / 1000.0);
    else
        lua_pushnil(L);
    return 1;
}

static int server_run(lua_State *L)
{
    httpd_server *server = check_server(L);
    if (server->L)
        return luaL_error(L, "httpd: server:run() is running already (a handler cannot call it)");
    server->L = L;
    enum MHD_Result result = MHD_run(server->daemon);
    server->L = NULL;
    lua_pushboolean(L, result == MHD_YES);
    return 1;
}

static int server_port(lua_State *L)
{
    httpd_server *server = check_server(L);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(server->daemon, MHD_DAEMON_INFO_BIND_PORT);
    lua_pushinteger(L, info ? info->port : 0);
    return 1;
}

static int server_close(lua_State *L)
{
    httpd_server *server = luaL_checkudata(L, 1, SERVER_MT);
    if (server->L)
        return luaL_error(L, "httpd: a handler cannot close its own server");
    server_release(L, server);
    return 0;
}

void entsync_httpd_register(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"fd", server_fd},     {"timeout", server_timeout}, {"run", server_run},
        {"port", server_port}, {"close", server_close},     {NULL, NULL},
    };
    if (luaL_newmetatable(L, SERVER_MT)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, server_close);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, server_close);
        lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushcfunction(L, httpd_listen);
    lua_setfield(L, -2, "listen");
    lua_setfield(L, -2, "httpd");
}
