/*
 * entsync-run: the host. It builds the Lua state (standard libraries,
 * lua-cjson, entsync.core preloaded), points package.path at the job's
 * folder and then at entsync's own Lua, and hands the command line to
 * entsync.cli, whose return value is the exit status.
 *
 * Exit statuses: 0 success, 1 the run finished but entities failed,
 * 2 usage or configuration error, 3 a lock is held by another run,
 * 4 an internal error.
 */
#include "core.h"

#include <lauxlib.h>
#include <limits.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define EXIT_INTERNAL 4

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Finds entsync's Lua tree: $ENTSYNC_HOME, else the first ancestor of the
 * binary's folder holding lua/entsync/cli.lua (a build tree), else
 * <prefix>/share/entsync (an installed tree). */
static int find_root(char *root, size_t size)
{
    char probe[PATH_MAX + 64];
    const char *home = getenv("ENTSYNC_HOME");
    if (home && *home) {
        snprintf(root, size, "%s", home);
        return 1;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return 0;
    exe[n] = '\0';
    char *slash;
    for (int up = 0; up < 4 && (slash = strrchr(exe, '/')) != NULL; up++) {
        *slash = '\0';
        snprintf(probe, sizeof probe, "%s/lua/entsync/cli.lua", exe);
        if (file_exists(probe)) {
            snprintf(root, size, "%s", exe);
            return 1;
        }
        snprintf(probe, sizeof probe, "%s/share/entsync/lua/entsync/cli.lua", exe);
        if (file_exists(probe) && strlen(exe) + sizeof "/share/entsync" <= size) {
            memcpy(root, exe, strlen(exe));
            memcpy(root + strlen(exe), "/share/entsync", sizeof "/share/entsync");
            return 1;
        }
    }
    return 0;
}

/* The options that take a value (entsync.usage lists them all). */
static int takes_value(const char *arg)
{
    static const char *const with_value[] = {"--wait",  "--log-format", "--where",          "-e",
                                             "--limit", "--max-age",    "--progress-every", "--listen"};
    for (size_t i = 0; i < sizeof with_value / sizeof with_value[0]; i++)
        if (strcmp(arg, with_value[i]) == 0)
            return 1;
    return 0;
}

/* The job file is the first argument that is neither an option nor the
 * value of one (entsync.cli parses the rest). */
static const char *job_argument(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (takes_value(argv[i])) {
            i++;
            continue;
        }
        if (argv[i][0] != '-')
            return argv[i];
    }
    return NULL;
}

/* Sets package.path: the job's folder first, then entsync's lua/,
 * providers/ and mappings/, then the root (for "providers.x" and
 * "mappings.x"), then Lua's defaults. */
static void set_package_path(lua_State *L, const char *root, const char *job)
{
    lua_getglobal(L, "package");
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    if (job) {
        const char *slash = strrchr(job, '/');
        if (slash) {
            lua_pushlstring(L, job, (size_t)(slash - job));
            lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", lua_tostring(L, -1), lua_tostring(L, -1));
            lua_remove(L, -2);
        } else {
            lua_pushliteral(L, "./?.lua;./?/init.lua;");
        }
        luaL_addvalue(&b);
    }
    lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;%s/providers/?.lua;%s/mappings/?.lua;%s/?.lua;",
                    root, root, root, root, root);
    luaL_addvalue(&b);
    lua_getfield(L, -2, "path");
    luaL_addvalue(&b);
    luaL_pushresult(&b);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, root);
    lua_setfield(L, -2, "entsync_root");
    lua_pop(L, 1);
}

static void preload_core(lua_State *L)
{
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_entsync_core);
    lua_setfield(L, -2, "entsync.core");
    lua_pop(L, 1);
}

static int traceback(lua_State *L)
{
    if (lua_type(L, 1) != LUA_TSTRING && !luaL_callmeta(L, 1, "__tostring")) {
        if (lua_istable(L, 1)) {
            lua_getfield(L, 1, "message");
            if (!lua_isstring(L, -1))
                lua_pushliteral(L, "(error object is a table without a message)");
        } else {
            lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
        }
    }
    luaL_traceback(L, L, lua_tostring(L, -1), 1);
    return 1;
}

/* Runs entsync.cli.main(args) and returns its exit status. */
static int run_cli(lua_State *L, int argc, char **argv, int verbose)
{
    lua_pushcfunction(L, traceback);
    int handler = lua_gettop(L);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "entsync.cli");
    if (lua_pcall(L, 1, 1, handler) != LUA_OK)
        goto failed;
    lua_getfield(L, -1, "main");
    lua_createtable(L, argc, 0);
    for (int i = 1; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i);
    }
    if (lua_pcall(L, 1, 1, handler) != LUA_OK)
        goto failed;
    return lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) : 0;

failed: {
        const char *message = lua_tostring(L, -1);
        if (!message)
            message = "(no message)";
        if (verbose) {
            fprintf(stderr, "entsync-run: internal error: %s\n", message);
        } else {
            const char *end = strchr(message, '\n');
            fprintf(stderr, "entsync-run: internal error: %.*s\n(run with --verbose for a traceback)\n",
                    end ? (int)(end - message) : (int)strlen(message), message);
        }
        return EXIT_INTERNAL;
    }
}

/* entsync-run --script FILE [ARGS]: runs a Lua script the way lua5.4 does
 * (arg table, exit status), with entsync.core preloaded. `make asan` runs
 * busted so, inside the sanitized binary: the sanitizer runtime comes with
 * the executable and need not be preloaded into every child process. */
static int run_script(lua_State *L, int argc, char **argv)
{
    lua_createtable(L, argc, 1);
    for (int i = 2; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - 2);
    }
    lua_setglobal(L, "arg");
    lua_pushcfunction(L, traceback);
    int handler = lua_gettop(L);
    if (luaL_loadfile(L, argv[2]) != LUA_OK) {
        fprintf(stderr, "entsync-run: %s\n", lua_tostring(L, -1));
        return EXIT_INTERNAL;
    }
    for (int i = 3; i < argc; i++)
        lua_pushstring(L, argv[i]);
    if (lua_pcall(L, argc - 3, 0, handler) != LUA_OK) {
        fprintf(stderr, "entsync-run: %s\n", lua_tostring(L, -1));
        return EXIT_INTERNAL;
    }
    return 0;
}

int main(int argc, char **argv)
{
    char root[PATH_MAX];
    if (!find_root(root, sizeof root)) {
        fprintf(stderr, "entsync-run: cannot find entsync's Lua files (lua/entsync/cli.lua); "
                        "set ENTSYNC_HOME to the folder that holds lua/\n");
        return EXIT_INTERNAL;
    }
    int verbose = 0;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--verbose") == 0 || strcmp(argv[i], "-v") == 0)
            verbose = 1;

    lua_State *L = luaL_newstate();
    if (!L) {
        fprintf(stderr, "entsync-run: cannot create the Lua state: out of memory\n");
        return EXIT_INTERNAL;
    }
    luaL_openlibs(L);
    preload_core(L);
    if (argc >= 3 && strcmp(argv[1], "--script") == 0) {
        int status = run_script(L, argc, argv);
        lua_close(L);
        return status;
    }
    set_package_path(L, root, job_argument(argc, argv));
    int status = run_cli(L, argc, argv, verbose);
    fflush(stdout);
    lua_close(L);
    return status;
}
