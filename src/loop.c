/*
 * loop: the one wait, signals through a self-pipe, inotify watches.
 *
 * A signal handler may run in any thread (libcurl resolves names in
 * threads of its own), so its counters are C11 atomics, which are lock-free
 * for int and so async-signal-safe; the handler saves errno around its
 * write to the pipe.
 */
#include "loop.h"

#include "http.h"

#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

#define WATCH_META "entsync.loop.watch"
#define NSIGNALS 4
#define LEGACY 3 /* signals_install holds the first three */

static const struct {
    const char *name;
    int number;
} handled[NSIGNALS] = {{"TERM", SIGTERM}, {"INT", SIGINT}, {"HUP", SIGHUP}, {"USR1", SIGUSR1}};

/* arrivals: for signal_take and signal_pending, once signals_install ran */
static atomic_int arrivals[NSIGNALS];
static atomic_int delivered[NSIGNALS]; /* signals_arrived: the loop's */
static int holds[NSIGNALS];
static atomic_int legacy_held;
static struct sigaction previous[NSIGNALS];
static int wake_pipe[2] = {-1, -1};

static void on_signal(int number)
{
    int saved = errno;
    for (int i = 0; i < NSIGNALS; i++) {
        if (handled[i].number == number) {
            if (i < LEGACY && atomic_load(&legacy_held))
                atomic_fetch_add(&arrivals[i], 1);
            atomic_fetch_add(&delivered[i], 1);
        }
    }
    if (wake_pipe[1] >= 0) {
        /* A full pipe already wakes the wait: a failed write loses nothing. */
        ssize_t written = write(wake_pipe[1], "", 1);
        (void)written;
    }
    errno = saved;
}

int entsync_loop_interrupted(void)
{
    for (int i = 0; i < NSIGNALS; i++)
        if (atomic_load(&arrivals[i]))
            return 1;
    return 0;
}

double entsync_loop_clock(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int entsync_loop_ms_until(double deadline)
{
    if (deadline < 0)
        return -1;
    double left = (deadline - entsync_loop_clock()) * 1000;
    if (left <= 0)
        return 0;
    return left >= (double)INT_MAX ? INT_MAX : (int)ceil(left);
}

int entsync_loop_poll(lua_State *L, struct pollfd *fds, nfds_t n, int ms)
{
    for (nfds_t i = 0; i < n; i++)
        fds[i].revents = 0;
    int ready = poll(fds, n, ms);
    if (ready < 0) {
        if (errno == EINTR)
            return 0;
        return luaL_error(L, "core.loop.wait: poll: %s", strerror(errno));
    }
    return ready;
}

static int find_signal(lua_State *L, int arg)
{
    const char *name = luaL_checkstring(L, arg);
    for (int i = 0; i < NSIGNALS; i++)
        if (strcmp(handled[i].name, name) == 0)
            return i;
    return luaL_argerror(L, arg, "TERM, INT, HUP or USR1");
}

/* The self-pipe exists before any handler that writes to it. */
static void make_wake_pipe(lua_State *L)
{
    if (wake_pipe[0] >= 0)
        return;
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0)
        luaL_error(L, "cannot make the signal pipe: %s", strerror(errno));
    wake_pipe[0] = fds[0];
    wake_pipe[1] = fds[1];
}

static void hold(lua_State *L, int i)
{
    if (holds[i] > 0) {
        holds[i]++;
        return;
    }
    make_wake_pipe(L);
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal;
    sigemptyset(&action.sa_mask);
    if (sigaction(handled[i].number, &action, &previous[i]) != 0)
        luaL_error(L, "cannot handle SIG%s: %s", handled[i].name, strerror(errno));
    holds[i] = 1;
}

static void drop_hold(lua_State *L, int i)
{
    if (holds[i] == 0)
        return;
    if (holds[i] == 1 && sigaction(handled[i].number, &previous[i], NULL) != 0)
        luaL_error(L, "cannot restore SIG%s: %s", handled[i].name, strerror(errno));
    holds[i]--;
}

