/*
 * redis: hiredis's non-blocking context wrapped for Lua (see redis.h).
 *
 * The context is owned by the userdata and freed exactly once, by close
 * or by the collector. A failed context stays failed: every later call
 * reports its error.
 */
#include "redis.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <lauxlib.h>
#include <string.h>
#include <sys/socket.h>

#define CONN_META "entsync.redis.conn"

typedef struct conn {
    redisContext *ctx;
} conn;

/* The open connection at index 1; raises when it was closed. */
static conn *check_conn(lua_State *L)
{
    conn *c = luaL_checkudata(L, 1, CONN_META);
    if (!c->ctx)
        luaL_error(L, "redis connection is closed");
    return c;
}

/* Pushes nil and the context's error message: 2 results. */
static int push_failure(lua_State *L, const redisContext *ctx)
{
    lua_pushnil(L);
    lua_pushstring(L, ctx->errstr[0] ? ctx->errstr : "redis: connection failed");
    return 2;
}

/* connect(host, port) -> conn | nil, message */
static int redis_connect(lua_State *L)
{
    const char *host = luaL_checkstring(L, 1);
    int port = (int)luaL_checkinteger(L, 2);
    conn *c = lua_newuserdatauv(L, sizeof *c, 0);
    c->ctx = NULL;
    luaL_setmetatable(L, CONN_META);
    redisContext *ctx = redisConnectNonBlock(host, port);
    if (!ctx) {
        lua_pushnil(L);
        lua_pushliteral(L, "redis: out of memory");
        return 2;
    }
    if (ctx->err) {
        int n = push_failure(L, ctx);
        redisFree(ctx);
        return n;
    }
    c->ctx = ctx;
    return 1;
}

/* conn:fd() -> descriptor */
static int conn_fd(lua_State *L)
{
    lua_pushinteger(L, check_conn(L)->ctx->fd);
    return 1;
}

/* conn:connected() -> true | nil, message: the outcome of the connect,
 * asked once the descriptor is writable. */
static int conn_connected(lua_State *L)
{
    conn *c = check_conn(L);
    int problem = 0;
    socklen_t len = sizeof problem;
    if (getsockopt(c->ctx->fd, SOL_SOCKET, SO_ERROR, &problem, &len) != 0)
        problem = errno;
    if (problem) {
        lua_pushnil(L);
        lua_pushfstring(L, "redis: cannot connect: %s", strerror(problem));
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:append({ arg, ... }) -> true | nil, message. The arguments are
 * strings or numbers, sent as bulk strings. */
static int conn_append(lua_State *L)
{
    conn *c = check_conn(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    int argc = (int)lua_rawlen(L, 2);
    if (argc < 1)
        return luaL_error(L, "redis: a command needs a name");
    const char **argv = lua_newuserdatauv(L, (size_t)argc * sizeof *argv, 0);
    size_t *lens = lua_newuserdatauv(L, (size_t)argc * sizeof *lens, 0);
    /* every argument stays on the stack (a number's text lives only there) */
    luaL_checkstack(L, argc, "redis: too many arguments in one command");
    for (int i = 0; i < argc; i++) {
        lua_rawgeti(L, 2, i + 1);
        if (!lua_isstring(L, -1))
            return luaL_error(L, "redis: argument %d of the command is %s, not a string or a number", i + 1,
                              luaL_typename(L, -1));
        argv[i] = lua_tolstring(L, -1, &lens[i]);
        /* the string stays alive on the stack until the call returns */
    }
    if (redisAppendCommandArgv(c->ctx, argc, argv, lens) != REDIS_OK)
        return push_failure(L, c->ctx);
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:write() -> true when the output buffer is empty, false when the
 * socket took only part of it, nil, message on failure. */
static int conn_write(lua_State *L)
{
    conn *c = check_conn(L);
    int done = 0;
    if (redisBufferWrite(c->ctx, &done) != REDIS_OK)
        return push_failure(L, c->ctx);
    lua_pushboolean(L, done);
    return 1;
}

/* conn:read() -> true, got | nil, message: what the socket holds now goes
 * to the reply parser (nothing waiting is no error); got says whether any
 * byte came, so a caller waits on the socket only when none did. */
static int conn_read(lua_State *L)
{
    conn *c = check_conn(L);
    size_t before = c->ctx->reader->len;
    if (redisBufferRead(c->ctx) != REDIS_OK)
        return push_failure(L, c->ctx);
    lua_pushboolean(L, 1);
    lua_pushboolean(L, c->ctx->reader->len != before);
    return 2;
}

/* Pushes a reply as a Lua value (see redis.h). */
static void push_reply(lua_State *L, const redisReply *r)
{
    luaL_checkstack(L, 4, "redis: reply nested too deep");
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        lua_pushlstring(L, r->str, r->len);
        break;
    case REDIS_REPLY_INTEGER:
        lua_pushinteger(L, (lua_Integer)r->integer);
        break;
    case REDIS_REPLY_ARRAY:
        lua_createtable(L, (int)r->elements, 0);
        for (size_t i = 0; i < r->elements; i++) {
            push_reply(L, r->element[i]);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        break;
    case REDIS_REPLY_ERROR:
        lua_createtable(L, 0, 1);
        lua_pushlstring(L, r->str, r->len);
        lua_setfield(L, -2, "error");
        break;
    default: /* REDIS_REPLY_NIL */
        lua_pushboolean(L, 0);
        break;
    }
}

/* A parsed reply held by a userdata while it becomes a Lua value: one that
 * raises on the way (out of memory) leaves it to the collector. */
typedef struct held_reply {
    redisReply *reply;
} held_reply;

static int held_gc(lua_State *L)
{
    held_reply *h = lua_touserdata(L, 1);
    if (h->reply) {
        freeReplyObject(h->reply);
        h->reply = NULL;
    }
    return 0;
}

/* conn:reply() -> true, value | false | nil, message. */
static int conn_reply(lua_State *L)
{
    conn *c = check_conn(L);
    held_reply *h = lua_newuserdatauv(L, sizeof *h, 0);
    h->reply = NULL;
    luaL_setmetatable(L, CONN_META ".reply");
    void *reply = NULL;
    if (redisGetReplyFromReader(c->ctx, &reply) != REDIS_OK)
        return push_failure(L, c->ctx);
    if (!reply) {
        lua_pushboolean(L, 0);
        return 1;
    }
    h->reply = reply;
    lua_pushboolean(L, 1);
    push_reply(L, h->reply);
    freeReplyObject(h->reply);
    h->reply = NULL;
    return 2;
}

static void conn_release(conn *c)
{
    if (c->ctx) {
        redisFree(c->ctx);
        c->ctx = NULL;
    }
}

/* conn:close(); __close and __gc too. Closing twice is harmless. */
static int conn_close(lua_State *L)
{
    conn_release(luaL_checkudata(L, 1, CONN_META));
    return 0;
}

void entsync_redis_register(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"fd", conn_fd},       {"connected", conn_connected}, {"append", conn_append}, {"write", conn_write},
        {"read", conn_read},   {"reply", conn_reply},         {"close", conn_close},   {NULL, NULL},
    };
    if (luaL_newmetatable(L, CONN_META)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, conn_close);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, conn_close);
        lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, CONN_META ".reply")) {
        lua_pushcfunction(L, held_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    static const luaL_Reg functions[] = {
        {"connect", redis_connect},
        {NULL, NULL},
    };
    luaL_newlib(L, functions);
    lua_setfield(L, -2, "redis");
}
