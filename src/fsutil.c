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
#include <lualib.h>
#include <stdio.h>
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

static const char *type_name(mode_t mode)
{
    if (S_ISREG(mode))
        return "file";
    if (S_ISDIR(mode))
        return "dir";
    if (S_ISLNK(mode))
        return "link";
    if (S_ISFIFO(mode))
        return "fifo";
    if (S_ISSOCK(mode))
        return "socket";
    if (S_ISCHR(mode))
        return "char device";
    if (S_ISBLK(mode))
        return "block device";
    return "other";
}

/* lstat(path) -> { type, size, mtime } | nil, err. type is "file", "dir",
 * "link" (the link itself, never its target), "fifo", "socket", "char
 * device", "block device" or "other"; mtime in seconds since the epoch
 * with its nanoseconds. */
static int fs_lstat(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    struct stat st;
    if (lstat(path, &st) != 0)
        return push_errno(L, "cannot stat", path);
    lua_createtable(L, 0, 3);
    lua_pushstring(L, type_name(st.st_mode));
    lua_setfield(L, -2, "type");
    lua_pushinteger(L, (lua_Integer)st.st_size);
    lua_setfield(L, -2, "size");
    lua_pushnumber(L, (lua_Number)st.st_mtim.tv_sec + (lua_Number)st.st_mtim.tv_nsec / 1e9);
    lua_setfield(L, -2, "mtime");
    return 1;
}

static int stream_close(lua_State *L)
{
    luaL_Stream *stream = luaL_checkudata(L, 1, LUA_FILEHANDLE);
    int ok = fclose(stream->f) == 0;
    return luaL_fileresult(L, ok, NULL);
}

/* open_file(path, follow) -> file (a Lua file handle, read-only) | nil,
 * err. Only a regular file opens: a FIFO or a device is refused without
 * blocking (O_NONBLOCK while it is looked at), and unless follow a
 * symbolic link is refused too (O_NOFOLLOW), even one swapped in after
 * the folder was listed. */
static int fs_open_file(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    int follow = lua_toboolean(L, 2);
    luaL_Stream *stream = lua_newuserdatauv(L, sizeof *stream, 0);
    stream->f = NULL;
    stream->closef = NULL; /* not yet a file to close */
    luaL_setmetatable(L, LUA_FILEHANDLE);
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW));
    struct stat st;
    if (fd < 0) {
        if (errno == ELOOP) {
            lua_pushnil(L);
            lua_pushfstring(L, "cannot open %s: a symbolic link (files of a drop folder are read only as "
                               "regular files inside it)", path);
            return 2;
        }
        return push_errno(L, "cannot open", path);
    }
    if (fstat(fd, &st) != 0)
        goto error;
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        lua_pushnil(L);
        lua_pushfstring(L, "cannot open %s: not a regular file (a %s)", path, type_name(st.st_mode));
        return 2;
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0)
        goto error;
    stream->f = fdopen(fd, "rb");
    if (!stream->f)
        goto error;
    stream->closef = stream_close;
    return 1;
error:;
    int saved = errno;
    close(fd);
    errno = saved;
    return push_errno(L, "cannot open", path);
}

/* Makes room for len + more + 1 bytes in *line. Returns 0, or -1 out of
 * memory (errno ENOMEM). */
static int line_reserve(char **line, size_t *cap, size_t len, size_t more)
{
    if (len + more + 1 <= *cap)
        return 0;
    size_t grown_cap = *cap ? *cap : 256;
    while (grown_cap < len + more + 1)
        grown_cap *= 2;
    char *grown = realloc(*line, grown_cap);
    if (!grown) {
        errno = ENOMEM;
        return -1;
    }
    *line = grown;
    *cap = grown_cap;
    return 0;
}

/* The bytes f has read ahead and not yet handed out, at *bytes: their
 * count, 0 when its buffer is empty. The line reader scans them with
 * memchr and takes them at once, as getline does inside glibc, instead of
 * a getc per byte (ten times the instructions on an unchanged re-import,
 * where reading lines is most of the work). Elsewhere than glibc nothing
 * is read ahead here and each byte comes through getc. */
