/*
 * marks: changed marks and remote ids ordered as lua/entsync/cursor.lua
 * orders them, for the C record path (record.c), which keeps a run's
 * cursor and checks records against it without calling Lua.
 *
 * A mark is nil, a number or a string (a view of bytes it does not own).
 * Marks compare as cursor.lua's compare_scalar: two numbers, or two
 * strings Lua reads as numbers, by value; anything else by its text
 * (tostring), bytewise. With changed_kind "text" (kind_text) numbers
 * compare as their text. Ids compare as numbers when both are integers'
 * text (fewer than 19 bytes), else bytewise. A pair (mark, id) compares
 * by its mark, a nil mark first, then by its id.
 */
#ifndef ENTSYNC_MARKS_H
#define ENTSYNC_MARKS_H

#include <lua.h>
#include <stddef.h>

typedef struct entsync_mark {
    int type; /* LUA_TNIL, LUA_TNUMBER or LUA_TSTRING */
    int integer;
    long long i;
    double d;
    const char *s;
    size_t len;
} entsync_mark;

/* The value at idx as a mark; 0 when it is not nil, a number or a string. */
int entsync_mark_from_lua(lua_State *L, int idx, entsync_mark *v);

/* -1, 0 or 1, as cursor.lua's compare_scalar. L converts numbers to text
 * and text to numbers as Lua does (nothing is left on its stack). */
int entsync_mark_compare(lua_State *L, const entsync_mark *a, const entsync_mark *b);

/* The mark as changed_kind compares it: with kind_text a number becomes
 * its text, written into text (size >= 40). */
entsync_mark entsync_mark_as_kind(lua_State *L, int kind_text, entsync_mark v, char *text, size_t size);

/* Whether s is the text of an integer id (ids compare as numbers then). */
int entsync_id_is_integer(const char *s, size_t len);

/* The value of an integer id's text (entsync_id_is_integer), read to its
 * length only: an id's bytes need not end in a NUL. */
long long entsync_id_value(const char *s, size_t len);

/* An id's text with its value read once, for comparing it with many:
 * integer is entsync_id_is_integer's answer and i the value then. An
 * integer's id may come with no text (s NULL): its text is then i's
 * decimal digits, written only where bytes are compared. */
typedef struct entsync_id {
    const char *s;
    size_t len;
    int integer;
    long long i;
} entsync_id;

/* The id's text: s, or i's digits written into text. */
const char *entsync_id_text(const entsync_id *id, char text[24], size_t *len);

/* The id whose text is s (a view: the text is not copied). */
entsync_id entsync_id_of(const char *s, size_t len);

/* -1, 0 or 1, as cursor.lua's compare_ids. */
int entsync_id_compare(const entsync_id *a, const entsync_id *b);

/* -1, 0 or 1: bytewise, a prefix first. */
int entsync_bytes_compare(const char *a, size_t alen, const char *b, size_t blen);

/* -1, 0 or 1, as cursor.lua's compare(mark_a, id_a, mark_b, id_b, kind). */
int entsync_cursor_compare(lua_State *L, int kind_text, const entsync_mark *ma, const entsync_id *ia,
                           const entsync_mark *mb, const entsync_id *ib);

#endif