/* signals_install() holds TERM, INT and HUP for the life of the process. */
static int signals_install(lua_State *L)
{
    if (!atomic_load(&legacy_held)) {
        for (int i = 0; i < LEGACY; i++)
            hold(L, i);
        atomic_store(&legacy_held, 1);
    }
    return 0;
}

/* signal_handle(name, on) */
static int signal_handle(lua_State *L)
{
    int i = find_signal(L, 1);
    if (lua_toboolean(L, 2))
        hold(L, i);
    else
        drop_hold(L, i);
    return 0;
}

/* signal_take(name) -> how many times it arrived since the last take */
static int signal_take(lua_State *L)
{
    int i = find_signal(L, 1);
    lua_pushinteger(L, atomic_exchange(&arrivals[i], 0));
    return 1;
}

/* signal_pending(name) -> true if it arrived and was not taken */
static int signal_pending(lua_State *L)
{
    int i = find_signal(L, 1);
    lua_pushboolean(L, atomic_load(&arrivals[i]) != 0);
    return 1;
}

/* signals_arrived() -> { name = count } | nil */
static int signals_arrived(lua_State *L)
{
    int any = 0;
    for (int i = 0; i < NSIGNALS; i++) {
        int count = atomic_exchange(&delivered[i], 0);
        if (count == 0)
            continue;
        if (!any) {
            lua_createtable(L, 0, 1);
            any = 1;
        }
        lua_pushinteger(L, count);
        lua_setfield(L, -2, handled[i].name);
    }
    if (!any)
        lua_pushnil(L);
    return 1;
}

static void drain_wake_pipe(void)
{
    char sink[64];
    while (read(wake_pipe[0], sink, sizeof sink) > 0)
        ;
}

/* Waits without a client: poll() until something is ready or the deadline. */
static void wait_fds(lua_State *L, struct pollfd *fds, nfds_t n, double timeout)
{
    double deadline = timeout >= 0 ? entsync_loop_clock() + timeout : -1;
    for (;;) {
        int ms = entsync_loop_ms_until(deadline);
        if (entsync_loop_poll(L, fds, n, ms) > 0 || ms == 0)
            return;
    }
}

/* wait(client_or_nil, timeout, fds) -> responses, ready */
static int loop_wait(lua_State *L)
{
    int with_client = !lua_isnoneornil(L, 1);
    double timeout = luaL_optnumber(L, 2, -1);
    nfds_t listed = 0;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        listed = (nfds_t)lua_rawlen(L, 3);
    }
    nfds_t n = listed + (wake_pipe[0] >= 0 ? 1 : 0);
    if (n == 0 && timeout < 0 && !with_client)
        return luaL_error(L, "core.loop.wait: nothing to wait for and no timeout: it would never return");
    /* scratch memory the collector frees, whatever is raised below */
    struct pollfd *fds = lua_newuserdatauv(L, (n ? n : 1) * sizeof *fds, 0);
    for (nfds_t i = 0; i < listed; i++) {
        lua_rawgeti(L, 3, (lua_Integer)i + 1);
        if (!lua_istable(L, -1))
            return luaL_error(L, "core.loop.wait: fds[%d] is not a table { fd = n, events = \"r\" | \"w\" }", (int)i + 1);
        lua_getfield(L, -1, "fd");
        int is_int = 0;
        lua_Integer fd = lua_tointegerx(L, -1, &is_int);
        lua_getfield(L, -2, "events");
        const char *events = lua_tostring(L, -1);
        if (!is_int || fd < 0 || fd > INT_MAX || !events || (strcmp(events, "r") != 0 && strcmp(events, "w") != 0))
            return luaL_error(L, "core.loop.wait: fds[%d] needs fd = a descriptor and events = \"r\" or \"w\"", (int)i + 1);
        fds[i].fd = (int)fd;
        fds[i].events = events[0] == 'r' ? POLLIN : POLLOUT;
        fds[i].revents = 0;
        lua_pop(L, 3);
    }
    if (wake_pipe[0] >= 0) {
        fds[listed].fd = wake_pipe[0];
        fds[listed].events = POLLIN;
        fds[listed].revents = 0;
    }
    if (with_client) {
        entsync_http_wait(L, 1, fds, n, timeout, 1);
    } else {
        wait_fds(L, fds, n, timeout);
        lua_newtable(L);
    }
    if (wake_pipe[0] >= 0 && fds[listed].revents)
        drain_wake_pipe();
    lua_newtable(L);
    lua_Integer ready = 0;
    for (nfds_t i = 0; i < listed; i++) {
        if (fds[i].revents) {
            lua_rawgeti(L, 3, (lua_Integer)i + 1);
            lua_rawseti(L, -2, ++ready);
        }
    }
    return 2;
}

