/*
 * fsutil: directory listing in name order, directory creation, atomic
 * renames made durable, and process facts (pid, host, clock).
 */
#include "fsutil.h"

#include "loop.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int push_errno(lua_State *L, const char *what, const char *path)
{
    lua_pushnil(L);
    lua_pushfstring(L, "%s %s: %s", what, path, strerror(errno));
    return 2;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* listdir(path) -> { names sorted bytewise } | nil, err. Hidden entries
 * (leading dot) are skipped: editors and rsync leave temporary files so. */
static int fs_listdir(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    DIR *dir = opendir(path);
    if (!dir)
        return push_errno(L, "cannot list", path);
    size_t count = 0, cap = 16;
    char **names = malloc(cap * sizeof *names);
    int out_of_memory = names == NULL, read_errno = 0;
    struct dirent *entry;
    /* readdir says end and failure both with NULL; only errno tells them apart */
    while (!out_of_memory && (errno = 0, entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] == '.')
            continue;
        if (count == cap) {
            char **grown = realloc(names, 2 * cap * sizeof *names);
            if (!grown) {
                out_of_memory = 1;
                break;
            }
            names = grown;
            cap *= 2;
        }
        names[count] = strdup(entry->d_name);
        if (!names[count]) {
            out_of_memory = 1;
            break;
        }
        count++;
    }
    if (!out_of_memory)
        read_errno = errno;
    closedir(dir);
    /* A partial listing would leave files silently unread: fail instead. */
    if (out_of_memory || read_errno) {
        for (size_t i = 0; i < count; i++)
            free(names[i]);
        free(names);
        if (read_errno) {
            errno = read_errno;
            return push_errno(L, "cannot list", path);
        }
        return luaL_error(L, "out of memory listing %s", path);
    }
    qsort(names, count, sizeof *names, compare_names);
    lua_createtable(L, (int)count, 0);
    for (size_t i = 0; i < count; i++) {
        lua_pushstring(L, names[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
        free(names[i]);
    }
    free(names);
    return 1;
}

static int fs_isdir(lua_State *L)
{
    struct stat st;
    const char *path = luaL_checkstring(L, 1);
    lua_pushboolean(L, stat(path, &st) == 0 && S_ISDIR(st.st_mode));
    return 1;
}

/* exists(path) -> size | false */
static int fs_exists(lua_State *L)
{
    struct stat st;
    const char *path = luaL_checkstring(L, 1);
    if (stat(path, &st) == 0)
        lua_pushinteger(L, (lua_Integer)st.st_size);
    else
        lua_pushboolean(L, 0);
    return 1;
}

/* mkdir(path) -> true | nil, err; an existing directory is success. */
static int fs_mkdir(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    if (mkdir(path, 0777) != 0 && errno != EEXIST)
        return push_errno(L, "cannot create", path);
    lua_pushboolean(L, 1);
    return 1;
}

static int sync_dir_of(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return -1;
    char *slash = strrchr(copy, '/');
    const char *dir = ".";
    if (slash == copy)
        dir = "/";
    else if (slash) {
        *slash = '\0';
        dir = copy;
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    int rc = fd < 0 ? -1 : fsync(fd);
    if (fd >= 0)
        close(fd);
    free(copy);
    return rc;
}

/* rename(from, to) -> true | nil, err. The target directory is synced so a
 * moved file is not found back in its drop folder after a power loss. */
static int fs_rename(lua_State *L)
{
    const char *from = luaL_checkstring(L, 1);
    const char *to = luaL_checkstring(L, 2);
    if (rename(from, to) != 0)
        return push_errno(L, "cannot move", from);
    if (sync_dir_of(to) != 0 || sync_dir_of(from) != 0)
        return push_errno(L, "cannot sync directory of", to);
    lua_pushboolean(L, 1);
    return 1;
}

static int fs_getpid(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)getpid());
    return 1;
}

static int fs_hostname(lua_State *L)
{
    char name[256];
    if (gethostname(name, sizeof name) != 0)
        strcpy(name, "localhost");
    name[sizeof name - 1] = '\0';
    lua_pushstring(L, name);
    return 1;
}

/* now() -> seconds since the epoch, with sub-second precision. */
static int fs_now(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

/* monotonic() -> seconds on a clock that never jumps, for rates and ETAs. */
static int fs_monotonic(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

static int fs_sleep(lua_State *L)
{
    lua_Number seconds = luaL_checknumber(L, 1);
    if (seconds > 0) {
        struct timespec ts;
        ts.tv_sec = (time_t)seconds;
        ts.tv_nsec = (long)((seconds - (lua_Number)ts.tv_sec) * 1e9);
        /* A signal the daemon handles ends the sleep: it has work to do. */
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !entsync_loop_interrupted())
            ;
    }
    return 0;
}

/* process_alive(pid) -> boolean: kill(pid, 0) says whether it exists. */
static int fs_process_alive(lua_State *L)
{
    lua_Integer pid = luaL_checkinteger(L, 1);
    int alive = pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM);
    lua_pushboolean(L, alive);
    return 1;
}

/* cwd() -> the current directory, to make job paths absolute. */
static int fs_cwd(lua_State *L)
{
    char *dir = getcwd(NULL, 0);
    if (!dir)
        return push_errno(L, "cannot read", "the current directory");
    lua_pushstring(L, dir);
    free(dir);
    return 1;
}

/* isatty(fd) -> boolean, for the progress line. */
static int fs_isatty(lua_State *L)
{
    lua_pushboolean(L, isatty((int)luaL_optinteger(L, 1, 1)));
    return 1;
}

void entsync_fsutil_register(lua_State *L)
{
    static const luaL_Reg fs_functions[] = {
        {"exists", fs_exists}, {"isdir", fs_isdir},
        {"mkdir", fs_mkdir},   {"listdir", fs_listdir},
        {"rename", fs_rename}, {"cwd", fs_cwd},
        {NULL, NULL},
    };
    static const luaL_Reg sys_functions[] = {
        {"getpid", fs_getpid},       {"hostname", fs_hostname},
        {"now", fs_now},             {"monotonic", fs_monotonic},
        {"sleep", fs_sleep},         {"process_alive", fs_process_alive},
        {"isatty", fs_isatty},       {NULL, NULL},
    };
    luaL_newlib(L, fs_functions);
    lua_setfield(L, -2, "fs");
    luaL_newlib(L, sys_functions);
    lua_setfield(L, -2, "sys");
}
