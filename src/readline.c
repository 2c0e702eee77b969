/*
 * readline: a thin binding of GNU readline for the REPL (see readline.h).
 * readline's own buffers are freed as soon as their text is copied into Lua.
 */
#include "readline.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <readline/history.h>
#include <readline/readline.h>

/* What the line handler received, until feed() hands it over. */
static char *typed_line = NULL;
static int typed = 0; /* 0 nothing yet, 1 a line, 2 end of input */
static int installed = 0;

/* The Lua side of completion: the thread inside feed() and the completer. */
static lua_State *completing_L = NULL;
static int completer_ref = LUA_NOREF;
static char **candidates = NULL;
static size_t candidate_count = 0, candidate_next = 0;

static void free_candidates(void)
{
    for (size_t i = 0; i < candidate_count; i++)
        free(candidates[i]);
    free(candidates);
    candidates = NULL;
    candidate_count = candidate_next = 0;
}

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

/* The callback interface's line handler: keeps the line and lets go of
 * the terminal, so what the line prints comes before the next prompt. */
static void on_line(char *line)
{
    free(typed_line);
    typed_line = line;
    typed = line ? 1 : 2;
    rl_callback_handler_remove();
    installed = 0;
}

static int rl_start(lua_State *L)
{
    const char *prompt = luaL_optstring(L, 1, "> ");
    rl_catch_signals = 0;
    rl_catch_sigwinch = 0;
    free(typed_line);
    typed_line = NULL;
    typed = 0;
    rl_callback_handler_install(prompt, on_line);
    installed = 1;
    return 0;
}

/* feed() -> line | nil (not yet) | false (end of input) */
static int rl_feed(lua_State *L)
{
    if (installed && !typed) {
        completing_L = L;
        rl_callback_read_char();
        completing_L = NULL;
    }
    if (typed == 1) {
        lua_pushstring(L, typed_line ? typed_line : "");
        free(typed_line);
        typed_line = NULL;
        typed = 0;
        return 1;
    }
    if (typed == 2 || !installed) {
        typed = 0;
        lua_pushboolean(L, 0);
        return 1;
    }
    lua_pushnil(L);
    return 1;
}

/* cancel(prompt): Ctrl-C: the line being typed is dropped and a fresh
 * prompt shown. Called from a task, never from the signal handler. */
static int rl_cancel(lua_State *L)
{
    const char *prompt = luaL_optstring(L, 1, "> ");
    if (!installed)
        return 0;
    rl_replace_line("", 0);
    rl_point = rl_end = 0;
    rl_crlf();
    rl_set_prompt(prompt);
    rl_on_new_line();
    rl_redisplay();
    return 0;
}

static int rl_stop(lua_State *L)
{
    (void)L;
    if (installed) {
        rl_callback_handler_remove();
        installed = 0;
    }
    return 0;
}

static char *next_candidate(const char *text, int state)
{
    (void)text;
    if (state == 0)
        candidate_next = 0;
    if (candidate_next >= candidate_count)
        return NULL;
    return strdup(candidates[candidate_next++]);
}

typedef struct {
    const char *text;
    int start;
} completion_call;

/* Calls the completer and copies its answer into `candidates`; under
 * lua_pcall, so no Lua error unwinds through readline. */
static int protected_complete(lua_State *L)
{
    completion_call *call = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, completer_ref);
    lua_pushstring(L, call->text);
    lua_pushlstring(L, rl_line_buffer, (size_t)call->start);
    lua_call(L, 2, 1);
    if (!lua_istable(L, -1))
        return 0;
    lua_Integer n = luaL_len(L, -1);
    if (n <= 0)
        return 0;
    candidates = calloc((size_t)n, sizeof *candidates);
    if (!candidates)
        return luaL_error(L, "completion: out of memory");
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        const char *s = lua_tostring(L, -1);
        if (s && (candidates[candidate_count] = strdup(s)) != NULL)
            candidate_count++;
        lua_pop(L, 1);
    }
    return 0;
}

static char **complete(const char *text, int start, int end)
{
    (void)end;
    rl_attempted_completion_over = 1; /* never fall back to file names */
    rl_completion_append_character = '\0';
    lua_State *L = completing_L;
    if (!L || completer_ref == LUA_NOREF)
        return NULL;
    completion_call call = {text, start};
    int top = lua_gettop(L);
    free_candidates();
    lua_pushcfunction(L, protected_complete);
    lua_pushlightuserdata(L, &call);
    int rc = lua_pcall(L, 1, 0, 0);
    lua_settop(L, top);
    char **matches = NULL;
    if (rc == LUA_OK && candidate_count > 0)
        matches = rl_completion_matches(text, next_candidate);
    free_candidates();
    return matches;
}

static int rl_set_completer(lua_State *L)
{
    if (completer_ref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, completer_ref);
        completer_ref = LUA_NOREF;
    }
    if (!lua_isnoneornil(L, 1)) {
        luaL_checktype(L, 1, LUA_TFUNCTION);
        lua_pushvalue(L, 1);
        completer_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        rl_attempted_completion_function = complete;
    } else {
        rl_attempted_completion_function = NULL;
    }
    return 0;
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
        {"start", rl_start},
        {"feed", rl_feed},
        {"cancel", rl_cancel},
        {"stop", rl_stop},
        {"set_completer", rl_set_completer},
        {"add_history", rl_add_history},
        {"read_history", rl_read_history},
        {"write_history", rl_write_history},
        {NULL, NULL},
    };
    luaL_newlib(L, functions);
    lua_setfield(L, -2, "readline");
}