/* file watches -------------------------------------------------------------- */

typedef struct watch {
    int fd;
    const char *name; /* the file's name in its folder (uservalue 1 keeps it) */
    size_t len;
} watch;

static watch *check_watch(lua_State *L)
{
    watch *w = luaL_checkudata(L, 1, WATCH_META);
    if (w->fd < 0)
        luaL_error(L, "the file watch is closed");
    return w;
}

/* nil, "cannot watch <folder>: <reason>", errno; the watch is closed. */
static int watch_failed(lua_State *L, watch *w, const char *folder)
{
    int saved = errno;
    if (w->fd >= 0)
        close(w->fd);
    w->fd = -1;
    const char *what = lua_pushfstring(L, "cannot watch %s", folder);
    errno = saved;
    return luaL_fileresult(L, 0, what);
}

/* file_watch(path) -> watch | nil, message, errno */
static int loop_file_watch(lua_State *L)
{
    size_t len;
    const char *path = luaL_checklstring(L, 1, &len);
    const char *slash = strrchr(path, '/');
    const char *name = slash ? slash + 1 : path;
    if (*name == '\0')
        return luaL_argerror(L, 1, "a file's path, not a folder's");
    if (!slash)
        lua_pushliteral(L, ".");
    else if (slash == path)
        lua_pushliteral(L, "/");
    else
        lua_pushlstring(L, path, (size_t)(slash - path));
    const char *folder = lua_tostring(L, -1);
    watch *w = lua_newuserdatauv(L, sizeof *w, 1);
    w->fd = -1;
    luaL_setmetatable(L, WATCH_META);
    lua_pushstring(L, name);
    w->name = lua_tolstring(L, -1, &w->len);
    lua_setiuservalue(L, -2, 1);
    w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (w->fd < 0)
        return watch_failed(L, w, folder);
    if (inotify_add_watch(w->fd, folder, IN_MODIFY | IN_CREATE | IN_MOVED_TO) < 0)
        return watch_failed(L, w, folder);
    return 1;
}

static int watch_fd(lua_State *L)
{
    lua_pushinteger(L, check_watch(L)->fd);
    return 1;
}

static int names_the_file(const watch *w, const char *name)
{
    return strncmp(name, w->name, w->len) == 0 && (name[w->len] == '\0' || strcmp(name + w->len, "-wal") == 0);
}

/* watch:changed() -> boolean | nil, message, errno */
static int watch_changed(lua_State *L)
{
    watch *w = check_watch(L);
    union {
        struct inotify_event event;
        char bytes[4096];
    } buf;
    int hit = 0;
    for (;;) {
        ssize_t got = read(w->fd, buf.bytes, sizeof buf.bytes);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            return luaL_fileresult(L, 0, "reading a file watch");
        }
        if (got == 0)
            break;
        for (ssize_t at = 0; at + (ssize_t)sizeof(struct inotify_event) <= got;) {
            struct inotify_event *e = (struct inotify_event *)(buf.bytes + at);
            if ((e->mask & IN_Q_OVERFLOW) || (e->len > 0 && names_the_file(w, e->name)))
                hit = 1;
            at += (ssize_t)(sizeof *e + e->len);
        }
    }
    lua_pushboolean(L, hit);
    return 1;
}

