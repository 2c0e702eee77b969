/*
 * loop: signal flags for the daemon.
 *
 * Handlers only count arrivals (async-signal-safe); the Lua loop takes
 * them between batches, so a run stops at a checkpoint, never in the
 * middle of a transaction. Handlers are installed without SA_RESTART so a
 * sleep or a poll returns early when a signal comes.
 */
#include "loop.h"

#include <lauxlib.h>
#include <signal.h>
#include <string.h>

static volatile sig_atomic_t arrivals[3];
static const struct {
    const char *name;
    int number;
} handled[3] = {{"TERM", SIGTERM}, {"INT", SIGINT}, {"HUP", SIGHUP}};

static void on_signal(int number)
{
    for (int i = 0; i < 3; i++)
        if (handled[i].number == number)
            arrivals[i]++;
}

int entsync_loop_interrupted(void)
{
    for (int i = 0; i < 3; i++)
        if (arrivals[i])
            return 1;
    return 0;
}

static int find_signal(const char *name)
{
    for (int i = 0; i < 3; i++)
        if (strcmp(handled[i].name, name) == 0)
            return i;
    return -1;
}

/* signals_install() installs the handlers for TERM, INT and HUP. */
static int signals_install(lua_State *L)
{
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal;
    sigemptyset(&action.sa_mask);
    for (int i = 0; i < 3; i++)
        if (sigaction(handled[i].number, &action, NULL) != 0)
            return luaL_error(L, "cannot handle SIG%s", handled[i].name);
    return 0;
}

/* signal_take(name) -> how many times it arrived since the last take */
static int signal_take(lua_State *L)
{
    int i = find_signal(luaL_checkstring(L, 1));
    if (i < 0)
        return luaL_argerror(L, 1, "TERM, INT or HUP");
    lua_Integer count = arrivals[i];
    arrivals[i] = 0;
    lua_pushinteger(L, count);
    return 1;
}

/* signal_pending(name) -> true if it arrived and was not taken */
static int signal_pending(lua_State *L)
{
    int i = find_signal(luaL_checkstring(L, 1));
    if (i < 0)
        return luaL_argerror(L, 1, "TERM, INT or HUP");
    lua_pushboolean(L, arrivals[i] != 0);
    return 1;
}

void entsync_loop_register(lua_State *L)
{
    static const luaL_Reg functions[] = {
        {"signals_install", signals_install},
        {"signal_take", signal_take},
        {"signal_pending", signal_pending},
        {NULL, NULL},
    };
    luaL_newlib(L, functions);
    lua_setfield(L, -2, "loop");
}
