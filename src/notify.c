/*
 * notify: sd_notify's datagram, sent by hand (see notify.h).
 */
#include "notify.h"

#include <errno.h>
#include <lauxlib.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* send(text) -> true | false | nil, message */
static int notify_send(lua_State *L)
{
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) {
        lua_pushboolean(L, 0);
        return 1;
    }
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    size_t path_len = strlen(path);
    if (path_len >= sizeof addr.sun_path || (path[0] != '/' && path[0] != '@')) {
        lua_pushnil(L);
        lua_pushfstring(L, "NOTIFY_SOCKET %s is not a socket path", path);
        return 2;
    }
    memcpy(addr.sun_path, path, path_len);
    if (path[0] == '@')
        addr.sun_path[0] = '\0'; /* the abstract namespace */
    socklen_t addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path_len);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "notify: socket: %s", strerror(errno));
        return 2;
    }
    ssize_t sent = sendto(fd, text, len, MSG_NOSIGNAL, (struct sockaddr *)&addr, addr_len);
    int err = errno;
    close(fd);
    if (sent < 0 || (size_t)sent != len) {
        lua_pushnil(L);
        lua_pushfstring(L, "notify: sending to %s: %s", path, sent < 0 ? strerror(err) : "short write");
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

void entsync_notify_register(lua_State *L)
{
    lua_newtable(L);
    lua_pushcfunction(L, notify_send);
    lua_setfield(L, -2, "send");
    lua_setfield(L, -2, "notify");
}