/* watch:close() -> true | nil, message, errno; closing twice does nothing. */
static int watch_close(lua_State *L)
{
    watch *w = luaL_checkudata(L, 1, WATCH_META);
    int fd = w->fd;
    w->fd = -1;
    return luaL_fileresult(L, fd < 0 || close(fd) == 0, "closing a file watch");
}

/* __gc and __close: a collector has no one to tell of a failed close, and
 * Linux releases the descriptor all the same. */
static int watch_release(lua_State *L)
{
    watch *w = luaL_checkudata(L, 1, WATCH_META);
    if (w->fd >= 0)
        (void)close(w->fd);
    w->fd = -1;
    return 0;
}

/* descriptors for specs ------------------------------------------------------ */

static int check_fd(lua_State *L, int arg)
{
    lua_Integer fd = luaL_checkinteger(L, arg);
    luaL_argcheck(L, fd >= 0 && fd <= INT_MAX, arg, "a file descriptor");
    return (int)fd;
}

/* pipe() -> read_fd, write_fd | nil, message, errno */
static int loop_pipe(lua_State *L)
{
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0)
        return luaL_fileresult(L, 0, "pipe");
    lua_pushinteger(L, fds[0]);
    lua_pushinteger(L, fds[1]);
    return 2;
}

/* read(fd [, max]) -> string ("" at the end of file) | nil, message, errno */
static int loop_read(lua_State *L)
{
    int fd = check_fd(L, 1);
    lua_Integer max = luaL_optinteger(L, 2, 65536);
    luaL_argcheck(L, max > 0 && max <= (1 << 24), 2, "between 1 and 16 MiB");
    luaL_Buffer b;
    char *space = luaL_buffinitsize(L, &b, (size_t)max);
    ssize_t got;
    do
        got = read(fd, space, (size_t)max);
    while (got < 0 && errno == EINTR);
    if (got < 0)
        return luaL_fileresult(L, 0, "read");
    luaL_pushresultsize(&b, (size_t)got);
    return 1;
}

/* write(fd, s) -> bytes written | nil, message, errno */
static int loop_write(lua_State *L)
{
    int fd = check_fd(L, 1);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    ssize_t put;
    do
        put = write(fd, s, len);
    while (put < 0 && errno == EINTR);
    if (put < 0)
        return luaL_fileresult(L, 0, "write");
    lua_pushinteger(L, (lua_Integer)put);
    return 1;
}

/* close(fd) -> true | nil, message, errno */
static int loop_close(lua_State *L)
{
    return luaL_fileresult(L, close(check_fd(L, 1)) == 0, "close");
}

void entsync_loop_register(lua_State *L)
{
    if (luaL_newmetatable(L, WATCH_META)) {
        static const luaL_Reg methods[] = {
            {"fd", watch_fd},
            {"changed", watch_changed},
            {"close", watch_close},
            {NULL, NULL},
        };
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, watch_release);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, watch_release);
        lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);
    static const luaL_Reg functions[] = {
        {"wait", loop_wait},
        {"signals_install", signals_install},
        {"signal_handle", signal_handle},
        {"signal_take", signal_take},
        {"signal_pending", signal_pending},
        {"signals_arrived", signals_arrived},
        {"file_watch", loop_file_watch},
        {"pipe", loop_pipe},
        {"read", loop_read},
        {"write", loop_write},
        {"close", loop_close},
        {NULL, NULL},
    };
    luaL_newlib(L, functions);
    lua_setfield(L, -2, "loop");
}
