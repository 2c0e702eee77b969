/*
 * marks: the order of changed marks and ids (see marks.h).
 */
#include "marks.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* tonumber of a string: 1 with *out set when Lua reads it as a number. */
static int string_number(lua_State *L, const char *s, size_t len, entsync_mark *out)
{
    /* only these bytes make up a Lua numeral (decimal or hex, with its
     * exponent and the spaces around it): a timestamp's 'T' or ':' is
     * none, and most marks are told apart here */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == 'x' || c == 'X' ||
              c == 'p' || c == 'P' || c == '.' || c == '+' || c == '-' || c == ' ' || (c >= '\t' && c <= '\r')))
            return 0;
    }
    char small[64];
    char *text = len < sizeof small ? small : malloc(len + 1);
    if (!text)
        return 0;
    memcpy(text, s, len);
    text[len] = '\0';
    int ok = strlen(text) == len && lua_stringtonumber(L, text) != 0;
    if (text != small)
        free(text);
    if (!ok)
        return 0;
    out->type = LUA_TNUMBER;
    out->integer = lua_isinteger(L, -1);
    out->i = (long long)lua_tointeger(L, -1);
    out->d = (double)lua_tonumber(L, -1);
    lua_pop(L, 1);
    return 1;
}

static int compare_numbers(const entsync_mark *a, const entsync_mark *b)
{
    if (a->integer && b->integer)
        return (a->i > b->i) - (a->i < b->i);
    double x = a->integer ? (double)a->i : a->d, y = b->integer ? (double)b->i : b->d;
    return (x > y) - (x < y);
}

int entsync_bytes_compare(const char *a, size_t alen, const char *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    if (c)
        return c < 0 ? -1 : 1;
    return (alen > blen) - (alen < blen);
}

/* tostring of a mark, into text (a string's own bytes otherwise). */
static void mark_text(lua_State *L, const entsync_mark *v, const char **s, size_t *len, char *text, size_t size)
{
    if (v->type == LUA_TSTRING) {
        *s = v->s;
        *len = v->len;
    } else if (v->integer) {
        *len = (size_t)snprintf(text, size, "%lld", v->i);
        *s = text;
    } else {
        lua_pushnumber(L, v->d);
        const char *t = lua_tolstring(L, -1, len);
        snprintf(text, size, "%s", t);
        lua_pop(L, 1);
        *s = text;
    }
}

/* compare_scalar: equal values 0; two numbers, or two strings Lua reads as
 * numbers, by value; anything else by text. */
int entsync_mark_compare(lua_State *L, const entsync_mark *a, const entsync_mark *b)
{
    if (a->type == LUA_TNUMBER && b->type == LUA_TNUMBER)
        return compare_numbers(a, b);
    if (a->type == LUA_TSTRING && b->type == LUA_TSTRING) {
        if (a->len == b->len && memcmp(a->s, b->s, a->len) == 0)
            return 0;
        entsync_mark na, nb;
        if (string_number(L, a->s, a->len, &na) && string_number(L, b->s, b->len, &nb))
            return compare_numbers(&na, &nb);
    }
    char ta[64], tb[64];
    const char *sa, *sb;
    size_t la, lb;
    mark_text(L, a, &sa, &la, ta, sizeof ta);
    mark_text(L, b, &sb, &lb, tb, sizeof tb);
    return entsync_bytes_compare(sa, la, sb, lb);
}

/* A mark as the sync's changed_kind compares it ("text": its text). */
entsync_mark entsync_mark_as_kind(lua_State *L, int kind_text, entsync_mark v, char *text, size_t size)
{
    if (kind_text && v.type == LUA_TNUMBER) {
        entsync_mark t = {LUA_TSTRING, 0, 0, 0, NULL, 0};
        mark_text(L, &v, &t.s, &t.len, text, size);
        return t;
    }
    return v;
}

int entsync_id_is_integer(const char *s, size_t len)
{
    if (len == 0 || len >= 19)
        return 0;
    size_t i = s[0] == '-';
    if (i == len)
        return 0;
    for (; i < len; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

long long entsync_id_value(const char *s, size_t len)
{
    size_t i = s[0] == '-';
    long long n = 0;
    for (; i < len; i++)
        n = n * 10 + (s[i] - '0');
    return s[0] == '-' ? -n : n;
}

entsync_id entsync_id_of(const char *s, size_t len)
{
    entsync_id id = {s, len, entsync_id_is_integer(s, len), 0};
    if (id.integer)
        id.i = entsync_id_value(s, len);
    return id;
}

const char *entsync_id_text(const entsync_id *id, char text[24], size_t *len)
{
    if (id->s) {
        *len = id->len;
        return id->s;
    }
    *len = (size_t)snprintf(text, 24, "%lld", id->i);
    return text;
}

int entsync_id_compare(const entsync_id *a, const entsync_id *b)
{
    if (a->integer && b->integer)
        return (a->i > b->i) - (a->i < b->i);
    char ta[24], tb[24];
    size_t la, lb;
    const char *sa = entsync_id_text(a, ta, &la), *sb = entsync_id_text(b, tb, &lb);
    return entsync_bytes_compare(sa, la, sb, lb);
}

/* cursor.compare(mark_a, id_a, mark_b, id_b, kind); a nil mark first. */
int entsync_cursor_compare(lua_State *L, int kind_text, const entsync_mark *ma, const entsync_id *ia,
                           const entsync_mark *mb, const entsync_id *ib)
{
    if (ma->type == LUA_TNIL || mb->type == LUA_TNIL) {
        if (ma->type != LUA_TNIL)
            return 1;
        if (mb->type != LUA_TNIL)
            return -1;
    } else {
        char ta[40], tb[40];
        entsync_mark ka = *ma, kb = *mb;
        if (kind_text) { /* else each mark compares as it is */
            ka = entsync_mark_as_kind(L, kind_text, ka, ta, sizeof ta);
            kb = entsync_mark_as_kind(L, kind_text, kb, tb, sizeof tb);
        }
        int c = entsync_mark_compare(L, &ka, &kb);
        if (c)
            return c;
    }
    return entsync_id_compare(ia, ib);
}

/* A Lua value at idx as a mark; 0 for a value no mark here is. */
int entsync_mark_from_lua(lua_State *L, int idx, entsync_mark *v)
{
    memset(v, 0, sizeof *v);
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        v->type = LUA_TNIL;
        return 1;
    case LUA_TNUMBER:
        v->type = LUA_TNUMBER;
        v->integer = lua_isinteger(L, idx);
        v->i = (long long)lua_tointeger(L, idx);
        v->d = (double)lua_tonumber(L, idx);
        return 1;
    case LUA_TSTRING:
        v->type = LUA_TSTRING;
        v->s = lua_tolstring(L, idx, &v->len);
        return 1;
    default:
        return 0;
    }
}
