/*
 * readline: a thin binding of GNU readline for the REPL. readline's own
 * buffers are freed as soon as their text is copied into Lua.
 */
#include "readline.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>

#include <readline/history.h>
#include <readline/readline.h>

/* read(prompt) -> line | nil at end of input */
static int rl_read(lua_State *L)
{
    const char *prompt = luaL_optstring(L, 1, "> ");
    char *line = readline(prompt);
    if (!line) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushstring(L, line);
    free(line);
    return 1;
}

static int rl_add_history(lua_State *L)
{
    const char *line = luaL_checkstring(L, 1);
    if (*line)
        add_history(line);
    return 0;
}

/* read_history(path) -> true | false: a missing file is no error */
static int rl_read_history(lua_State *L)
{
    lua_pushboolean(L, read_history(luaL_checkstring(L, 1)) == 0);
    return 1;
}

static int rl_write_history(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lua_Integer keep = luaL_optinteger(L, 2, 1000);
    int ok = write_history(path) == 0;
    if (ok)
        history_truncate_file(path, (int)keep);
    lua_pushboolean(L, ok);
    return 1;
}

void entsync_readline_register(lua_State *L)
{
    static const luaL_Reg functions[] = {
        {"read", rl_read},
        {"add_history", rl_add_history},
        {"read_history", rl_read_history},
        {"write_history", rl_write_history},
        {NULL, NULL},
    };
    luaL_newlib(L, functions);
    lua_setfield(L, -2, "readline");
}