static size_t read_ahead(FILE *f, const char **bytes)
{
#ifdef __GLIBC__
    *bytes = f->_IO_read_ptr;
    return f->_IO_read_ptr < f->_IO_read_end ? (size_t)(f->_IO_read_end - f->_IO_read_ptr) : 0;
#else
    (void)f;
    *bytes = NULL;
    return 0;
#endif
}

/* Hands out the first n bytes that read_ahead showed. */
static void consume_ahead(FILE *f, size_t n)
{
#ifdef __GLIBC__
    f->_IO_read_ptr += n;
#else
    (void)f;
    (void)n;
#endif
}

/* Keeps the first bytes of span that fit under max, counts the rest as
 * dropped. Returns 0, or -1 out of memory. */
static int line_keep(char **line, size_t *cap, size_t *len, size_t max, size_t *dropped, const char *span, size_t n)
{
    size_t keep = *len < max ? max - *len : 0;
    if (keep > n)
        keep = n;
    if (keep) {
        if (line_reserve(line, cap, *len, keep) != 0)
            return -1;
        memcpy(*line + *len, span, keep);
        *len += keep;
    }
    *dropped += n - keep;
    return 0;
}

ssize_t entsync_read_line(FILE *f, char **line, size_t *cap, size_t max, size_t *dropped)
{
    size_t len = 0;
    int done = 0;
    *dropped = 0;
    flockfile(f);
    while (!done) {
        const char *bytes;
        size_t n = read_ahead(f, &bytes);
        if (n) {
            const char *nl = memchr(bytes, '\n', n);
            if (nl) {
                n = (size_t)(nl - bytes) + 1;
                done = 1;
            }
            if (line_keep(line, cap, &len, max, dropped, bytes, n) != 0)
                goto error;
            consume_ahead(f, n);
            continue;
        }
        int c = getc_unlocked(f); /* refills the buffer, or the end */
        if (c == EOF)
            break;
        char byte = (char)c;
        done = c == '\n';
        if (line_keep(line, cap, &len, max, dropped, &byte, 1) != 0)
            goto error;
    }
    funlockfile(f);
    if (len == 0 && *dropped == 0)
        return -1;
    if (*dropped)
        *dropped += len;
    else if (line_reserve(line, cap, len, 0) == 0)
        (*line)[len] = '\0';
    else
        return -2;
    return (ssize_t)len;
error:
    funlockfile(f);
    return -2;
}

/* read_line(file, max [, keep_newline]) -> line | nil at the end | false,
 * bytes: the next line, with its "\n" only when keep_newline (as the "L"
 * and "l" formats of file:read); a line longer than max bytes is read on
 * to its end in bounded memory and passed over: false and its length. */
static int fs_read_line(lua_State *L)
{
    luaL_Stream *stream = luaL_checkudata(L, 1, LUA_FILEHANDLE);
    lua_Integer max = luaL_checkinteger(L, 2);
    luaL_argcheck(L, max > 0, 2, "max must be positive");
    int keep_newline = lua_toboolean(L, 3);
    if (!stream->closef || !stream->f)
        return luaL_error(L, "read_line: the file is closed");
    char *line = NULL;
    size_t cap = 0, dropped = 0;
    ssize_t len = entsync_read_line(stream->f, &line, &cap, (size_t)max, &dropped);
    if (len == -2) {
        free(line);
        return luaL_error(L, "read_line: out of memory");
    }
    if (len == -1)
        lua_pushnil(L);
    else if (dropped) {
        lua_pushboolean(L, 0);
        lua_pushinteger(L, (lua_Integer)dropped);
        free(line);
        return 2;
    } else {
        if (!keep_newline && len > 0 && line[len - 1] == '\n')
            len--;
        lua_pushlstring(L, line, (size_t)len);
    }
    free(line);
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
        {"lstat", fs_lstat},   {"open_file", fs_open_file},
        {"read_line", fs_read_line},
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
